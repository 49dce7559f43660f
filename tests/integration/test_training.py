"""Ray Train at depth, on real local Ray with 2 CPU workers and tiny data.

Resume continues at the right epoch; the workers' shards partition the split; a worker killed
mid-run is replaced and training resumes from the latest checkpoint.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from vae.train import driver, hooks
from vae.train.process_group import RENDEZVOUS_PREFIX
from vae.config import DatasetConfig, ModelConfig, PipelineConfig, RegistryConfig, TrainingConfig
from vae.data.ingest import ingest
from vae.data.datasets import load_split

pytestmark = pytest.mark.integration


def _config(**training_options) -> PipelineConfig:
    return PipelineConfig(
        name="depth",
        dataset=DatasetConfig(name="digits", source="sklearn:digits", validation_fraction=0.1),
        model=ModelConfig(latent_dim=2, hidden=(16,)),
        training=TrainingConfig(**{"workers": 2, "batch_size": 64, **training_options}),
        registry=RegistryConfig(model_name="vae-depth"),
    )


def _started(audit: Path) -> list[int]:
    path = audit / "epochs_started.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _processes_named(fragment: str) -> list[int]:
    """This test's own PIDs (descendants of the pytest process, which started the local Ray) whose
    command line (Ray sets it to the actor's name) contains `fragment`: another Ray on the machine
    is never touched."""
    import psutil

    found = []
    for process in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if fragment in " ".join(process.cmdline()):
                found.append(process.pid)
        except psutil.Error:
            continue
    return sorted(found)


def _actors() -> dict[str, str]:
    """Every actor the Ray of this session has had, alive or dead: id → class name."""
    from ray._private.state import actors

    return {actor_id: actor["ActorClassName"] for actor_id, actor in actors().items()}


def _maps_torch(pid: int) -> bool:
    """Whether process `pid` has loaded torch (its shared library is mapped)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_resume_continues_at_the_next_epoch_and_shards_partition_the_split(ray_session, tmp_path):
    dataset = ingest(_config().dataset)
    first_audit, second_audit = tmp_path / "first", tmp_path / "second"
    first_audit.mkdir(), second_audit.mkdir()
    lines: list[str] = []
    loaded: dict[str, list[bool]] = {}

    def echo(line: str) -> None:  # on the driver, while the fit's processes run
        lines.append(line)
        if line.startswith("epoch") and not loaded:
            for name in ("TrainController", "RayTrainWorker"):
                loaded[name] = [_maps_torch(pid) for pid in _processes_named(f"ray::{name}")]

    before = _actors()
    first = driver.train(
        _config(epochs=2, use_gpu=True),
        dataset,
        storage_path=tmp_path / "runs",
        echo=echo,
        hooks=hooks.RowAudit(str(first_audit)),
    )
    assert first.epochs == 2 and _started(first_audit) == [1, 2]
    # use_gpu on a machine without a GPU: one line says so, and CPU workers train.
    assert lines[0] == "training.use_gpu is set but the Ray cluster has no GPU: training on CPU workers"
    assert [h["cuda_graph"] for h in first.history] == [0.0, 0.0]
    # On a Ray of vae's own, a fit starts its controller, the workers' barrier and the two workers: no
    # autoscaling coordinator, placement-group cleaner, dataset manager (vae.train.trainer) or progress
    # queue (vae.train.progress: a file on one machine); each would be a process of its own.
    started = sorted(name for actor_id, name in _actors().items() if actor_id not in before)
    assert started == ["RayTrainWorker", "RayTrainWorker", "SynchronizationActor", "TrainController"]
    # The controller never loads torch (what it unpickles is torch-free: vae.train.scaling); the workers do.
    assert loaded == {"TrainController": [False], "RayTrainWorker": [True, True]}

    # The two workers' rows in an epoch are disjoint and together are the whole train split.
    seen = [collections.Counter(json.loads((first_audit / f"rows-rank{r}.json").read_text())) for r in (0, 1)]
    images, _ = load_split(dataset.path, "train")
    split = collections.Counter(hashlib.sha1(row.tobytes()).hexdigest() for row in images)
    assert seen[0] + seen[1] == split
    assert abs(sum(seen[0].values()) - sum(seen[1].values())) <= 1

    # Stopped after 2 of 4 epochs, restarted with --resume: it trains epochs 3 and 4 only. An on_epoch
    # that fails (a locked MLflow store) neither stops training nor the later epochs' callbacks.
    logged: list[int] = []

    def flaky_log(metrics: dict) -> None:
        if metrics["epoch"] == 3:
            raise RuntimeError("database is locked")
        logged.append(int(metrics["epoch"]))

    resumed_lines: list[str] = []
    second = driver.train(
        _config(epochs=4),
        dataset,
        storage_path=tmp_path / "runs",
        echo=resumed_lines.append,
        on_epoch=flaky_log,
        resume=True,
        hooks=hooks.RowAudit(str(second_audit)),
    )
    assert _started(second_audit) == [3, 4]
    assert [int(h["epoch"]) for h in second.history] == [1, 2, 3, 4]
    assert second.history[:2] == first.history
    assert logged == [4] and resumed_lines[-1] == (
        "warning: metrics of 1 epoch(s) were not recorded by on_epoch; the first: epoch 3: RuntimeError: database is locked"
    )

    # All 4 epochs done: resuming again trains nothing and returns the last checkpoint.
    third = driver.train(_config(epochs=4), dataset, storage_path=tmp_path / "runs", echo=None, resume=True)
    assert (third.checkpoint, third.epochs) == (second.checkpoint, 4)


def test_a_killed_worker_is_replaced_and_training_resumes_from_the_latest_checkpoint(ray_session, tmp_path):
    dataset = ingest(_config().dataset)
    audit = tmp_path / "audit"
    audit.mkdir()
    config = _config(epochs=8, batch_size=16, max_failures=2)
    outcome: dict = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            result=driver.train(
                config, dataset, storage_path=tmp_path / "runs", echo=None, hooks=hooks.RowAudit(str(audit))
            )
        )
    )
    runner.start()
    deadline = time.time() + 180
    while 3 not in _started(audit):  # epoch 2's checkpoint exists once epoch 3 starts
        assert time.time() < deadline and runner.is_alive(), "training never reached epoch 3"
        time.sleep(0.05)
    # The process group's FileStore folder, named after this fit's run (other tests' fits may run beside it).
    runs = tmp_path / "runs"
    run = next(folder.name for folder in runs.iterdir() if not folder.name.startswith("."))
    rendezvous = f"{RENDEZVOUS_PREFIX}{run}-*"
    assert list(Path(tempfile.gettempdir()).glob(rendezvous)), "no rendezvous folder of this fit found"
    victims = _processes_named("RayTrainWorker")
    assert victims, "no Ray Train worker process found"
    os.kill(victims[-1], signal.SIGKILL)
    runner.join(timeout=300)
    result = outcome["result"]
    started = _started(audit)
    assert result.epochs == 8
    assert [int(h["epoch"]) for h in result.history] == list(range(1, 9))  # each epoch once in the record
    # Exactly one restart, at r = (epoch of the latest committed checkpoint) + 1: epochs before r
    # ran once, r..j (interrupted past the checkpoint) ran again, nothing else was repeated.
    drops = [i for i in range(1, len(started)) if started[i] <= started[i - 1]]
    assert len(drops) == 1, started
    j, r = started[drops[0] - 1], started[drops[0]]
    assert started == list(range(1, j + 1)) + list(range(r, 9)) and 2 <= r <= j, started
    assert result.history[r - 2]["epoch"] == r - 1  # the checkpoint's own record was kept, not retrained
    # Both worker groups' rendezvous folders are gone, the killed one's included.
    assert list(Path(tempfile.gettempdir()).glob(rendezvous)) == []


