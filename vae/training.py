"""The Ray Train loop: TorchTrainer over Ray Data shards, ELBO objective, checkpoints every epoch.

A plain PyTorch loop with the Ray calls at its edges (prepare_model, get_dataset_shard,
report); metrics, progress lines and checkpoints come from rank 0 only. This is the only
module that imports Ray Train.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vae.cluster import ensure_ray
from vae.config import ModelConfig, PipelineConfig, checkpoints_dir
from vae.data import DatasetRef, prepare_inputs, read_manifest, split_path
from vae.errors import TrainingDivergedError, VAEError
from vae.model import CHECKPOINT_FILE, VAE, build_model, load_checkpoint
from vae.objectives import elbo, iwae_bound

MATERIALIZE_BELOW_BYTES = 256 * 2**20
CHUNK_BATCHES = 32  # minibatches per Ray Data batch in training (see _shuffled_minibatches)
_DIVERGED = re.compile(r"non-finite loss \([^)]*\) at epoch \d+, step \d+[^\n]*")


@dataclass(frozen=True)
class TrainResult:
    """A reference to the trained model: the checkpoint directory and its history."""

    checkpoint: str
    epochs: int
    history: list[dict[str, float]] = field(default_factory=list)


class NonFiniteLossError(RuntimeError):
    """Raised inside a worker; the driver turns it into TrainingDivergedError."""


class _Objective(nn.Module):
    """Wraps the VAE so DDP sees the whole objective in forward(): x (B, D) → per-example terms.

    Returns (objective to maximise, ELBO, reconstruction, KL), each (B,). The objective is the
    beta-weighted ELBO, recon - beta KL (Higgins et al. 2017; beta ramps up during KL warm-up,
    Bowman et al. 2016), or the IWAE bound L_k (Burda et al. 2016, Eq. 8).
    """

    def __init__(self, model: VAE, objective: str, iwae_k: int):
        super().__init__()
        self.vae = model
        self.objective = objective
        self.iwae_k = iwae_k

    def forward(self, x: torch.Tensor, beta: float = 1.0):
        terms = elbo(self.vae, x)
        if self.objective == "iwae":
            target = iwae_bound(self.vae, x, self.iwae_k)
        else:
            target = terms.reconstruction - beta * terms.kl
        return target, terms.elbo, terms.reconstruction, terms.kl


def _save_checkpoint(directory: str, state: dict[str, Any]) -> None:
    torch.save(state, os.path.join(directory, CHECKPOINT_FILE))


def _all_reduce_sums(*values: float) -> list[float]:
    """Sum scalars over workers (no-op on one worker)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def _beta(loop: dict[str, Any], epoch: int, step: int, steps_per_epoch: int) -> float:
    """KL weight: beta, ramped linearly from 0 over the warm-up epochs."""
    warmup = loop["kl_warmup_epochs"]
    if warmup == 0:
        return loop["beta"]
    progress = (epoch - 1 + step / max(steps_per_epoch, 1)) / warmup
    return loop["beta"] * min(1.0, progress)


def _load_state(directory: str) -> dict[str, Any]:
    return torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


def _shuffled_minibatches(shard, batch_size: int, seed: int, device: torch.device):
    """A worker's shard as shuffled minibatches (B, D).

    Ray Data converts CHUNK_BATCHES minibatches at a time (one Arrow → tensor conversion instead
    of one per minibatch); each chunk is permuted and cut here. With the block order randomised
    every epoch (see `_dataset`), that is a local shuffle at least as strong as a shuffle buffer.
    Every chunk but the last is full, so ranks with equal rows take equal numbers of steps.
    """
    generator = torch.Generator().manual_seed(seed)
    for chunk in shard.iter_torch_batches(batch_size=batch_size * CHUNK_BATCHES):
        images = chunk["image"]  # (C, D), C = batch_size * CHUNK_BATCHES except at the end
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0], batch_size):
            yield images[order[start : start + batch_size]].to(device, non_blocking=True)  # (B, D)


