"""`vae evaluate` and the scoring stage: Ray-split equals one process; bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers.registry_helpers import gate_config, register, save_checkpoint
from vae.evaluate import evaluation
from vae.config import DatasetConfig, EvaluationConfig, ModelConfig
from vae.data.ingest import SourceArrays, ingest, write_dataset

pytestmark = pytest.mark.integration


def _vae(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vae", *args], cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("eval") / "ckpt", ModelConfig(latent_dim=3, hidden=(16,)), 64, 0)


def test_ray_split_evaluation_equals_one_process(ray_session, digits_checkpoint):
    dataset = ingest(DatasetConfig(name="digits", source="sklearn:digits")).path
    one = evaluation.score_checkpoint(digits_checkpoint, dataset, EvaluationConfig(k=200, workers=1), "threshold")
    three = evaluation.score_checkpoint(digits_checkpoint, dataset, EvaluationConfig(k=200, workers=3), "threshold")
    assert torch.allclose(one.estimate.log_px, three.estimate.log_px, atol=1e-6, rtol=0)
    assert one.summary["n"] == three.summary["n"] == 359


def test_cli_evaluates_a_registered_model_and_writes_per_example_parquet(tmp_path):
    register(gate_config("vae-eval"), 30.0, seed=0, workdir=tmp_path)
    out = tmp_path / "per-example.parquet"
    result = _vae(
        "evaluate",
        "models:/vae-eval@champion",
        "--dataset",
        "digits",
        "--k",
        "50",
        "--json",
        "--output",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    table = pq.read_table(out).to_pandas()
    assert len(table) == summary["n"] == 359
    assert summary["nll"] == pytest.approx(-table["log_px"].mean())
    assert summary["elbo_gap"] == pytest.approx((table["log_px"] - table["elbo"]).mean())
    assert summary["iwae_bound"] == -summary["nll"] and summary["elbo"] < summary["iwae_bound"]


def _error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip()


def test_bad_inputs_are_one_line_with_nonzero_exit(tmp_path, digits_checkpoint):
    ingest(DatasetConfig(name="digits", source="sklearn:digits"))
    assert _error(_vae("evaluate", "models:/no-such@champion", "--dataset", "digits", cwd=tmp_path)) == (
        "error: model 'models:/no-such@champion': Registered Model with name=no-such not found"
    )
    assert _error(_vae("evaluate", digits_checkpoint, "--dataset", "digits", "--k", "0", cwd=tmp_path)) == (
        "error: --k 0: expected >= 1"
    )
    # A 4x4 dataset for a model of 8x8 images: both shapes named.
    small = write_dataset(
        SourceArrays(np.zeros((20, 4, 4), np.uint8), None, "zeros", "z" * 64, 16.0),
        DatasetConfig(name="small", source="zeros", validation_fraction=0.0),
        root=tmp_path,
    )
    assert _error(_vae("evaluate", digits_checkpoint, "--dataset", small.path, cwd=tmp_path)) == (
        f"error: {small.path}: images are 4x4 (16 pixels) but the model expects 64 pixels per image "
        "(evaluate a dataset of the shape the model was trained on)"
    )
    # An 8x8 dataset without validation rows: the model can read it, the split is empty.
    empty = write_dataset(
        SourceArrays(np.zeros((20, 8, 8), np.uint8), None, "zeros8", "y" * 64, 16.0),
        DatasetConfig(name="small8", source="zeros8", validation_fraction=0.0),
        root=tmp_path,
    )
    assert _error(
        _vae("evaluate", digits_checkpoint, "--dataset", empty.path, "--split", "validation", cwd=tmp_path)
    ) == (f"error: {empty.path}: split 'validation' is empty (expected at least one image)")
    assert not list(tmp_path.glob("*.parquet")) and not (tmp_path / "evaluations").exists()
