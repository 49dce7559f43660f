"""A flow killed between training and registration reruns without training and registers once.

`vae run` runs in its own process (its own ephemeral Prefect server and local Ray). It is
killed with SIGKILL as soon as the evaluation stage starts, i.e. after the training task's
result was persisted; the rerun must reuse that training and register exactly one version.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from vae.paths import checkpoints_dir, tracking_uri

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINES = """\
pipelines:
  crash-digits:
    dataset: {name: digits, source: "sklearn:digits", binarize: threshold}
    model: {latent_dim: 2, hidden: [32]}
    training: {epochs: 2, batch_size: 128, workers: 1}
    evaluation: {k: 1000, max_memory_mb: 64}  # the kill lands as evaluation starts
    registry: {model_name: vae-crash}
"""
REPO = Path(__file__).resolve().parents[2]


def _vae_run(pipelines: Path, kill_when: str | None = None) -> tuple[int, str]:
    """`vae run crash-digits`; with `kill_when`, SIGKILL its process group when that text is printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "vae", "run", "crash-digits", "--file", str(pipelines)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if kill_when and kill_when in line:
                os.killpg(process.pid, signal.SIGKILL)
                break
        return process.wait(timeout=600), "".join(lines)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        time.sleep(1)  # let the killed session's Ray processes go


def _run_dirs() -> list[Path]:
    return sorted(checkpoints_dir().glob("crash-digits-*"))


def test_rerun_after_a_crash_reuses_training_and_registers_once(tmp_path):
    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text(PIPELINES)
    client = MlflowClient(tracking_uri())

    code, output = _vae_run(pipelines, kill_when="evaluating log p(x)")
    assert code == -signal.SIGKILL, output
    assert "epoch   2/2" in output  # training finished before the kill
    assert client.search_model_versions("name = 'vae-crash'") == []  # killed before registration
    trained = _run_dirs()
    assert len(trained) == 1

    code, output = _vae_run(pipelines)
    assert code == 0, output
    assert "reusing the finished training" in output
    assert "epoch   1/2" not in output  # nothing was trained again
    assert _run_dirs() == trained
    versions = client.search_model_versions("name = 'vae-crash'")
    assert len(versions) == 1
    runs = client.search_runs([client.get_experiment_by_name("vae-crash").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == versions[0].run_id
    assert runs[0].info.status == "FINISHED"
