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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from vae.jobs.batch import (
    RangeActor,
    check_inputs,
    density_input_mode,
    job_output,
    map_ranges,
    row_ranges,
    run_dataset_job,
    split_files,
    with_lineage,
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


class Scorer(RangeActor):
    """A Ray Data actor: row ranges in, log p̂(x), the ELBO and the weights' effective sample size per image out."""

    def __init__(self, state: dict[str, Any] | tuple, max_value: float, mode: str, settings: dict, use_gpu=False):
        super().__init__(state, use_gpu)
        self.max_value, self.mode = max_value, mode
        self.settings = EvaluationConfig(**settings)

    def compute(self, images: torch.Tensor, first: int) -> dict[str, pa.Array]:
        from vae.evaluate.evaluation import estimate_on_device

        x = prepare_inputs(images, self.max_value, self.mode)  # (B, D) float32
        estimate = estimate_on_device(self.model, x, self.settings, first_index=first, device=self.device)
        return {
            "log_px": pa.array(estimate.log_px.cpu().numpy()),  # (B,) float64
            "elbo": pa.array(estimate.elbo.cpu().numpy()),  # (B,)
            "ess": pa.array(estimate.ess.cpu().numpy()),  # (B,)
        }


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
    batches = map_ranges(work, Scorer, state, options, settings.workers, settings.use_gpu, plain=plain)
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

    def counted(batch: pa.Table) -> pa.Table:
        for split, log_px in zip(batch.column("split").to_pylist(), batch.column("log_px").to_pylist()):
            counts[split] += 1
            sums[split] += log_px
        return with_lineage(batch, constants, SCHEMA)

    write_parquet(out, SCHEMA, (counted(batch) for batch in batches))
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
