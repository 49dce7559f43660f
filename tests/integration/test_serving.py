"""`mlflow models serve` of the champion answers image requests with latents; bad input is a 4xx."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from registry_helpers import gate_config, register
from vae.config import tracking_uri
from vae.data import ingest, load_split

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)  # `mlflow models serve --env-manager local` execs uvicorn
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "MLFLOW_TRACKING_URI": tracking_uri()}
    process = subprocess.Popen(
        [f"{bin_dir}/mlflow", "models", "serve", "-m", "models:/vae-serve@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow models serve exited: {process.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("mlflow models serve did not answer /ping within 120 s")
    yield url, config
    process.terminate()
    process.wait(timeout=30)


def test_served_champion_returns_latents_of_the_right_shape(server):
    url, config = server
    images, _ = load_split(ingest(config.dataset).path, "test")
    status, body = _post(f"{url}/invocations", json.dumps({"inputs": images[:5].astype(float).tolist()}))
    assert status == 200, body
    z_mean = np.asarray(body["predictions"]["z_mean"])
    assert z_mean.shape == (5, 2) and np.asarray(body["predictions"]["z_logvar"]).shape == (5, 2)


def test_wrong_shape_is_a_clear_4xx(server):
    url, _ = server
    status, body = _post(f"{url}/invocations", json.dumps({"inputs": [[0.0, 1.0, 2.0]]}))
    assert 400 <= status < 500
    assert "shape" in body["message"].lower() and "Traceback" not in body["message"]


def test_nan_pixels_are_a_clear_4xx(server):
    url, _ = server
    row = [0.0] * 63 + [float("nan")]
    status, body = _post(f"{url}/invocations", json.dumps({"inputs": [row]}))
    assert 400 <= status < 500
    assert "NaN" in body["message"] and "Traceback" not in body["message"]
