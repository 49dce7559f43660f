"""A user's own encoder and decoder, named by import path in pipelines.yaml from a file beside it:
`vae run` trains, evaluates and registers it (the module reaches the Ray workers), `vae evaluate` and
`vae embed` use the checkpoint in fresh processes, and `mlflow models serve` serves the champion after
the user's file is gone (the module travels inside the registered model). A broken import path, a
module that raises, or a network of the wrong shape is one line, nothing registered, no MLflow run."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers.services import mlflow_serve
from vae.jobs import embedding
from vae.evaluate import evaluation
from vae.registry import runs
from vae.train import checks, driver
from vae.tune import search as tuning
from vae.config import EvaluationConfig, load_pipeline
from vae.errors import ConfigError
from vae.data.ingest import ingest
from vae.models.model import CHECKPOINT_FILE, check_networks
from vae.paths import tracking_uri

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

NETS = '''"""A small conv encoder and decoder, as a user writes them beside pipelines.yaml."""
from torch import nn

from vae.models.conv import SubpixelMajor


def encoder(image_shape, latent_dim, params_per_subpixel, width=8):
    c, h, w = image_shape
    return nn.Sequential(
        nn.Unflatten(1, (c, h, w)),  # (B, C*H*W) → (B, C, H, W)
        nn.Conv2d(c, width, 3, stride=2, padding=1), nn.ReLU(),  # (B, width, H/2, W/2)
        nn.Flatten(), nn.Linear(width * ((h + 1) // 2) * ((w + 1) // 2), 2 * latent_dim),  # (B, 2L)
    )


def decoder(image_shape, latent_dim, params_per_subpixel, width=8):
    c, h, w = image_shape
    return nn.Sequential(
        nn.Linear(latent_dim, width * h * w), nn.ReLU(), nn.Unflatten(1, (width, h, w)),
        nn.Conv2d(width, c * params_per_subpixel, 3, padding=1),  # (N, C*P, H, W)
        SubpixelMajor(c, params_per_subpixel),  # (N, C*H*W*P)
    )


def mean_only(image_shape, latent_dim, params_per_subpixel, width=8):
    """Forgets the log-variance: (B, D) → (B, L) instead of (B, 2L)."""
    c, h, w = image_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, latent_dim))
'''

PIPELINES = """
pipelines:
  own-nets:
    dataset: {name: digits, source: "sklearn:digits", validation_fraction: 0.1}
    model:
      latent_dim: 4
      encoder: {factory: "own_nets_MODULE:ENCODER", args: {width: 8}}
      decoder: "own_nets_MODULE:decoder"
    training: {epochs: 2, batch_size: 128, workers: 1}
    evaluation: {k: 20}
    registry: {model_name: vae-own-nets-MODULE}
"""


def _write(folder: Path, module: str, encoder: str = "encoder", body: str = NETS) -> Path:
    """pipelines.yaml and own_nets_MODULE.py in `folder` (a module name of its own per test: no import cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"own_nets_{module}.py").write_text(body)
    path = folder / "pipelines.yaml"
    path.write_text(PIPELINES.replace("MODULE", module).replace("ENCODER", encoder))
    return path


def _all_runs() -> int:
    client = runs.client()
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=10_000))


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def test_a_users_networks_train_evaluate_embed_register_and_serve(ray_session, prefect_server, tmp_path):
    from flows.pipeline import pipeline_flow

    folder = tmp_path / "project"
    path = _write(folder, "run")
    # The suite's Ray started before this folder was known: its Train workers import the module
    # through the plan's code_dirs, not this process's search path.
    result = pipeline_flow("own-nets", str(path))
    checkpoint = result["checkpoint"]
    state = torch.load(Path(checkpoint) / CHECKPOINT_FILE, weights_only=True, mmap=True)
    assert state["model_config"]["encoder"] == {"factory": "own_nets_run:encoder", "args": {"width": 8}}
    assert state["code_dirs"] == [str(folder)]
    assert np.isfinite(result["evaluation"]["nll"]) and result["evaluation"]["k"] == 20
    model_uri = result["registration"]["model_uri"]

    # Ray tasks (evaluate across 2 workers) and Ray Data actors (embed) started before the user's folder
    # was known: they find the module through the checkpoint's code_dirs.
    scored = evaluation.score_checkpoint(
        checkpoint, result["dataset"]["path"], EvaluationConfig(k=5, workers=2), "threshold"
    )
    assert scored.summary["k"] == 5 and np.isfinite(scored.summary["nll"])
    out = tmp_path / "embedded.parquet"
    embedding.embed(checkpoint, "digits", out, splits=("test",), workers=2, binarize="threshold")
    table = pq.read_table(out)
    assert table.num_rows == result["evaluation"]["n"] and len(table.column("z_mean")[0]) == 4

    # The registered model carries the module: serve it with the user's file gone.
    (folder / "own_nets_run.py").rename(tmp_path / "elsewhere.py")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    with mlflow_serve(model_uri, {**env, "MLFLOW_TRACKING_URI": tracking_uri()}, cwd=tmp_path) as url:
        images = np.zeros((3, 8, 8))
        status, body = _post(f"{url}/invocations", {"inputs": images.tolist()})
        assert status == 200 and np.asarray(body["predictions"]["z_mean"]).shape == (3, 4)
        status, body = _post(f"{url}/invocations", {"inputs": images.tolist(), "params": {"method": "score", "k": 10}})
        assert status == 200 and np.isfinite(np.asarray(body["predictions"]["log_px"])).all()


