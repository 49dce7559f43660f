"""Bad command lines and unusable folders: one `error: …` line, exit 1, before any work starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers.registry_helpers import gate_config, save_checkpoint
from vae.cli import app
from vae.ingest import ingest

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
