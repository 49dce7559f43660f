"""Stage 2's loop on every worker (`run_worker`; `train_loop_per_worker` on a Ray Train worker):
restore, then per epoch train over the worker's shard with the ELBO (or IWAE) objective, validate,
all-reduce, checkpoint and report.

A plain PyTorch loop whose surroundings are one `Session` (vae.train.sessions: Ray Train's, with its
dataset shards, DDP and reports, or the in-process one of a search's one-worker trials); the step
itself is vae.train.stepper's (eager, or a CUDA graph on one GPU worker). Metrics
are all-reduced once per epoch; progress lines and checkpoints come from rank 0. `WorkerHooks`
(vae.train.hooks) let tests and tools watch the loop.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from vae.config import TrainingConfig
from vae.data.inputs import prepare_inputs
from vae.models.model import CHECKPOINT_FILE, VAE, build_model
from vae.models.objectives import elbo, iwae_bound
from vae.train.checkpoints import Progress, checkpoint_state, restore_checkpoint
from vae.train.hooks import WorkerHooks
from vae.train.plan import WorkerPlan
from vae.train.sessions import RayTrainSession, Session
from vae.train.shards import Shards
from vae.train.stepper import Objective, Stepper, make_optimizer
from vae.user_code import add_search_paths


class NonFiniteLossError(RuntimeError):
    """Raised inside a worker; the driver turns it into TrainingDivergedError."""


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


@dataclass
class _Worker:
    """One worker's model, optimiser and where training stands (the loop's mutable state)."""

    model: VAE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: torch.nn.Module  # the objective module, DDP-wrapped on several workers
    stepper: Stepper
    progress: Progress


def _set_up(plan: WorkerPlan, session: Session, hooks: WorkerHooks | None) -> _Worker:
    """Build the model and optimiser on the device and restore them from a checkpoint if there is one."""
    device, world = session.device, session.world
    training = plan.training
    torch.manual_seed(training.seed)  # identical initial weights everywhere (DDP broadcasts rank 0's anyway)
    add_search_paths(plan.code_dirs)  # users' network modules, beside their pipelines.yaml
    model = build_model(plan.model, plan.data_dim, plan.image_shape).to(device)
    # A CUDA graph for one GPU worker; DDP's collectives (several workers) and test hooks stay eager.
    graphed = training.cuda_graph and device.type == "cuda" and world == 1 and hooks is None
    optimizer = make_optimizer(model.parameters(), training.learning_rate, device, graphed)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=training.lr_decay)
    progress = restore_checkpoint(plan, model, optimizer, scheduler, session.restart_state())
    objective = session.prepare(Objective(model, training.objective, training.iwae_k))
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


def _checkpoint_and_report(plan: WorkerPlan, worker: _Worker, metrics: dict, session: Session, last: bool) -> None:
    """Every epoch rank 0 sends its metrics to the driver; on checkpoint epochs (every `checkpoint_every`,
    and the last) rank 0 writes a checkpoint and every rank reports to Ray Train.

    Only checkpoint epochs go to `ray.train.report`: Train V2 keeps no metrics without a checkpoint,
    and each report waits for the controller to take it off a one-slot queue, which it polls every
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s): measured on an H200, reporting every 0.2 s epoch made
    them ~2 s each. The per-epoch lines and `on_epoch` use the driver's progress channel instead.
    """
    epoch = int(metrics["epoch"])
    session.epoch_done(metrics)
    if not (epoch % plan.training.checkpoint_every == 0 or last):
        return  # the same decision on every rank: all of them report together, or none does
    os.makedirs(plan.staging_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=plan.staging_dir) as directory:
        # With early stopping the best of these checkpoints (by validation ELBO) is the result.
        if session.rank == 0:
            state = checkpoint_state(plan, worker.model, worker.optimizer, worker.scheduler, epoch, worker.progress)
            torch.save(state, os.path.join(directory, CHECKPOINT_FILE))
        session.report(metrics, directory if session.rank == 0 else None)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: `run_worker` in a Ray Train session.

    vae.train.driver hands it to TorchTrainer by reference: it stays a module-level function that
    workers import from here.
    """
    run_worker(config, RayTrainSession(config.get("progress")))


def run_worker(config: dict[str, Any], session: Session) -> None:
    """One worker's training (Ray Train's or in-process): restore, then per epoch train, validate,
    checkpoint and report. `config`: the plan, the hooks and the resident splits."""
    plan: WorkerPlan = config["plan"]
    hooks: WorkerHooks | None = config.get("hooks")
    training = plan.training
    rank, world, device = session.rank, session.world, session.device
    worker = _set_up(plan, session, hooks)
    shards = Shards(plan, session, config.get("splits"))
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
        _checkpoint_and_report(plan, worker, metrics, session, epoch == training.epochs or stop)
        if stop:
            break
