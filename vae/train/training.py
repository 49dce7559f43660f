"""Stage 2, training: Ray Train's TorchTrainer over Ray Data shards, the ELBO (or IWAE) objective,
a checkpoint every `checkpoint_every` epochs, early stopping and a time budget.

A plain PyTorch loop with the Ray calls at its edges (get_dataset_shard, prepare_model for DDP,
report); the step itself is vae.train.stepper's (eager, or a CUDA graph on one GPU worker). Metrics
are all-reduced once per epoch; progress lines and checkpoints come from rank 0. The driver hands
each epoch's metrics to an `on_epoch` callback. This is the only module that imports Ray Train.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vae.cluster import ensure_ray
from vae.config import ModelConfig, PipelineConfig, TrainingConfig
from vae.paths import checkpoints_dir, inside
from vae.data.datasets import DatasetRef, check_eight_bit_pixels, read_manifest, split_path
from vae.data.inputs import prepare_inputs
from vae.errors import TrainingDivergedError, VAEError
from vae.models.model import CHECKPOINT_FILE, VAE, build_model, check_networks, read_checkpoint_state
from vae.user_code import add_search_paths, code_dirs
from vae.models.objectives import elbo, iwae_bound
from vae.train.stepper import Objective, Stepper, make_optimizer, restore_optimizer

MATERIALIZE_BELOW_BYTES = 256 * 2**20
CHUNK_BATCHES = 32  # minibatches per Ray Data batch when streaming (see _streamed_minibatches)
# Validation rows per forward pass on a GPU with the shard resident: on an H200 the 100 eager passes of
# batch 100 over Fashion-MNIST's 10k validation rows were most of the 0.1 s an epoch spent outside its steps.
GPU_VALIDATION_ROWS = 2048
_DIVERGED = re.compile(r"non-finite loss \([^)]*\) at epoch \d+, step \d+[^\n]*")


@dataclass(frozen=True)
class TrainResult:
    """A reference to the trained model: the checkpoint directory and its history."""

    checkpoint: str
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)


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


class WorkerHooks:
    """Callbacks into the worker loop, for tests and tools; the default does nothing."""

    def epoch_started(self, epoch: int, rank: int) -> None: ...

    def batch(self, epoch: int, rank: int, images: torch.Tensor) -> None: ...

    def epoch_finished(self, epoch: int, rank: int) -> None: ...


class RowAudit(WorkerHooks):
    """Records epochs started (rank 0) and, for the run's first epoch, a hash of every row each rank saw."""

    def __init__(self, directory: str):
        self.directory, self.first_epoch, self.seen = directory, None, []

    def epoch_started(self, epoch: int, rank: int) -> None:
        self.first_epoch = self.first_epoch or epoch
        if rank == 0:
            with open(os.path.join(self.directory, "epochs_started.txt"), "a") as handle:
                handle.write(f"{epoch}\n")

    def batch(self, epoch: int, rank: int, images: torch.Tensor) -> None:
        if epoch == self.first_epoch:
            self.seen.extend(hashlib.sha1(row.cpu().numpy().tobytes()).hexdigest() for row in images)

    def epoch_finished(self, epoch: int, rank: int) -> None:
        if epoch == self.first_epoch:
            with open(os.path.join(self.directory, f"rows-rank{rank}.json"), "w") as handle:
                json.dump(self.seen, handle)


class NonFiniteLossError(RuntimeError):
    """Raised inside a worker; the driver turns it into TrainingDivergedError."""


@dataclass
class Progress:
    """What a checkpoint carries besides weights: where training stands."""

    first_epoch: int = 1
    history: list[dict[str, float]] = field(default_factory=list)
    best: float = -math.inf
    stale: int = 0
    trained_seconds: float = 0.0


