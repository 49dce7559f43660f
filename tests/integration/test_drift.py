"""`vae drift` and the 'drift' flow on a small digits model trained here (15 epochs in-process, ~2 s) and
registered in the real test MLflow store; scored with real Ray Data, the flow on Prefect's test server.

References: the null (the model's own held-out splits) is not flagged; digits inverted, and digits made
simpler (each test digit replaced by its class's mean training image: more likely under the model than its
own test set, Nalisnick et al. 2019a's trap) are flagged, exit code 3; the output's rows and lineage against
the datasets' manifests and the registry; bad input is one line from a fresh process whose Ray address is
dead (so it must fail before Ray), with nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from vae.registry import runs, versions
from vae.cli import app
from vae.config import DatasetConfig, ModelConfig, PipelineConfig, RegistryConfig
from vae.data.datasets import load_split, read_manifest
from vae.data.ingest import ingest
from vae.data.inputs import prepare_inputs
from vae.models.model import CHECKPOINT_FILE, build_model
from vae.models.objectives import elbo
from vae.paths import tracking_uri

pytestmark = pytest.mark.integration
runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
MODEL = "models:/vae-drift@champion"
DIGITS = DatasetConfig(name="digits", source="sklearn:digits", validation_fraction=0.1)
FAST = ["--k", "100", "--bootstrap", "1000"]


def train_digits(directory: Path, config: ModelConfig, dataset_path: str, epochs: int = 15) -> str:
    """The digits pipeline's model and optimiser (Adam 3e-3, 32 images a step), trained here on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: more threads only contend
    try:
        torch.manual_seed(0)
        images, _ = load_split(dataset_path, "train")
        x = prepare_inputs(torch.from_numpy(np.array(images)), 16.0, "threshold")  # (N, 64) binary
        model = build_model(config, 64)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(epochs):
            order = torch.randperm(x.shape[0])
            for start in range(0, x.shape[0], 32):
                loss = -elbo(model, x[order[start : start + 32]]).elbo.mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    directory.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "epoch": epochs, "history": [], "data_dim": 64}
    torch.save({**state, "model_config": config.model_dump(mode="json")}, directory / CHECKPOINT_FILE)
    return str(directory)


