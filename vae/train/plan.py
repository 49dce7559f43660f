"""What every Ray Train worker is told (WorkerPlan), decided once on the driver by `worker_plan`:
the model and training settings, the data's shape and pixel range, and whether a worker's shard is
held on its device for the whole run (`shard_bytes` against `training.device_data_mb`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae.config import ModelConfig, PipelineConfig, TrainingConfig
from vae.user_code import code_dirs


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a Ray Train worker reads: the contract between `train` and the worker loop.

    `training.batch_size` is per worker: n workers take n * batch_size examples per step.
    `resident` is decided once on the driver (the same on every rank): hold the worker's shard
    on its device for the whole run instead of streaming it from Ray Data every epoch.
    """

    model: ModelConfig
    training: TrainingConfig
    data_dim: int
    image_shape: tuple[int, ...]
    max_value: float
    binarize: str
    train_rows: int
    resident: bool
    staging_dir: str  # where rank 0 writes a checkpoint before Ray copies it (removed by `train`)
    resume_from: str | None = None
    pipeline: str | None = None  # written into every checkpoint: `--resume` takes only its own pipeline's
    code_dirs: tuple[str, ...] = ()  # folders of users' network modules (vae.user_code): workers import from them


def worker_plan(
    config: PipelineConfig, manifest: dict[str, Any], workers: int, staging: Path, resume_from: str | None
) -> WorkerPlan:
    """The plan every worker of this run reads, from the pipeline's settings and the dataset's manifest."""
    return WorkerPlan(
        model=config.model,
        training=config.training,
        data_dim=int(math.prod(manifest["shape"])),
        image_shape=tuple(manifest["shape"]),
        max_value=float(manifest["value_range"][1]),
        binarize=config.dataset.binarize,
        train_rows=int(manifest["rows"]["train"]),
        resident=fits_device(config.training, manifest, workers),
        staging_dir=str(staging),
        resume_from=str(resume_from) if resume_from else None,
        pipeline=config.name,
        code_dirs=tuple(code_dirs(config.model.network_specs)),
    )


def fits_device(training: TrainingConfig, manifest: dict[str, Any], workers: int) -> bool:
    """Whether a worker's shard is held on its device (`training.device_data_mb`), not streamed."""
    return shard_bytes(manifest, workers) <= training.device_data_mb * 2**20


def runs_in_process(training: TrainingConfig, manifest: dict[str, Any], workers: int) -> bool:
    """Whether `train(..., in_process=True)` fits in the calling process: one worker, its data resident."""
    return workers == 1 and fits_device(training, manifest, workers)


def shard_bytes(manifest: dict[str, Any], workers: int) -> int:
    """Bytes of one worker's train + validation rows as stored (the resident-shard budget check)."""
    itemsize = int(np.dtype(manifest.get("dtype", "float32")).itemsize)
    rows = int(manifest["rows"]["train"]) + int(manifest["rows"]["validation"])
    return math.ceil(rows / workers) * int(math.prod(manifest["shape"])) * itemsize