def all_reduce_sums(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over workers, in place, on the device it lives on (no-op on one worker).

    The tensor must be on the device the process group serves: NCCL groups (GPU workers) have
    no CPU backend, so a CPU tensor there fails ("No backend type associated with device type cpu").
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values


def kl_weight(training: TrainingConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """KL weight: beta, ramped linearly from 0 over the warm-up epochs."""
    if training.kl_warmup_epochs == 0:
        return training.beta
    progress = (epoch - 1 + step / max(steps_per_epoch, 1)) / training.kl_warmup_epochs
    return training.beta * min(1.0, progress)


def _restore(plan: WorkerPlan, model: VAE, optimizer, scheduler) -> Progress:
    """Ray's own checkpoint (a restarted run) wins over an explicit starting checkpoint."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and plan.resume_from:
        checkpoint = ray.train.Checkpoint(plan.resume_from)
    if checkpoint is None:
        return Progress()
    with checkpoint.as_directory() as directory:
        state = read_checkpoint_state(directory)
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


def _load_shard(shard, device: torch.device) -> torch.Tensor:
    """A worker's whole shard as stored pixels (N, D) on its device, read once from Ray Data."""
    parts = [batch["image"] for batch in shard.iter_torch_batches(batch_size=8192, device=device)]
    return torch.cat(parts) if parts else torch.empty((0, 0), device=device)


def resident_minibatches(data: torch.Tensor, batch_size: int, generator: torch.Generator, drop_last: bool):
    """Shuffled minibatches (B, D) of a shard held on the device: the permutation is drawn there too."""
    order = torch.randperm(data.shape[0], generator=generator, device=data.device)  # (N,)
    end = data.shape[0] - data.shape[0] % batch_size if drop_last else data.shape[0]
    for start in range(0, end, batch_size):
        yield data[order[start : start + batch_size]]  # (B, D)


def streamed_minibatches(shard, batch_size: int, seed: int, device: torch.device, drop_last: bool = False):
    """A worker's shard streamed from Ray Data as shuffled minibatches (B, D).

    Ray Data converts CHUNK_BATCHES minibatches at a time (one Arrow → tensor conversion instead
    of one per minibatch); each chunk is permuted and cut here. With the block order randomised
    every epoch (see `_dataset`), that is a local shuffle at least as strong as a shuffle buffer.
    Every chunk but the last is full, so ranks with equal rows take equal numbers of steps. With
    `drop_last` (a CUDA-graph step replays one batch shape) the shard's final short batch is skipped.
    """
    generator = torch.Generator().manual_seed(seed)
    for chunk in shard.iter_torch_batches(batch_size=batch_size * CHUNK_BATCHES):
        images = chunk["image"]  # (C, D), C = batch_size * CHUNK_BATCHES except at the end
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0], batch_size):
            if drop_last and start + batch_size > images.shape[0]:
                break  # only the last chunk can end short
            yield images[order[start : start + batch_size]].to(device, non_blocking=True)  # (B, D)


def _train_one_epoch(
    plan: WorkerPlan, stepper: Stepper, batches, epoch: int, rank: int, steps_per_epoch: int, hooks: WorkerHooks | None
) -> None:
    """One pass over the shard; raises NonFiniteLossError after it if a step's loss was not finite."""
    stepper.start_epoch()
    for step, images in enumerate(batches, start=1):
        if hooks is not None:
            hooks.batch(epoch, rank, images)
        stepper.step(images, kl_weight(plan.training, epoch, step, steps_per_epoch))
    bad_step, bad_loss = stepper.first_bad_step()  # the epoch's host sync
    if bad_step:
        raise NonFiniteLossError(
            f"non-finite loss ({bad_loss}) at epoch {epoch}, step {bad_step}; "
            "the last good checkpoint is kept and nothing was registered"
        )


