"""The digits pipeline end to end on real Prefect, real local Ray (2 workers) and sqlite MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from vae.config import load_pipeline

from vae.paths import tracking_uri
from vae.data.datasets import load_split

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# The embedded demo itself: the `digits` model and training settings of the repository's
# pipelines.yaml (k lowered to keep the test short), under a model name of its own.
DEMO = load_pipeline("digits", REPO / "pipelines.yaml")
PIPELINES = yaml.safe_dump({"pipelines": {"digits-e2e": {
    "dataset": {"name": "digits", "source": "sklearn:digits", "binarize": "threshold"},
    "model": DEMO.model.model_dump(mode="json"),
    "training": DEMO.training.model_dump(mode="json"),
    "evaluation": {"k": 500},
    "registry": {"model_name": "vae-e2e"},
}}})  # fmt: skip
DEMO_NLL_BEFORE = 23.48  # nats: the demo before its settings were fixed (KL 0.6 nats, a collapsed posterior)


@pytest.fixture(scope="module")
def pipelines_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e") / "pipelines.yaml"
    path.write_text(PIPELINES)
    return path


@pytest.fixture(scope="module")
def pipeline_result(ray_session, prefect_server, pipelines_file):
    from flows.pipeline import pipeline_flow

    state = pipeline_flow("digits-e2e", str(pipelines_file), return_state=True)
    return state


def test_flow_run_completes_in_prefect(pipeline_result):
    assert pipeline_result.is_completed()


def test_the_demo_uses_its_latent_space_and_beats_its_old_nll(pipeline_result):
    evaluation = pipeline_result.result()["evaluation"]
    assert evaluation["active_units"] >= 3, evaluation
    assert evaluation["nll"] < DEMO_NLL_BEFORE, evaluation


def test_registry_holds_the_model_with_champion_alias_and_tags(pipeline_result):
    result = pipeline_result.result()
    client = MlflowClient(tracking_uri())
    champion = client.get_model_version_by_alias("vae-e2e", "champion")
    assert result["registration"]["model_uri"] == f"models:/vae-e2e/{champion.version}"
    assert champion.tags["dataset_hash"] == result["dataset"]["content_hash"]
    assert float(champion.tags["test_nll"]) == pytest.approx(result["evaluation"]["nll"], abs=1e-5)
    assert champion.tags["k"] == "500" and champion.tags["code_version"]
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    logged = {
        a.path for folder in ("plots", "dataset", "evaluation") for a in client.list_artifacts(result["run_id"], folder)
    }
    assert {
        "plots/elbo_curve.png",
        "plots/reconstructions.png",
        "plots/samples.png",
        "plots/latent_scatter.png",
        "plots/latent_traversal.png",
        "plots/interpolation.png",
        "dataset/manifest.json",
        "evaluation/evaluation.json",
    } <= logged
    run = client.get_run(result["run_id"])
    assert run.data.params["training.epochs"] == str(DEMO.training.epochs)
    assert run.data.metrics["test_nll"] == pytest.approx(result["evaluation"]["nll"])


def test_champion_pyfunc_returns_latents_of_the_right_shape(pipeline_result):
    import mlflow.pyfunc

    result = pipeline_result.result()
    images, _ = load_split(result["dataset"]["path"], "test")
    model = mlflow.pyfunc.load_model("models:/vae-e2e@champion")
    out = model.predict(images[:7].astype(np.float32))
    latent = DEMO.model.latent_dim
    assert out["z_mean"].shape == (7, latent) and out["z_logvar"].shape == (7, latent)
    assert np.isfinite(out["z_mean"]).all()


def test_validation_elbo_improves_and_is_logged_per_epoch(pipeline_result):
    result = pipeline_result.result()
    history = MlflowClient(tracking_uri()).get_metric_history(result["run_id"], "validation_elbo")
    steps = sorted((m.step, m.value) for m in history)
    assert [s for s, _ in steps] == list(range(1, DEMO.training.epochs + 1))
    assert steps[-1][1] > steps[0][1]
    # The evaluation is a sound bound check: IS estimate of log p(x) lies above the ELBO.
    assert -result["evaluation"]["nll"] > result["evaluation"]["elbo"]


@pytest.fixture(scope="module")
def rerun_result(pipeline_result, pipelines_file):
    """The same pipeline again on unchanged data, as a schedule firing would run it."""
    from flows.pipeline import pipeline_flow

    before = len(MlflowClient(tracking_uri()).search_model_versions("name = 'vae-e2e'"))
    return before, pipeline_flow("digits-e2e", str(pipelines_file))


def test_unchanged_data_reuses_training_and_registers_nothing_new(pipeline_result, rerun_result):
    first = pipeline_result.result()
    versions_before, second = rerun_result
    assert not first["reused"] and second["reused"]
    assert second["run_id"] == first["run_id"] and second["checkpoint"] == first["checkpoint"]
    assert second["evaluation"]["nll"] == first["evaluation"]["nll"]
    assert len(MlflowClient(tracking_uri()).search_model_versions("name = 'vae-e2e'")) == versions_before
    assert second["registration"]["model_uri"] == first["registration"]["model_uri"]


def test_flow_run_publishes_evaluation_table_and_mlflow_link(pipeline_result):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.utilities.asyncutils import run_coro_as_sync

    result = pipeline_result.result()

    async def latest(key: str):
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return found[0]

    table = run_coro_as_sync(latest("digits-e2e-evaluation"))
    link = run_coro_as_sync(latest("digits-e2e-mlflow-run"))
    assert table.type == "table" and link.type == "markdown"  # Prefect stores a link as markdown
    rows = {row["quantity"]: row["value"] for row in json.loads(table.data)}
    assert rows["test NLL (k=500, 359 test images)"] == (
        f"{result['evaluation']['nll']:.3f} ± {result['evaluation']['nll_stderr']:.3f} nats"
    )
    assert rows["model"] == result["registration"]["model_uri"]
    assert f"/runs/{result['run_id']}" in str(link.data)
