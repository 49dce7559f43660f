"""Stage 2, training, on the driver: `train` fits the model with Ray Train's TorchTrainer over shards
from the object store or Ray Data (vae.train.shards; the loop on each worker is vae.train.worker's),
with a checkpoint every `checkpoint_every` epochs, early stopping and a time budget, and returns the
final (or best) checkpoint.

Rank 0 sends each epoch's metrics to the driver, which prints one line (`format_epoch`) and hands
them to an `on_epoch` callback; a non-finite loss in a worker becomes one TrainingDivergedError line.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vae.cluster import ensure_ray, has_gpu, is_own_ray
from vae.config import PipelineConfig
from vae.data.datasets import DatasetRef, split_path
from vae.errors import TrainingDivergedError, VAEError
from vae.paths import checkpoints_dir, inside
from vae.train.checkpoints import (
    TrainResult,
    already_trained,
    best_checkpoint,
    earlier_checkpoints,
    latest_checkpoint,
    state_header,
)
from vae.train.checks import check_inputs
from vae.train.plan import WorkerPlan, runs_in_process, worker_plan
from vae.train.progress import Channel, open_channel
from vae.train.shards import load_splits, put_splits, ray_dataset
from vae.train.sessions import InProcessSession
from vae.train.hooks import WorkerHooks
from vae.train.worker import NonFiniteLossError, run_worker, train_loop_per_worker

_DIVERGED = re.compile(r"non-finite loss \([^)]*\) at epoch \d+, step \d+[^\n]*")


@dataclass(frozen=True)
class TrainingRun:
    """The training stage's result: the MLflow run it is recorded in, the checkpoint and its history."""

    run_id: str
    checkpoint: str
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)
    reused: bool = False  # a finished training of the same data and settings was reused

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_epoch(metrics: dict[str, float], epochs: int) -> str:
    """The one progress line per epoch."""
    return (
        f"epoch {int(metrics['epoch']):>3}/{epochs}  train ELBO {metrics['train_elbo']:9.3f}  "
        f"val ELBO {metrics['validation_elbo']:9.3f}  KL {metrics['train_kl']:7.3f}  "
        + (f"val IWAE {metrics['validation_iwae']:9.3f}  " if "validation_iwae" in metrics else "")
        + f"{metrics['samples_per_second']:8.0f} samples/s"
    )


def _follow_progress(
    channel: Channel,
    epochs: int,
    stop: threading.Event,
    echo: Callable[[str], None] | None,
    on_epoch: Callable[[dict[str, float]], None] | None,
    failures: list[str],
) -> None:
    """Driver-side thread: for each epoch rank 0 reports, print its line and call `on_epoch`.

    The driver is the one place metrics arrive (e.g. one writer on a sqlite MLflow store). An
    `on_epoch` that raises (a locked database) does not end the thread: the epoch is recorded in
    `failures` and training goes on; `train` says afterwards what was not logged.
    """
    while True:
        try:
            # A short wait: once the fit has ended, `_fit` waits for this thread to see `stop`.
            metrics = channel.get(timeout=0.1)
        except Exception:  # the channel is gone (the queue actor died): training has ended
            return
        if metrics is None:
            if stop.is_set():
                return
            continue
        _deliver(metrics, epochs, echo, on_epoch, failures)


def _deliver(metrics: dict[str, float], epochs: int, echo, on_epoch, failures: list[str]) -> None:
    """An epoch's line and `on_epoch`; an `on_epoch` that raises is recorded in `failures`, not raised."""
    if echo:
        echo(format_epoch(metrics, epochs))
    if on_epoch:
        try:
            on_epoch(metrics)
        except Exception as exc:  # noqa: BLE001 - reported after fit: training must not stop for it
            failures.append(f"epoch {int(metrics['epoch'])}: {type(exc).__name__}: {exc}".splitlines()[0])


def _warn_unrecorded(failures: list[str], echo) -> None:
    if failures:
        line = f"metrics of {len(failures)} epoch(s) were not recorded by on_epoch; the first: {failures[0]}"
        if echo:
            echo(f"warning: {line}")
        else:
            logging.getLogger(__name__).warning(line)


def _ray_datasets(dataset: DatasetRef) -> dict:
    """Ray Datasets over the train (block order shuffled every epoch) and validation splits."""
    return {
        "train": ray_dataset(split_path(dataset.path, "train"), shuffle=True),
        "validation": ray_dataset(split_path(dataset.path, "validation")),
    }


