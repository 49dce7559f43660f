"""Batch embedding: a registered encoder over a dataset's Parquet with Ray Data, into one Parquet file.

The encoder runs in `map_batches` on a pool of actors (one GPU each where the cluster has GPUs);
the driver streams the results, in order, into a temporary file that is renamed into place, so
a failed job leaves nothing behind. Each output row carries the split, the row's index within
its split, the label, q(z|x)'s mean and log-variance, and the model and dataset it came from.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vae.jobs.batch import (
    ModelActor,
    check_inputs,
    constant_columns,
    images_from_arrow,
    input_mode,
    job_output,
    map_with_actors,
    run_dataset_job,
    split_files,
    start_ray_data,
    write_parquet,
)
from vae.data.datasets import SPLITS
from vae.data.inputs import prepare_inputs
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


class Encoder(ModelActor):
    """A Ray Data actor: holds one copy of the encoder; a pyarrow batch in, latent parameters out."""

    def __init__(self, state: dict[str, Any] | tuple, max_value: float, mode: str, use_gpu: bool = False):
        super().__init__(state, use_gpu)
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
    manifest = check_inputs(state, dataset_path, out, overwrite, "embed", binarize, density=False)
    paths = split_files(dataset_path, manifest, splits)
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
    counts = {split: 0 for split in paths.values()}
    write_parquet(out, schema, (_output_rows(batch, paths, counts, constants, schema) for batch in batches))
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
    import ray.data

    start_ray_data(workers)
    dataset = ray.data.read_parquet(paths, include_paths=True)
    return map_with_actors(dataset, Encoder, state, encoder_options, workers, use_gpu, batch_size)


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
            **constant_columns(constants, n, schema),
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
    return run_dataset_job(embed_dataset, model_uri, dataset, out, **options)


def default_output(dataset_name: str, dataset_version: str, model_name: str | None, model_version: str | None) -> Path:
    """Where the scheduled job writes: VAE_HOME/embeddings/DATASET/MODEL-vVERSION-DATASETVERSION.parquet."""
    from vae.paths import embeddings_dir

    return job_output(
        embeddings_dir(), dataset_name, f"{model_name or 'model'}-v{model_version or 'x'}-{dataset_version}.parquet"
    )
