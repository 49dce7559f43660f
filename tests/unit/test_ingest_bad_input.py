"""Bad input to `vae ingest`: one line naming the file and the problem, exit 1, nothing written.

Each case runs the real command in a subprocess against a VAE_HOME that already holds a good
version of the same dataset name; that version and the rest of VAE_HOME must come out
byte-for-byte untouched, and no download is left in TMPDIR.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.helpers.ingest_helpers import Route, loopback_server, tree, write_idx
from PIL import Image

from vae.config import DatasetConfig
from vae.data.ingest import ingest
from vae.data.sources import hash_file

REPO = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(3)
IMAGES = RNG.integers(0, 256, size=(40, 6, 6), dtype=np.uint8)  # (40, 6, 6): 1440 bytes of pixels
LABELS = RNG.integers(0, 10, size=40).astype(np.uint8)
NOT_PARQUET = "Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file."


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=IMAGES, labels=LABELS)
    return buffer.getvalue()


def _floats(row: int, value: float) -> np.ndarray:
    images = IMAGES.astype(np.float32) / 255
    images[row] = 0.5
    images[row, 0, 0] = value
    return images


def _csv(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["label", "p0", "p1", "p2"], *rows])
    return path


# Each case builds its source under `src` and returns (command-line arguments, the expected message).
def truncated_idx(src: Path, url: str):
    write_idx(src / "train-images-idx3-ubyte", IMAGES, cut=100)
    write_idx(src / "train-labels-idx1-ubyte", LABELS)
    return [str(src)], (
        f"{src}/train-images-idx3-ubyte: truncated IDX file: header says 40 images of 6x6 "
        "but only 1340 bytes of data follow (expected 1440)"
    )


def truncated_gzipped_idx(src: Path, url: str):  # found only while streaming, after writing began
    write_idx(src / "train-images-idx3-ubyte.gz", IMAGES, gz=True, cut=100)
    write_idx(src / "train-labels-idx1-ubyte.gz", LABELS, gz=True)
    return [str(src)], (
        f"{src}/train-images-idx3-ubyte.gz: truncated IDX file: header says 40 images of 6x6 "
        "but only 1340 bytes of data follow (expected 1440)"
    )


def wrong_magic_number(src: Path, url: str):
    path = write_idx(src / "train-images-idx3-ubyte", IMAGES, magic=0x12345678)
    return [str(path)], f"{path}: wrong magic number 0x12345678 (expected an IDX file: 0x00000803 for images)"


def image_label_count_mismatch(src: Path, url: str):
    write_idx(src / "train-images-idx3-ubyte.gz", IMAGES, gz=True)
    write_idx(src / "train-labels-idx1-ubyte.gz", LABELS[:39], gz=True)
    return [str(src)], (
        f"{src}/train-labels-idx1-ubyte.gz: 39 labels but train-images-idx3-ubyte.gz has 40 images "
        "(expected one label per image)"
    )


def nan_pixels(src: Path, url: str):
    np.save(src / "x.npy", _floats(3, np.nan))
    return [str(src / "x.npy")], f"{src}/x.npy: image 3 has NaN or infinite values (expected finite pixels)"


def infinite_pixels(src: Path, url: str):
    np.save(src / "x.npy", _floats(5, -np.inf))
    return [str(src / "x.npy")], f"{src}/x.npy: image 5 has NaN or infinite values (expected finite pixels)"


def float_out_of_range(src: Path, url: str):
    np.save(src / "x.npy", _floats(2, 1.5))
    return [str(src / "x.npy")], f"{src}/x.npy: image 2 has pixel values in [0.5, 1.5] (expected within [0, 1])"


def integer_out_of_declared_range(src: Path, url: str):
    path = _csv(src / "x.csv", [[1, 7, 7, 7], [2, 7, 300, 7]])
    return [str(path)], f"{path}: image 1 has pixel values in [7, 300] (expected within [0, 255])"


def below_declared_maximum(src: Path, url: str):
    np.save(src / "x.npy", IMAGES)
    return [str(src / "x.npy"), "--max-value", "16"], (
        f"{src}/x.npy: image 0 has pixel values in [{IMAGES[0].min()}, {IMAGES[0].max()}] (expected within [0, 16])"
    )


def empty_csv(src: Path, url: str):
    (src / "x.csv").write_text("")
    return [str(src / "x.csv")], f"{src}/x.csv: empty source (expected at least one image)"


def empty_array(src: Path, url: str):
    np.save(src / "x.npy", np.zeros((0, 6, 6), np.uint8))
    return [str(src / "x.npy")], f"{src}/x.npy: empty source (expected at least one image)"


def empty_folder(src: Path, url: str):
    return [str(src)], f"{src}: empty source (expected image files, label subfolders of images, or IDX files)"


def ragged_csv_rows(src: Path, url: str):
    path = _csv(src / "x.csv", [[1, 2, 3, 4], [1, 2, 3], [1, 2, 3, 4]])
    return [str(path)], f"{path}: ragged rows: line 3 has 3 values (expected 4, like the first line)"


def ragged_numpy_rows(src: Path, url: str):
    np.save(src / "x.npy", np.array([np.zeros(4), np.zeros(3)], dtype=object), allow_pickle=True)
    return [str(src / "x.npy")], (
        f"{src}/x.npy: array of Python objects (ragged rows?) (expected a numeric array of equal-size images)"
    )


def ragged_parquet_rows(src: Path, url: str):
    pq.write_table(pa.table({"image": pa.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3]])}), src / "x.parquet")
    return [str(src / "x.parquet")], (
        f"{src}/x.parquet: ragged rows: image 2 has 3 values (expected 4, like the first row)"
    )


def missing_path(src: Path, url: str):
    return [str(src / "nope.npz")], f"{src}/nope.npz: no such file or directory (expected a dataset file or folder)"


def not_parquet(src: Path, url: str):
    (src / "x.parquet").write_bytes(b"PAR1 this is not a parquet file")
    return [str(src / "x.parquet")], f"{src}/x.parquet: unreadable Parquet file: {NOT_PARQUET}"


def truncated_parquet(src: Path, url: str):
    pq.write_table(pa.table({"image": pa.array([row.tolist() for row in IMAGES.reshape(40, -1)])}), src / "x.parquet")
    raw = (src / "x.parquet").read_bytes()
    (src / "x.parquet").write_bytes(raw[: len(raw) // 2])
    return [str(src / "x.parquet")], f"{src}/x.parquet: unreadable Parquet file: {NOT_PARQUET}"


def corrupt_parquet_page(src: Path, url: str):  # the footer is fine; a data page fails its checksum
    table = pa.table({"image": pa.FixedSizeListArray.from_arrays(pa.array(IMAGES.reshape(-1)), 36)})
    pq.write_table(table, src / "x.parquet", write_page_checksum=True, use_dictionary=False, compression="none")
    offset = pq.ParquetFile(src / "x.parquet").metadata.row_group(0).column(0).data_page_offset
    raw = bytearray((src / "x.parquet").read_bytes())
    raw[offset + 100 : offset + 110] = b"\xff" * 10
    (src / "x.parquet").write_bytes(bytes(raw))
    return [str(src / "x.parquet")], (
        f"{src}/x.parquet: unreadable Parquet file: could not verify page integrity, "
        "CRC checksum verification failed for page_ordinal 0"
    )


def unknown_format(src: Path, url: str):
    (src / "x.txt").write_text("hello")
    return [str(src / "x.txt")], (
        f"{src}/x.txt: cannot tell the file format (expected .npz, .npy, .csv, .parquet, an IDX file or a folder)"
    )


def url_not_found(src: Path, url: str):
    return [f"{url}/missing.npz"], f"{url}/missing.npz: HTTP 404 Not Found (expected 200 OK)"


def url_timeout(src: Path, url: str):
    return [f"{url}/slow.npz", "--timeout", "0.5"], (
        f"{url}/slow.npz: timed out after 0.5 s without data (expected a response)"
    )


def url_checksum_mismatch(src: Path, url: str):
    (src / "x.npz").write_bytes(_npz_bytes())
    return [f"{url}/data/x.npz", "--sha256", "0" * 64], (
        f"{url}/data/x.npz: sha256 mismatch: expected {'0' * 64}, got {hash_file(src / 'x.npz')}"
    )


def file_checksum_mismatch(src: Path, url: str):
    (src / "x.npz").write_bytes(_npz_bytes())
    return [str(src / "x.npz"), "--sha256", "a" * 64], (
        f"{src}/x.npz: sha256 mismatch: expected {'a' * 64}, got {hash_file(src / 'x.npz')}"
    )


def image_folder_mixed_sizes(src: Path, url: str):
    for name, side in (("a/x.png", 6), ("a/y.png", 6), ("b/z.png", 7)):
        (src / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((side, side), np.uint8)).save(src / name)
    return [str(src)], f"{src}/b/z.png: image is 7x7 but x.png is 6x6 (expected one size for the whole folder)"


def corrupt_image(src: Path, url: str):
    (src / "a").mkdir()
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(src / "a" / "x.png")
    (src / "a" / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return [str(src)], f"{src}/a/y.png: cannot read image: cannot identify image file '{src}/a/y.png'"


CASES = [
    truncated_idx,
    truncated_gzipped_idx,
    wrong_magic_number,
    image_label_count_mismatch,
    nan_pixels,
    infinite_pixels,
    float_out_of_range,
    integer_out_of_declared_range,
    below_declared_maximum,
    empty_csv,
    empty_array,
    empty_folder,
    ragged_csv_rows,
    ragged_numpy_rows,
    ragged_parquet_rows,
    missing_path,
    not_parquet,
    truncated_parquet,
    corrupt_parquet_page,
    unknown_format,
    url_not_found,
    url_timeout,
    url_checksum_mismatch,
    file_checksum_mismatch,
    image_folder_mixed_sizes,
    corrupt_image,
]


@pytest.fixture(scope="module")
def server():
    with loopback_server() as loopback:
        loopback.routes["/slow.npz"] = Route(_npz_bytes(), delay=10.0)
        loopback.routes["/data/x.npz"] = Route(_npz_bytes())
        yield loopback


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_bad_input_is_one_line_exit_1_and_writes_nothing(tmp_path, server, case):
    home, scratch, src = tmp_path / "home", tmp_path / "tmp", tmp_path / "src"
    scratch.mkdir()
    src.mkdir()
    np.save(tmp_path / "good.npy", IMAGES)  # an existing version of the same name must stay untouched
    ingest(DatasetConfig(name="d", source=str(tmp_path / "good.npy")), root=home / "datasets")
    before = tree(home)
    args, message = case(src, server.url)
    env = {**os.environ, "VAE_HOME": str(home), "TMPDIR": str(scratch)}
    result = subprocess.run(
        [sys.executable, "-m", "vae", "ingest", *args, "--name", "d"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr == f"error: {message}\n"
    assert result.returncode == 1 and result.stdout == ""
    assert tree(home) == before
    assert list(scratch.iterdir()) == []  # no download left behind


def test_bad_option_is_one_line(tmp_path):
    env = {**os.environ, "VAE_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "vae", "ingest", "sklearn:digits", "--name", "d", "--validation-fraction", "1.5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == "error: --validation-fraction 1.5: expected: input should be less than 1\n"
    assert not (tmp_path / "home").exists()