@torch.no_grad()
def _validate(plan: WorkerPlan, model: VAE, batches, device: torch.device) -> torch.Tensor:
    """This worker's validation sums on the device, (3,) float64: the ELBO, the row count, and (with
    `validation_k` > 1) the IWAE bound L_k = log 1/k sum_i p(x, z_i)/q(z_i|x) (Burda et al., Eq. 8).

    Dynamic binarisation and the L_k noise use the same fixed draws every epoch, so epochs compare
    like with like.
    """
    k = plan.training.validation_k
    generator = torch.Generator(device=device).manual_seed(plan.training.seed)
    noise = torch.Generator(device=device).manual_seed(plan.training.seed + 1)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for images in batches:
        x = prepare_inputs(images, plan.max_value, plan.binarize, generator=generator)  # (B, D)
        sums[0] += elbo(model, x).elbo.double().sum()
        sums[1] += x.shape[0]
        if k > 1:
            sums[2] += iwae_bound(model, x, k, generator=noise).double().sum()
    return sums


def _checkpoint_state(plan: WorkerPlan, model: VAE, optimizer, scheduler, epoch: int, progress: Progress) -> dict:
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


@dataclass
class _Worker:
    """One worker's model, optimiser and where training stands (the loop's mutable state)."""

    model: VAE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: torch.nn.Module  # the objective module, DDP-wrapped on several workers
    stepper: Stepper
    progress: Progress


def _set_up(plan: WorkerPlan, device: torch.device, world: int, hooks: WorkerHooks | None) -> _Worker:
    """Build the model and optimiser on the device and restore them from a checkpoint if there is one."""
    import ray.train.torch

    training = plan.training
    torch.manual_seed(training.seed)  # identical initial weights everywhere (DDP broadcasts rank 0's anyway)
    add_search_paths(plan.code_dirs)  # users' network modules, beside their pipelines.yaml
    model = build_model(plan.model, plan.data_dim, plan.image_shape).to(device)
    # A CUDA graph for one GPU worker; DDP's collectives (several workers) and test hooks stay eager.
    graphed = training.cuda_graph and device.type == "cuda" and world == 1 and hooks is None
    optimizer = make_optimizer(model.parameters(), training.learning_rate, device, graphed)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=training.lr_decay)
    progress = _restore(plan, model, optimizer, scheduler)
    objective = Objective(model, training.objective, training.iwae_k)
    objective = ray.train.torch.prepare_model(objective) if world > 1 else objective.to(device)
    stepper = Stepper(
        objective,
        optimizer,
        max_value=plan.max_value,
        binarize=plan.binarize,
        device=device,
        graph=graphed,
        precision=training.precision,
    )
    return _Worker(model, optimizer, scheduler, objective, stepper, progress)


