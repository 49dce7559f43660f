"""CIFAR-10/100 binary batches from files the test writes; truncation and the pickled version refused."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest

from vae.data.sources.cifar import looks_like_cifar, read_cifar
from vae.data.sources.layout import to_channels_first
from vae.errors import DataError

RNG = np.random.default_rng(15)
TRAIN_10 = [f"data_batch_{i}.bin" for i in range(1, 6)]


def _batch(n: int, label_bytes: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    """n records: images (n, 3, 32, 32) uint8, labels (n, label_bytes), and the bytes of the format."""
    images = RNG.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    limits = (10,) if label_bytes == 1 else (20, 100)
    labels = np.stack([RNG.integers(0, k, size=n) for k in limits], 1).astype(np.uint8)  # (n, label_bytes)
    records = b"".join(
        labels[i].tobytes() + images[i, 0].tobytes() + images[i, 1].tobytes() + images[i, 2].tobytes() for i in range(n)
    )  # label byte(s), then 1024 R, 1024 G, 1024 B bytes
    return images, labels.astype(np.int64), records


def _cifar10(sizes=(2, 3, 1, 2, 2), test=3):
    files, train_images, train_labels = {}, [], []
    for name, n in zip(TRAIN_10, sizes):
        images, labels, files[name] = _batch(n, 1)
        train_images.append(images)
        train_labels.append(labels[:, 0])
    test_images, test_labels, files["test_batch.bin"] = _batch(test, 1)
    files["batches.meta.txt"] = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"
    expected = (np.concatenate(train_images), np.concatenate(train_labels), test_images, test_labels[:, 0])
    return files, expected


def _cifar100():
    files = {}
    train_images, train_labels, files["train.bin"] = _batch(4, 2)
    test_images, test_labels, files["test.bin"] = _batch(3, 2)
    return files, (train_images, train_labels, test_images, test_labels)


def _write_tar(path, folder: str, files: dict[str, bytes], order=None):
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        archive.addfile(info)
        for name in order or files:
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(files[name])
            archive.addfile(info, io.BytesIO(files[name]))
    return path


def _write_folder(root, folder: str, files: dict[str, bytes]):
    (root / folder).mkdir(parents=True)
    for name, data in files.items():
        (root / folder / name).write_bytes(data)
    return root / folder


def _listing(root):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*"))


@pytest.mark.parametrize("form", ["tar.gz", "batch folder", "parent folder"])
def test_cifar10_reads_the_official_split_in_batch_order(tmp_path, form):
    files, (train_x, train_y, test_x, test_y) = _cifar10()
    if form == "tar.gz":  # members out of order: the train batches are still concatenated 1..5
        path = _write_tar(
            tmp_path / "cifar-10-binary.tar.gz",
            "cifar-10-batches-bin",
            files,
            order=["test_batch.bin", "data_batch_5.bin", "batches.meta.txt", *TRAIN_10[:4]],
        )
    else:
        path = _write_folder(tmp_path, "cifar-10-batches-bin", files)
        path = path if form == "batch folder" else tmp_path
    assert looks_like_cifar(path)
    data = read_cifar(path)
    assert data.variant == "CIFAR-10"
    assert data.train_images.dtype == np.uint8 and data.train_images.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(data.train_images, train_x)
    np.testing.assert_array_equal(data.train_labels, train_y)
    np.testing.assert_array_equal(data.test_images, test_x)
    np.testing.assert_array_equal(data.test_labels, test_y)
    assert (
        data.train_coarse_labels is None and data.classes[:2] == ("airplane", "automobile") and len(data.classes) == 10
    )


@pytest.mark.parametrize("form", ["tar.gz", "folder"])
def test_cifar100_reads_coarse_and_fine_labels(tmp_path, form):
    files, (train_x, train_y, test_x, test_y) = _cifar100()
    if form == "tar.gz":
        path = _write_tar(tmp_path / "cifar-100-binary.tar.gz", "cifar-100-binary", files)
    else:
        path = _write_folder(tmp_path, "cifar-100-binary", files)
    data = read_cifar(path)
    assert data.variant == "CIFAR-100"
    np.testing.assert_array_equal(data.train_images, train_x)
    np.testing.assert_array_equal(data.test_images, test_x)
    np.testing.assert_array_equal(data.train_labels, train_y[:, 1])  # fine: the second label byte
    np.testing.assert_array_equal(data.train_coarse_labels, train_y[:, 0])
    np.testing.assert_array_equal(data.test_labels, test_y[:, 1])
    np.testing.assert_array_equal(data.test_coarse_labels, test_y[:, 0])


@pytest.mark.parametrize("form", ["tar.gz", "folder"])
def test_a_truncated_record_is_one_line_naming_the_file_and_the_bytes_expected(tmp_path, form):
    files, _ = _cifar10()
    files["data_batch_3.bin"] = files["data_batch_4.bin"][:-5]  # 2 records of 3073 bytes, 5 bytes short
    if form == "tar.gz":
        path = _write_tar(tmp_path / "cifar-10-binary.tar.gz", "cifar-10-batches-bin", files)
    else:
        path = _write_folder(tmp_path, "cifar-10-batches-bin", files)
    before = _listing(tmp_path)
    result = None
    with pytest.raises(DataError) as error:
        result = read_cifar(path)
    message = str(error.value)
    assert "\n" not in message and "data_batch_3.bin" in message
    assert "6141 bytes is not a whole number of 3073-byte records" in message
    assert "expected a multiple of 3073: 3073 bytes for 1 record or 6146 for 2" in message
    assert result is None and _listing(tmp_path) == before  # nothing returned, nothing written


def test_a_truncated_archive_and_a_missing_batch_are_one_line(tmp_path):
    files, _ = _cifar10()
    whole = _write_tar(tmp_path / "whole.tar.gz", "cifar-10-batches-bin", files).read_bytes()
    cut = tmp_path / "cifar-10-binary.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz: truncated or corrupt archive: .*\(expected"):
        read_cifar(cut)
    del files["data_batch_4.bin"]
    folder = _write_folder(tmp_path / "x", "cifar-10-batches-bin", files)
    with pytest.raises(DataError, match=r"batch data_batch_4\.bin is missing \(expected data_batch_1\.bin"):
        read_cifar(folder)


def test_a_label_out_of_range_is_refused(tmp_path):
    files, _ = _cifar10()
    files["test_batch.bin"] = bytes([12]) + files["test_batch.bin"][1:]
    folder = _write_folder(tmp_path, "cifar-10-batches-bin", files)
    with pytest.raises(DataError, match=r"test_batch\.bin: record 0 has label 12 \(expected 0\.\.9"):
        read_cifar(folder)


class _RunsWhenUnpickled:
    """Unpickling this creates a file: proof, if the file never appears, that nothing was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_pickled_python_version_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_RunsWhenUnpickled(marker))
    python_files = {name: payload for name in ["data_batch_1", "data_batch_2", "test_batch", "batches.meta"]}
    cases = [
        _write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", python_files),
        _write_tar(tmp_path / "renamed.tar.gz", "cifar-10-batches-py", python_files),
        _write_folder(tmp_path / "a", "cifar-10-batches-py", python_files),
        tmp_path / "a",
        tmp_path / "a" / "cifar-10-batches-py" / "data_batch_1",
    ]
    for path in cases:
        assert looks_like_cifar(path), path
        with pytest.raises(DataError) as error:
            read_cifar(path)
        message = str(error.value)
        assert "\n" not in message and "'python version'" in message, path
        assert "cifar-10-binary.tar.gz" in message, path
    hundred = {name: payload for name in ["train", "test", "meta"]}
    for path in [
        _write_tar(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", hundred),
        _write_folder(tmp_path / "b", "cifar-100-python", hundred),
    ]:
        with pytest.raises(
            DataError, match=r"CIFAR-100 'python version'.*\(expected the binary version, cifar-100-binary\.tar\.gz"
        ):
            read_cifar(path)
    assert not marker.exists()


def test_channels_last_and_channels_first_arrays_become_channels_first():
    images = RNG.integers(0, 256, size=(5, 3, 6, 7), dtype=np.uint8)  # (N, C, H, W)
    hwc = images.transpose(0, 2, 3, 1).copy()  # (N, H, W, C)
    np.testing.assert_array_equal(to_channels_first(hwc, "a.npz"), images)
    np.testing.assert_array_equal(to_channels_first(images, "a.npz"), images)
    gray = RNG.integers(0, 256, size=(2, 28, 28, 1), dtype=np.uint8)
    assert to_channels_first(gray, "g.npz").shape == (2, 1, 28, 28)
    square = RNG.integers(0, 256, size=(2, 4, 4, 3), dtype=np.uint8)  # 4x4 RGB or 4 channels of 4x3?
    with pytest.raises(
        DataError, match=r"a\.npz: array of shape \(2, 4, 4, 3\) could be .*expected the layout to be named"
    ):
        to_channels_first(square, "a.npz")
    np.testing.assert_array_equal(to_channels_first(square, "a.npz", layout="NHWC"), square.transpose(0, 3, 1, 2))
    with pytest.raises(DataError, match=r"has no channel axis \(expected 1, 3, 4 channels"):
        to_channels_first(np.zeros((2, 5, 6, 7), np.uint8), "a.npz")
    with pytest.raises(DataError, match=r"expected 4 axes"):
        to_channels_first(np.zeros((2, 5, 6), np.uint8), "a.npz")
