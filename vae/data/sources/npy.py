"""NumPy sources: a .npy array, or a .npz archive of them, streamed from the file without loading it.

A .npz names its arrays x_train/y_train/x_test/y_test (Keras' layout: the official split),
images/labels, x/y (and the like) or arr_0/arr_1; an archive of one array is its images. Object,
structured and Fortran-ordered arrays are refused from their headers, before any data is read.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vae.errors import DataError
from vae.data.sources.arrays import ArrayFile, check_file_size, check_labels, stream_rows
from vae.data.sources.base import Part, Source, describe_shape, error_line, guard_io

_IMAGE_KEYS = ("images", "x", "X", "data", "arr_0")
_LABEL_KEYS = ("labels", "y", "targets", "target", "arr_1")


def _npy_array(uri: str, opener: Callable[[], contextlib.AbstractContextManager[BinaryIO]]) -> tuple[ArrayFile, int]:
    """Parse a .npy header; returns the array description and the header's length in bytes."""

    def read_header(stream: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
        try:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                return np.lib.format.read_array_header_1_0(stream)
            return np.lib.format.read_array_header_2_0(stream)
        except (ValueError, EOFError) as exc:
            raise DataError(f"{uri}: not a valid .npy array: {error_line(exc)}") from None

    with opener() as stream:
        shape, fortran, dtype = read_header(stream)
        offset = stream.tell()
    if dtype.hasobject:
        raise DataError(
            f"{uri}: array of Python objects (ragged rows?) (expected a numeric array of equal-size images)"
        )
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise DataError(f"{uri}: array of dtype {dtype} (expected integer, float or bool pixels)")
    if fortran and len(shape) > 1:
        raise DataError(f"{uri}: Fortran-ordered array (expected C order: save it with np.ascontiguousarray)")

    @contextlib.contextmanager
    def positioned() -> Iterator[BinaryIO]:
        with opener() as stream:
            read_header(stream)
            yield stream

    return ArrayFile(uri, positioned, dtype, tuple(shape), f"shape {tuple(shape)}", ".npy", exact=False), offset


def _check_images(array: ArrayFile) -> None:
    if len(array.shape) < 2:
        raise DataError(
            f"{array.uri}: array of shape {array.shape} (expected images: N x height x width, or N x pixels)"
        )


def open_npy(path: Path, uri: str) -> Source:
    images, offset = _npy_array(uri, lambda: guard_io(path, lambda: open(path, "rb")))
    _check_images(images)
    check_file_size(images, path, offset)
    part = Part("all", uri, images.shape[0], lambda rows: stream_rows(images, None, rows))
    return Source(uri, "npy", "", images.shape[1:], images.dtype, False, (part,))


def open_npz(path: Path, uri: str) -> Source:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{uri}: not a valid .npz archive: {error_line(exc)}") from None
    keys = {name[: -len(".npy")]: name for name in members}

    def member(key: str) -> ArrayFile:
        @contextlib.contextmanager
        def opener() -> Iterator[BinaryIO]:
            try:
                with zipfile.ZipFile(path) as archive, archive.open(keys[key]) as stream:
                    yield stream
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{uri}: corrupt .npz member '{key}': {error_line(exc)}") from None

        return _npy_array(f"{uri}[{key}]", opener)[0]

    def part(name: str, image_key: str, label_key: str | None) -> tuple[Part, ArrayFile]:
        images = member(image_key)
        _check_images(images)
        labels = member(label_key) if label_key else None
        if labels is not None:
            check_labels(labels, images)
        return Part(name, images.uri, images.shape[0], lambda rows: stream_rows(images, labels, rows)), images

    if "x_train" in keys:
        train, images = part("train", "x_train", "y_train" if "y_train" in keys else None)
        parts = [train]
        if "x_test" in keys:
            test, test_images = part("test", "x_test", "y_test" if "y_test" in keys else None)
            if test_images.shape[1:] != images.shape[1:]:
                raise DataError(
                    f"{test_images.uri}: images are {describe_shape(test_images.shape[1:])} but x_train's "
                    f"are {describe_shape(images.shape[1:])} (expected the same)"
                )
            if ("y_train" in keys) != ("y_test" in keys):
                raise DataError(f"{uri}: labels for one of x_train and x_test only (expected both or neither)")
            parts.append(test)
        else:
            parts = [replace(train, name="all")]
        has_labels = "y_train" in keys
    else:
        image_key = next((k for k in _IMAGE_KEYS if k in keys), None)
        if image_key is None and len(keys) == 1:
            image_key = next(iter(keys))
        if image_key is None:
            raise DataError(
                f"{uri}: cannot tell which array holds the images (arrays: {', '.join(sorted(keys)) or 'none'}; "
                "expected 'images' or 'x', optionally 'labels' or 'y', or x_train/y_train/x_test/y_test)"
            )
        label_key = next((k for k in _LABEL_KEYS if k in keys and k != image_key), None)
        if label_key == "arr_1" and image_key != "arr_0":
            label_key = None
        only, images = part("all", image_key, label_key)
        parts, has_labels = [only], label_key is not None
    return Source(uri, "npz", "", images.shape[1:], images.dtype, has_labels, tuple(parts))