class _Shards:
    """A worker's train and validation rows: held on the device (read once) or streamed from Ray Data."""

    def __init__(self, plan: WorkerPlan, device: torch.device, world: int):
        import ray.train

        self.plan, self.device = plan, device
        self.train, self.validation = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("validation")
        batch = plan.training.batch_size
        if plan.resident:
            self.train, self.validation = _load_shard(self.train, device), _load_shard(self.validation, device)
            self.steps_per_epoch = max(1, self.train.shape[0] // batch)
        else:
            self.steps_per_epoch = max(1, plan.train_rows // (batch * world))

    def train_batches(self, seed: int, drop_last: bool):
        batch = self.plan.training.batch_size
        if self.plan.resident:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            return resident_minibatches(self.train, batch, generator, drop_last)
        return streamed_minibatches(self.train, batch, seed, self.device, drop_last)

    def validation_batches(self):
        """The validation rows in batches of the training batch size, or of GPU_VALIDATION_ROWS on a GPU."""
        batch = self.plan.training.batch_size
        if self.plan.resident:
            if self.device.type == "cuda":
                batch = max(batch, GPU_VALIDATION_ROWS)
            return (self.validation[i : i + batch] for i in range(0, self.validation.shape[0], batch))
        return (b["image"] for b in self.validation.iter_torch_batches(batch_size=batch, device=self.device))


def _epoch_metrics(
    worker: _Worker, validation: torch.Tensor, epoch: int, world: int, seconds: list[float], validation_k: int
) -> dict:
    """All-reduce the epoch's sums (one collective, on the worker's device) into the metrics every rank agrees on."""
    device = validation.device
    times = torch.tensor(seconds, dtype=torch.float64, device=device)  # (2,) train seconds, epoch seconds
    totals = all_reduce_sums(torch.cat([worker.stepper.sums, validation, times])).tolist()
    objective_sum, elbo_sum, recon_sum, kl_sum, count, val_sum, val_count, val_iwae_sum, train_time, epoch_time = totals
    iwae = {}
    if validation_k > 1:
        iwae["validation_iwae"] = val_iwae_sum / val_count if val_count else float("nan")
    return {
        "epoch": epoch,
        "train_objective": objective_sum / max(count, 1),
        "train_elbo": elbo_sum / max(count, 1),
        "train_reconstruction": recon_sum / max(count, 1),
        "train_kl": kl_sum / max(count, 1),
        "validation_elbo": val_sum / val_count if val_count else float("nan"),
        "samples_per_second": count / max(train_time / world, 1e-9),
        "epoch_seconds": epoch_time / world,
        "learning_rate": float(worker.scheduler.get_last_lr()[0]),
        "cuda_graph": 1.0 if worker.stepper.graph is not None else 0.0,  # 0 on CPU, or eager after a failed capture
        **iwae,
    }


def _should_stop(training: TrainingConfig, progress: Progress, metrics: dict) -> bool:
    """Record the epoch; early stopping and the time budget decide alike on every rank (all-reduced inputs)."""
    progress.history.append(metrics)
    improved = metrics["validation_elbo"] > progress.best
    progress.best, progress.stale = (metrics["validation_elbo"], 0) if improved else (progress.best, progress.stale + 1)
    progress.trained_seconds += metrics["epoch_seconds"]
    metrics["training_minutes"] = progress.trained_seconds / 60
    stop = training.early_stopping_patience is not None and progress.stale >= training.early_stopping_patience
    return stop or (training.max_minutes is not None and progress.trained_seconds >= 60 * training.max_minutes)


def _checkpoint_and_report(plan: WorkerPlan, worker: _Worker, metrics: dict, rank: int, last: bool, queue) -> None:
    """Every epoch rank 0 sends its metrics to the driver; on checkpoint epochs (every `checkpoint_every`,
    and the last) rank 0 writes a checkpoint and every rank reports to Ray Train.

    Only checkpoint epochs go to `ray.train.report`: Train V2 keeps no metrics without a checkpoint,
    and each report waits for the controller to take it off a one-slot queue, which it polls every
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s): measured on an H200, reporting every 0.2 s epoch made
    them ~2 s each. The per-epoch lines and `on_epoch` use the driver's queue instead.
    """
    import ray.train

    epoch = int(metrics["epoch"])
    if rank == 0 and queue is not None:
        queue.put(metrics)  # the driver prints it and hands it to on_epoch
    if not (epoch % plan.training.checkpoint_every == 0 or last):
        return  # the same decision on every rank: all of them report together, or none does
    os.makedirs(plan.staging_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=plan.staging_dir) as directory:
        checkpoint = None
        # With early stopping the best of these checkpoints (by validation ELBO) is the result.
        if rank == 0:
            state = _checkpoint_state(plan, worker.model, worker.optimizer, worker.scheduler, epoch, worker.progress)
            torch.save(state, os.path.join(directory, CHECKPOINT_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: restore, then per epoch train, validate, checkpoint and report."""
    import ray.train
    import ray.train.torch

    plan: WorkerPlan = config["plan"]
    hooks: WorkerHooks | None = config.get("hooks")
    training = plan.training
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    worker = _set_up(plan, device, world, hooks)
    shards = _Shards(plan, device, world)
    mark = time.perf_counter()  # an epoch's wall time runs from here to the next one's metrics
    for epoch in range(worker.progress.first_epoch, training.epochs + 1):
        # Noise depends only on (seed, rank, epoch): a resumed epoch draws what it would have drawn.
        torch.manual_seed(training.seed + 1009 * rank + 7919 * epoch)
        if hooks is not None:
            hooks.epoch_started(epoch, rank)
        started = time.perf_counter()
        worker.objective.train()
        batches = shards.train_batches(training.seed + 1009 * rank + epoch, worker.stepper.drop_last)
        _train_one_epoch(plan, worker.stepper, batches, epoch, rank, shards.steps_per_epoch, hooks)
        worker.scheduler.step()
        train_seconds = time.perf_counter() - started
        if hooks is not None:
            hooks.epoch_finished(epoch, rank)
        worker.objective.eval()
        validation = _validate(plan, worker.model, shards.validation_batches(), device)
        # epoch_seconds: this epoch's wall time, the previous epoch's report and checkpoint included, so
        # max_minutes budgets wall time.
        now = time.perf_counter()
        metrics = _epoch_metrics(worker, validation, epoch, world, [train_seconds, now - mark], training.validation_k)
        mark = now
        stop = _should_stop(training, worker.progress, metrics)
        _checkpoint_and_report(plan, worker, metrics, rank, epoch == training.epochs or stop, config.get("progress"))
        if stop:
            break


def format_epoch(metrics: dict[str, float], epochs: int) -> str:
    """The one progress line per epoch."""
    return (
        f"epoch {int(metrics['epoch']):>3}/{epochs}  train ELBO {metrics['train_elbo']:9.3f}  "
        f"val ELBO {metrics['validation_elbo']:9.3f}  KL {metrics['train_kl']:7.3f}  "
        + (f"val IWAE {metrics['validation_iwae']:9.3f}  " if "validation_iwae" in metrics else "")
        + f"{metrics['samples_per_second']:8.0f} samples/s"
    )


def _follow_progress(
    queue,
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
    from ray.util.queue import Empty

    while True:
        try:
            metrics = queue.get(timeout=0.5)
        except Empty:
            if stop.is_set():
                return
            continue
        except Exception:  # the queue actor is gone: training has ended
            return
        if echo:
            echo(format_epoch(metrics, epochs))
        if on_epoch:
            try:
                on_epoch(metrics)
            except Exception as exc:  # noqa: BLE001 - reported after fit: training must not stop for it
                failures.append(f"epoch {int(metrics['epoch'])}: {type(exc).__name__}: {exc}".splitlines()[0])


def _dataset(path: str, shuffle: bool = False):
    """A Ray Dataset over one Parquet split; small splits are read once, in memory, not per epoch."""
    import ray.data

    dataset = ray.data.read_parquet(path)
    if os.path.getsize(path) < MATERIALIZE_BELOW_BYTES:
        dataset = dataset.materialize()  # read once into the object store, not every epoch
    return dataset.randomize_block_order() if shuffle else dataset  # shuffle: new row-group order every epoch


def shard_bytes(manifest: dict[str, Any], workers: int) -> int:
    """Bytes of one worker's train + validation rows as stored (the resident-shard budget check)."""
    itemsize = int(np.dtype(manifest.get("dtype", "float32")).itemsize)
    rows = int(manifest["rows"]["train"]) + int(manifest["rows"]["validation"])
    return math.ceil(rows / workers) * int(math.prod(manifest["shape"])) * itemsize


def check_pixel_range(config: PipelineConfig, dataset: DatasetRef, manifest: dict[str, Any] | None = None) -> None:
    """An 8-bit likelihood needs a dataset of 8-bit pixels: one line before any worker starts.

    The config alone cannot know (digits hold 0..16, `dataset.max_value` may be unset); the manifest can.
    """
    check_eight_bit_pixels(
        f"dataset '{dataset.name}'",
        manifest or read_manifest(dataset.path),
        config.model,
        "use an 8-bit source or a bernoulli/gaussian likelihood",
    )


def check_validation_rows(dataset: DatasetRef, needed_by: str | None, manifest: dict[str, Any] | None = None) -> None:
    """What ranks epochs or trials by validation ELBO (`needed_by`) needs validation rows: without them
    the ELBO is NaN, no epoch improves, and early stopping fires after `patience` epochs whatever."""
    if needed_by and not int((manifest or read_manifest(dataset.path))["rows"].get("validation") or 0):
        raise VAEError(
            f"dataset '{dataset.name}' has no validation rows, and {needed_by} ranks by validation ELBO: "
            "set dataset.validation_fraction above 0"
        )


def check_inputs(config: PipelineConfig, dataset: DatasetRef) -> dict[str, Any]:
    """What the data and the model can be refused for before an MLflow run or Ray starts, each one
    line: 8-bit pixels for an 8-bit likelihood, validation rows for early stopping, users' networks'
    output shapes on a dummy batch. Returns the dataset's manifest."""
    manifest = read_manifest(dataset.path)
    check_pixel_range(config, dataset, manifest)
    needed_by = config.training.early_stopping_patience and "training.early_stopping_patience"
    check_validation_rows(dataset, needed_by, manifest)
    check_networks(config.model, int(math.prod(manifest["shape"])), tuple(manifest["shape"]))
    return manifest


def _plan(
    config: PipelineConfig, manifest: dict[str, Any], workers: int, staging: Path, resume_from: str | None
) -> WorkerPlan:
    return WorkerPlan(
        model=config.model,
        training=config.training,
        data_dim=int(math.prod(manifest["shape"])),
        image_shape=tuple(manifest["shape"]),
        max_value=float(manifest["value_range"][1]),
        binarize=config.dataset.binarize,
        train_rows=int(manifest["rows"]["train"]),
        resident=shard_bytes(manifest, workers) <= config.training.device_data_mb * 2**20,
        staging_dir=str(staging),
        resume_from=str(resume_from) if resume_from else None,
        pipeline=config.name,
        code_dirs=tuple(code_dirs(config.model.network_specs)),
    )


def _trainer(
    plan: WorkerPlan,
    dataset: DatasetRef,
    name: str,
    storage: Path,
    workers: int,
    use_gpu: bool,
    loop_config: dict[str, Any],
):
    """A TorchTrainer over the train and validation splits, with checkpoint retention and failure policy."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    training = plan.training
    # With early stopping, keep the best by validation ELBO (Ray always keeps the latest).
    best = (
        {"checkpoint_score_attribute": "validation_elbo", "checkpoint_score_order": "max"}
        if training.early_stopping_patience
        else {}
    )
    return TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=loop_config,
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
        datasets={
            "train": _dataset(split_path(dataset.path, "train"), shuffle=True),
            "validation": _dataset(split_path(dataset.path, "validation")),
        },
    )


def _fit(trainer, progress, epochs: int, echo, on_epoch, staging: Path):
    """trainer.fit() with the progress thread; a diverged run becomes one TrainingDivergedError line."""
    import ray

    stop = threading.Event()
    follower = None
    failures: list[str] = []
    if progress is not None:
        follower = threading.Thread(
            target=_follow_progress, args=(progress, epochs, stop, echo, on_epoch, failures), daemon=True
        )
        follower.start()
    try:
        return trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface ours as one line
        match = _DIVERGED.search(str(exc)) or _DIVERGED.search(repr(exc.__cause__))
        if match:
            raise TrainingDivergedError(f"training diverged: {match.group(0)}") from None
        raise
    finally:
        if follower is not None:
            stop.set()  # the thread drains what is queued, then ends
            follower.join(timeout=60)
            ray.kill(progress.actor)
        shutil.rmtree(staging, ignore_errors=True)  # what a killed worker left half-written
        if failures:
            line = f"metrics of {len(failures)} epoch(s) were not recorded by on_epoch; the first: {failures[0]}"
            if echo:
                echo(f"warning: {line}")
            else:
                logging.getLogger(__name__).warning(line)


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
) -> TrainResult:
    """Fit the VAE with Ray Train's TorchTrainer; returns the final (or, with early stopping, best) checkpoint.

    `on_epoch(metrics)` is called on the driver after every epoch (the flow logs them to MLflow);
    `run_id` names the run's checkpoint folder. `resume` continues from the newest checkpoint of
    this pipeline's earlier runs; `resume_from` from a given checkpoint directory. Raises
    TrainingDivergedError (epoch, step) if the loss becomes non-finite.
    """
    import ray
    import ray.data
    from ray.util.queue import Queue

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
        done = _already_trained(training, resume_from)
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
    use_gpu = wants_gpu and ray.cluster_resources().get("GPU", 0) > 0
    if wants_gpu and not use_gpu and echo:
        echo("training.use_gpu is set but the Ray cluster has no GPU: training on CPU workers")
    name = f"{config.name}-{run_id or time.strftime('%Y%m%d-%H%M%S')}"
    inside(storage, name)  # names come from a file: every path must stay under storage
    staging = inside(storage, ".staging", name)
    plan = _plan(config, manifest, num_workers, staging, resume_from)
    progress = Queue(actor_options={"num_cpus": 0}) if echo or on_epoch else None
    trainer = _trainer(
        plan, dataset, name, storage, num_workers, use_gpu, {"plan": plan, "progress": progress, "hooks": hooks}
    )
    result = _fit(trainer, progress, training.epochs, echo, on_epoch, staging)
    if result.checkpoint is None:
        raise VAEError(f"training run '{name}' finished without a checkpoint")
    state = _state_header(result.checkpoint.path)  # its epoch and history; the weights are not read
    chosen = result.checkpoint.path
    if training.early_stopping_patience and result.best_checkpoints:
        found = [(checkpoint.path, metrics.get("validation_elbo")) for checkpoint, metrics in result.best_checkpoints]
        chosen = _best(found + _earlier_checkpoints(resume_from))
    return TrainResult(checkpoint=chosen, epochs=int(state["epoch"]), history=list(state["history"]))


def _state_header(directory: str | Path) -> dict[str, Any]:
    """A checkpoint's state with its tensors memory-mapped, not read: for its epoch and history."""
    return read_checkpoint_state(directory, mmap=True)


def _best(candidates: list[tuple[str, float | None]]) -> str:
    """The checkpoint with the highest validation ELBO; an unknown or NaN one ranks last."""

    def score(pair: tuple[str, float | None]) -> float:
        value = pair[1]
        return -math.inf if value is None or math.isnan(value) else value

    return max(candidates, key=score)[0]


def _earlier_checkpoints(resume_from: str | None) -> list[tuple[str, float | None]]:
    """The run a resumed training continued: its checkpoints (resume_from and its siblings) with
    their validation ELBOs, so early stopping can still pick an epoch from before the resume."""
    if not resume_from:
        return []
    last = int(_state_header(resume_from)["epoch"])
    found = []
    for directory in sorted(Path(resume_from).parent.glob("checkpoint_*")):
        if is_checkpoint(directory):
            state = _state_header(directory)
            if int(state["epoch"]) <= last:  # not a later branch of an explicitly older resume_from
                found.append((str(directory), (state.get("history") or [{}])[-1].get("validation_elbo")))
    return found


def _already_trained(training: TrainingConfig, resume_from: str) -> TrainResult | None:
    """A resumed checkpoint that has all its epochs: the result, instead of a run that trains nothing."""
    state = _state_header(resume_from)
    if int(state["epoch"]) < training.epochs:
        return None
    chosen = resume_from
    if training.early_stopping_patience:
        chosen = _best(_earlier_checkpoints(resume_from))
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
            owner = _state_header(directory).get("pipeline")
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is not one to resume from
            continue
        run = directory.parent.name[len(pipeline) + 1 :]
        if owner == pipeline or (owner is None and _RUN_ID.fullmatch(run)):
            return str(directory)
    return None
