"""pipelines.yaml hardening (issue 13): names that cannot leave VAE_HOME, strict numbers, duplicate
keys, non-UTF-8 files and invalid crons — each refused in one line naming the file, pipeline and field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prefect.client.schemas.schedules import CronSchedule
from typer.testing import CliRunner

from vae.cli import app
from vae.config import CRON_HELP, cron_problem, load_pipelines, name_problem
from vae.paths import artifacts_uri, dataset_dir, inside
from vae.errors import ConfigError

GOOD = """\
pipelines:
  tiny:
    dataset: {name: digits, source: "sklearn:digits"}
    registry: {model_name: vae-tiny}
  other:
    dataset: {name: digits, source: "sklearn:digits"}
    training: {epochs: 3}
    registry: {model_name: vae-other}
"""
NAME_RULE = "expected 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit (no '/' or '..')"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(text)
    return path


def _refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as error:
        load_pipelines(path)
    message = str(error.value)
    assert "\n" not in message
    return message


# -- Item 4: names from pipelines.yaml become folders, experiments and registered models.


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  other:", "  ../../../x:", f"pipeline '../../../x': pipeline name: {NAME_RULE}, got '../../../x'"),
        (
            "{model_name: vae-other}",
            "{model_name: vae-other, experiment: ../../../../x}",
            f"pipeline 'other': field 'registry.experiment': {NAME_RULE}, got '../../../../x'",
        ),
        (
            "{model_name: vae-other}",
            "{model_name: team/vae}",
            f"pipeline 'other': field 'registry.model_name': {NAME_RULE}, got 'team/vae'",
        ),
        (
            '{name: digits, source: "sklearn:digits"}\n    training',
            '{name: a..b, source: "sklearn:digits"}\n    training',
            f"pipeline 'other': field 'dataset.name': {NAME_RULE}, got 'a..b'",
        ),
    ],
)
def test_names_that_would_leave_their_root_are_refused_when_the_file_is_loaded(tmp_path, old, new, message):
    path = _write(tmp_path, GOOD.replace(old, new))
    assert _refusal(path) == f"{path}: {message}"


def test_name_problem_is_the_registry_sides_pure_check():
    for good in ("digits", "vae-fashion-mnist", "a", "v1.2_x", "x" * 64):
        assert name_problem(good) is None, good
    for bad in ("", "../x", "a/b", "a..b", ".hidden", "-x", "x" * 65, "a b", "a\\b", "models:/x", None):
        assert name_problem(bad) == f"{NAME_RULE}, got {bad!r}", bad


def test_inside_keeps_every_built_path_under_its_root(tmp_path):
    root = tmp_path / "datasets"
    assert inside(root, "digits", "abc") == root / "digits" / "abc"
    for parts in (("..", "x"), ("../../etc",), ("/etc",), ("a", "../../b"), (".",), ()):
        with pytest.raises(ConfigError, match=r"not inside it \(expected names of letters"):
            inside(root, *parts)
    # Judged as spelled: a root reached through a symlink is still a root.
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    assert inside(tmp_path / "link", "d") == tmp_path / "link" / "d"


def test_path_helpers_refuse_names_that_escape(tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_HOME", str(tmp_path))
    assert dataset_dir("digits", "abc") == tmp_path / "datasets" / "digits" / "abc"
    assert artifacts_uri("vae-digits") == (tmp_path / "mlartifacts" / "vae-digits").as_uri()
    with pytest.raises(ConfigError):
        dataset_dir("../../x", "abc")
    with pytest.raises(ConfigError):
        artifacts_uri("../../../../x")


# -- Item 8: strict numbers, duplicate keys.


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("training: {epochs: true}", "field 'training.epochs': expected an integer, got true (a boolean)"),
        (
            "training: {learning_rate: false}",
            "field 'training.learning_rate': expected a number, got false (a boolean)",
        ),
        (
            "training: {early_stopping_patience: true}",
            "field 'training.early_stopping_patience': expected an integer, got true (a boolean)",
        ),
        ("model: {hidden: [true, 8]}", "field 'model.hidden.0': expected an integer, got true (a boolean)"),
        ("evaluation: {k: true}", "field 'evaluation.k': expected an integer, got true (a boolean)"),
        (
            "training: {max_minutes: .nan}",
            "field 'training.max_minutes': expected: input should be a finite number, got nan",
        ),
        ("training: {beta: .inf}", "field 'training.beta': expected: input should be a finite number, got inf"),
    ],
)
def test_booleans_are_not_numbers_and_numbers_are_finite(tmp_path, edit, message):
    path = _write(tmp_path, GOOD.replace("training: {epochs: 3}", edit))
    assert _refusal(path) == f"{path}: pipeline 'other': {message}"


def test_infinite_promote_margin_and_interval_are_refused(tmp_path):
    path = _write(tmp_path, GOOD.replace("{model_name: vae-other}", "{model_name: vae-other, promote_margin: .inf}"))
    assert _refusal(path) == (
        f"{path}: pipeline 'other': field 'registry.promote_margin': expected: input should be a finite number, got inf"
    )
    path = _write(tmp_path, GOOD.replace("training: {epochs: 3}", "deployment: {schedule: {interval_minutes: .inf}}"))
    assert _refusal(path) == (
        f"{path}: pipeline 'other': field 'deployment.schedule.interval_minutes': "
        "expected: input should be a finite number, got inf"
    )


def test_whole_numbers_still_fill_float_fields(tmp_path):
    path = _write(tmp_path, GOOD.replace("training: {epochs: 3}", "training: {epochs: 3, learning_rate: 1, beta: 2}"))
    training = load_pipelines(path)["other"].training
    assert (training.epochs, training.learning_rate, training.beta) == (3, 1.0, 2.0)
    assert isinstance(training.learning_rate, float)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  other:", "  tiny:", "line 5: duplicate key 'tiny' (first given on line 2; expected each key once)"),
        (
            "{epochs: 3}",
            "{epochs: 3, epochs: 4}",
            "line 7: duplicate key 'epochs' (first given on line 7; expected each key once)",
        ),
        (
            "    training: {epochs: 3}\n",
            "    training: {epochs: 3}\n    training: {epochs: 9}\n",
            "line 8: duplicate key 'training' (first given on line 7; expected each key once)",
        ),
    ],
)
def test_duplicate_keys_are_refused_with_their_line(tmp_path, old, new, message):
    path = _write(tmp_path, GOOD.replace(old, new))
    assert _refusal(path) == f"{path}: {message}"


def test_merge_keys_may_still_override(tmp_path):
    text = GOOD.replace("training: {epochs: 3}", "training: {<<: *t, epochs: 4}").replace(
        "  tiny:\n", "  tiny:\n    training: &t {epochs: 3, seed: 1}\n"
    )
    pipelines = load_pipelines(_write(tmp_path, text))
    assert (pipelines["tiny"].training.epochs, pipelines["other"].training.epochs) == (3, 4)
    assert pipelines["other"].training.seed == 1


# -- Item 7: a file that is not UTF-8, a cron that is not a cron.


def test_non_utf8_file_is_one_line_from_the_cli(tmp_path):
    path = tmp_path / "pipelines.yaml"
    path.write_bytes(GOOD.encode().replace(b"vae-other", b"vae-\xe9t\xe9"))
    assert _refusal(path) == f"{path}: line 8: byte 0xe9 is not UTF-8 (expected a UTF-8 text file)"
    result = CliRunner().invoke(app, ["pipelines", "--file", str(path)])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"error: {path}: line 8: byte 0xe9 is not UTF-8 (expected a UTF-8 text file)\n"


GOOD_CRONS = ["0 3 * * 1", "*/15 * * * *", "0 0 1,15 * *", "30 2 * jan-mar mon-fri", "0 9-17/2 * * 1-5", "5 4 * * 7"]
BAD_CRONS = {
    "99 * * * *": "minute '99' is not a value in 0-59",
    "0 24 * * *": "hour '24' is not a value in 0-23",
    "0 3 * * 8": "weekday '8' is not a value in 0-7",
    "0 3 32 * *": "day of month '32' is not a value in 1-31",
    "*/0 * * * *": "minute '*/0' is not a value in 0-59",
    "0 3 * * L": "weekday 'L' is not a value in 0-7",
}


@pytest.mark.parametrize("cron", list(BAD_CRONS))
def test_invalid_cron_says_what_a_cron_looks_like(tmp_path, cron):
    path = _write(tmp_path, GOOD.replace("training: {epochs: 3}", f"deployment: {{schedule: {{cron: '{cron}'}}}}"))
    assert _refusal(path) == (
        f"{path}: pipeline 'other': field 'deployment.schedule': cron '{cron}': {BAD_CRONS[cron]} ({CRON_HELP})"
    )
    assert "pydantic" not in CRON_HELP and "http" not in CRON_HELP
    with pytest.raises(ValueError):  # Prefect, which schedules it, would not take it either
        CronSchedule(cron=cron)


def test_crons_we_accept_prefect_schedules(tmp_path):
    for cron in GOOD_CRONS:
        assert cron_problem(cron) is None, cron
        CronSchedule(cron=cron)
    assert cron_problem("every day") == f"cron 'every day' has 2 fields ({CRON_HELP})"