def _ingest_images(images: np.ndarray, labels: np.ndarray, name: str, folder: Path) -> str:
    """Write images as a .npz and ingest it with `vae ingest` (pixels 0..16, as sklearn's digits)."""
    source = folder / f"{name}.npz"
    np.savez(source, images=images.astype(np.uint8), labels=labels.astype(np.int64))
    result = runner.invoke(app, ["ingest", str(source), "--name", name, "--max-value", "16", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["path"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The registered model (version of vae-drift@champion) and the datasets: digits, inverted, simpler."""
    folder = tmp_path_factory.mktemp("drift")
    digits = ingest(DIGITS).to_dict()
    config = PipelineConfig(
        name="vae-drift",
        dataset=DIGITS,
        model=ModelConfig(latent_dim=8, hidden=(128, 128), activation="tanh"),
        registry=RegistryConfig(model_name="vae-drift"),
    )
    checkpoint = train_digits(folder / "checkpoint", config.model, digits["path"])
    run_id = runs.start_run(config, digits)
    images, labels = load_split(digits["path"], "test")
    evaluation = {"nll": 18.5, "nll_stderr": 0.2, "k": 100, "split": "test", "bits_per_dim_kind": "binary"}
    registration = versions.register_model(
        config, run_id, checkpoint, evaluation, digits, read_manifest(digits["path"]), images[:2]
    )
    train, train_labels = load_split(digits["path"], "train")
    means = np.stack([train[train_labels == c].mean(0) for c in range(10)])  # (10, 64) class means
    simpler = np.where(means[labels] > 8, 16, 0).reshape(-1, 8, 8)  # each test digit → its class's mean, thresholded
    return {
        "folder": folder,
        "checkpoint": checkpoint,
        "digits": digits,
        "version": str(registration.version),
        "inverted": _ingest_images((16 - images).reshape(-1, 8, 8), labels, "digits-inverted", folder),
        "simpler": _ingest_images(simpler, labels, "digits-simpler", folder),
    }


def _drift(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["drift", MODEL, *args, *FAST, "--json"])
    assert result.exit_code in (0, 3), result.output
    return result.exit_code, json.loads(result.stdout)


def test_the_null_is_not_flagged_and_the_output_carries_its_lineage(ray_session, world):
    out = world["folder"] / "null.parquet"
    digits = world["digits"]["path"]  # a directory (a name would read the newest version of 'digits')
    code, result = _drift("--reference", f"{digits}:test", "--dataset", f"{digits}:validation", "--out", str(out))
    manifest = read_manifest(world["digits"]["path"])
    assert code == 0 and result["verdict"] == "no drift" and not result["drift"] and result["reasons"] == []
    table = pq.read_table(out)
    reference, new = (table.filter(pc.equal(table["set"], role)) for role in ("reference", "new"))
    assert reference.column("row").to_pylist() == list(range(manifest["rows"]["test"]))
    assert new.column("row").to_pylist() == list(range(manifest["rows"]["validation"]))
    assert set(reference.column("split").to_pylist()) == {"test"}
    assert set(new.column("split").to_pylist()) == {"validation"}
    assert new.column("label").to_pylist() == load_split(world["digits"]["path"], "validation")[1].tolist()
    lineage = {
        "model_uri": MODEL, "model_name": "vae-drift", "model_version": world["version"], "k": 100, "seed": 0,
        "reference_hash": manifest["content_hash"], "new_hash": manifest["content_hash"],
        "dataset_version": manifest["version"], "ood_method": "typicality",
    }  # fmt: skip
    for column, value in lineage.items():
        assert set(table.column(column).to_pylist()) == {value}, column
    log_px = table.column("log_px").to_numpy()
    np.testing.assert_allclose(table.column("bits_per_dim").to_numpy(), -log_px / (64 * np.log(2)))
    entropy = -reference.column("log_px").to_numpy().mean()
    assert result["statistics"]["entropy"] == pytest.approx(entropy)
    np.testing.assert_allclose(table.column("ood_score_typicality").to_numpy(), np.abs(-log_px - entropy))
    assert result["new"]["mean_log_px"] == pytest.approx(new.column("log_px").to_numpy().mean())
    assert json.loads(pq.read_schema(out).metadata[b"vae.drift"])["verdict"] == "no drift"
    # The MLflow run of the check: its verdict, numbers and files.
    client = MlflowClient(tracking_uri())
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["verdict"] == "no drift" and run.data.tags["model_version"] == world["version"]
    assert run.data.metrics["typicality_statistic"] == pytest.approx(result["statistics"]["typicality_statistic"])
    assert client.get_experiment(run.info.experiment_id).name == "vae-drift-drift"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    assert logged == {"drift/null.parquet", "drift/log_px_histogram.png", "drift/drift.json"}


def test_inverted_digits_are_drift_with_exit_code_3(ray_session, world):
    out = world["folder"] / "inverted.parquet"
    reference = f"{world['digits']['path']}:test"
    code, result = _drift("-r", reference, "-d", "digits-inverted", "--out", str(out), "--no-mlflow")
    assert code == 3 and result["drift"] and result["mlflow_run_id"] is None
    assert result["new"]["splits"] == ["train", "validation", "test"] and result["new"]["n"] == 359  # every split
    assert result["new"]["mean_log_px"] < result["reference"]["mean_log_px"] - 20
    assert result["statistics"]["new_ood_fraction"] > 0.9
    new = pq.read_table(out).filter(pc.equal(pq.read_table(out)["set"], "new"))
    assert set(new.column("new_hash").to_pylist()) == {read_manifest(world["inverted"])["content_hash"]}


def test_simpler_digits_are_drift_though_more_likely_than_the_test_set(ray_session, world):
    """Raw log p(x) calls the class-mean digits MORE in-distribution than real ones; the typicality test flags them."""
    out = world["folder"] / "simpler.parquet"
    reference = f"{world['digits']['path']}:test"
    result = runner.invoke(app, ["drift", MODEL, "-r", reference, "-d", "digits-simpler", "--out", str(out), *FAST])
    assert result.exit_code == 3, result.output
    [verdict] = [line for line in result.stdout.splitlines() if line.startswith("verdict")]
    assert verdict.startswith("verdict       DRIFT: typicality:") and "MORE likely" in verdict
    summary = json.loads(pq.read_schema(out).metadata[b"vae.drift"])
    assert summary["new"]["mean_log_px"] > summary["reference"]["mean_log_px"]  # higher likelihood...
    assert summary["statistics"]["new_raw_flagged_fraction"] == 0.0  # ...so a likelihood threshold passes every row
    table = pq.read_table(out)
    roles = np.array(table.column("set").to_pylist())
    from vae.jobs.drift_statistics import auroc

    raw, typical = (table.column(c).to_numpy() for c in ("ood_score_raw", "ood_score_typicality"))
    assert auroc(raw[roles == "reference"], raw[roles == "new"]) < 0.3
    assert auroc(typical[roles == "reference"], typical[roles == "new"]) > 0.6


def _fresh_vae(*args: str) -> subprocess.CompletedProcess:
    """`vae ARGS` in a new process whose RAY_ADDRESS is dead: reaching Ray would fail differently (or hang)."""
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    command = [sys.executable, "-m", "vae", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=REPO)


def test_bad_input_is_one_line_before_ray_starts_and_nothing_is_written(world):
    folder = world["folder"]
    tiny = _ingest_images(np.ones((20, 4, 4)), np.zeros(20), "tiny-images", folder)
    empty = ingest(DatasetConfig(name="digits-noval", source="sklearn:digits", validation_fraction=0.0)).path
    eight_bit = folder / "eight-bit-checkpoint"  # an 8-bit likelihood's model, untrained: only its contract matters
    eight_bit.mkdir()
    config = ModelConfig(latent_dim=8, hidden=(16,), likelihood="discretized_logistic")
    state = {"model": build_model(config, 64).state_dict(), "epoch": 0, "history": [], "data_dim": 64}
    torch.save({**state, "model_config": config.model_dump(mode="json")}, eight_bit / CHECKPOINT_FILE)
    digits = world["digits"]["path"]
    for checkpoint, new, message in [
        (world["checkpoint"], "tiny-images",
         f"error: {tiny}: images are 4x4 (16 pixels) but the model expects 64 pixels per image "
         "(score a dataset of the shape the model was trained on)"),
        (world["checkpoint"], f"{empty}:validation",
         f"error: {empty}: split 'validation' is empty (expected at least one image)"),
        (str(eight_bit), "digits-inverted",  # vae score's own check: digits hold 0..16, not 8-bit pixels
         f"error: dataset 'digits' at {digits} holds pixels 0..16 (its manifest's value_range): model likelihood "
         "'discretized_logistic' needs 8-bit pixels 0..255; score it on a dataset of 8-bit pixels"),
    ]:  # fmt: skip
        out = folder / "refused.parquet"
        reference = f"{digits}:test"
        done = _fresh_vae("drift", checkpoint, "-r", reference, "-d", new, "--out", str(out))
        assert done.returncode == 1 and done.stderr.strip().splitlines() == [message] and done.stdout == ""
        assert not out.exists() and not [p for p in folder.iterdir() if p.name.startswith(".refused")]


def test_drift_flow_fails_on_drift_publishes_artifacts_and_skips_unchanged_inputs(
    ray_session, prefect_server, world, tmp_path
):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.utilities.asyncutils import run_coro_as_sync

    from flows.drift import drift_flow

    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text(
        "pipelines:\n  watched:\n    dataset: {name: digits, source: 'sklearn:digits', validation_fraction: 0.1}\n"
        "    registry: {model_name: vae-drift}\n"
        f"    drift: {{ingest: {{name: digits-inverted, source: '{world['folder'] / 'digits-inverted.npz'}', "
        "max_value: 16}, k: 100, bootstrap: 500}\n"
    )  # the new data's source, ingested by the flow (the same content as the CLI's: the same version)
    client = MlflowClient(tracking_uri())

    def checks() -> int:
        """MLflow runs of checks of digits-inverted (experiment MODEL_NAME-drift)."""
        experiment = client.get_experiment_by_name("vae-drift-drift")
        if experiment is None:
            return 0
        return len(client.search_runs([experiment.experiment_id], "tags.new_dataset LIKE 'digits-inverted@%'"))

    before = checks()
    state = drift_flow("watched", str(pipelines), return_state=True)
    assert state.is_failed() and "DriftDetected: drift detected in digits-inverted@" in state.message
    assert checks() == before + 1

    async def latest(key: str):
        async with get_client() as prefect:
            return (await prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))))[0]

    rows = {row["quantity"]: row["value"] for row in json.loads(run_coro_as_sync(latest("drift-watched-verdict")).data)}
    assert rows["verdict"].startswith("DRIFT: typicality:")
    assert rows["model"].startswith(f"models:/vae-drift@champion (version {world['version']})")
    histogram = run_coro_as_sync(latest("drift-watched-histogram"))
    assert "data:image/png;base64,iVBORw0KGgo" in str(histogram.data)  # a PNG, inline
    link = run_coro_as_sync(latest("drift-watched-mlflow-run"))
    assert "/runs/" in str(link.data)
    # The same model version, datasets and protocol: not scored again, and the stored verdict fails the run again.
    again = drift_flow("watched", str(pipelines), return_state=True)
    assert again.is_failed() and again.message == state.message and checks() == before + 1


def test_vae_deploy_plans_a_drift_deployment_on_its_schedule(tmp_path):
    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text(
        "pipelines:\n  watched:\n    dataset: {name: digits, source: 'sklearn:digits'}\n    registry: {model_name: vae-w}\n"
        "    drift: {dataset: incoming, schedule: {interval_minutes: 720}}\n"
    )
    result = runner.invoke(app, ["deploy", "--file", str(pipelines), "--dry-run"])
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if "drift/watched" in line]
    assert line.split()[0] == "create" and "every 720 min" in line
