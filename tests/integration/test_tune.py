"""`vae tune` on real Ray Tune, Ray Train and the test MLflow store: a tiny search, interrupted with
Ctrl-C (SIGINT) after the first of its two trials ends, then resumed (keeping its --trials 2, not the file's 1);
the finished trial is not trained again,
MLflow holds one parent run with a child per trial, and the best trial (by the validation IWAE bound,
search.metric) went through the gate."""

from __future__ import annotations

import json
import os
import pickle
import signal
from pathlib import Path

import pytest

from vae import integrity
from vae.registry import runs
from vae.tune import search as tuning
from vae.tune.trials import BUDGET_FILE, TRIAL_FILE, budget_used_up
from vae.config import load_pipeline
from vae.data.ingest import ingest

pytestmark = pytest.mark.integration

PIPELINES = """
pipelines:
  tune-it:
    dataset: {name: digits, source: "sklearn:digits", validation_fraction: 0.1}
    model: {latent_dim: 2, hidden: [16]}
    training: {epochs: 2, batch_size: 128, workers: 1}
    evaluation: {k: 20}
    registry: {model_name: vae-tune-it}
    search:
      trials: 1            # the search below asks for 2 (--trials); its resume must keep 2
      concurrent: 1
      scheduler: {kind: fifo}
      metric: validation_iwae   # L_5 on the validation rows every epoch
      validation_k: 5
      space:
        learning_rate: {loguniform: [0.001, 0.01]}
        latent_dim: {randint: [2, 3]}
"""


class _Payload:
    """A pickle that runs code when loaded: creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _curve(run_id: str, metric: str = "validation_elbo") -> list[int]:
    """The epochs a trial's run logged `metric` at (a rerun would log them twice)."""
    history = runs.client().get_metric_history(run_id, metric)
    return sorted(int(metric.step) for metric in history)


def test_an_interrupted_search_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    path = tmp_path / "pipelines.yaml"
    path.write_text(PIPELINES)
    config = load_pipeline("tune-it", path)
    dataset = ingest(config.dataset)

    lines: list[str] = []

    def interrupt_after_the_first_trial(line: str) -> None:
        lines.append(line)
        if line.startswith("trial  1/2"):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: Tune stops and saves its state

    with pytest.raises(tuning.SearchInterrupted) as caught:
        tuning.search(config, dataset, trials=2, echo=interrupt_after_the_first_trial)
    assert "--resume" in str(caught.value) and "1 of 2 trials ended" in str(caught.value)
    folder = tuning.latest_search("tune-it")
    finished = [p.parent.name for p in (folder / "checkpoints").glob(f"*/{TRIAL_FILE}")]
    assert len(finished) == 1
    [first] = finished
    record = folder / "checkpoints" / first / TRIAL_FILE
    written = record.stat().st_mtime_ns
    record_json = json.loads((folder / tuning.SEARCH_FILE).read_text())
    parent = record_json["parent_run_id"]
    assert record_json["budget"] == {"trials": 2, "max_minutes": None}
    assert runs.client().get_run(parent).info.status == "KILLED"

    # Someone who can write into VAE_HOME overwrites Tune's pickles: the resume refuses before loading any.
    pickles = sorted((folder / "ray").rglob("*.pkl"))
    assert len(pickles) >= 2, pickles  # tuner.pkl and each trial's params.pkl
    originals = {path: path.read_bytes() for path in pickles}
    marker = tmp_path / "payload-ran"
    for path in pickles:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(integrity.StateIntegrityError, match="refusing to resume: .*not written by this user"):
        tuning.search(config, dataset, resume=True, echo=None)
    assert not marker.exists()
    for path, content in originals.items():  # the user's own state, byte for byte: it verifies again
        path.write_bytes(content)

    resumed: list[str] = []
    result = tuning.search(config, dataset, resume=True, echo=resumed.append)

    # The finished trial was not trained again: its record is untouched, its curve logged once,
    # and only the other trial reports in the resumed run.
    assert record.stat().st_mtime_ns == written
    trial_lines = [line for line in resumed if line.startswith("trial ")]
    assert len(trial_lines) == 1 and not any(first in line for line in trial_lines)
    children = runs.child_runs(parent)
    assert sorted(children) == sorted(row["trial_id"] for row in result.trials) and len(children) == 2
    for trial_id, run_id in children.items():
        assert _curve(run_id) == [1, 2] and _curve(run_id, "validation_iwae") == [1, 2], trial_id
        run = runs.client().get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent and "training.learning_rate" in run.data.params

    # The best trial (by last validation IWAE bound) was scored at the pipeline's k and met the gate.
    best = max(result.trials, key=lambda row: row["validation_iwae"])
    assert result.best["trial_id"] == best["trial_id"] and result.best["run_id"] == children[best["trial_id"]]
    assert result.best["validation_iwae"] == best["validation_iwae"]
    assert result.evaluation["k"] == 20
    version = runs.client().get_model_version("vae-tune-it", str(result.registration["version"]))
    assert version.run_id == result.best["run_id"] and version.tags["gate"] == "promoted"
    assert runs.client().get_model_version_by_alias("vae-tune-it", "champion").version == version.version
    parent_run = runs.client().get_run(parent)
    assert (
        parent_run.info.status == "FINISHED" and parent_run.data.tags["model_uri"] == result.registration["model_uri"]
    )
    assert parent_run.data.metrics["best_validation_iwae"] == best["validation_iwae"]

    # Resuming a finished search changes nothing and says so.
    again: list[str] = []
    assert tuning.search(config, dataset, resume=True, echo=again.append).registration == result.registration
    assert "already finished" in again[-1]
    assert Path(result.folder) == folder


def test_a_resumed_search_spends_only_the_budget_it_had_left(ray_session, tmp_path):
    """Tune restores its stopper with the experiment: a search interrupted after part of its time budget
    gets the rest on `--resume`, and when that runs out it finishes (best scored and registered)
    instead of reporting itself interrupted."""
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        # Far more epochs than 30 s allow, on any machine: the budget ends the search.
        PIPELINES.replace("training: {epochs: 2,", "training: {epochs: 100000,").replace(
            "      trials: 1 ", "      max_minutes: 0.5\n      trials: 1 "
        )
    )
    config = load_pipeline("tune-it", path)
    assert config.search.max_minutes == 0.5 and config.training.epochs == 100000
    dataset = ingest(config.dataset)

    def interrupt_at_the_first_epoch(line: str) -> None:
        if line.strip().startswith("running"):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(tuning.SearchInterrupted):
        tuning.search(config, dataset, echo=interrupt_at_the_first_epoch)
    folder = tuning.latest_search("tune-it")
    first = json.loads((folder / BUDGET_FILE).read_text())
    assert 0 < first["used"] < first["seconds"] == 30.0 and not budget_used_up(folder)

    result = tuning.search(config, dataset, resume=True)
    after = json.loads((folder / BUDGET_FILE).read_text())
    assert budget_used_up(folder) and after["used"] < 30.0 + 10.0
    assert result.evaluation["k"] == 20 and result.registration["model_uri"]
    assert 0 < result.best["epochs"] < 100000
