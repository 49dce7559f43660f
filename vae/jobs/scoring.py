"""Batch scoring: per-example log p̂(x) and ELBO of a registered model over a dataset, with Ray Data.

The rows of each split are cut into ranges that Ray Data hands to a pool of scoring actors; each
actor reads its range of the split's Parquet file and estimates

    log p̂(x) = log 1/k sum_i p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x)   (Burda et al. 2016, Eq. 8)

with `vae.evaluate.estimators.estimate_log_likelihood`, passing the range's first row as `first_index`: row
n of a split draws the noise of example n, so its value equals `vae evaluate`'s per-example value
for the same k and seed. The driver writes one Parquet file atomically, each row carrying its
lineage: split, row, label, the model version, the dataset hash, k and the seed.
"""

from __future__ import annotations

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
    density_input_mode,
    images_from_arrow,
    job_output,
    map_with_actors,
    run_dataset_job,
    split_files,
    start_ray_data,
    write_parquet,
)
from vae.config import EvaluationConfig, ScoreConfig
from vae.data.inputs import prepare_inputs

SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("row", pa.int64()),
        ("label", pa.int64()),
        ("log_px", pa.float64()),  # log p̂(x), nats
        ("elbo", pa.float64()),  # mean of the k log-weights, nats
        ("ess", pa.float64()),  # effective sample size of the k weights
        ("model_uri", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("dataset_hash", pa.string()),
        ("k", pa.int64()),
        ("seed", pa.int64()),
    ]
)


@dataclass(frozen=True)
class ScoreResult:
    """What a scoring job wrote: rows and mean log p̂(x) per split, and where they came from."""

    path: str
    rows: int
    splits: dict[str, int]
    mean_log_px: dict[str, float]
    model_uri: str
    model_name: str | None
    model_version: str | None
    dataset_hash: str
    k: int
    seed: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_rows(path: str, first: int, count: int) -> pa.Table:
    """Rows first..first+count-1 of a Parquet file, reading only the row groups that hold them."""
    file = pq.ParquetFile(path)
    sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)])  # (G + 1,)
    groups = [g for g in range(len(sizes)) if starts[g] < first + count and starts[g + 1] > first]
    return file.read_row_groups(groups).slice(first - int(starts[groups[0]]), count)


class Scorer(ModelActor):
    """A Ray Data actor: a batch of row ranges (path, split, first, count) in, one row per image out."""

    def __init__(self, state: dict[str, Any] | tuple, max_value: float, mode: str, settings: dict, use_gpu=False):
        super().__init__(state, use_gpu)
        self.max_value, self.mode = max_value, mode
        self.settings = EvaluationConfig(**settings)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from vae.evaluate.evaluation import estimate_on_device

        scored = []
        for path, split, first, count in zip(
            *(batch.column(c).to_pylist() for c in ("path", "split", "first", "count"))
        ):
            rows = read_rows(path, first, count)
            images = torch.from_numpy(images_from_arrow(rows.column("image")))  # (B, D) stored dtype
            x = prepare_inputs(images, self.max_value, self.mode)  # (B, D) float32
            estimate = estimate_on_device(self.model, x, self.settings, first_index=first, device=self.device)
            labels = rows.column("label") if "label" in rows.column_names else pa.nulls(count, pa.int64())
            columns = {
                "split": pa.array([split] * count, pa.string()),
                "row": pa.array(np.arange(first, first + count), pa.int64()),
                "label": labels.cast(pa.int64()),
                "log_px": pa.array(estimate.log_px.cpu().numpy()),  # (B,) float64
                "elbo": pa.array(estimate.elbo.cpu().numpy()),  # (B,)
                "ess": pa.array(estimate.ess.cpu().numpy()),  # (B,)
            }
            scored.append(pa.table(columns))
        return pa.concat_tables(scored)


