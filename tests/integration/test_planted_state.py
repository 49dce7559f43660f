"""A planted pickle under VAE_HOME runs nothing: `vae tune --resume` over a search folder whose Tune
state someone else wrote, and `vae evaluate` of a checkpoint file that is a code-running pickle, are
one line and a nonzero exit; the payload's marker never appears. (Prefect's cached results:
test_hardening_run.py; a real interrupted search whose pickles are overwritten: test_tune.py.)"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vae import integrity
from vae.tune import search as tuning
from vae.cli import app
from vae.config import load_pipeline
from vae.data.ingest import ingest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

PIPELINES = """
pipelines:
  planted:
    dataset: {name: digits, source: "sklearn:digits", validation_fraction: 0.1}
    model: {latent_dim: 2, hidden: [16]}
    training: {epochs: 1, batch_size: 128, workers: 1}
    evaluation: {k: 5}
    registry: {model_name: vae-planted}
    search:
      trials: 2
      space:
        learning_rate: {loguniform: [0.001, 0.01]}
"""


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _planted_search(tmp_path: Path, *, signed: bool) -> tuple[Path, Path, Path]:
    """A search folder of pipeline 'planted' as `vae tune` leaves it, with Tune's three pickles replaced
    by payloads; `signed`: this user signed the real state first (then someone overwrote it)."""
    path = tmp_path / "pipelines.yaml"
    path.write_text(PIPELINES)
    dataset = ingest(load_pipeline("planted", path).dataset)
    folder = tuning.searches_dir("planted") / time.strftime("%Y%m%d-%H%M%S")
    experiment = folder / "ray"
    experiment.mkdir(parents=True)
    record = {"pipeline": "planted", "parent_run_id": "0" * 32, "dataset": dataset.to_dict(), "status": "running"}
    (folder / tuning.SEARCH_FILE).write_text(json.dumps(record))
    names = ("tuner.pkl", "trainable.pkl", "basic-variant-state-2026.pkl")
    for name in names:
        (experiment / name).write_bytes(pickle.dumps({"state": name}))
    if signed:
        integrity.sign_tree(experiment, folder / tuning.STATE_SIGNATURE)
    marker = tmp_path / "payload-ran"
    for name in names:
        (experiment / name).write_bytes(pickle.dumps(_Payload(marker)))
    return path, folder, marker


@pytest.mark.parametrize("signed", [False, True], ids=["never-signed", "overwritten-after-signing"])
def test_tune_resume_refuses_a_planted_search_state(tmp_path, signed):
    pipelines, folder, marker = _planted_search(tmp_path, signed=signed)
    before = sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))
    result = subprocess.run(
        [sys.executable, "-m", "vae", "tune", "planted", "--file", str(pipelines), "--resume"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if line.strip()]
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: refusing to resume: "), lines
    expected = "has no signature" if not signed else str(folder / "ray")
    assert expected in lines[0]
    assert not marker.exists()  # nothing was unpickled
    assert sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*")) == before


def test_tune_resume_refuses_a_search_saved_by_an_earlier_version_in_one_line(tmp_path):
    """A search this user signed, but saved before vae's stage packages (no state_format in its record):
    Tune's pickles name vae.tuning's classes, which this version has not; refused before any is opened."""
    path = tmp_path / "pipelines.yaml"
    path.write_text(PIPELINES.replace("planted", "earlier"))
    dataset = ingest(load_pipeline("earlier", path).dataset)
    folder = tuning.searches_dir("earlier") / time.strftime("%Y%m%d-%H%M%S")
    (folder / "ray").mkdir(parents=True)
    record = {"pipeline": "earlier", "parent_run_id": "0" * 32, "dataset": dataset.to_dict(), "status": "running"}
    (folder / tuning.SEARCH_FILE).write_text(json.dumps(record))
    (folder / "ray" / "tuner.pkl").write_bytes(pickle.dumps({"state": "of an earlier version"}))
    integrity.sign_tree(folder / "ray", folder / tuning.STATE_SIGNATURE)
    result = CliRunner().invoke(app, ["tune", "earlier", "--file", str(path), "--resume"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: --resume: the search at {folder} was saved by an earlier version of vae, whose Tune state "
        "this version cannot load; start a new search (without --resume)"
    ]


def test_evaluate_refuses_a_checkpoint_that_is_a_code_running_pickle(tmp_path):
    ingest(load_pipeline("digits").dataset)
    marker = tmp_path / "payload-ran"
    checkpoint = tmp_path / "checkpoint_000001"
    checkpoint.mkdir()
    torch.save({"model": _Payload(marker)}, checkpoint / "checkpoint.pt")  # a zip torch.load would open
    result = CliRunner().invoke(app, ["evaluate", str(checkpoint), "--dataset", "digits", "--k", "5"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "not a checkpoint this project wrote" in lines[0]
    assert not marker.exists()
