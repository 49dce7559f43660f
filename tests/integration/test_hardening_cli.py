"""Bad command lines and unusable folders: one `error: …` line, exit 1, before any work starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers.registry_helpers import gate_config, save_checkpoint
from vae.cli import app
from vae.data.ingest import ingest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    config = gate_config("vae-cli")
    ingest(config.dataset)
    return save_checkpoint(tmp_path_factory.mktemp("cli") / "ckpt", config.model, 64, 0)


def _one_error_line(arguments: list[str]) -> str:
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 1, (result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# --k 10**9 would take hours: each of these must fail before the estimate starts.
@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--binarize", "bogus"], "--binarize 'bogus': expected threshold, dynamic or none"),
        (["--split", "train"], "--split 'train': expected 'test' or 'validation'"),
        (["--output", "{tmp}"], "is a directory"),
        (["--output", "/dev/null/sub/x.parquet"], "not writable"),
    ],
)
def test_evaluate_refuses_bad_options_before_estimating(checkpoint, tmp_path, extra, expected):
    extra = [item.replace("{tmp}", str(tmp_path)) for item in extra]
    line = _one_error_line(["evaluate", checkpoint, "--dataset", "digits", "--k", str(10**9), *extra])
    assert expected in line


def test_embed_refuses_an_unknown_binarize_mode(checkpoint, tmp_path):
    line = _one_error_line(
        ["embed", checkpoint, "--dataset", "digits", "--out", str(tmp_path / "e.parquet"), "--binarize", "bogus"]
    )
    assert "--binarize 'bogus'" in line


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode:
        pytest.skip("needs root and tmpfs mounts")


def _vae(*arguments: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vae", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_unusable_folders_are_one_line(tmp_path):
    full, readonly = tmp_path / "full", tmp_path / "readonly"
    _mount_tmpfs(full, "size=64k")
    try:
        _mount_tmpfs(readonly, "ro,size=64k")
        try:
            subprocess.run(["dd", "if=/dev/zero", f"of={full / 'filler'}", "bs=4k"], capture_output=True)  # fill it
            cases = [
                ({"VAE_HOME": str(readonly)}, "VAE_HOME", "Read-only file system"),
                ({"VAE_HOME": str(full / "home")}, "VAE_HOME", "No space left on device"),
                ({"PREFECT_HOME": str(readonly / "prefect")}, "PREFECT_HOME", "Read-only file system"),
            ]
            for env, what, reason in cases:
                done = _vae("run", "digits", **env)  # the repository's pipelines.yaml
                assert done.returncode == 1, done.stderr
                assert done.stderr.splitlines() == [f"error: {what} {env[next(iter(env))]}: not writable: {reason}"]
            # A full disk met later (here: the per-example output) is one line too, via the last-resort handler.
            config = gate_config("vae-cli")
            checkpoint = save_checkpoint(tmp_path / "ckpt", config.model, 64, 0)
            (full / "filler").unlink()  # 8 KiB left: the up-front check passes, the Parquet file does not fit
            subprocess.run(["dd", "if=/dev/zero", f"of={full / 'filler'}", "bs=4k", "count=14"], capture_output=True)
            done = _vae("evaluate", checkpoint, "--dataset", "digits", "--k", "5", "--output", str(full / "x.parquet"))
            assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].endswith(
                ": no space left on device"
            ), done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        finally:
            subprocess.run(["umount", str(readonly)])
    finally:
        subprocess.run(["umount", str(full)])


# -- What a model cannot read in a dataset: one line from the manifest and the checkpoint, before the
# model is built or Ray starts (--k 10**9 and --workers 2 would start hours of Ray work), nothing written.


def _save_model(directory: Path, model_config, image_shape: tuple[int, int]) -> str:
    """A training checkpoint of an untrained model of 8x8 images, as training writes it."""
    import torch

    from vae.models.model import CHECKPOINT_FILE, build_model

    directory.mkdir(parents=True)
    torch.manual_seed(0)
    model = build_model(model_config, 64, image_shape)
    state = {
        "model": model.state_dict(),
        "epoch": 1,
        "history": [],
        "model_config": model_config.model_dump(mode="json"),
    }
    torch.save({**state, "data_dim": 64, "image_shape": list(image_shape)}, directory / CHECKPOINT_FILE)
    return str(directory)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, checkpoint) -> dict[str, str]:
    """Models: an 8-bit (categorical) one and a conv one of 8x8 images, and the Bernoulli `checkpoint`.
    Datasets: digits (0..16), 8-bit 8x8 pixels, the same divided by 255 (0..1), and 4x16 8-bit pixels."""
    from vae.config import DatasetConfig, ModelConfig

    folder = tmp_path_factory.mktemp("inputs")
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8), dtype=np.uint8)
    made = {"bernoulli": checkpoint, "digits": ingest(gate_config("vae-cli").dataset).path}
    for name, images in (("bytes", pixels), ("scaled", pixels / np.float32(255)), ("wide", pixels.reshape(40, 4, 16))):
        np.savez(folder / f"{name}.npz", images=images)
        source = str(folder / f"{name}.npz")
        made[name] = ingest(DatasetConfig(name=f"cli-{name}", source=source, binarize="none")).path
    made["8bit"] = _save_model(
        folder / "8bit", ModelConfig(latent_dim=2, hidden=(8,), likelihood="categorical"), (8, 8)
    )
    conv = ModelConfig(latent_dim=2, hidden=(8,), architecture="conv", channels=(4,))
    made["conv"] = _save_model(folder / "conv", conv, (8, 8))
    return made


def _job(command: str, model: str, dataset: str, out: Path, *extra: str) -> list[str]:
    slow = {"evaluate": ["--k", str(10**9), "--workers", "2", "--output"], "score": ["--k", str(10**9), "--out"]}
    return [command, model, "--dataset", dataset, *slow.get(command, ["--out"]), str(out), *extra]


@pytest.mark.parametrize("command", ["evaluate", "score", "embed"])
@pytest.mark.parametrize("data, name, pixels", [("digits", "digits", "0..16"), ("scaled", "cli-scaled", "0..1")])
def test_an_8bit_model_refuses_pixels_that_are_not_8bit(inputs, tmp_path, command, data, name, pixels):
    line = _one_error_line(_job(command, inputs["8bit"], inputs[data], tmp_path / "out.parquet", "--binarize", "none"))
    assert line == (
        f"error: dataset '{name}' at {inputs[data]} holds pixels {pixels} (its manifest's value_range): model "
        f"likelihood 'categorical' needs 8-bit pixels 0..255; {command} it on a dataset of 8-bit pixels"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["evaluate", "score", "embed"])
def test_a_bare_8bit_checkpoint_is_not_given_binarised_pixels(inputs, tmp_path, command):
    # --binarize threshold (the default) made 0/1 inputs, read as pixels 0 and 255: a number, and wrong.
    line = _one_error_line(_job(command, inputs["8bit"], inputs["bytes"], tmp_path / "out.parquet"))
    assert line == (
        "error: --binarize threshold: model likelihood 'categorical' reads the 8-bit pixels themselves; "
        "expected --binarize none"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["evaluate", "score"])
def test_a_bernoulli_density_is_not_given_unbinarised_pixels(inputs, tmp_path, command):
    line = _one_error_line(
        _job(command, inputs["bernoulli"], inputs["digits"], tmp_path / "o.parquet", "--binarize", "none")
    )
    assert line == (
        "error: --binarize none: model likelihood 'bernoulli' is a probability of binary pixels; "
        "expected --binarize threshold or dynamic"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["evaluate", "score", "embed"])
def test_a_conv_model_refuses_images_of_another_shape(inputs, tmp_path, command):
    # 4x16 holds as many pixels as 8x8: only the shape tells them apart, and the conv layers read it.
    line = _one_error_line(
        _job(command, inputs["conv"], inputs["wide"], tmp_path / "out.parquet", "--binarize", "none")
    )
    assert line == (
        f"error: {inputs['wide']}: images are 4x16 but the model's networks read 8x8 images "
        f"({command} a dataset of the shape the model was trained on)"
    )
    assert list(tmp_path.iterdir()) == []


def test_inputs_a_model_can_read_pass_the_checks(inputs):
    from vae.data.datasets import read_manifest
    from vae.data.inputs import check_model_inputs
    from vae.models.model import read_checkpoint_state

    for model, data, binarize in (
        ("8bit", "bytes", "none"),
        ("conv", "bytes", "threshold"),
        ("bernoulli", "digits", "dynamic"),
    ):
        state = read_checkpoint_state(inputs[model])
        check_model_inputs(inputs[data], read_manifest(inputs[data]), state, binarize, "evaluate", density=True)