def _train_loop_per_worker(loop: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: a plain PyTorch loop over this worker's Ray Data shard."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    model_config = ModelConfig(**loop["model_config"])
    torch.manual_seed(loop["seed"])  # identical initial weights everywhere (DDP broadcasts rank 0's anyway)
    vae_model = build_model(model_config, loop["data_dim"], loop["image_shape"])
    optimizer = torch.optim.Adam(vae_model.parameters(), lr=loop["learning_rate"])
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=loop["lr_decay"])
    history: list[dict[str, float]] = []
    first_epoch, best, stale, trained_seconds = 1, -math.inf, 0, 0.0

    # Ray's own checkpoint (a restarted run) wins over an explicit starting checkpoint.
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop.get("resume_from"):
        checkpoint = ray.train.Checkpoint(loop["resume_from"])
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = _load_state(directory)
        vae_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        first_epoch = int(state["epoch"]) + 1
        best, stale = float(state.get("best_validation_elbo", -math.inf)), int(state.get("stale_epochs", 0))
        trained_seconds = float(state.get("trained_seconds", 0.0))

    device = ray.train.torch.get_device()
    objective = ray.train.torch.prepare_model(_Objective(vae_model, loop["objective"], loop["iwae_k"]))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=loop["precision"] == "bf16")
    train_shard = ray.train.get_dataset_shard("train")
    validation_shard = ray.train.get_dataset_shard("validation")
    prepare = dict(max_value=loop["max_value"], binarize=loop["binarize"])
    steps_per_epoch = max(1, loop["train_rows"] // (loop["batch_size"] * world))

    for epoch in range(first_epoch, loop["epochs"] + 1):
        # Noise depends only on (seed, rank, epoch): a resumed epoch draws what it would have drawn.
        torch.manual_seed(loop["seed"] + 1009 * rank + 7919 * epoch)
        if loop.get("audit_dir") and rank == 0:
            with open(os.path.join(loop["audit_dir"], "epochs_started.txt"), "a") as handle:
                handle.write(f"{epoch}\n")
        started = time.perf_counter()
        objective.train()
        sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # objective, ELBO, reconstruction, KL, examples
        seen: list[str] = []
        batches = _shuffled_minibatches(train_shard, loop["batch_size"], loop["seed"] + 1009 * rank + epoch, device)
        for step, images in enumerate(batches, start=1):
            if loop.get("audit_dir") and epoch == first_epoch:
                seen.extend(hashlib.sha1(row.cpu().numpy().tobytes()).hexdigest() for row in images)
            x = prepare_inputs(images, **prepare)  # (B, D)
            with autocast:
                target, elbo_terms, reconstruction, kl = objective(x, _beta(loop, epoch, step, steps_per_epoch))
            loss = -target.float().mean()
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step}; "
                    "the last good checkpoint is kept and nothing was registered"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums = [sums[0] + target.sum().item(), sums[1] + elbo_terms.sum().item(),
                    sums[2] + reconstruction.sum().item(), sums[3] + kl.sum().item(), sums[4] + x.shape[0]]
        scheduler.step()
        elapsed = time.perf_counter() - started
        if seen:
            with open(os.path.join(loop["audit_dir"], f"rows-rank{rank}.json"), "w") as handle:
                json.dump(seen, handle)

        objective.eval()
        val = [0.0, 0.0]
        with torch.no_grad():
            generator = torch.Generator(device=device).manual_seed(loop["seed"])  # same draw every epoch
            for batch in validation_shard.iter_torch_batches(batch_size=loop["batch_size"], device=device):
                x = prepare_inputs(batch["image"], **prepare, generator=generator)
                val = [val[0] + elbo(vae_model, x).elbo.sum().item(), val[1] + x.shape[0]]
        objective_sum, elbo_sum, recon_sum, kl_sum, count, val_sum, val_count = _all_reduce_sums(*sums, *val)
        elapsed = _all_reduce_sums(elapsed)[0] / world
        metrics = {
            "epoch": epoch,
            "train_objective": objective_sum / max(count, 1),
            "train_elbo": elbo_sum / max(count, 1),
            "train_reconstruction": recon_sum / max(count, 1),
            "train_kl": kl_sum / max(count, 1),
            "validation_elbo": val_sum / val_count if val_count else float("nan"),
            "samples_per_second": count / max(elapsed, 1e-9),
            "epoch_seconds": time.perf_counter() - started,
            "learning_rate": scheduler.get_last_lr()[0],
        }
        history.append(metrics)
        # Identical on every rank (all-reduced), so every worker stops at the same epoch.
        improved = metrics["validation_elbo"] > best
        best, stale = (metrics["validation_elbo"], 0) if improved else (best, stale + 1)
        stop = loop["patience"] is not None and stale >= loop["patience"]
        trained_seconds += _all_reduce_sums(time.perf_counter() - started)[0] / world  # same on every rank
        metrics["training_minutes"] = trained_seconds / 60
        stop = stop or (loop["max_minutes"] is not None and trained_seconds >= 60 * loop["max_minutes"])
        last = epoch == loop["epochs"] or stop

        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            # With early stopping the best of these checkpoints (by validation ELBO) is the result.
            if rank == 0 and (epoch % loop["checkpoint_every"] == 0 or last):
                _save_checkpoint(directory, {
                    "model": vae_model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "model_config": loop["model_config"],
                    "data_dim": loop["data_dim"],
                    "image_shape": loop["image_shape"],
                    "rng_state": torch.get_rng_state(),
                    "best_validation_elbo": best,
                    "stale_epochs": stale,
                    "trained_seconds": trained_seconds,
                })
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            if rank == 0 and loop.get("progress") is not None:
                loop["progress"].put(metrics)  # the driver prints it and logs it to MLflow
            ray.train.report(metrics, checkpoint=checkpoint)
        if stop:
            break


