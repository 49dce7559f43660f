"""A model registered by the code before a move of vae's modules (tests/fixtures/registered-model.tar.gz,
made by tests/fixtures/make_registered_model.py at the last flat layout) still loads and serves:
`mlflow models serve` of it answers what that code answered, and so does this checkout's code reading
its artifacts in a process where the new `vae` is already imported."""

from __future__ import annotations

import json
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.services import mlflow_serve

pytestmark = pytest.mark.integration
ARCHIVE = Path(__file__).resolve().parents[1] / "fixtures" / "registered-model.tar.gz"


@pytest.fixture(scope="module")
def old_model(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("old-model")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(folder, filter="data")
    model = folder / "model"
    return model, json.loads((model / "expected.json").read_text())


def _answers(predict, expected: dict) -> dict:
    """What the model answers for the images the old code answered for, by method."""
    images = np.asarray(expected["images"], dtype=np.float32)
    return {
        "encode": predict(images, {}),
        "reconstruct": predict(images, {"method": "reconstruct"})["x_mean"],
        "decode": predict(np.zeros((2, 8), dtype=np.float32), {"method": "decode"})["x_mean"],
        "score": predict(images, {"method": "score", "k": 50, "seed": 0})["log_px"],
    }


def _check(answers: dict, expected: dict) -> None:
    for key in ("z_mean", "z_logvar"):
        np.testing.assert_allclose(np.asarray(answers["encode"][key]), expected["encode"][key], rtol=1e-5, atol=1e-5)
    for method in ("reconstruct", "decode", "score"):
        np.testing.assert_allclose(np.asarray(answers[method]), expected[method], rtol=1e-5, atol=1e-4)


def test_mlflow_models_serve_of_a_model_registered_before_the_move_answers_as_it_did(old_model):
    model, expected = old_model
    with mlflow_serve(str(model)) as url:

        def predict(inputs: np.ndarray, params: dict) -> dict:
            body = json.dumps({"inputs": inputs.tolist(), **({"params": params} if params else {})}).encode()
            request = urllib.request.Request(
                f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["predictions"]

        _check(_answers(predict, expected), expected)


def test_this_checkouts_code_reads_a_model_registered_before_the_move(old_model):
    """In a process that imported this checkout's `vae` first (a notebook, a batch job), the old
    models-from-code file resolves its imports against the new modules: they must still answer."""
    import mlflow.pyfunc

    import vae.models.model  # noqa: F401  (the new code is what `vae` means in this process)

    model, expected = old_model
    loaded = mlflow.pyfunc.load_model(str(model))
    _check(_answers(lambda inputs, params: loaded.predict(inputs, params=params or None), expected), expected)
