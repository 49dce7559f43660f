"""Digits ingestion: deterministic splits, schema, manifest, idempotent versions, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from vae.config import DatasetConfig
from vae.data import sources
from vae.data.ingest import SourceArrays, ingest, write_dataset
from vae.data.datasets import load_split
from vae.errors import DataError

DIGITS = DatasetConfig(name="digits", source="sklearn:digits")


def test_digits_become_three_disjoint_splits_covering_the_source(tmp_path):
    ref = ingest(DIGITS, root=tmp_path)
    manifest = json.loads((tmp_path / "digits" / ref.version / "manifest.json").read_text())
    # test = round(1797 * 0.2) = 359; validation = round((1797 - 359) * 0.1) = 144; the rest trains.
    assert manifest["rows"] == {"train": 1294, "validation": 144, "test": 359}
    assert manifest["shape"] == [8, 8] and manifest["value_range"] == [0.0, 16.0]
    digits = sources.sklearn_digits()
    images_all, labels_all = next(digits.parts[0].read(digits.rows))  # the source itself, in memory
    rows = []
    for split in ("train", "validation", "test"):
        images, labels = load_split(ref.path, split)
        assert images.shape[1] == 64 and images.dtype == np.uint8
        rows.extend(zip(map(bytes, images), labels.tolist()))
    expected = list(zip(map(bytes, images_all.reshape(-1, 64)), labels_all.tolist()))
    assert sorted(rows) == sorted(expected)
    schema = pq.read_schema(f"{ref.path}/train.parquet")
    assert str(schema.field("image").type) == "fixed_size_list<element: uint8>[64]"


def test_same_content_same_version_not_rewritten(tmp_path):
    first = ingest(DIGITS, root=tmp_path)
    before = (tmp_path / "digits" / first.version / "train.parquet").stat().st_mtime_ns
    second = ingest(DIGITS, root=tmp_path)
    assert second == first
    assert (tmp_path / "digits" / first.version / "train.parquet").stat().st_mtime_ns == before
    reseeded = ingest(DatasetConfig(name="digits", source="sklearn:digits", split_seed=1), root=tmp_path)
    assert reseeded.version != first.version  # a different split is a different version


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((0, 4, 4), np.float32), "src: empty source (expected at least one image)"),
        (np.array([[[0.0, np.nan]]], np.float32), "src: image 0 has NaN or infinite values (expected finite pixels)"),
        (np.array([[[0.0, 20.0]]], np.float32), "src: pixel values span [0.0, 20.0] (expected within [0, 16.0])"),
    ],
)
def test_bad_arrays_fail_with_one_line_and_write_nothing(tmp_path, images, message):
    source = SourceArrays(images, None, "src", "hash", 16.0)
    with pytest.raises(DataError) as error:
        write_dataset(source, DIGITS, root=tmp_path)
    assert str(error.value) == message
    assert not (tmp_path / "digits").exists() or not any((tmp_path / "digits").iterdir())


def test_unknown_source_is_named(tmp_path):
    with pytest.raises(DataError, match=r"^dataset source 'ftp:x': unknown source"):
        ingest(DatasetConfig(name="x", source="ftp:x"), root=tmp_path)