def row_ranges(paths: dict[str, str], manifest: dict[str, Any], rows_per_task: int) -> pa.Table:
    """The work: (path, split, first, count) per range of at most `rows_per_task` rows of a split."""
    ranges = [
        (path, split, first, min(rows_per_task, int(manifest["rows"][split]) - first))
        for path, split in paths.items()
        for first in range(0, int(manifest["rows"][split]), rows_per_task)
    ]
    path, split, first, count = zip(*ranges)
    return pa.table({"path": list(path), "split": list(split), "first": list(first), "count": list(count)})


def score_dataset(
    state: dict[str, Any],
    dataset_path: str | Path,
    out: str | Path,
    settings: ScoreConfig,
    *,
    model_uri: str,
    model_name: str | None = None,
    model_version: str | None = None,
    binarize: str = "threshold",
    overwrite: bool = False,
    plain: bool = False,
) -> ScoreResult:
    """Score every row of `settings.splits` with Ray Data actors; write one Parquet file atomically.

    `plain` runs the same scorer over the same ranges in this process (the reference for tests).
    """
    started = time.perf_counter()
    manifest = check_inputs(state, dataset_path, out, overwrite, "score", binarize, density=True)
    paths = split_files(dataset_path, manifest, settings.splits)
    work = row_ranges(paths, manifest, settings.batch_size)
    options = {
        "max_value": float(manifest["value_range"][1]),
        "mode": density_input_mode(binarize),
        "settings": {"k": settings.k, "seed": settings.seed, "max_memory_mb": settings.max_memory_mb},
    }
    if plain:
        scorer = Scorer(state, **options, use_gpu=bool(settings.use_gpu))
        batches: Iterator[pa.Table] = (scorer(work.slice(i, 1)) for i in range(work.num_rows))
    else:
        import ray.data

        start_ray_data(settings.workers)
        dataset = ray.data.from_items(work.to_pylist(), override_num_blocks=work.num_rows)  # a block per range
        batches = map_with_actors(dataset, Scorer, state, options, settings.workers, settings.use_gpu, batch_size=1)
    constants = {
        "model_uri": model_uri,
        "model_name": model_name,
        "model_version": model_version,
        "dataset_hash": manifest["content_hash"],
        "k": settings.k,
        "seed": settings.seed,
    }
    counts = {split: 0 for split in paths.values()}
    sums = {split: 0.0 for split in paths.values()}

    def with_lineage(batch: pa.Table) -> pa.Table:
        for split, log_px in zip(batch.column("split").to_pylist(), batch.column("log_px").to_pylist()):
            counts[split] += 1
            sums[split] += log_px
        lineage = constant_columns(constants, batch.num_rows, SCHEMA)
        return pa.table({**{c: batch.column(c) for c in batch.column_names}, **lineage}, schema=SCHEMA)

    write_parquet(out, SCHEMA, (with_lineage(batch) for batch in batches))
    return ScoreResult(
        path=str(out),
        rows=sum(counts.values()),
        splits=counts,
        mean_log_px={split: sums[split] / counts[split] for split in counts},
        model_uri=model_uri,
        model_name=model_name,
        model_version=model_version,
        dataset_hash=manifest["content_hash"],
        k=settings.k,
        seed=settings.seed,
        seconds=round(time.perf_counter() - started, 3),
    )


def score(
    model_uri: str, dataset: str, out: str | Path, settings: ScoreConfig, binarize: str = "threshold", **options: Any
) -> ScoreResult:
    """Resolve `model_uri` (aliases included) and a dataset name or directory, then `score_dataset`.

    The output path is checked first, so a refused job downloads and starts nothing.
    """
    return run_dataset_job(score_dataset, model_uri, dataset, out, binarize, settings=settings, **options)


def default_output(
    dataset_name: str, dataset_version: str, model_name: str | None, model_version: str | None, settings: ScoreConfig
) -> Path:
    """Where the scheduled job writes: VAE_HOME/scores/DATASET/MODEL-vVERSION-DATASETVERSION-kK-seedS.parquet."""
    from vae.paths import vae_home

    name = (
        f"{model_name or 'model'}-v{model_version or 'x'}-{dataset_version}-k{settings.k}-seed{settings.seed}.parquet"
    )
    return job_output(vae_home() / "scores", dataset_name, name)
