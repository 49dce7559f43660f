"""`vae embed`: a registered model over a dataset with Ray Data actors, into one Parquet file.

The reference is the served pyfunc of the same model version (MLflow's own loader) applied to
the same split in memory; bad input is one line, a nonzero exit and no file.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.helpers.registry_helpers import registered_model
from vae.cli import app
from vae.data.ingest import ingest
from vae.data.datasets import load_split, read_manifest

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    return registered_model("vae-embed", 11, tmp_path_factory.mktemp("embed"))


@pytest.fixture(scope="module")
def embedded(ray_session, registered, tmp_path_factory):
    _, dataset, _ = registered
    out = tmp_path_factory.mktemp("embedded") / "digits.parquet"
    arguments = ["embed", "models:/vae-embed@champion", "--dataset", dataset["path"], "--out", str(out)]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = runner.invoke(app, [*arguments, "--workers", "2", "--batch-size", "100"])
    assert result.exit_code == 0, result.output
    return out, pq.read_table(out), [str(warning.message) for warning in said]


def test_every_row_of_every_split_is_embedded_once_in_order(embedded, registered):
    _, dataset, _ = registered
    _, table, _ = embedded
    manifest = read_manifest(dataset["path"])
    for split in ("train", "validation", "test"):
        rows = table.filter(pc.equal(table["split"], split))
        assert rows.column("row").to_pylist() == list(range(manifest["rows"][split]))
        _, labels = load_split(dataset["path"], split)
        assert rows.column("label").to_pylist() == labels.tolist()


def test_ray_data_does_not_warn_of_actors_without_input(embedded):
    """Ray Data warns when a pool has more actors than inputs: Ray 2.60's `read_parquet` made the 1,797 rows of
    digits' three files one block, so the second actor of `--workers 2` had nothing to encode."""
    _, _, said = embedded
    assert [message for message in said if "concurrent actors" in message] == []


def test_latents_match_the_registered_pyfunc(embedded, registered):
    """Every split, row by row, against MLflow's own loader given the whole split in memory: this checks how the
    job cut the splits into ranges, which the in-process reference below shares."""
    import mlflow.pyfunc

    _, dataset, registration = registered
    _, table, _ = embedded
    served = mlflow.pyfunc.load_model(registration.model_uri)
    for split in ("train", "validation", "test"):
        rows = table.filter(pc.equal(table["split"], split))
        images, _ = load_split(dataset["path"], split)
        reference = served.predict(images.astype(np.float32))
        z_mean = np.stack(rows.column("z_mean").to_numpy(zero_copy_only=False))
        z_logvar = np.stack(rows.column("z_logvar").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(z_mean, reference["z_mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z_logvar, reference["z_logvar"], rtol=1e-5, atol=1e-6)


def test_ray_data_output_equals_the_in_process_reference(embedded, registered, tmp_path):
    from vae.jobs import embedding

    _, dataset, _ = registered
    out, table, _ = embedded
    reference = embedding.embed("models:/vae-embed@champion", dataset["path"], tmp_path / "plain.parquet", plain=True)
    plain = pq.read_table(reference.path)
    assert plain.schema == table.schema and plain.num_rows == table.num_rows
    for column in ("split", "row", "label", "model_version", "dataset_hash"):
        assert plain.column(column).to_pylist() == table.column(column).to_pylist()
    np.testing.assert_allclose(
        np.stack(plain.column("z_mean").to_numpy(zero_copy_only=False)),
        np.stack(table.column("z_mean").to_numpy(zero_copy_only=False)),
        rtol=1e-6,
        atol=1e-7,
    )


def test_rows_name_the_model_version_and_dataset_hash(embedded, registered):
    _, dataset, registration = registered
    _, table, _ = embedded
    assert set(table.column("model_name").to_pylist()) == {"vae-embed"}
    assert set(table.column("model_version").to_pylist()) == {str(registration.version)}
    assert set(table.column("model_uri").to_pylist()) == {"models:/vae-embed@champion"}
    assert set(table.column("dataset_hash").to_pylist()) == {dataset["content_hash"]}


def test_existing_output_is_refused_unless_overwrite(embedded, registered):
    _, dataset, _ = registered
    out, _, _ = embedded
    before = out.read_bytes()
    refused = runner.invoke(
        app, ["embed", "models:/vae-embed@champion", "--dataset", dataset["path"], "--out", str(out), "--split", "test"]
    )
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines() == [
        f"error: {out}: output exists (expected a new path, or pass --overwrite to replace it)"
    ]
    assert out.read_bytes() == before
    replaced = runner.invoke(
        app,
        [
            "embed",
            "models:/vae-embed@champion",
            "--dataset",
            dataset["path"],
            "--out",
            str(out),
            "--split",
            "test",
            "--overwrite",
        ],
    )
    assert replaced.exit_code == 0, replaced.output
    assert pq.read_table(out).column("split").to_pylist() == ["test"] * read_manifest(dataset["path"])["rows"]["test"]


def test_alias_that_does_not_exist_is_one_line_and_writes_nothing(registered, tmp_path):
    _, dataset, _ = registered
    out = tmp_path / "none.parquet"
    result = runner.invoke(
        app, ["embed", "models:/vae-embed@no-such-alias", "--dataset", dataset["path"], "--out", str(out)]
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model 'models:/vae-embed@no-such-alias':")
    assert "no-such-alias" in lines[0] and not out.exists() and list(tmp_path.iterdir()) == []


def test_dataset_of_the_wrong_shape_is_one_line_and_writes_nothing(registered, tmp_path):
    from vae.config import DatasetConfig

    source = tmp_path / "small.npy"
    np.save(source, np.random.default_rng(0).integers(0, 255, size=(40, 4, 4), dtype=np.uint8))
    small = ingest(DatasetConfig(name="small-images", source=str(source)), root=tmp_path / "datasets")
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["embed", "models:/vae-embed@champion", "--dataset", small.path, "--out", str(out)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {small.path}: images are 4x4 (16 pixels) but the model expects 64 pixels per image "
        "(embed a dataset of the shape the model was trained on)"
    ]
    assert not out.exists() and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".out.parquet*"))


def test_embed_flow_embeds_a_new_champion_once(ray_session, prefect_server, registered, tmp_path):
    """The scheduled job 'embed/NAME': the champion's first run writes, the next finds nothing new."""
    from flows.embed import embed_flow
    from vae.paths import embeddings_dir

    _, dataset, registration = registered
    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text("""\
pipelines:
  embed-job:
    dataset: {name: digits, source: "sklearn:digits", validation_fraction: 0.1}
    model: {latent_dim: 2, hidden: [8]}
    registry: {model_name: vae-embed}
    embedding: {model_alias: champion, splits: [test]}
""")
    first = embed_flow("embed-job", str(pipelines))
    expected = embeddings_dir() / "digits" / f"vae-embed-v{registration.version}-{dataset['version']}.parquet"
    assert not first["skipped"] and first["path"] == str(expected)
    assert first["rows"] == read_manifest(dataset["path"])["rows"]["test"] == pq.read_table(expected).num_rows
    second = embed_flow("embed-job", str(pipelines))
    assert second["skipped"] and second["path"] == str(expected)
