"""`vae run colour-patches` in small: the real pipeline flow on Prefect, Ray and sqlite MLflow, RGB served."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient

from vae.config import load_pipelines
from vae.data.datasets import load_split
from vae.paths import tracking_uri

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipelines_file(tmp_path_factory):
    """colour-patches from pipelines.yaml with 1 epoch, small widths and k: the same data, likelihood, flow."""
    import yaml

    body = load_pipelines("pipelines.yaml")["colour-patches"].model_dump(mode="json", exclude={"name"})
    body["model"].update(latent_dim=4, channels=[8])
    body["training"].update(epochs=1, batch_size=64, workers=1, cpus_per_worker=1)
    body["evaluation"].update(k=4)
    body["registry"].update(model_name="vae-colour-e2e")
    path = tmp_path_factory.mktemp("colour") / "pipelines.yaml"
    path.write_text(yaml.safe_dump({"pipelines": {"colour-e2e": body}}))
    return path


@pytest.fixture(scope="module")
def pipeline_result(ray_session, prefect_server, pipelines_file):
    from flows.pipeline import pipeline_flow

    return pipeline_flow("colour-e2e", str(pipelines_file), return_state=True)


def test_colour_patches_registers_a_discretised_logistic_model_with_8bit_bits_per_dim(pipeline_result):
    assert pipeline_result.is_completed()
    result = pipeline_result.result()
    evaluation = result["evaluation"]
    assert evaluation["bits_per_dim_kind"] == "8bit" and evaluation["n"] == 450  # all test patches
    assert evaluation["bits_per_dim"] == pytest.approx(evaluation["nll"] / (3072 * np.log(2)))
    champion = MlflowClient(tracking_uri()).get_model_version_by_alias("vae-colour-e2e", "champion")
    assert champion.tags["bits_per_dim"] == f"{evaluation['bits_per_dim']:.4f} (8bit)"
    logged = {a.path for a in MlflowClient(tracking_uri()).list_artifacts(result["run_id"], "plots")}
    assert {"plots/reconstructions.png", "plots/samples.png"} <= logged


def test_the_served_model_embeds_rgb_channels_last_and_first_alike(pipeline_result):
    import mlflow.pyfunc

    result = pipeline_result.result()
    rows, _ = load_split(result["dataset"]["path"], "test")  # (N, 3072) channel-major
    first = rows[:5].reshape(5, 3, 32, 32).astype(np.float32)  # (N, 3, 32, 32)
    last = np.ascontiguousarray(first.transpose(0, 2, 3, 1))  # (N, 32, 32, 3)
    model = mlflow.pyfunc.load_model("models:/vae-colour-e2e@champion")
    z_first, z_last = model.predict(first)["z_mean"], model.predict(last)["z_mean"]
    assert z_first.shape == (5, 4)
    np.testing.assert_array_equal(z_first, z_last)
    np.testing.assert_array_equal(z_first, model.predict(rows[:5].astype(np.float32))["z_mean"])
    assert model.predict(first, params={"method": "reconstruct"})["x_mean"].shape == (5, 3, 32, 32)
