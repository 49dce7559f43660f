"""The real Fashion-MNIST IDX files (Debian's dataset-fashion-mnist) through `vae ingest`."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.helpers.ingest_helpers import sorted_rows, tree

from vae.data.datasets import load_split

FASHION = Path("/usr/share/datasets/fashion-mnist")
# sha256 over the four files' names, sizes and bytes (vae.data.sources.base.hash_tree), and the version it
# gives with the default split settings: both must stay the same from release to release.
CONTENT_HASH = "80e24defb4a50a047745e308b2814972914ad88b81cdc20b6bb2370f513ec782"
VERSION = "369f03229ce4"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not FASHION.is_dir(),
        reason="Debian package dataset-fashion-mnist is not installed "
        "(.ci/run installs it: apt-get install dataset-fashion-mnist)",
    ),
]


def _vae(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VAE_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "vae", *args], env=env, capture_output=True, text=True, timeout=300, check=True
    )


def _read_idx(path: Path) -> np.ndarray:
    """An independent IDX parser: gunzip, header, numpy."""
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> tuple[Path, dict]:
    home = tmp_path_factory.mktemp("fashion") / "home"
    result = _vae(home, "ingest", str(FASHION), "--name", "fashion-mnist", "--json")
    return home, json.loads(result.stdout)


def test_fashion_mnist_is_50k_10k_10k_of_28x28_with_a_stable_hash(ingested):
    _, manifest = ingested
    assert manifest["rows"] == {"train": 50000, "validation": 10000, "test": 10000}
    assert manifest["shape"] == [28, 28] and manifest["dtype"] == "uint8"
    assert manifest["value_range"] == [0.0, 255.0] and manifest["split"] == "official"
    assert manifest["content_hash"] == CONTENT_HASH and manifest["version"] == VERSION


def test_splits_are_the_official_test_file_and_a_partition_of_the_train_file(ingested):
    _, manifest = ingested
    test_images, test_labels = load_split(manifest["path"], "test")
    assert np.array_equal(test_images, _read_idx(FASHION / "t10k-images-idx3-ubyte.gz").reshape(10000, 784))
    assert np.array_equal(test_labels, _read_idx(FASHION / "t10k-labels-idx1-ubyte.gz"))
    train = [load_split(manifest["path"], split) for split in ("train", "validation")]
    ours = sorted_rows(*train[0]) + sorted_rows(*train[1])
    expected = sorted_rows(
        _read_idx(FASHION / "train-images-idx3-ubyte.gz"), _read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    )
    assert sorted(ours) == expected


def test_ingesting_again_changes_nothing_and_datasets_lists_it(ingested):
    home, manifest = ingested
    before = tree(home)
    again = _vae(home, "ingest", str(FASHION), "--name", "fashion-mnist")
    assert again.stdout.splitlines()[0] == f"fashion-mnist@{VERSION}  already ingested (unchanged)"
    assert tree(home) == before
    listing = _vae(home, "datasets").stdout.splitlines()
    assert listing[0].split() == ["NAME", "VERSION", "TRAIN", "VAL", "TEST", "SHAPE", "DTYPE", "HASH", "SOURCE"]
    assert listing[1].split() == [
        "fashion-mnist",
        VERSION,
        "50000",
        "10000",
        "10000",
        "28x28",
        "uint8",
        CONTENT_HASH[:12],
        str(FASHION),
    ]
    assert [m["path"] for m in json.loads(_vae(home, "datasets", "--json").stdout)] == [manifest["path"]]