def test_a_one_worker_fit_in_process_matches_ray_train_and_keeps_checkpoints_alike(ray_session, tmp_path):
    """`train(..., in_process=True)` (a search's one-worker trials) runs the same loop without Ray Train:
    the reference is the same fit by Ray Train's one worker (one torch thread, as Ray gives it), which
    must match to the last bit, epoch by epoch; both keep the newest `checkpoints_to_keep` checkpoints."""
    import torch

    config = _config(workers=1, epochs=5, checkpoint_every=1, checkpoints_to_keep=2, early_stopping_patience=None)
    dataset = ingest(config.dataset)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lines: dict[bool, list[str]] = {True: [], False: []}
        results = {
            mode: driver.train(
                config, dataset, storage_path=tmp_path / str(mode), echo=lines[mode].append, in_process=mode
            )
            for mode in (True, False)
        }
    finally:
        torch.set_num_threads(threads)
    ours, ray_train = results[True], results[False]
    assert [int(h["epoch"]) for h in ours.history] == [1, 2, 3, 4, 5] and ours.epochs == ray_train.epochs == 5
    for key in ("train_elbo", "train_kl", "validation_elbo"):
        assert [h[key] for h in ours.history] == [h[key] for h in ray_train.history], key
    assert len(lines[True]) == len(lines[False]) == 5  # one progress line per epoch from both
    kept = {
        mode: sorted(p.name for p in Path(r.checkpoint).parent.glob("checkpoint_*") if p.is_dir())
        for mode, r in results.items()
    }
    assert len(kept[True]) == len(kept[False]) == 2 and Path(ours.checkpoint).name == kept[True][-1]
    assert not list(Path(tmp_path / "True").glob("*/.checkpoint_*"))  # no partial copy left
    weights = [torch.load(Path(r.checkpoint) / "checkpoint.pt", weights_only=True)["model"] for r in (ours, ray_train)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
