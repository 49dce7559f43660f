"""Every source format to the same Parquet splits; official and random splits; streaming; URLs."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tests.helpers.ingest_helpers import Route, loopback_server, sorted_rows, tree, write_idx, write_idx_folder
from PIL import Image

from vae.data import ingest as ingestion
from vae.data import sources


from vae.config import DatasetConfig
from vae.data.ingest import ingest, ingest_status
from vae.data.datasets import SPLITS, load_split, read_manifest
from vae.data.inputs import prepare_inputs
from vae.errors import DataError

N, SIDE = 40, 6
RNG = np.random.default_rng(7)
IMAGES = RNG.integers(0, 256, size=(N, SIDE, SIDE), dtype=np.uint8)  # (N, 6, 6)
LABELS = RNG.integers(0, 5, size=N).astype(np.int64)  # (N,)


def _splits(path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    return {split: load_split(path, split) for split in SPLITS}


def _write_csv(path, images, labels, header=True):
    flat = images.reshape(images.shape[0], -1)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(["label", *(f"pixel{i}" for i in range(flat.shape[1]))])
        for label, row in zip(labels, flat):
            writer.writerow([int(label), *row.tolist()])
    return path


def _sources(tmp_path) -> dict[str, str]:
    """The same 40 labelled 6x6 images in every single-file format (random split)."""
    made = {}
    np.savez(tmp_path / "a.npz", images=IMAGES, labels=LABELS)
    made["npz"] = tmp_path / "a.npz"
    np.savez_compressed(tmp_path / "b.npz", x=IMAGES, y=LABELS)
    made["npz-compressed"] = tmp_path / "b.npz"
    made["csv"] = _write_csv(tmp_path / "a.csv", IMAGES, LABELS)
    flat = IMAGES.reshape(N, -1)
    wide = pa.table({"label": LABELS, **{f"p{i}": flat[:, i].astype(np.int64) for i in range(flat.shape[1])}})
    pq.write_table(wide, tmp_path / "wide.parquet")
    made["parquet-wide"] = tmp_path / "wide.parquet"
    lists = pa.table({"image": pa.array([row.tolist() for row in flat], pa.list_(pa.int32())), "label": LABELS})
    pq.write_table(lists, tmp_path / "lists.parquet", row_group_size=7)
    made["parquet-list"] = tmp_path / "lists.parquet"
    write_idx_folder(tmp_path / "idx", (IMAGES, LABELS), None)
    made["idx-folder"] = tmp_path / "idx"
    return {name: str(path) for name, path in made.items()}


def test_every_format_gives_the_same_splits_row_for_row(tmp_path):
    reference = None
    for name, source in _sources(tmp_path).items():
        ref = ingest(DatasetConfig(name=name, source=source), root=tmp_path / "out")
        manifest = read_manifest(ref.path)
        assert manifest["shape"] == [SIDE, SIDE], name
        assert manifest["dtype"] == "uint8" and manifest["value_range"] == [0.0, 255.0], name
        # test = round(40 * 0.2) = 8; validation = round(32 * 0.1) = 3; the rest trains.
        assert manifest["rows"] == {"train": 29, "validation": 3, "test": 8}, name
        splits = _splits(ref.path)
        if reference is None:
            reference = splits
            rows = [r for images, labels in splits.values() for r in sorted_rows(images, labels)]
            assert sorted(rows) == sorted_rows(IMAGES, LABELS)  # the splits partition the source
            continue
        for split, (images, labels) in splits.items():  # same N and seed: the same rows in the same order
            assert np.array_equal(images, reference[split][0]), (name, split)
            assert np.array_equal(labels, reference[split][1]), (name, split)


def test_npy_without_labels_and_npz_with_official_test(tmp_path):
    np.save(tmp_path / "x.npy", IMAGES)
    ref = ingest(DatasetConfig(name="npy", source=str(tmp_path / "x.npy")), root=tmp_path / "out")
    assert load_split(ref.path, "train")[1] is None and not read_manifest(ref.path)["labels"]
    assert ref.content_hash == sources.hash_file(tmp_path / "x.npy")  # a file's hash is its sha256

    np.savez(tmp_path / "keras.npz", x_train=IMAGES[:30], y_train=LABELS[:30], x_test=IMAGES[30:], y_test=LABELS[30:])
    ref = ingest(DatasetConfig(name="keras", source=str(tmp_path / "keras.npz")), root=tmp_path / "out")
    manifest = read_manifest(ref.path)
    assert manifest["split"] == "official"
    assert manifest["rows"] == {"train": 20, "validation": 10, "test": 10}  # validation as large as test
    images, labels = load_split(ref.path, "test")
    assert np.array_equal(images, IMAGES[30:].reshape(10, -1)) and np.array_equal(labels, LABELS[30:])


def test_idx_official_split_keeps_the_test_file_and_divides_the_train_file(tmp_path):
    folder = write_idx_folder(tmp_path / "mnist", (IMAGES[:30], LABELS[:30]), (IMAGES[30:], LABELS[30:]))
    config = DatasetConfig(name="m", source=str(folder), validation_fraction=0.2)
    ref = ingest(config, root=tmp_path / "out")
    manifest = read_manifest(ref.path)
    assert manifest["rows"] == {"train": 24, "validation": 6, "test": 10} and manifest["split"] == "official"
    splits = _splits(ref.path)
    assert np.array_equal(splits["test"][0], IMAGES[30:].reshape(10, -1))
    assert np.array_equal(splits["test"][1], LABELS[30:])
    train_rows = sorted_rows(splits["train"][0], splits["train"][1]) + sorted_rows(*splits["validation"])
    assert sorted(train_rows) == sorted_rows(IMAGES[:30], LABELS[:30])
    # A random split of the same files pools all 40 rows.
    pooled = ingest(config.model_copy(update={"split": "random"}), root=tmp_path / "out")
    assert read_manifest(pooled.path)["rows"] == {"train": 26, "validation": 6, "test": 8}


def test_streaming_in_tiny_chunks_writes_the_same_splits(tmp_path, monkeypatch):
    folder = write_idx_folder(tmp_path / "m", (IMAGES[:30], LABELS[:30]), (IMAGES[30:], LABELS[30:]), gz=False)
    config = DatasetConfig(name="m", source=str(folder), binarize_test_seed=1)
    whole = ingest(config, root=tmp_path / "whole")
    monkeypatch.setattr("vae.data.sources.base.CHUNK_BYTES", SIDE * SIDE * 3)  # 3 rows per chunk
    monkeypatch.setattr(ingestion, "ROW_GROUP_SIZE", 4)
    chunked = ingest(config, root=tmp_path / "chunked")
    assert chunked.version == whole.version
    for split in SPLITS:
        for a, b in zip(load_split(whole.path, split), load_split(chunked.path, split)):
            assert np.array_equal(a, b), split
    assert pq.ParquetFile(f"{chunked.path}/train.parquet").num_row_groups == 5  # 20 rows in groups of 4


def test_fixed_test_binarisation_is_seeded_and_survives_prepare_inputs(tmp_path):
    np.save(tmp_path / "x.npy", IMAGES)
    source = str(tmp_path / "x.npy")
    plain = ingest(DatasetConfig(name="b", source=source), root=tmp_path / "out")
    fixed = ingest(DatasetConfig(name="b", source=source, binarize_test_seed=5), root=tmp_path / "out")
    again = ingest(DatasetConfig(name="b", source=source, binarize_test_seed=5), root=tmp_path / "again")
    other = ingest(DatasetConfig(name="b", source=source, binarize_test_seed=6), root=tmp_path / "out")
    assert len({plain.version, fixed.version, other.version}) == 3
    assert read_manifest(fixed.path)["binarization"] == {"split": "test", "seed": 5}
    test, _ = load_split(fixed.path, "test")
    assert set(np.unique(test).tolist()) <= {0, 255}
    assert np.array_equal(test, load_split(again.path, "test")[0])  # same seed, same draw
    assert not np.array_equal(test, load_split(other.path, "test")[0])
    assert np.array_equal(load_split(fixed.path, "train")[0], load_split(plain.path, "train")[0])
    # Bernoulli(pixel / 255): the share of ones matches the mean intensity (8 x 36 draws, 4 s.e. ≈ 0.12).
    intensity = load_split(plain.path, "test")[0].mean() / 255
    assert abs((test == 255).mean() - intensity) < 0.12
    x = torch.from_numpy(test.copy())
    expected = torch.from_numpy((test == 255).astype(np.float32))
    for mode in ("threshold", "dynamic", "none"):
        assert torch.equal(prepare_inputs(x, 255.0, mode), expected), mode


def test_image_folder_subfolders_are_labels(tmp_path):
    for i, (image, label) in enumerate(zip(IMAGES, LABELS)):
        path = tmp_path / "faces" / f"class{label}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    (tmp_path / "faces" / "README.txt").write_text("not an image")
    ref = ingest(DatasetConfig(name="faces", source=str(tmp_path / "faces")), root=tmp_path / "out")
    manifest = read_manifest(ref.path)
    assert manifest["classes"] == [f"class{c}" for c in sorted(set(LABELS.tolist()))]
    rows = [r for images, labels in _splits(ref.path).values() for r in sorted_rows(images, labels)]
    assert sorted(rows) == sorted_rows(IMAGES, LABELS)  # PNG is lossless; class{k} → label k here

    Image.fromarray(np.dstack([IMAGES[0]] * 3)).save(tmp_path / "rgb.png")
    (tmp_path / "rgb").mkdir()
    (tmp_path / "rgb.png").rename(tmp_path / "rgb" / "a.png")
    assert read_manifest(
        ingest(DatasetConfig(name="rgb", source=str(tmp_path / "rgb"), test_fraction=0.5), root=tmp_path / "out").path
    )["shape"] == [3, SIDE, SIDE]  # colour is stored channel-major (issue 15)


def test_float_pixels_are_stored_as_float32_in_0_1_and_parquet_round_trips(tmp_path):
    np.save(tmp_path / "f.npy", IMAGES.astype(np.float64) / 255)
    ref = ingest(DatasetConfig(name="f", source=str(tmp_path / "f.npy")), root=tmp_path / "out")
    manifest = read_manifest(ref.path)
    assert manifest["dtype"] == "float32" and manifest["value_range"] == [0.0, 1.0]
    assert str(pq.read_schema(f"{ref.path}/train.parquet").field("image").type) == "fixed_size_list<element: float>[36]"
    # Our own Parquet output is a source too; its shape comes from the schema's metadata.
    again = ingest(DatasetConfig(name="g", source=f"{ref.path}/test.parquet", test_fraction=0.5), root=tmp_path / "out")
    assert read_manifest(again.path)["shape"] == [SIDE, SIDE]
    rows = sorted_rows(load_split(again.path, "train")[0]) + sorted_rows(load_split(again.path, "test")[0])
    assert sorted(rows) == sorted_rows(load_split(ref.path, "test")[0])


def test_same_content_same_version_new_content_new_version(tmp_path):
    np.save(tmp_path / "x.npy", IMAGES)
    config = DatasetConfig(name="v", source=str(tmp_path / "x.npy"))
    first, written = ingest_status(config, root=tmp_path / "out")
    before = tree(tmp_path / "out")
    second, written_again = ingest_status(config, root=tmp_path / "out")
    assert written and not written_again and second == first
    assert tree(tmp_path / "out") == before  # not rewritten
    key = ingestion.cache_key(config, root=tmp_path / "out")
    np.save(tmp_path / "x.npy", IMAGES[::-1])  # new content
    assert ingestion.cache_key(config, root=tmp_path / "out") not in (key, None)
    third = ingest(config, root=tmp_path / "out")
    assert third.version != first.version
    after = tree(tmp_path / "out")
    assert {k: after[k] for k in before if k != "v"} == {k: v for k, v in before.items() if k != "v"}  # old untouched


def test_url_is_downloaded_verified_and_skipped_when_known(tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, images=IMAGES, labels=LABELS)
    body = buffer.getvalue()
    (tmp_path / "local.npz").write_bytes(body)
    local = ingest(DatasetConfig(name="u", source=str(tmp_path / "local.npz")), root=tmp_path / "local")
    with loopback_server() as server:
        server.routes["/data/train.npz"] = route = Route(body)
        url = f"{server.url}/data/train.npz"
        config = DatasetConfig(name="u", source=url, sha256=local.content_hash)
        remote, written = ingest_status(config, root=tmp_path / "remote")
        assert written and route.requests == 1
        assert (remote.content_hash, remote.version) == (local.content_hash, local.version)
        assert read_manifest(remote.path)["source_uri"] == url
        for split in SPLITS:
            assert np.array_equal(load_split(remote.path, split)[0], load_split(local.path, split)[0])
        assert ingest_status(config, root=tmp_path / "remote") == (remote, False)
        assert route.requests == 1  # the version named by the sha256 exists: no download
        unverified = ingest(DatasetConfig(name="u", source=url), root=tmp_path / "remote")
        assert unverified == remote and route.requests == 2  # downloaded, hashed, found, not rewritten


def test_manifest_records_provenance(tmp_path):
    np.save(tmp_path / "x.npy", IMAGES)
    ref = ingest(DatasetConfig(name="p", source=str(tmp_path / "x.npy"), split_seed=3), root=tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "p" / ref.version / "manifest.json").read_text())
    assert manifest["source_uri"] == str(tmp_path / "x.npy") and manifest["source_format"] == "npy"
    assert manifest["content_hash"] == ref.content_hash and manifest["split_seed"] == 3
    assert manifest["observed_range"] == [int(IMAGES.min()), int(IMAGES.max())]
    assert manifest["library_version"] and manifest["created_at"]
    assert manifest["split_fractions"] == {"validation": 0.1, "test": 0.2}


def test_unknown_scheme_and_bad_gzip_idx_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"^dataset source 's3://b/k': unknown source"):
        ingest(DatasetConfig(name="x", source="s3://b/k"), root=tmp_path)
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", IMAGES, gz=True)
    path.write_bytes(path.read_bytes()[:-40])  # cut the gzip trailer and some data
    with pytest.raises(DataError) as error:
        ingest(DatasetConfig(name="x", source=str(path)), root=tmp_path / "out")
    assert str(error.value).startswith(f"{path}: truncated or corrupt compressed data: ")
    assert not (tmp_path / "out").exists()  # the folders made for the version are removed again
