"""`vae score`, `vae sample` and `vae card` on a small registered model (no training), and `--json`.

References: `vae evaluate`'s per-example values (same k and seed), the same job in-process, the
registered weights rebuilt in-process, and the version's tags in the registry.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from tests.helpers.registry_helpers import gate_config, register, registered_model, save_checkpoint
from vae.cli import app
from vae.data.datasets import load_split, read_manifest
from vae.paths import tracking_uri

pytestmark = pytest.mark.integration
runner = CliRunner()
MODEL = "models:/vae-batch@champion"


def _json(args: list[str]) -> dict:
    """Run `vae ARGS --json` in-process: exit 0 and stdout is exactly one JSON object."""
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    return registered_model("vae-batch", 21, tmp_path_factory.mktemp("batch"))


@pytest.fixture(scope="module")
def scored(ray_session, registered, tmp_path_factory):
    _, dataset, _ = registered
    out = tmp_path_factory.mktemp("scored") / "scores.parquet"
    args = ["score", MODEL, "--dataset", dataset["path"], "--out", str(out), "--split", "test", "--split", "validation"]
    result = _json([*args, "--k", "20", "--seed", "3", "--workers", "2", "--batch-size", "100"])
    return out, pq.read_table(out), result


def test_score_writes_every_row_of_the_splits_with_its_lineage(scored, registered):
    _, dataset, registration = registered
    _, table, result = scored
    manifest = read_manifest(dataset["path"])
    for split in ("test", "validation"):
        rows = table.filter(pc.equal(table["split"], split))
        assert rows.column("row").to_pylist() == list(range(manifest["rows"][split]))
        assert rows.column("label").to_pylist() == load_split(dataset["path"], split)[1].tolist()
        assert result["splits"][split] == manifest["rows"][split]
        assert result["mean_log_px"][split] == pytest.approx(float(pc.mean(rows["log_px"]).as_py()))
    lineage = {
        "model_uri": MODEL,
        "model_name": "vae-batch",
        "model_version": str(registration.version),
        "dataset_hash": dataset["content_hash"],
        "k": 20,
        "seed": 3,
    }
    for column, value in lineage.items():
        assert set(table.column(column).to_pylist()) == {value}
    assert result["rows"] == table.num_rows and result["path"] == str(scored[0])
    assert np.isfinite(table.column("log_px").to_numpy()).all()
    assert (table.column("log_px").to_numpy() >= table.column("elbo").to_numpy() - 1e-9).all()  # IWAE ≥ ELBO


def test_score_equals_vae_evaluate_per_example(scored, registered, tmp_path):
    _, table, result = scored
    evaluated = tmp_path / "evaluate.parquet"
    args = ["evaluate", MODEL, "--dataset", registered[1]["path"], "--k", "20", "--seed", "3"]
    summary = _json([*args, "--output", str(evaluated)])
    reference = pq.read_table(evaluated)
    test = table.filter(pc.equal(table["split"], "test"))
    assert reference.column("row").to_pylist() == test.column("row").to_pylist()
    for column in ("log_px", "elbo", "ess"):
        np.testing.assert_allclose(test.column(column).to_numpy(), reference.column(column).to_numpy(), atol=1e-6)
    assert -summary["nll"] == pytest.approx(result["mean_log_px"]["test"], abs=1e-6)


def test_ray_data_scores_equal_the_in_process_reference(scored, registered, tmp_path):
    from vae.jobs import scoring
    from vae.config import ScoreConfig

    _, dataset, _ = registered
    _, table, _ = scored
    settings = ScoreConfig(splits=("test", "validation"), k=20, seed=3, batch_size=64)  # other ranges, same rows
    plain = scoring.score(MODEL, dataset["path"], tmp_path / "plain.parquet", settings, plain=True)
    reference = pq.read_table(plain.path)
    assert reference.schema == table.schema and reference.num_rows == table.num_rows
    for column in table.column_names:
        if column in ("log_px", "elbo", "ess"):  # other decoder batch shapes: float32 rounding only
            np.testing.assert_allclose(reference.column(column).to_numpy(), table.column(column).to_numpy(), atol=1e-6)
        else:
            assert reference.column(column).to_pylist() == table.column(column).to_pylist(), column


def test_existing_score_output_is_refused_unless_overwrite(scored, registered):
    _, dataset, _ = registered
    out, _, _ = scored
    before = out.read_bytes()
    refused = runner.invoke(app, ["score", MODEL, "--dataset", dataset["path"], "--out", str(out), "--k", "5"])
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines() == [
        f"error: {out}: output exists (expected a new path, or pass --overwrite to replace it)"
    ]
    assert out.read_bytes() == before
    bad = runner.invoke(app, ["score", MODEL, "--dataset", dataset["path"], "--out", str(out), "--k", "0"])
    assert bad.exit_code == 1 and bad.output.strip().splitlines() == ["error: --k 0: expected >= 1"]


def test_sample_is_seeded_atomic_and_matches_the_registered_decoder(registered, tmp_path, tmp_path_factory):
    from vae.models.model import model_from_state

    config, _, registration = registered
    first = _json(["sample", MODEL, "-n", "10", "--seed", "4", "--out", str(tmp_path / "a.npz")])
    again = _json(["sample", MODEL, "-n", "10", "--seed", "4", "--out", str(tmp_path / "b.npz")])
    other = _json(["sample", MODEL, "-n", "10", "--seed", "5", "--out", str(tmp_path / "c.npz")])
    assert first["model_version"] == str(registration.version) and first["shape"] == [8, 8]
    a, b, c = (np.load(result["path"]) for result in (first, again, other))
    assert a["z"].shape == (10, 2) and a["x_mean"].shape == a["x_sample"].shape == (10, 8, 8)
    for key in ("z", "x_mean", "x_sample"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["z"], c["z"])
    assert set(np.unique(a["x_sample"])) <= {0.0, 1.0}  # Bernoulli: binary draws
    # The registered version's weights, rebuilt in-process from the same seed: the reference decoder.
    state = torch.load(save_checkpoint(tmp_path_factory.mktemp("ref"), config.model, 64, 21) + "/checkpoint.pt")
    with torch.no_grad():
        means = model_from_state(state).mean_image(torch.from_numpy(a["z"]))
    np.testing.assert_allclose(a["x_mean"].reshape(10, 64), means.numpy(), rtol=1e-6, atol=1e-7)

    png = _json(["sample", MODEL, "-n", "10", "--seed", "4", "--out", str(tmp_path / "grid.png")])
    twin = _json(["sample", MODEL, "-n", "10", "--seed", "4", "--out", str(tmp_path / "twin.png")])
    assert open(png["path"], "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"
    assert open(png["path"], "rb").read() == open(twin["path"], "rb").read()
    refused = runner.invoke(app, ["sample", MODEL, "--out", str(tmp_path / "samples.jpg")])
    assert refused.exit_code == 1
    assert (
        refused.output.strip()
        == f"error: {tmp_path / 'samples.jpg'}: expected a .png (image grid) or .npz (arrays) output path"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "c.npz", "grid.png", "twin.png"]


def test_score_and_sample_flows_write_once_then_skip(ray_session, prefect_server, registered, tmp_path):
    from flows.sample import sample_flow
    from flows.score import score_flow

    _, dataset, registration = registered
    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text("""\
