"""Which checkpoint `--resume` and early stopping pick, on real checkpoint files (no Ray started).

The states are what vae.train.checkpoints writes (torch.save of a dict); only the fields these choices read
are filled in.
"""

from __future__ import annotations

import os

import torch

from vae.config import DatasetConfig, PipelineConfig
from vae.data.ingest import ingest
from vae.models.model import CHECKPOINT_FILE
from vae.train.checkpoints import latest_checkpoint
from vae.train.driver import train


def _checkpoint(folder, epoch: int, elbo: float, pipeline: str | None, when: float):
    """A checkpoint directory holding `epoch` with validation ELBO `elbo`, modified at time `when`."""
    folder.mkdir(parents=True)
    state = {"epoch": epoch, "history": [{"epoch": epoch, "validation_elbo": elbo}], "model": {}}
    if pipeline is not None:
        state["pipeline"] = pipeline
    torch.save(state, folder / CHECKPOINT_FILE)
    os.utime(folder / CHECKPOINT_FILE, (when, when))
    return folder


def test_resume_never_takes_another_pipelines_checkpoint(tmp_path):
    """`mnist-*` also matches `mnist-large-*`: before, the newest of either was resumed (wrong weights)."""
    own = _checkpoint(tmp_path / "mnist-20261127-101010" / "checkpoint_a", 5, -90.0, "mnist", when=1000)
    _checkpoint(tmp_path / "mnist-large-20261127-111111" / "checkpoint_b", 7, -80.0, "mnist-large", when=2000)
    assert latest_checkpoint("mnist", tmp_path) == str(own)
    assert latest_checkpoint("mnist-large", tmp_path) == str(tmp_path / "mnist-large-20261127-111111" / "checkpoint_b")
    # Checkpoints from before states named their pipeline: the folder must be `mnist-` + a run id.
    legacy_other = _checkpoint(
        tmp_path / "mnist-large-0123456789abcdef0123456789abcdef" / "checkpoint_c", 9, -1, None, 3000
    )
    assert latest_checkpoint("mnist", tmp_path) == str(own)
    legacy_own = _checkpoint(tmp_path / "mnist-0123456789abcdef0123456789abcdef" / "checkpoint_d", 9, -1, None, 4000)
    assert latest_checkpoint("mnist", tmp_path) == str(legacy_own)
    assert latest_checkpoint("mnist-large", tmp_path) == str(legacy_other)
    assert latest_checkpoint("fashion", tmp_path) is None


def _config(epochs: int, patience: int | None) -> PipelineConfig:
    return PipelineConfig(
        name="digits",
        dataset=DatasetConfig(name="digits", source="sklearn:digits"),
        training={"epochs": epochs, "early_stopping_patience": patience},
        registry={"model_name": "m"},
    )


def test_resuming_a_finished_run_returns_its_best_checkpoint_without_training(tmp_path):
    """All epochs done: before, the loop ran nothing and the user read 'finished without a checkpoint'.
    With early stopping the answer is the best checkpoint of the run, from before the resume too
    (a later checkpoint of an explicitly older resume point is another branch: not a candidate)."""
    dataset = ingest(DatasetConfig(name="digits", source="sklearn:digits"), root=tmp_path / "data")
    run = tmp_path / "runs" / "digits-20261127-101010"
    best = _checkpoint(run / "checkpoint_000", 4, -20.5, "digits", when=1000)
    last = _checkpoint(run / "checkpoint_001", 6, -21.0, "digits", when=2000)
    _checkpoint(run / "checkpoint_002", 8, float("nan"), "digits", when=3000)  # NaN never wins
    lines: list[str] = []
    result = train(_config(6, patience=3), dataset, resume_from=str(last), storage_path=tmp_path, echo=lines.append)
    assert (result.checkpoint, result.epochs) == (str(best), 6)
    assert lines == [f"{last}: already trained 6/6 epochs (raise training.epochs to go on)"]
    without_patience = train(
        _config(6, patience=None), dataset, resume_from=str(last), storage_path=tmp_path, echo=None
    )
    assert without_patience.checkpoint == str(last)
    assert list(tmp_path.glob("digits-*")) == []  # no Ray Train run was started


def test_early_stopping_or_a_search_without_validation_rows_is_one_line_before_ray(tmp_path):
    """No validation rows: the ELBO is NaN, no epoch improves and early stopping fired at epoch
    `patience` whatever the model did; a search ranked its trials by NaN."""
    import pytest

    from vae.tune import search as tuning
    from vae.errors import VAEError

    config = _config(6, patience=3)
    config = config.model_copy(
        update={"dataset": DatasetConfig(name="digits", source="sklearn:digits", validation_fraction=0.0)}
    )
    dataset = ingest(config.dataset, root=tmp_path / "data")
    with pytest.raises(VAEError) as caught:
        train(config, dataset, storage_path=tmp_path, echo=None)
    assert str(caught.value) == (
        "dataset 'digits' has no validation rows, and training.early_stopping_patience ranks by validation ELBO: "
        "set dataset.validation_fraction above 0"
    )
    searched = PipelineConfig.model_validate(
        {**config.model_dump(), "search": {"space": {"learning_rate": {"loguniform": [1e-3, 1e-2]}}}}
    )
    with pytest.raises(VAEError, match=r"has no validation rows, and vae tune \(ASHA and the best trial\) ranks"):
        tuning.search(searched, dataset, echo=None)
    assert list(tmp_path.glob("digits-*")) == [] and tuning.latest_search(config.name) is None  # no run, no search
