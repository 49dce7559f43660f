"""Where the worker loop runs: what it asks of its surroundings, as one small interface (`Session`).

`RayTrainSession` is a Ray Train worker's (rank and world from the train context, its dataset
shards, DDP, `ray.train.report` with checkpoints, the driver's progress channel). `InProcessSession`
runs the same loop in the calling process as the only worker, without Ray Train: it persists and
prunes checkpoints the way Ray Train's `CheckpointConfig` does (`RUN/checkpoint_<time>`, the best
`num_to_keep` by validation ELBO under early stopping, else the newest, and always the newest) and
hands each epoch's metrics straight to the caller. A search uses it for one-worker trials: each
Ray Train fit starts a controller, a sync actor and the worker (on a cluster also the progress queue,
a placement-group cleaner, a dataset manager and an autoscaling coordinator; vae.train.trainer),
each a new process (~1.5 s of CPU on a small machine), which on 2 cores cost a trial more than its 12
epochs of digits (issue 26, BENCHMARKS.md).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
import torch

from vae.train.checkpoints import rank_score

CHECKPOINT_PREFIX = "checkpoint_"


class Session:
    """What the worker loop needs from where it runs."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    def restart_state(self) -> dict | None:
        """The state of the checkpoint a restarted run continues from (Ray Train's own, after a worker
        failure), or None."""
        return None

    def dataset_shard(self, name: str):
        """This worker's Ray Data shard of split `name` (streamed input)."""
        raise NotImplementedError(f"{type(self).__name__} has no Ray Data shards")

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module on this worker's device (wrapped for DDP where the world is larger than one)."""
        return module.to(self.device)

    def epoch_done(self, metrics: dict[str, float]) -> None:
        """Every epoch, from rank 0: the driver's progress line and `on_epoch`."""

    def report(self, metrics: dict[str, float], directory: str | None) -> None:
        """On checkpoint epochs, from every rank: the metrics and (rank 0) a checkpoint directory to persist."""
        raise NotImplementedError


class RayTrainSession(Session):
    """A Ray Train worker's session (call inside `train_loop_per_worker`)."""

    def __init__(self, progress=None):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.channel = progress

    def restart_state(self) -> dict | None:
        import ray.train

        from vae.models.model import read_checkpoint_state

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return read_checkpoint_state(directory)

    def dataset_shard(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(module) if self.world > 1 else module.to(self.device)

    def epoch_done(self, metrics: dict[str, float]) -> None:
        if self.rank == 0 and self.channel is not None:
            self.channel.put(metrics)  # the driver prints it and hands it to on_epoch (vae.train.progress)

    def report(self, metrics: dict[str, float], directory: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(metrics, checkpoint=checkpoint)


@dataclass
class Kept:
    """A checkpoint the in-process session persisted, with the metrics it was reported with."""

    path: str
    metrics: dict[str, float]


@dataclass
class InProcessSession(Session):
    """The only worker, in this process: checkpoints under `run_dir`, metrics to `on_metrics`."""

    run_dir: Path
    num_to_keep: int | None
    score: str | None = None  # keep the best by this metric (max), as CheckpointConfig's score attribute
    on_metrics: Callable[[dict[str, float]], None] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    kept: list[Kept] = field(default_factory=list)

    def epoch_done(self, metrics: dict[str, float]) -> None:
        if self.on_metrics is not None:
            self.on_metrics(metrics)

    def report(self, metrics: dict[str, float], directory: str | None) -> None:
        if directory is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        final = self.run_dir / _checkpoint_name()
        while final.exists():  # two reports within one microsecond
            final = self.run_dir / _checkpoint_name()
        name = final.name
        partial = self.run_dir / f".{name}.partial"
        shutil.copytree(directory, partial)
        os.replace(partial, final)  # whole or absent: a reader never sees half a checkpoint
        self.kept.append(Kept(str(final), dict(metrics)))
        self._prune()

    def _prune(self) -> None:
        if not self.num_to_keep:
            return
        newest = self.kept[-1]
        if self.score:
            ranked = sorted(self.kept, key=lambda kept: rank_score(kept.metrics.get(self.score)), reverse=True)
        else:
            ranked = list(reversed(self.kept))
        keep = {id(kept) for kept in ranked[: self.num_to_keep]} | {id(newest)}
        for kept in [kept for kept in self.kept if id(kept) not in keep]:
            shutil.rmtree(kept.path, ignore_errors=True)
        self.kept = [kept for kept in self.kept if id(kept) in keep]

    @property
    def latest(self) -> str | None:
        return self.kept[-1].path if self.kept else None


def _checkpoint_name() -> str:
    """Ray Train's checkpoint folder name: checkpoint_<local time to the microsecond> (sorts by time)."""
    now = time.time_ns() // 1000
    return CHECKPOINT_PREFIX + time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now // 10**6)) + f".{now % 10**6:06d}"
