"""What the batch jobs share (embedding, scoring, sampling): the model a URI names, the row ranges
that Ray Data's `map_batches` hands to a pool of model actors, and outputs that appear whole or not at all.

A job writes to a temporary file beside its output and renames it into place, so a failed job
leaves nothing behind; the output is checked before any download or Ray start.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vae.cluster import has_gpu
from vae.errors import DataError


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI made concrete: the checkpoint's contents and the registered version it came from."""

    state: dict[str, Any]  # model_config, data_dim, weights (vae.models.model.read_checkpoint_state)
    binarize: str  # how its training data was binarised: threshold, dynamic or none
    name: str | None
    version: str | None
    shape: tuple[int, ...] | None  # the image shape the model was registered with, if known


def load_model(model_uri: str, binarize: str = "threshold") -> ResolvedModel:
    """A checkpoint directory as given (trained with `binarize`), or a registered model downloaded.

    An alias is resolved once: the job uses the version it pointed at, even if it moves meanwhile.
    """
    from vae.registry import versions
    from vae.models.model import CHECKPOINT_FILE, read_checkpoint_state

    name, version = versions.resolve_model_version(model_uri)
    if (Path(model_uri) / CHECKPOINT_FILE).exists():
        checkpoint, metadata = Path(model_uri), {"binarize": binarize}
    else:
        checkpoint, metadata = versions.download_model(f"models:/{name}/{version}" if name else model_uri)
    state = read_checkpoint_state(checkpoint)
    shape = metadata.get("shape") or state.get("image_shape")
    return ResolvedModel(state, metadata["binarize"], name, version, tuple(int(s) for s in shape) if shape else None)


def run_dataset_job(job, model_uri: str, dataset: str, out: str | Path, binarize: str = "threshold", **options: Any):
    """Check `out`, resolve a dataset name or directory and `model_uri` (aliases included), then call
    `job(state, dataset_path, out, model_uri=, model_name=, model_version=, binarize=, **options)`.

    The output path is checked first, so a refused job downloads and starts nothing.
    """
    from vae.evaluate.evaluation import resolve_dataset

    check_output(out, bool(options.get("overwrite")))
    dataset_path = resolve_dataset(dataset)
    model = load_model(model_uri, binarize)
    return job(
        model.state,
        dataset_path,
        out,
        model_uri=model_uri,
        model_name=model.name,
        model_version=model.version,
        binarize=model.binarize,
        **options,
    )


def input_mode(binarize: str) -> str:
    """How raw pixels become encoder inputs at inference, as in the served pyfunc.

    Thresholded training data is thresholded again; a model trained on dynamically binarised
    (or continuous) pixels is given the pixel intensities x / max_value themselves.
    """
    return "threshold" if binarize == "threshold" else "none"


def density_input_mode(binarize: str) -> str:
    """How raw pixels become inputs of a density: a Bernoulli model needs binary pixels, so
    dynamically binarised training data is thresholded (as the stored binarised test split is)."""
    return "none" if binarize == "none" else "threshold"


def images_from_arrow(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list `image` column → (B, D) array, without a Python object per row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    images = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
    return images if images.flags.writeable else images.copy()  # torch wants writable memory


class ModelActor:
    """A Ray Data actor's common part: one copy of the model, on a GPU when the actor has one."""

    def __init__(self, state: dict[str, Any] | tuple, use_gpu: bool = False):
        from vae.models.model import model_from_state

        if isinstance(state, tuple):  # (ObjectRef,): the weights, fetched from Ray's object store
            import ray

            state = ray.get(state[0])
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = model_from_state(state).to(self.device)


def row_ranges(paths: dict[str, str], manifest: dict[str, Any], rows_per_range: int) -> pa.Table:
    """The work of a job: (path, split, first, count) per range of at most `rows_per_range` rows of a split."""
    ranges = [
        (path, split, first, min(rows_per_range, int(manifest["rows"][split]) - first))
        for path, split in paths.items()
        for first in range(0, int(manifest["rows"][split]), rows_per_range)
    ]
    path, split, first, count = zip(*ranges)
    return pa.table({"path": list(path), "split": list(split), "first": list(first), "count": list(count)})


def read_rows(path: str, first: int, count: int) -> pa.Table:
    """Rows first..first+count-1 of a Parquet file, reading only the row groups that hold them."""
    file = pq.ParquetFile(path)
    sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)])  # (G + 1,)
    groups = [g for g in range(len(sizes)) if starts[g] < first + count and starts[g + 1] > first]
    return file.read_row_groups(groups).slice(first - int(starts[groups[0]]), count)


class RangeActor(ModelActor):
    """A Ray Data actor over row ranges: a batch of (path, split, first, count) in, one row per image out
    (its split, its row within the split, its label, and what `compute` makes of the images)."""

    def compute(self, images: torch.Tensor, first: int) -> dict[str, pa.Array]:
        """Output columns for `images` (B, D, stored dtype), rows first..first+B-1 of their split."""
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = []
        for path, split, first, count in zip(
            *(batch.column(c).to_pylist() for c in ("path", "split", "first", "count"))
        ):
            rows = read_rows(path, first, count)
            images = torch.from_numpy(images_from_arrow(rows.column("image")))  # (B, D) stored dtype
            labels = rows.column("label") if "label" in rows.column_names else pa.nulls(count, pa.int64())
            columns = {
                "split": pa.array([split] * count, pa.string()),
                "row": pa.array(np.arange(first, first + count), pa.int64()),
                "label": labels.cast(pa.int64()),
                **self.compute(images, first),
            }
            done.append(pa.table(columns))
        return pa.concat_tables(done)


