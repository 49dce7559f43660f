"""Checkpoints: what rank 0 writes every `checkpoint_every` epochs (`checkpoint_state`, with the
`Progress` it carries besides weights), how a worker restores one (`restore_checkpoint`), and what the
driver finds and picks among them: a pipeline's newest (`latest_checkpoint`, for `--resume`), the best
by validation ELBO under early stopping, a resumed checkpoint that is already trained.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vae.config import TrainingConfig
from vae.models.model import CHECKPOINT_FILE, VAE, read_checkpoint_state
from vae.paths import checkpoints_dir
from vae.train.plan import WorkerPlan
from vae.train.stepper import restore_optimizer


@dataclass(frozen=True)
class TrainResult:
    """A reference to the trained model: the checkpoint directory and its history (what `train` returns)."""

    checkpoint: str
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Progress:
    """What a checkpoint carries besides weights: where training stands."""

    first_epoch: int = 1
    history: list[dict[str, float]] = field(default_factory=list)
    best: float = -math.inf
    stale: int = 0
    trained_seconds: float = 0.0


def restore_checkpoint(plan: WorkerPlan, model: VAE, optimizer, scheduler, restarted: dict | None) -> Progress:
    """Load a checkpoint into the worker's model, optimiser and scheduler; where it left training.

    `restarted` (the state of Ray Train's own checkpoint, a restarted run) wins over an explicit
    starting checkpoint, `plan.resume_from`."""
    state = restarted
    if state is None and plan.resume_from:
        state = read_checkpoint_state(plan.resume_from)
    if state is None:
        return Progress()
    model.load_state_dict(state["model"])
    restore_optimizer(optimizer, state["optimizer"])
    if "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    return Progress(
        first_epoch=int(state["epoch"]) + 1,
        history=list(state["history"]),
        best=float(state.get("best_validation_elbo", -math.inf)),
        stale=int(state.get("stale_epochs", 0)),
        trained_seconds=float(state.get("trained_seconds", 0.0)),
    )


def checkpoint_state(plan: WorkerPlan, model: VAE, optimizer, scheduler, epoch: int, progress: Progress) -> dict:
    """What rank 0 saves: weights, optimiser and scheduler, where training stands, and what rebuilds the model."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "history": progress.history,
        "model_config": plan.model.model_dump(mode="json"),
        "data_dim": plan.data_dim,
        "image_shape": list(plan.image_shape),
        "best_validation_elbo": progress.best,
        "stale_epochs": progress.stale,
        "trained_seconds": progress.trained_seconds,
        "pipeline": plan.pipeline,
        **({"code_dirs": list(plan.code_dirs)} if plan.code_dirs else {}),  # only with users' networks
    }


def state_header(directory: str | Path) -> dict[str, Any]:
    """A checkpoint's state with its tensors memory-mapped, not read: for its epoch and history."""
    return read_checkpoint_state(directory, mmap=True)


def rank_score(value: float | None) -> float:
    """A checkpoint's validation ELBO for ranking: an unknown or NaN one ranks last."""
    return -math.inf if value is None or math.isnan(value) else value


def best_checkpoint(candidates: list[tuple[str, float | None]]) -> str:
    """The checkpoint with the highest validation ELBO; an unknown or NaN one ranks last."""
    return max(candidates, key=lambda pair: rank_score(pair[1]))[0]


def earlier_checkpoints(resume_from: str | None) -> list[tuple[str, float | None]]:
    """The run a resumed training continued: its checkpoints (resume_from and its siblings) with
    their validation ELBOs, so early stopping can still pick an epoch from before the resume."""
    if not resume_from:
        return []
    last = int(state_header(resume_from)["epoch"])
    found = []
    for directory in sorted(Path(resume_from).parent.glob("checkpoint_*")):
        if is_checkpoint(directory):
            state = state_header(directory)
            if int(state["epoch"]) <= last:  # not a later branch of an explicitly older resume_from
                found.append((str(directory), (state.get("history") or [{}])[-1].get("validation_elbo")))
    return found


def already_trained(training: TrainingConfig, resume_from: str) -> TrainResult | None:
    """A resumed checkpoint that has all its epochs: the result, instead of a run that trains nothing."""
    state = state_header(resume_from)
    if int(state["epoch"]) < training.epochs:
        return None
    chosen = resume_from
    if training.early_stopping_patience:
        chosen = best_checkpoint(earlier_checkpoints(resume_from))
    return TrainResult(checkpoint=chosen, epochs=int(state["epoch"]), history=list(state["history"]))


def is_checkpoint(directory: str | Path) -> bool:
    """Whether a checkpoint directory still holds its weights (a cached result may outlive it)."""
    return (Path(directory) / CHECKPOINT_FILE).is_file()


# The run ids train() is given (an MLflow run, a Tune trial) or makes (a timestamp): how a checkpoint
# written before checkpoints named their pipeline is told apart from another pipeline's ('mnist-large-…').
_RUN_ID = re.compile(r"[0-9a-f]{32}|\d{8}-\d{6}|[0-9a-f]{5}_\d{5}")


def latest_checkpoint(pipeline: str, storage: str | Path | None = None) -> str | None:
    """The newest checkpoint directory of any earlier run of `pipeline`, or None.

    Run folders are PIPELINE-RUNID, so `mnist-*` also matches `mnist-large-*`: a checkpoint counts
    only when its state names `pipeline` (or, from before it did, its folder is `pipeline-` + a run id).
    """
    root = Path(storage or checkpoints_dir())
    found = sorted(
        (path.parent for path in root.glob(f"{pipeline}-*/checkpoint_*/{CHECKPOINT_FILE}")),
        key=lambda p: (p / CHECKPOINT_FILE).stat().st_mtime,
        reverse=True,
    )
    for directory in found:
        try:
            owner = state_header(directory).get("pipeline")
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is not one to resume from
            continue
        run = directory.parent.name[len(pipeline) + 1 :]
        if owner == pipeline or (owner is None and _RUN_ID.fullmatch(run)):
            return str(directory)
    return None