def format_epoch(metrics: dict[str, float], epochs: int) -> str:
    """The one progress line per epoch."""
    return (
        f"epoch {int(metrics['epoch']):>3}/{epochs}  train ELBO {metrics['train_elbo']:9.3f}  "
        f"val ELBO {metrics['validation_elbo']:9.3f}  KL {metrics['train_kl']:7.3f}  "
        f"{metrics['samples_per_second']:8.0f} samples/s"
    )


def _follow_progress(queue, epochs: int, stop: threading.Event, echo: Callable[[str], None] | None,
                     tracking_uri: str | None, run_id: str | None) -> None:
    """Driver-side thread: for each epoch rank 0 reports, print its line and log it to MLflow.

    Logging from the driver keeps one writer on a sqlite store and MLflow out of the workers.
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
        if run_id:
            from vae import registry

            registry.log_epoch_metrics(tracking_uri, run_id, metrics, step=int(metrics["epoch"]))


def _dataset(path: str, shuffle: bool = False):
    """A Ray Dataset over one Parquet split; small splits are read once, in memory, not per epoch."""
    import ray.data

    dataset = ray.data.read_parquet(path)
    if os.path.getsize(path) < MATERIALIZE_BELOW_BYTES:
        dataset = dataset.materialize()  # read once into the object store, not every epoch
    return dataset.randomize_block_order() if shuffle else dataset  # shuffle: new row-group order every epoch


def train(
    config: PipelineConfig,
    dataset: DatasetRef,
    *,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    workers: int | None = None,
    use_gpu: bool | None = None,
    resume_from: str | None = None,
    resume: bool = False,
    storage_path: str | Path | None = None,
    echo: Callable[[str], None] | None = print,
    audit_dir: str | None = None,
) -> TrainResult:
    """Fit the VAE with Ray Train's TorchTrainer; returns the final (or, with early stopping, best) checkpoint.

    `resume` continues from the newest checkpoint of this pipeline's earlier runs; `resume_from`
    from a given checkpoint directory. Raises TrainingDivergedError (epoch, step) if the loss
    becomes non-finite.
    """
    import ray
    import ray.data
    from ray.util.queue import Queue
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    training = config.training
    storage = Path(storage_path or checkpoints_dir())
    if resume and resume_from is None:
        resume_from = latest_checkpoint(config.name, storage)
        if resume_from is None:
            raise VAEError(f"--resume: no checkpoint of pipeline '{config.name}' under {storage}")
        if echo:
            echo(f"resuming from {resume_from}")
    num_workers = workers or training.workers
    ensure_ray(num_workers * training.cpus_per_worker)
    ray.data.DataContext.get_current().enable_progress_bars = False
    manifest = read_manifest(dataset.path)
    data_dim = int(math.prod(manifest["shape"]))
    loop = {
        "model_config": config.model.model_dump(mode="json"),
        "data_dim": data_dim,
        "max_value": float(manifest["value_range"][1]),
        "binarize": config.dataset.binarize,
        "epochs": training.epochs,
        "batch_size": training.batch_size,
        "learning_rate": training.learning_rate,
        "seed": training.seed,
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "resume_from": str(resume_from) if resume_from else None,
        "image_shape": list(manifest["shape"]),
        "train_rows": int(manifest["rows"]["train"]),
        "objective": training.objective,
        "iwae_k": training.iwae_k,
        "beta": training.beta,
        "kl_warmup_epochs": training.kl_warmup_epochs,
        "lr_decay": training.lr_decay,
        "patience": training.early_stopping_patience,
        "precision": training.precision,
        "checkpoint_every": training.checkpoint_every,
        "max_minutes": training.max_minutes,
        "audit_dir": audit_dir,
        "progress": Queue(actor_options={"num_cpus": 0}) if echo or run_id else None,
    }
    wants_gpu = training.use_gpu if use_gpu is None else use_gpu
    use_gpu = wants_gpu and ray.cluster_resources().get("GPU", 0) > 0
    if wants_gpu and not use_gpu and echo:
        echo("training.use_gpu is set but the Ray cluster has no GPU: training on CPU workers")
    name = f"{config.name}-{run_id or time.strftime('%Y%m%d-%H%M%S')}"
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": training.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=training.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=training.checkpoints_to_keep,
                # With early stopping, keep the best by validation ELBO (Ray always keeps the latest).
                **({"checkpoint_score_attribute": "validation_elbo", "checkpoint_score_order": "max"}
                   if training.early_stopping_patience else {}),
            ),
        ),
        datasets={
            "train": _dataset(split_path(dataset.path, "train"), shuffle=True),
            "validation": _dataset(split_path(dataset.path, "validation")),
        },
    )
    stop = threading.Event()
    follower = None
    if loop["progress"] is not None:
        follower = threading.Thread(
            target=_follow_progress, args=(loop["progress"], training.epochs, stop, echo, tracking_uri, run_id),
            daemon=True,
        )
        follower.start()
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface ours as one line
        match = _DIVERGED.search(str(exc)) or _DIVERGED.search(repr(exc.__cause__))
        if match:
            raise TrainingDivergedError(f"training diverged: {match.group(0)}") from None
        raise
    finally:
        if follower is not None:
            stop.set()  # the thread drains what is queued, then ends
            follower.join(timeout=60)
            ray.kill(loop["progress"].actor)
    if result.checkpoint is None:
        raise VAEError(f"training run '{name}' finished without a checkpoint")
    _, state = load_checkpoint(result.checkpoint.path)
    chosen = result.checkpoint.path
    if training.early_stopping_patience and result.best_checkpoints:
        chosen = max(result.best_checkpoints, key=lambda pair: pair[1].get("validation_elbo", -math.inf))[0].path
    return TrainResult(checkpoint=chosen, epochs=int(state["epoch"]), history=list(state["history"]))


def is_checkpoint(directory: str | Path) -> bool:
    """Whether a checkpoint directory still holds its weights (a cached result may outlive it)."""
    return (Path(directory) / CHECKPOINT_FILE).is_file()


def latest_checkpoint(pipeline: str, storage: str | Path | None = None) -> str | None:
    """The newest checkpoint directory of any earlier run of `pipeline`, or None."""
    root = Path(storage or checkpoints_dir())
    found = [path.parent for path in root.glob(f"{pipeline}-*/checkpoint_*/{CHECKPOINT_FILE}")]
    return str(max(found, key=lambda p: (p / CHECKPOINT_FILE).stat().st_mtime)) if found else None