def _trainer(
    plan: WorkerPlan,
    datasets: dict,
    name: str,
    storage: Path,
    workers: int,
    use_gpu: bool,
    loop_config: dict[str, Any],
):
    """A TorchTrainer over the train and validation splits, with checkpoint retention and failure policy."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from vae.train.process_group import TorchConfig
    from vae.train.trainer import TorchTrainer  # Ray's, without a cluster's services on a Ray of vae's own

    training = plan.training
    # With early stopping, keep the best by validation ELBO (Ray always keeps the latest).
    best = (
        {"checkpoint_score_attribute": "validation_elbo", "checkpoint_score_order": "max"}
        if training.early_stopping_patience
        else {}
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(),  # no socket off loopback on one machine (process_group.py)
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": training.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=training.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=training.checkpoints_to_keep, **best),
        ),
        datasets=datasets,
    )


def _fit(trainer, progress, epochs: int, echo, on_epoch, staging: Path) -> tuple[str | None, list]:
    """trainer.fit() with the progress thread; a diverged run becomes one TrainingDivergedError line.
    Returns the newest checkpoint and the kept ones with their validation ELBOs."""
    stop = threading.Event()
    follower = None
    failures: list[str] = []
    if progress is not None:
        follower = threading.Thread(
            target=_follow_progress, args=(progress, epochs, stop, echo, on_epoch, failures), daemon=True
        )
        follower.start()
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface ours as one line
        _raise_if_diverged(exc)
        raise
    finally:
        if follower is not None:
            stop.set()  # the thread drains what is queued, then ends
            follower.join(timeout=60)
            progress.close()
        shutil.rmtree(staging, ignore_errors=True)  # what a killed worker left half-written
        _warn_unrecorded(failures, echo)
    kept = [(checkpoint.path, metrics.get("validation_elbo")) for checkpoint, metrics in result.best_checkpoints or []]
    return (result.checkpoint.path if result.checkpoint else None), kept


def _raise_if_diverged(exc: BaseException) -> None:
    match = _DIVERGED.search(str(exc)) or _DIVERGED.search(repr(exc.__cause__))
    if match:
        raise TrainingDivergedError(f"training diverged: {match.group(0)}") from None


def _fit_in_process(
    plan: WorkerPlan, dataset: DatasetRef, run_dir: Path, use_gpu: bool, echo, on_epoch, hooks, staging: Path
) -> tuple[str | None, list]:
    """The one worker's loop in this process, without Ray Train (vae.train.sessions); returns what `_fit` does."""
    training = plan.training
    failures: list[str] = []
    session = InProcessSession(
        run_dir,
        training.checkpoints_to_keep,
        score="validation_elbo" if training.early_stopping_patience else None,
        on_metrics=lambda metrics: _deliver(metrics, training.epochs, echo, on_epoch, failures),
        device=torch.device("cuda" if use_gpu else "cpu"),
    )
    try:
        run_worker({"plan": plan, "hooks": hooks, "splits": load_splits(dataset.path)}, session)
    except NonFiniteLossError as exc:
        _raise_if_diverged(exc)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _warn_unrecorded(failures, echo)
    return session.latest, [(kept.path, kept.metrics.get("validation_elbo")) for kept in session.kept]


def train(
    config: PipelineConfig,
    dataset: DatasetRef,
    *,
    run_id: str | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    workers: int | None = None,
    use_gpu: bool | None = None,
    resume_from: str | None = None,
    resume: bool = False,
    storage_path: str | Path | None = None,
    echo: Callable[[str], None] | None = print,
    hooks: WorkerHooks | None = None,
    in_process: bool = False,
) -> TrainResult:
    """Fit the VAE with Ray Train's TorchTrainer; returns the final (or, with early stopping, best) checkpoint.

    `on_epoch(metrics)` is called on the driver after every epoch (the flow logs them to MLflow);
    `run_id` names the run's checkpoint folder. `resume` continues from the newest checkpoint of
    this pipeline's earlier runs; `resume_from` from a given checkpoint directory. Raises
    TrainingDivergedError (epoch, step) if the loss becomes non-finite. `in_process` runs a one-worker
    fit whose data fits the device budget in this process, without Ray Train (a search's trials,
    vae.train.sessions); otherwise, and for more workers or streamed data, Ray Train fits.
    """
    import ray.data

    training = config.training
    storage = Path(storage_path or checkpoints_dir())
    if resume and resume_from is None:
        resume_from = latest_checkpoint(config.name, storage)
        if resume_from is None:
            raise VAEError(f"--resume: no checkpoint of pipeline '{config.name}' under {storage}")
        if echo:
            echo(f"resuming from {resume_from}")
    manifest = check_inputs(config, dataset)  # the manifest, read once: the checks and the workers' plan
    if resume_from is not None:
        done = already_trained(training, resume_from)
        if done is not None:
            if echo:
                echo(
                    f"{resume_from}: already trained {done.epochs}/{training.epochs} epochs (raise training.epochs to go on)"
                )
            return done
    num_workers = workers or training.workers
    ensure_ray(num_workers * training.cpus_per_worker)
    ray.data.DataContext.get_current().enable_progress_bars = False
    wants_gpu = training.use_gpu if use_gpu is None else use_gpu
    use_gpu = wants_gpu and has_gpu()
    if wants_gpu and not use_gpu and echo:
        echo("training.use_gpu is set but the Ray cluster has no GPU: training on CPU workers")
    name = f"{config.name}-{run_id or time.strftime('%Y%m%d-%H%M%S')}"
    inside(storage, name)  # names come from a file: every path must stay under storage
    staging = inside(storage, ".staging", name)
    plan = worker_plan(config, manifest, num_workers, staging, resume_from)
    if in_process and runs_in_process(training, manifest, num_workers):
        latest, kept = _fit_in_process(plan, dataset, storage / name, use_gpu, echo, on_epoch, hooks, staging)
    else:
        progress = open_channel(one_machine=is_own_ray()) if echo or on_epoch else None
        # Resident shards come from the object store (no Ray Data pipeline); bigger ones stream from Ray Data.
        splits, datasets = (put_splits(dataset.path), {}) if plan.resident else (None, _ray_datasets(dataset))
        loop_config = {"plan": plan, "progress": progress, "hooks": hooks, "splits": splits}
        trainer = _trainer(plan, datasets, name, storage, num_workers, use_gpu, loop_config)
        latest, kept = _fit(trainer, progress, training.epochs, echo, on_epoch, staging)
    if latest is None:
        raise VAEError(f"training run '{name}' finished without a checkpoint")
    state = state_header(latest)  # its epoch and history; the weights are not read
    chosen = latest
    if training.early_stopping_patience and kept:
        chosen = best_checkpoint(kept + earlier_checkpoints(resume_from))
    return TrainResult(checkpoint=chosen, epochs=int(state["epoch"]), history=list(state["history"]))