BLOCKS_PER_ACTOR = 16  # at most this many blocks per actor: enough to balance, few enough for tiny ranges


def plan_blocks(ranges: int, workers: int) -> tuple[int, int]:
    """(actors, blocks) for `ranges` row ranges on at most `workers` actors: no actor without a block, and
    consecutive ranges grouped into at most BLOCKS_PER_ACTOR blocks per actor (a block costs a Ray task)."""
    actors = max(1, min(workers, ranges))
    return actors, min(ranges, actors * BLOCKS_PER_ACTOR)


def map_ranges(
    work: pa.Table, actor: type[RangeActor], state: dict[str, Any], options: dict[str, Any], workers: int,
    use_gpu: bool | None, *, plain: bool = False,
) -> Iterator[pa.Table]:  # fmt: skip
    """`actor(state, **options)` over the row ranges of `work` (`row_ranges`), on a pool of at most `workers`
    Ray Data actors (one GPU each where the cluster has GPUs and `use_gpu` is not False); the results
    stream back in the ranges' order.

    The ranges are the blocks (`plan_blocks`), and each actor reads its ranges' rows itself (`read_rows`):
    `read_parquet` would hand the whole of a small dataset to one actor as one block (Ray 2.60 reads up to
    128 MiB per block), leaving the rest of the pool idle.

    `plain` runs one actor in this process over the same ranges instead (the reference for tests and benchmarks).
    """
    if plain:
        one = actor(state, **options, use_gpu=bool(use_gpu))
        return (one(work.slice(i, 1)) for i in range(work.num_rows))
    import ray

    start_ray_data(workers)
    gpu = has_gpu() if use_gpu is None else use_gpu
    actors, blocks = plan_blocks(work.num_rows, workers)
    dataset = ray.data.from_items(work.to_pylist(), override_num_blocks=blocks)  # consecutive ranges per block
    mapped = dataset.map_batches(
        actor,
        # The weights go in as a reference nested in a tuple: Ray does not resolve it for the
        # constructor, so a restarted actor fetches them again instead of failing.
        fn_constructor_kwargs={"state": (ray.put(state),), **options, "use_gpu": gpu},
        batch_size=None,  # a block per call
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=0 if gpu else 1,
        num_gpus=1 if gpu else 0,
    )
    return mapped.iter_batches(batch_format="pyarrow", batch_size=None)


def start_ray_data(workers: int) -> None:
    """Ray (local unless RAY_ADDRESS says otherwise), quiet, with results kept in input order."""
    import ray.data

    from vae.cluster import ensure_ray

    ensure_ray(workers)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True  # row ids are positions within each split


def check_inputs(
    state: dict[str, Any], dataset_path: str | Path, out: str | Path, overwrite: bool, verb: str, binarize: str,
    *, density: bool,
) -> dict[str, Any]:  # fmt: skip
    """Everything that can be wrong before any work starts (vae.data.inputs.check_model_inputs; `density`:
    the job estimates log p(x), not only z); returns the dataset's manifest."""
    from vae.data.datasets import read_manifest
    from vae.data.inputs import check_model_inputs

    check_output(out, overwrite)
    manifest = read_manifest(dataset_path)
    check_model_inputs(dataset_path, manifest, state, binarize, verb, density=density)
    return manifest


def split_files(dataset_path: str | Path, manifest: dict[str, Any], splits: tuple[str, ...]) -> dict[str, str]:
    """{Parquet file: split} for the splits asked for that hold rows; none at all is an error."""
    from vae.data.datasets import split_path

    paths = {split_path(dataset_path, split): split for split in splits if int(manifest["rows"].get(split, 0)) > 0}
    if not paths:
        raise DataError(f"{dataset_path}: splits {', '.join(splits)} hold no rows (expected at least one image)")
    return paths


def check_output(out: str | Path, overwrite: bool, kind: str = "a Parquet file") -> None:
    """The output must be a new file in an existing folder (or replaceable with `overwrite`)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out}: output exists (expected a new path, or pass --overwrite to replace it)")
    if out.exists() and out.is_dir():
        raise DataError(f"{out}: is a directory (expected {kind} path)")
    if not out.parent.exists():
        raise DataError(f"{out.parent}: output folder does not exist")


@contextlib.contextmanager
def atomic_output(out: str | Path) -> Iterator[str]:
    """A temporary path beside `out`, renamed to `out` when the block succeeds and removed when it fails."""
    out = Path(out)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}-", suffix=".tmp", dir=out.parent)
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_parquet(out: str | Path, schema: pa.Schema, tables: Iterable[pa.Table]) -> None:
    """Stream tables into one Parquet file at `out`, atomically."""
    with atomic_output(out) as temporary, pq.ParquetWriter(temporary, schema) as writer:
        for table in tables:
            writer.write_table(table)


def with_lineage(batch: pa.Table, values: dict[str, Any], schema: pa.Schema) -> pa.Table:
    """`batch`'s columns and a job's lineage (`values`, the same on every row), as `schema`."""
    return pa.table(
        {**{c: batch.column(c) for c in batch.column_names}, **constant_columns(values, batch.num_rows, schema)},
        schema=schema,
    )


def constant_columns(values: dict[str, Any], rows: int, schema: pa.Schema) -> dict[str, pa.Array]:
    """The same value on every row, one column per entry (a job's lineage), typed as in `schema`."""
    return {name: pa.array([value] * rows, schema.field(name).type) for name, value in values.items()}


def job_output(root: Path, folder: str, filename: str) -> Path:
    """Where a scheduled job writes by default: ROOT/FOLDER/FILENAME, the folder created."""
    from vae.paths import inside

    directory = inside(root, folder)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / filename
