"""Batch embedding: a registered encoder over a dataset's Parquet with Ray Data, into one Parquet file.

The encoder runs in `map_batches` on a pool of actors (one GPU each where the cluster has GPUs);
the driver streams the results, in order, into a temporary file that is renamed into place, so
a failed job leaves nothing behind. Each output row carries the split, the row's index within
its split, the label, q(z|x)'s mean and log-variance, and the model and dataset it came from.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vae.datasets import SPLITS, check_pixels, read_manifest, split_path
from vae.inputs import prepare_inputs
from vae.errors import DataError

DEFAULT_BATCH_SIZE = 4096


@dataclass(frozen=True)
class EmbeddingResult:
    """What an embedding job wrote."""

    path: str
    rows: int
    splits: dict[str, int]
    model_uri: str
    model_name: str | None
    model_version: str | None
    dataset_hash: str
    latent_dim: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def input_mode(binarize: str) -> str:
    """How raw pixels become encoder inputs at inference, as in the served pyfunc.

    Thresholded training data is thresholded again; a model trained on dynamically binarised
    (or continuous) pixels is given the pixel intensities x / max_value themselves.
    """
    return "threshold" if binarize == "threshold" else "none"


def images_from_arrow(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list `image` column → (B, D) array, without a Python object per row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    images = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
    return images if images.flags.writeable else images.copy()  # torch wants writable memory


class Encoder:
    """A Ray Data actor: holds one copy of the encoder; a pyarrow batch in, latent parameters out."""

    def __init__(self, state: dict[str, Any] | tuple, max_value: float, mode: str, use_gpu: bool = False):
        from vae.model import model_from_state

        if isinstance(state, tuple):  # (ObjectRef,): the weights, fetched from Ray's object store
            import ray

            state = ray.get(state[0])
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = model_from_state(state).to(self.device)
        self.max_value, self.mode = max_value, mode

    def __call__(self, batch: pa.Table) -> pa.Table:
        images = torch.from_numpy(images_from_arrow(batch.column("image")))  # (B, D) stored dtype
        x = prepare_inputs(images.to(self.device), self.max_value, self.mode)  # (B, D) float32
        with torch.no_grad():
            mean, logvar = self.model.encode(x)  # (B, L), (B, L)
        latent = mean.shape[1]
        columns = {
            "path": batch.column("path"),
            "z_mean": pa.FixedSizeListArray.from_arrays(pa.array(mean.cpu().numpy().ravel()), latent),
            "z_logvar": pa.FixedSizeListArray.from_arrays(pa.array(logvar.cpu().numpy().ravel()), latent),
        }
        if "label" in batch.column_names:
            columns["label"] = batch.column("label")
        return pa.table(columns)


def check_inputs(state: dict[str, Any], dataset_path: str | Path, out: str | Path, overwrite: bool) -> dict[str, Any]:
    """Everything that can be wrong before any work starts; returns the dataset's manifest."""
    check_output(out, overwrite)
    manifest = read_manifest(dataset_path)
    check_pixels(
        dataset_path, manifest, int(state["data_dim"]), hint=" (embed a dataset of the shape the model was trained on)"
    )
    return manifest


