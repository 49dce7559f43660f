"""`mlflow models serve` of the champion: encode, reconstruct, decode and score, each equal to the
in-process model; (N, D) and (N, H, W) inputs; bad requests are one short 4xx message."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import numpy as np
import pytest

import torch

from tests.helpers.registry_helpers import gate_config, register, save_checkpoint
from tests.helpers.services import mlflow_serve
from vae.paths import tracking_uri
from vae.data.ingest import ingest
from vae.data.datasets import load_split
from vae.data.inputs import prepare_inputs
from vae.evaluate.estimators import estimate_log_likelihood
from vae.models.model import load_checkpoint

pytestmark = pytest.mark.integration


def _post(url: str, body: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = gate_config("vae-serve")
    register(config, 30.0, seed=5, workdir=tmp_path_factory.mktemp("serve"))
    # The registered version's weights, rebuilt in-process from the same seed: the reference.
    reference = load_checkpoint(save_checkpoint(tmp_path_factory.mktemp("reference"), config.model, 64, 5))[0]
    with mlflow_serve("models:/vae-serve@champion", {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri()}) as url:
        yield url, config, reference


def _invoke(url: str, inputs, **params) -> tuple[int, dict]:
    body = {"inputs": np.asarray(inputs).tolist(), **({"params": params} if params else {})}
    return _post(f"{url}/invocations", json.dumps(body))


def test_served_champion_returns_latents_of_the_right_shape(server):
    url, config, _ = server
    images, _ = load_split(ingest(config.dataset).path, "test")
    status, body = _post(f"{url}/invocations", json.dumps({"inputs": images[:5].astype(float).tolist()}))
    assert status == 200, body
    z_mean = np.asarray(body["predictions"]["z_mean"])
    assert z_mean.shape == (5, 2) and np.asarray(body["predictions"]["z_logvar"]).shape == (5, 2)


def test_every_method_equals_the_in_process_model_and_images_may_come_as_n_h_w(server):
    url, config, model = server
    images, _ = load_split(ingest(config.dataset).path, "test")
    pixels = images[:5].astype(np.float32)  # (5, 64) on the digits' scale 0..16
    x = prepare_inputs(torch.from_numpy(pixels), 16.0, "threshold")
    with torch.no_grad():
        mean, logvar = model.encode(x)
        reconstruction = (model.mean_image(mean) * 16.0).reshape(5, 8, 8)
        z = torch.tensor([[0.0, 0.0], [1.5, -2.0]])
        decoded = (model.mean_image(z) * 16.0).reshape(2, 8, 8)
    status, body = _invoke(url, pixels.reshape(5, 8, 8))  # (N, H, W), the default method
    assert status == 200, body
    assert np.allclose(body["predictions"]["z_mean"], mean.numpy(), atol=1e-5)
    assert np.allclose(body["predictions"]["z_logvar"], logvar.numpy(), atol=1e-5)
    status, body = _invoke(url, pixels, method="reconstruct")
    assert status == 200 and np.allclose(body["predictions"]["x_mean"], reconstruction.numpy(), atol=1e-4)
    status, body = _invoke(url, z.numpy(), method="decode")
    assert status == 200 and np.allclose(body["predictions"]["x_mean"], decoded.numpy(), atol=1e-4)
    # score at k=5000 is `vae evaluate`'s per-example estimate of the same rows with the same seed.
    status, body = _invoke(url, pixels, method="score", k=5000, seed=3)
    reference = estimate_log_likelihood(model, x, 5000, seed=3)
    assert status == 200, body
    assert np.allclose(body["predictions"]["log_px"], reference.log_px.numpy(), atol=1e-4)
    assert np.allclose(body["predictions"]["elbo"], reference.elbo.numpy(), atol=1e-4)


def test_bad_requests_are_one_short_4xx_without_the_array(server):
    url, _, _ = server
    big = np.zeros((50, 7))
    for inputs, params, expected in (
        (big, {}, "shape"),
        (np.zeros((2, 64)), {"method": "sample"}, "method"),
        (np.zeros((2, 64)), {"method": "score", "k": 0}, "k"),
        (np.zeros((2, 3)), {"method": "decode"}, "latents"),
    ):
        status, body = _invoke(url, inputs, **params)
        assert 400 <= status < 500, body
        assert expected in body["message"] and len(body["message"]) < 200 and "\n" not in body["message"]


def test_wrong_shape_is_a_clear_4xx(server):
    url, _, _ = server
    status, body = _post(f"{url}/invocations", json.dumps({"inputs": [[0.0, 1.0, 2.0]]}))
    assert 400 <= status < 500
    assert "shape" in body["message"].lower() and "Traceback" not in body["message"]


def test_nan_pixels_are_a_clear_4xx(server):
    url, _, _ = server
    row = [0.0] * 63 + [float("nan")]
    status, body = _post(f"{url}/invocations", json.dumps({"inputs": [row]}))
    assert 400 <= status < 500
    assert "NaN" in body["message"] and "Traceback" not in body["message"]