@pytest.mark.parametrize(
    "factory, body, expected",
    [
        ("no_such_module_xyz:encoder", None, "module 'no_such_module_xyz' not found"),
        ("own_nets_MODULE:missing", None, "module 'own_nets_MODULE' has no attribute 'missing'"),
        ("own_nets_MODULE:encoder", "raise RuntimeError('broken on purpose')\n",
         "importing 'own_nets_MODULE' raised RuntimeError: broken on purpose"),
        ("own_nets_MODULE:CONSTANT", "CONSTANT = 3\n", "int is not callable"),
        ("not an import path", None, "expected an import path 'package.module:attr'"),
    ],
)  # fmt: skip
def test_a_broken_import_path_is_one_line_when_the_file_is_read(tmp_path, factory, body, expected):
    module = f"bad{abs(hash((factory, body))) % 10**8}"
    path = _write(tmp_path, module, body=body or NETS)
    path.write_text(path.read_text().replace(f"own_nets_{module}:encoder", factory.replace("MODULE", module)))
    with pytest.raises(ConfigError) as caught:
        load_pipeline("own-nets", path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: pipeline 'own-nets': ")
    assert expected.replace("MODULE", module) in message, message


def test_a_network_of_the_wrong_shape_is_one_line_before_an_mlflow_run_or_ray(tmp_path):
    """check_inputs runs in the train flow before its MLflow run starts, and in training before Ray."""
    path = _write(tmp_path / "project", "shape", encoder="mean_only")
    config = load_pipeline("own-nets", path)
    dataset = ingest(config.dataset)
    expected = (
        r"model.encoder 'own_nets_shape:mean_only': output shape \[2, 4\] on a batch of shape \[2, 64\] "
        r"\(images \[1, 8, 8\]\); expected \[2, 8\]: the mean and log-variance of latent_dim 4$"
    )
    with pytest.raises(ConfigError, match=expected):
        check_networks(config.model, 64, (8, 8))
    before = _all_runs()
    for check in (checks.check_inputs, driver.train):
        with pytest.raises(ConfigError, match=expected):
            check(config, dataset)
    assert _all_runs() == before  # no MLflow run was started


SEARCH = """
    search:
      trials: 2
      concurrent: 1
      scheduler: {kind: fifo}
      space:
        encoder: {choice: ["own_nets_MODULE:encoder", {factory: "own_nets_MODULE:encoder", args: {width: 4}}]}
"""


def test_vae_tune_searches_among_a_users_networks(ray_session, tmp_path):
    """A searched choice of networks: each trial trains its draw in a Tune actor that knew nothing of
    the user's folder; the best is registered with its own encoder in the model."""
    path = _write(tmp_path / "project", "tune")
    path.write_text(path.read_text().replace("epochs: 2", "epochs: 1") + SEARCH.replace("MODULE", "tune"))
    config = load_pipeline("own-nets", path)
    dataset = ingest(config.dataset)
    result = tuning.search(config, dataset, echo=None)
    choices = {
        json.dumps(value, sort_keys=True)
        for value in ("own_nets_tune:encoder", {"factory": "own_nets_tune:encoder", "args": {"width": 4}})
    }
    assert len(result.trials) == 2 and all(row["error"] is None for row in result.trials), result.trials
    assert {json.dumps(row["config"]["encoder"], sort_keys=True) for row in result.trials} <= choices
    state = torch.load(Path(result.best["checkpoint"]) / CHECKPOINT_FILE, weights_only=True, mmap=True)
    assert state["model_config"]["encoder"]["factory"] == "own_nets_tune:encoder"
    assert np.isfinite(result.evaluation["nll"])