def check_output(out: str | Path, overwrite: bool) -> None:
    """The output must be a new file in an existing folder (or replaceable with `overwrite`)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out}: output exists (expected a new path, or pass --overwrite to replace it)")
    if out.exists() and out.is_dir():
        raise DataError(f"{out}: is a directory (expected a Parquet file path)")
    if not out.parent.exists():
        raise DataError(f"{out.parent}: output folder does not exist")


def embed_dataset(
    state: dict[str, Any],
    dataset_path: str | Path,
    out: str | Path,
    *,
    model_uri: str,
    model_name: str | None = None,
    model_version: str | None = None,
    binarize: str = "threshold",
    splits: tuple[str, ...] = SPLITS,
    workers: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    use_gpu: bool | None = None,
    overwrite: bool = False,
    plain: bool = False,
) -> EmbeddingResult:
    """Encode every row of `splits` with Ray Data actors; write one Parquet file atomically.

    `state` is a checkpoint's contents (model_config, data_dim, model weights). `plain` runs the
    same encoder in this process over pyarrow batches instead (the reference for tests and
    benchmarks).
    """
    started = time.perf_counter()
    manifest = check_inputs(state, dataset_path, out, overwrite)
    paths = {split_path(dataset_path, split): split for split in splits if int(manifest["rows"].get(split, 0)) > 0}
    if not paths:
        raise DataError(f"{dataset_path}: splits {', '.join(splits)} hold no rows (expected at least one image)")
    encoder_options = {"max_value": float(manifest["value_range"][1]), "mode": input_mode(binarize)}
    if plain:
        batches = _encode_in_process(state, list(paths), batch_size, encoder_options)
    else:
        batches = _encode_with_ray_data(state, list(paths), batch_size, encoder_options, workers, use_gpu)
    constants = {
        "model_uri": model_uri,
        "model_name": model_name,
        "model_version": model_version,
        "dataset_hash": manifest["content_hash"],
    }
    latent = int(state["model_config"]["latent_dim"])
    schema = pa.schema(
        [
            ("split", pa.string()),
            ("row", pa.int64()),
            ("label", pa.int64()),
            ("z_mean", pa.list_(pa.float32(), latent)),
            ("z_logvar", pa.list_(pa.float32(), latent)),
            ("model_uri", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("dataset_hash", pa.string()),
        ]
    )
    out = Path(out)
    counts = {split: 0 for split in paths.values()}
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}-", suffix=".tmp", dir=out.parent)
    os.close(handle)
    try:
        with pq.ParquetWriter(temporary, schema) as writer:
            for batch in batches:
                writer.write_table(_output_rows(batch, paths, counts, constants, schema))
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return EmbeddingResult(
        path=str(out),
        rows=sum(counts.values()),
        splits=counts,
        model_uri=model_uri,
        model_name=model_name,
        model_version=model_version,
        dataset_hash=manifest["content_hash"],
        latent_dim=latent,
        seconds=round(time.perf_counter() - started, 3),
    )


def _encode_with_ray_data(
    state: dict[str, Any],
    paths: list[str],
    batch_size: int,
    encoder_options: dict[str, Any],
    workers: int,
    use_gpu: bool | None,
) -> Iterator[pa.Table]:
    """Encoded batches, in file order, from `map_batches` on a pool of `workers` encoder actors."""
    import ray
    import ray.data

    from vae.cluster import ensure_ray

    ensure_ray(workers)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True  # row ids are positions within each split
    gpu = bool(ray.cluster_resources().get("GPU", 0) > 0) if use_gpu is None else use_gpu
    encoded = ray.data.read_parquet(paths, include_paths=True).map_batches(
        Encoder,
        # The weights go in as a reference nested in a tuple: Ray does not resolve it for the
        # constructor, so a restarted actor fetches them again instead of failing.
        fn_constructor_kwargs={"state": (ray.put(state),), **encoder_options, "use_gpu": gpu},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=0 if gpu else 1,
        num_gpus=1 if gpu else 0,
    )
    return encoded.iter_batches(batch_format="pyarrow", batch_size=None)


def _encode_in_process(
    state: dict[str, Any], paths: list[str], batch_size: int, encoder_options: dict[str, Any]
) -> Iterator[pa.Table]:
    """The same encoder over pyarrow batches read straight from the files, in this process."""
    encoder = Encoder(state, **encoder_options)
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            table = pa.Table.from_batches([batch])
            yield encoder(table.append_column("path", pa.array([path] * table.num_rows, pa.string())))


def _output_rows(
    batch: pa.Table, paths: dict[str, str], counts: dict[str, int], constants: dict[str, Any], schema: pa.Schema
) -> pa.Table:
    """Name each row's split and number it within the split (batches arrive in order)."""
    files, which = np.unique(np.asarray(batch.column("path").to_pylist(), dtype=object), return_inverse=True)
    split_of = np.array([paths[_normalise(str(file), paths)] for file in files], dtype=object)[which]  # (B,)
    rows = np.empty(batch.num_rows, dtype=np.int64)
    for split in counts:
        mask = split_of == split
        rows[mask] = counts[split] + np.arange(int(mask.sum()))
        counts[split] += int(mask.sum())
    n = batch.num_rows
    labels = batch.column("label") if "label" in batch.column_names else pa.nulls(n, pa.int64())
    return pa.table(
        {
            "split": pa.array(split_of.tolist(), pa.string()),
            "row": pa.array(rows),
            "label": labels.cast(pa.int64()),
            "z_mean": batch.column("z_mean"),
            "z_logvar": batch.column("z_logvar"),
            **{name: pa.array([value] * n, pa.string()) for name, value in constants.items()},
        },
        schema=schema,
    )


def _normalise(file: str, paths: dict[str, str]) -> str:
    """Ray reports paths without a scheme and possibly resolved: match them to the split files."""
    if file in paths:
        return file
    for path in paths:
        if os.path.realpath(path) == os.path.realpath(file) or path.endswith(file) or file.endswith(path):
            return path
    raise DataError(f"{file}: a row from a file that is not one of the dataset's splits")


def embed(
    model_uri: str,
    dataset: str,
    out: str | Path,
    **options: Any,
) -> EmbeddingResult:
    """Resolve `model_uri` (aliases included) and a dataset name or directory, then `embed_dataset`.

    The output path is checked first, so a refused job downloads and starts nothing.
    """
    from vae import registry
    from vae.model import CHECKPOINT_FILE, read_checkpoint_state
    from vae.evaluation import resolve_dataset

    check_output(out, bool(options.get("overwrite")))  # before any download or Ray start
    dataset_path = resolve_dataset(dataset)
    name, version = registry.resolve_model_version(model_uri)
    if (Path(model_uri) / CHECKPOINT_FILE).exists():
        checkpoint, binarize = Path(model_uri), options.pop("binarize", "threshold")
    else:
        # The version the alias pointed at when resolved, even if the alias moves meanwhile.
        checkpoint, metadata = registry.download_model(f"models:/{name}/{version}" if name else model_uri)
        binarize = metadata["binarize"]
        options.pop("binarize", None)
    state = read_checkpoint_state(checkpoint)
    return embed_dataset(
        state,
        dataset_path,
        out,
        model_uri=model_uri,
        model_name=name,
        model_version=version,
        binarize=binarize,
        **options,
    )


def default_output(dataset_name: str, dataset_version: str, model_name: str | None, model_version: str | None) -> Path:
    """Where the scheduled job writes: VAE_HOME/embeddings/DATASET/MODEL-vVERSION-DATASETVERSION.parquet."""
    from vae.paths import embeddings_dir, inside

    folder = inside(embeddings_dir(), dataset_name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{model_name or 'model'}-v{model_version or 'x'}-{dataset_version}.parquet"