pipelines:
  batch-job:
    dataset: {name: digits, source: "sklearn:digits", validation_fraction: 0.1}
    model: {latent_dim: 2, hidden: [8]}
    registry: {model_name: vae-batch}
    score: {splits: [test], k: 5, seed: 1}
    sample: {n: 9, seed: 2, format: npz}
""")
    first = score_flow("batch-job", str(pipelines))
    assert not first["skipped"] and first["model_version"] == str(registration.version)
    assert first["rows"] == read_manifest(dataset["path"])["rows"]["test"] == pq.read_table(first["path"]).num_rows
    assert first["path"].endswith(f"vae-batch-v{registration.version}-{dataset['version']}-k5-seed1.parquet")
    assert score_flow("batch-job", str(pipelines))["skipped"]
    drawn = sample_flow("batch-job", str(pipelines))
    assert not drawn["skipped"] and np.load(drawn["path"])["x_mean"].shape == (9, 8, 8)
    assert sample_flow("batch-job", str(pipelines))["skipped"]


def test_deploy_plans_score_and_sample_deployments_only_where_declared(tmp_path):
    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text("""\
pipelines:
  jobs:
    dataset: {name: digits, source: "sklearn:digits"}
    registry: {model_name: vae-jobs}
    score: {k: 100, schedule: {interval_minutes: 60}}
    sample: {n: 16}
  plain:
    dataset: {name: digits, source: "sklearn:digits"}
    registry: {model_name: vae-plain}
