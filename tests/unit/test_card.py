"""The model card: its tags from an evaluation summary and a training history, and its text from the tags."""

from __future__ import annotations

import re

from vae.config import DatasetConfig, ModelConfig, PipelineConfig, RegistryConfig, TrainingConfig
from vae.registry.registration import card_tags, model_card
from vae.registry.versions import Registration

CONFIG = PipelineConfig(
    name="card",
    dataset=DatasetConfig(name="digits", source="sklearn:digits"),
    model=ModelConfig(latent_dim=8, hidden=(128, 128)),
    training=TrainingConfig(epochs=40, workers=2, objective="iwae", iwae_k=5),
    registry=RegistryConfig(model_name="vae-card", promote_margin=0.5),
)
MANIFEST = {"shape": [8, 8], "rows": {"train": 1150, "validation": 128, "test": 359}}
SUMMARY = {"nll": 21.987654, "nll_stderr": 0.4321, "elbo": -23.456, "elbo_gap": 1.46875, "k": 5000, "n": 359,
           "split": "test", "device": "cpu", "active_units": 5, "latent_dim": 8, "dataset_name": "digits"}  # fmt: skip
HISTORY = [{"epoch": e, "epoch_seconds": 1.5, "training_minutes": 0.025 * e} for e in range(1, 41)]


def _registration(version: int, promoted: bool, previous: float | None) -> Registration:
    return Registration("vae-card", version, f"models:/vae-card/{version}", "run-1", promoted, None, previous)


def _gate_tags(summary: dict) -> dict[str, str]:
    """The tags vae.registry.versions.register_model sets (the gate's), as it formats them."""
    return {
        "dataset_hash": "ab" * 32,
        "dataset_version": "20261127-abcdef12",
        "test_nll": repr(summary["nll"]),
        "test_nll_stderr": repr(summary["nll_stderr"]),
        "test_nll_pm": f"{summary['nll']:.3f} ± {summary['nll_stderr']:.3f}",
        "k": str(summary["k"]),
        "code_version": "0.1.0+gabc1234",
        "gate": "promoted",
    }


def test_card_tags_come_from_the_summary_and_the_history():
    tags = card_tags(SUMMARY, HISTORY, _registration(3, True, 22.5), compared="2")
    assert tags == {
        "dataset_name": "digits",
        "split": "test",
        "n": "359",
        "elbo": "-23.456",
        "elbo_gap": "1.469",
        "epochs": "40",
        "training_minutes": "1.00",
        "evaluation_device": "cpu",
        "compared_with": "version 2 (test NLL 22.500 nats on this dataset)",
        "active_units": "5 of 8",
    }
    first = card_tags({**SUMMARY, "active_units": None}, [], _registration(1, True, None), compared=None)
    assert first["compared_with"] == "none (first version)" and first["epochs"] == "0"
    assert "active_units" not in first


def test_every_number_of_the_card_is_a_tag():
    registration = _registration(3, True, 22.5)
    tags = {**_gate_tags(SUMMARY), **card_tags(SUMMARY, HISTORY, registration, compared="2")}
    card = model_card(CONFIG, registration, tags, MANIFEST)
    rows = dict(re.findall(r"^\| ([^|]+) \| (.+) \|$", card, flags=re.MULTILINE))
    nll, stderr, k = re.fullmatch(r"([\d.]+) ± ([\d.]+) nats \(± s\.e\.\) at k=(\d+) importance samples, .*", rows["test NLL"]).groups()  # fmt: skip
    assert (float(nll), float(stderr), k) == (round(float(tags["test_nll"]), 3), 0.432, tags["k"])
    assert rows["ELBO gap"].startswith(f"{tags['elbo_gap']} nats") and float(tags["elbo_gap"]) == 1.469
    assert rows["active units"].startswith("5 of 8 ")
    assert rows["training"] == "40 epochs in 1.00 min"
    assert rows["dataset"] == f"digits@{tags['dataset_version']} (content hash `{tags['dataset_hash']}`)"
    assert (
        rows["champion gate"]
        == "promoted; compared with version 2 (test NLL 22.500 nats on this dataset), margin 0.5 nats"
    )
    assert rows["objective"].startswith("IWAE bound, k=5")
    assert rows["hardware"] == "training: 2 Ray Train worker(s), CPU (gloo); evaluation: cpu"
    assert card.startswith("# vae-card, version 3\n") and "## Intended use" in card and "## Limits" in card


def test_an_early_stopped_model_names_its_own_epoch():
    registration = _registration(3, True, 22.5)
    same = card_tags(SUMMARY, HISTORY, registration, compared="2", model_epoch=40)
    assert "model_epoch" not in same  # the last epoch's checkpoint: nothing to add
    tags = {**_gate_tags(SUMMARY), **card_tags(SUMMARY, HISTORY, registration, compared="2", model_epoch=25)}
    assert (tags["epochs"], tags["model_epoch"]) == ("40", "25")
    rows = dict(
        re.findall(r"^\| ([^|]+) \| (.+) \|$", model_card(CONFIG, registration, tags, MANIFEST), flags=re.MULTILINE)
    )
    assert rows["training"] == "40 epochs in 1.00 min; this model is epoch 25's checkpoint (best validation ELBO)"


def test_a_card_without_active_units_has_no_such_row():
    registration = _registration(1, True, None)
    summary = {**SUMMARY, "active_units": None}
    tags = {**_gate_tags(summary), **card_tags(summary, HISTORY, registration, compared=None)}
    card = model_card(CONFIG, registration, tags, MANIFEST)
    assert "active units" not in card and "compared with none (first version)" in card


def test_the_summary_says_why_the_champion_stayed():
    from vae.cli.app import champion_line

    promoted = {"champion": True, "champion_uri": "models:/m@champion"}
    beaten = {"champion": False, "previous_champion_nll": 30.25, "gate": "not promoted"}
    other_kind = {"champion": False, "previous_champion_nll": None, "gate": "not promoted: its NLL is of 8bit data"}
    assert champion_line(promoted) == "champion      models:/m@champion"
    assert champion_line(beaten) == "champion      unchanged (current champion NLL 30.250)"
    assert champion_line(other_kind) == "champion      unchanged (its NLL is of 8bit data)"
    assert champion_line({"champion": False, "previous_champion_nll": None}) == "champion      unchanged"
