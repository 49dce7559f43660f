"""pipelines.yaml validation and the CLI's one-line errors with nonzero exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from vae.config import load_pipeline, load_pipelines
from vae.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

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


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(text)
    return path


def _vae(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VAE_HOME": str(cwd / ".vae")}
    return subprocess.run(
        [sys.executable, "-m", "vae", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_repository_pipelines_file_is_valid():
    pipelines = load_pipelines(REPO / "pipelines.yaml")
    assert "digits" in pipelines
    assert pipelines["digits"].training.workers == 2


def test_defaults_fill_in_and_configs_are_frozen(tmp_path):
    config = load_pipeline("other", _write(tmp_path, GOOD))
    assert config.training.epochs == 3 and config.evaluation.k == 5000
    with pytest.raises(ValidationError):
        config.training.epochs = 4  # frozen


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("training: {epochs: 3}", None),
        (
            "training: {epochs: -3}",
            "pipeline 'other': field 'training.epochs': expected: input should be greater than or equal to 1, got -3",
        ),
        (
            "training: {epochz: 3}",
            "pipeline 'other': field 'training.epochz': unknown field (check the spelling; unknown keys are rejected)",
        ),
        (
            "training: {epochs: many}",
            "pipeline 'other': field 'training.epochs': expected: input should be a valid integer, "
            "unable to parse string as an integer, got 'many'",
        ),
    ],
)
def test_invalid_fields_name_file_pipeline_field_and_expectation(tmp_path, edit, message):
    path = _write(tmp_path, GOOD.replace("training: {epochs: 3}", edit))
    if message is None:
        load_pipelines(path)
        return
    with pytest.raises(ConfigError) as error:
        load_pipelines(path)
    assert str(error.value) == f"{path}: {message}"


def test_cross_section_check_names_the_fields(tmp_path):
    path = _write(
        tmp_path,
        GOOD.replace(
            'source: "sklearn:digits"}\n    training', 'source: "sklearn:digits", binarize: none}\n    training'
        ),
    )
    with pytest.raises(ConfigError) as error:
        load_pipelines(path)
    assert str(error.value) == (
        f"{path}: pipeline 'other': a Bernoulli likelihood needs binary inputs: set dataset.binarize to "
        "'threshold' or 'dynamic', or use model.likelihood 'gaussian'"
    )


def test_missing_section_and_bad_yaml(tmp_path):
    path = _write(tmp_path, "pipelines:\n  x:\n    dataset: {name: d, source: 'sklearn:digits'}\n")
    with pytest.raises(ConfigError, match=r"pipeline 'x': field 'registry': required field is missing$"):
        load_pipelines(path)
    path = _write(tmp_path, "pipelines:\n  x: [unclosed\n")
    with pytest.raises(ConfigError, match=r"pipelines.yaml: line \d+: invalid YAML"):
        load_pipelines(path)


def test_cli_bad_config_is_one_line_and_nonzero(tmp_path):
    _write(tmp_path, GOOD.replace("training: {epochs: 3}", "training: {epochs: -3}"))
    result = _vae("run", "other", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "error: pipelines.yaml: pipeline 'other': field 'training.epochs': "
        "expected: input should be greater than or equal to 1, got -3\n"
    )
    assert not (tmp_path / ".vae").exists()  # nothing started, nothing written


def test_cli_unknown_pipeline_lists_the_ones_that_exist(tmp_path):
    _write(tmp_path, GOOD)
    result = _vae("run", "nosuch", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "error: pipelines.yaml: unknown pipeline 'nosuch'; available: other, tiny\n"


def test_cli_missing_file(tmp_path):
    result = _vae("run", "digits", "--file", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "error: nope.yaml: file not found (expected a pipelines.yaml; pass --file)\n"


def test_cli_help_lists_the_commands(tmp_path):
    result = _vae("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "run" in result.stdout and "pipelines" in result.stdout


def test_with_json_stdout_holds_only_the_json_object(capsys):
    """Ray's driver prints raylet warnings to sys.stdout from a background thread; under --json
    they, like our progress lines, must reach stderr so stdout parses as one JSON object."""
    import json
    import threading

    from vae.cli.app import json_stdout

    with json_stdout(True):
        print("progress line")
        warner = threading.Thread(target=lambda: print("(raylet) WARNING: 8 PYTHON worker processes"))
        warner.start()
        warner.join()
    print(json.dumps({"nll": 1.5}))
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"nll": 1.5}
    assert captured.err.splitlines() == ["progress line", "(raylet) WARNING: 8 PYTHON worker processes"]
    with json_stdout(False):
        print("shown")
    assert capsys.readouterr().out == "shown\n"