""")
    result = runner.invoke(app, ["deploy", "--file", str(pipelines), "--dry-run"])
    assert result.exit_code == 0, result.output
    names = [line.split()[1] for line in result.output.splitlines() if line.startswith("create")]
    assert names == ["pipeline/jobs", "embed/jobs", "score/jobs", "sample/jobs", "pipeline/plain", "embed/plain"]
    assert "every 60 min" in next(line for line in result.output.splitlines() if "score/jobs" in line)


def test_model_card_states_the_version_tags(registered, tmp_path):
    from vae.registry import registration as stage
    from vae.registry import runs

    config = gate_config("vae-card")
    dataset = registered[1]
    first = register(config, 30.0, seed=31, workdir=tmp_path, dataset=dataset)  # the champion it meets
    run_id = runs.start_run(config, dataset)
    summary = {"nll": 29.5, "nll_stderr": 0.25, "bits_per_dim": 0.665, "elbo": -31.25, "elbo_gap": 1.75, "ess": 3.0,
               "k": 10, "n": 359, "split": "test", "device": "cpu", "active_units": 2, "latent_dim": 2}  # fmt: skip
    history = [
        {"epoch": e, "train_elbo": -40.0 + e, "validation_elbo": -41.0 + e, "training_minutes": 0.05 * e}
        for e in (1, 2)
    ]
    checkpoint = save_checkpoint(tmp_path / "second", config.model, 64, 32)
    second = stage.register_run(config, run_id, checkpoint, summary, dataset, history)
    tags = MlflowClient(tracking_uri()).get_model_version("vae-card", str(second.version)).tags
    printed = runner.invoke(app, ["card", f"models:/vae-card/{second.version}"])
    assert printed.exit_code == 0, printed.output
    card = printed.stdout
    assert card.startswith(f"# vae-card, version {second.version}\n")
    assert f"| test NLL | {tags['test_nll_pm']} nats (± s.e.) at k={tags['k']} importance samples" in card
    assert tags["test_nll_pm"] == "29.500 ± 0.250" and tags["k"] == "10"
    assert f"| ELBO gap | {tags['elbo_gap']} nats" in card and tags["elbo_gap"] == "1.750"
    assert f"| active units | {tags['active_units']} " in card and tags["active_units"] == "2 of 2"
    # the checkpoint is epoch 1's of a 2-epoch history: the card names the registered model's own epoch
    trained = f"{tags['epochs']} epochs in {tags['training_minutes']} min; this model is epoch {tags['model_epoch']}'s"
    assert f"| training | {trained} checkpoint (best validation ELBO) |" in card
    assert (tags["epochs"], tags["training_minutes"], tags["model_epoch"]) == ("2", "0.10", "1")
    assert f"digits@{tags['dataset_version']} (content hash `{tags['dataset_hash']}`)" in card
    assert tags["dataset_hash"] == dataset["content_hash"]
    assert f"| champion gate | {tags['gate']}; compared with version {first.version} (test NLL 30.000" in card
    assert tags["gate"] == "promoted" and "## Intended use" in card and "## Limits" in card
    missing = runner.invoke(app, ["card", f"models:/vae-card/{first.version}"])  # registered without a card
    assert missing.exit_code == 1 and "has no model card" in missing.output


def test_ingest_and_datasets_print_only_json_on_stdout(registered):
    manifest = _json(["ingest", "sklearn:digits", "--name", "digits", "--validation-fraction", "0.1"])
    assert manifest["content_hash"] == registered[1]["content_hash"]
    listing = runner.invoke(app, ["datasets", "--json"])
    assert listing.exit_code == 0 and registered[1]["path"] in [m["path"] for m in json.loads(listing.stdout)]
