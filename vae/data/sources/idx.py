"""IDX files (MNIST, Fashion-MNIST): big-endian magic 0x0000TTDD, DD dimension sizes, then the data.

A single file (images only), or a folder of train-/t10k- (or test-) image and label pairs, gzipped
or not; the t10k pair becomes the official test part. Headers and counts are checked before any
pixel is read, and an uncompressed file's size before it is opened for data.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vae.errors import DataError
from vae.data.sources.arrays import ArrayFile, check_file_size, check_labels, read_up_to, stream_rows
from vae.data.sources.base import Part, Source, describe_shape, guard_io, read_head

# train-images-idx3-ubyte.gz, t10k-labels.idx1-ubyte, ...
IDX_NAME = re.compile(r"^(?P<prefix>.+?)[-_.](?P<kind>images|labels)[-_.]idx\d[-_.]ubyte(?:\.gz)?$", re.IGNORECASE)
IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _is_gzip(path: Path) -> bool:
    return read_head(path, 2) == b"\x1f\x8b"


def _idx_file(path: Path, role: str, uri: str | None = None) -> ArrayFile:
    """Parse an IDX header; role 'images' wants >= 2 dimensions, 'labels' exactly one."""
    uri = uri or str(path)
    compressed = _is_gzip(path)

    def raw() -> BinaryIO:
        return gzip.open(path, "rb") if compressed else open(path, "rb")

    with guard_io(path, raw) as stream:
        magic = read_up_to(stream, 4, uri)
        if len(magic) < 4:
            raise DataError(f"{uri}: truncated IDX file: {len(magic)} bytes (expected a 4-byte magic number)")
        if magic[:2] != b"\0\0" or magic[2] not in IDX_TYPES or magic[3] == 0:
            expected = "0x00000803 for images" if role == "images" else "0x00000801 for labels"
            raise DataError(f"{uri}: wrong magic number 0x{magic.hex()} (expected an IDX file: {expected})")
        ndim = magic[3]
        raw_dims = read_up_to(stream, 4 * ndim, uri)
        if len(raw_dims) < 4 * ndim:
            raise DataError(f"{uri}: truncated IDX file: the header declares {ndim} dimensions but ends early")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    offset = 4 + 4 * ndim
    dtype = IDX_TYPES[magic[2]]
    if role == "images" and ndim < 2:
        raise DataError(
            f"{uri}: wrong magic number 0x{magic.hex()}: {ndim} dimension (expected an IDX images file, "
            "0x00000803: count x height x width)"
        )
    if role == "labels" and ndim != 1:
        raise DataError(
            f"{uri}: wrong magic number 0x{magic.hex()}: {ndim} dimensions (expected an IDX labels file, "
            "0x00000801: one label per image)"
        )
    header = f"{dims[0]} images of {describe_shape(dims[1:])}" if role == "images" else f"{dims[0]} labels"

    @contextlib.contextmanager
    def positioned() -> Iterator[BinaryIO]:
        with guard_io(path, raw) as stream:
            read_up_to(stream, offset, uri)
            yield stream

    array = ArrayFile(uri, positioned, dtype, tuple(dims), header, "IDX", exact=True)
    if not compressed:
        check_file_size(array, path, offset)
    return array


def _idx_part(name: str, images_path: Path, labels_path: Path | None, uri: str | None = None) -> tuple[Part, ArrayFile]:
    images = _idx_file(images_path, "images", uri)
    labels = _idx_file(labels_path, "labels") if labels_path else None
    if labels is not None:
        check_labels(labels, images)
    part = Part(name, images.uri, images.shape[0], lambda rows: stream_rows(images, labels, rows))
    return part, images


def open_idx_file(path: Path, uri: str) -> Source:
    part, images = _idx_part("all", path, None, uri)
    return Source(uri, "idx", "", images.shape[1:], images.dtype, False, (part,))


def open_idx_folder(folder: Path, files: list[Path]) -> Source:
    """train-/t10k- (or test-) image and label pairs; the t10k pair becomes the official test part."""
    groups: dict[str, dict[str, Path]] = {}
    for path in files:
        match = IDX_NAME.match(path.name)
        prefix, kind = match["prefix"].lower(), match["kind"].lower()
        part = "test" if prefix.endswith(("t10k", "test")) else "train" if prefix.endswith("train") else None
        if part is None:
            raise DataError(f"{path}: IDX file of an unknown set '{match['prefix']}' (expected train- and t10k- files)")
        if kind in groups.setdefault(part, {}):
            raise DataError(f"{path}: a second {part} {kind} file next to {groups[part][kind].name} (expected one)")
        groups[part][kind] = path
    for group in groups.values():
        if "images" not in group:
            raise DataError(f"{group['labels']}: labels without an images file beside them (expected both)")
    if "train" not in groups:
        raise DataError(f"{folder}: only test IDX files (expected train- files, and optionally t10k- files)")
    if len(groups) == 2 and ("labels" in groups["train"]) != ("labels" in groups["test"]):
        raise DataError(f"{folder}: labels for one of the train and test files only (expected both or neither)")
    parts, arrays = [], []
    for name in ("train", "test"):
        if name in groups:
            part, images = _idx_part(name, groups[name]["images"], groups[name].get("labels"))
            parts.append(part)
            arrays.append(images)
    if len(arrays) == 2 and (arrays[0].shape[1:] != arrays[1].shape[1:] or arrays[0].dtype != arrays[1].dtype):
        raise DataError(
            f"{arrays[1].uri}: images are {describe_shape(arrays[1].shape[1:])} {arrays[1].dtype} but the train "
            f"images are {describe_shape(arrays[0].shape[1:])} {arrays[0].dtype} (expected the same for both)"
        )
    if len(parts) == 1:
        parts = [replace(parts[0], name="all")]
    has_labels = "labels" in groups["train"]
    return Source(str(folder), "idx", "", arrays[0].shape[1:], arrays[0].dtype, has_labels, tuple(parts))
