"""Dataset sources read in chunks: IDX, NumPy, CSV, Parquet, image folders, CIFAR binary, sklearn, URLs.

Each reader declares its rows, image shape and pixel dtype up front (from a header, a file
listing or a counting pass), then yields chunks (images (b, *shape), labels (b,) or None), so a
source larger than memory is never held whole. The content hash is the sha256 of the source's
bytes (for a folder: of its files' names and bytes), computed by streaming. Every problem raises
DataError with one line naming the file or URL and what was expected; a URL is named with its
credentials redacted (vae.data.urls), and the real one is used only to fetch.

Colour images are stored channel-major, (C, H, W) per image, whatever the source's layout: RGB
image folders and (N, H, W, C) arrays are transposed as they are read, CIFAR's records are
channel-major already; such a source says so with layout 'CHW' (grayscale (H, W) has none).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import http.client
import json
import math
import os
import re
import socket
import struct
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

import vae
from vae.paths import inside
from vae.errors import DataError, StorageError
from vae.data.urls import redact_text, redact_url

# sklearn:sample-patches: 32x32 patches, training ones every 8 pixels left of column 480, test ones every 16 right of it
PATCH_SIDE, PATCH_TRAIN_STRIDE, PATCH_TEST_STRIDE, PATCH_TEST_COLUMN = 32, 8, 16, 480
CHUNK_BYTES = 16 * 2**20  # bytes of pixels per chunk: bounds peak memory whatever the source's size
HASH_BLOCK = 2**20
DOWNLOAD_TIMEOUT = 60.0  # seconds without progress before a download fails
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# train-images-idx3-ubyte.gz, t10k-labels.idx1-ubyte, ...
_IDX_NAME = re.compile(r"^(?P<prefix>.+?)[-_.](?P<kind>images|labels)[-_.]idx\d[-_.]ubyte(?:\.gz)?$", re.IGNORECASE)
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

Chunk = tuple[np.ndarray, "np.ndarray | None"]


class DownloadError(DataError):
    """A URL could not be fetched; `transient` failures (timeouts, 5xx) are worth a retry."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Part:
    """One file set of a source ('train' or 'test' when it ships both, else 'all'), read in chunks."""

    name: str
    uri: str  # named in errors about its rows
    rows: int
    read: Callable[[int], Iterator[Chunk]]  # rows per chunk → chunks


@dataclass(frozen=True)
class Source:
    """A source opened for streaming: what it holds and how to read it."""

    uri: str
    format: str
    content_hash: str
    shape: tuple[int, ...]  # one image
    dtype: np.dtype  # the source's pixel dtype, before storage
    labels: bool
    parts: tuple[Part, ...]
    max_value: float | None = None  # declared by the source itself (sklearn digits: 16)
    classes: tuple[str, ...] | None = None  # label names of an image folder
    layout: str | None = None  # 'CHW' for images with a channel axis, stored channel-major; None for (H, W)

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)

    @property
    def has_official_test(self) -> bool:
        return any(part.name == "test" for part in self.parts)


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def chunk_rows(shape: tuple[int, ...], itemsize: int) -> int:
    """Rows per chunk for images of this shape: CHUNK_BYTES of pixels, at least one row."""
    return max(1, CHUNK_BYTES // max(1, math.prod(shape) * itemsize))


def _describe_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------------------------------
# Content hashes: streamed, so a large source costs a pass over its bytes, not its size in memory.


def hash_file(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path, files: list[Path]) -> str:
    """sha256 over each file's path relative to root, its size and its bytes, in the given order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while block := f.read(HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def hash_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def content_hash(spec: str) -> str | None:
    """The content hash open_source would report, without converting anything; None for a URL."""
    if is_url(spec):
        return None
    if spec in SKLEARN_SOURCES:
        return SKLEARN_SOURCES[spec]().content_hash
    path = _local_path(spec)
    if path.is_dir() and looks_like_cifar(path):
        return _guard_io(path, lambda: hash_tree(path, _cifar_files(path)))
    if path.is_dir():
        _, files = _folder_files(path)
        return _guard_io(path, lambda: hash_tree(path, files))
    return _guard_io(path, lambda: hash_file(path))


# ---------------------------------------------------------------------------------------------
# Opening a source.


@contextlib.contextmanager
def open_source(spec: str, *, timeout: float = DOWNLOAD_TIMEOUT) -> Iterator[Source]:
    """Open a source named in pipelines.yaml or on the command line; a URL is downloaded first."""
    if spec in SKLEARN_SOURCES:
        yield SKLEARN_SOURCES[spec]()
        return
    if is_url(spec):
        with tempfile.TemporaryDirectory(prefix="vae-download-") as directory:
            path, digest = download(spec, Path(directory), timeout=timeout)
            yield _open_file(path, redact_url(spec), digest)
        return
    path = _local_path(spec)
    yield _open_folder(path) if path.is_dir() else _open_file(path, str(path))


def _local_path(spec: str) -> Path:
    if spec.startswith("file://"):
        spec = urllib.parse.unquote(urllib.parse.urlparse(spec).path)
    elif _SCHEME.match(spec):
        raise DataError(
            f"dataset source '{redact_url(spec)}': unknown source "
            f"(expected a path, an http(s) URL or one of {', '.join(repr(k) for k in SKLEARN_SOURCES)})"
        )
    path = Path(spec).expanduser().absolute()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (expected a dataset file or folder)")
    return path


def _guard_io(path: Path | str, action: Callable):
    """Run a file operation; an OS error becomes one line naming the file."""
    try:
        return action()
    except OSError as exc:
        raise DataError(
            f"{getattr(exc, 'filename', None) or path}: cannot read: {exc.strerror or _first_line(exc)}"
        ) from None


def _head(path: Path, n: int) -> bytes:
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read(n)

    return _guard_io(path, read)


def _file_format(path: Path, uri: str) -> str:
    name = path.name.lower()
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if _IDX_NAME.match(name) or re.search(r"idx\d", name) or name.endswith(("-ubyte", "-ubyte.gz")):
        return "idx"
    head = _head(path, 8)
    if head[:2] == b"\x1f\x8b":  # gzip: look inside
        with contextlib.suppress(OSError, EOFError, zlib.error), gzip.open(path) as f:
            head = f.read(8)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if len(head) >= 4 and head[:2] == b"\0\0" and head[2] in _IDX_TYPES:
        return "idx"
    raise DataError(
        f"{uri}: cannot tell the file format (expected .npz, .npy, .csv, .parquet, an IDX file or a folder)"
    )


def _open_file(path: Path, uri: str, digest: str | None = None) -> Source:
    """A single file; its format is validated (headers, counts) before its bytes are hashed."""
    opener = {"npz": _open_npz, "npy": _open_npy, "csv": _open_csv, "parquet": _open_parquet, "idx": _open_idx_file}
    if looks_like_cifar(path):
        source = _open_cifar(path, uri)
    else:
        source = _channels_first(opener[_file_format(path, uri)](path, uri))
    return replace(source, content_hash=digest or _guard_io(path, lambda: hash_file(path)))


def _folder_files(folder: Path) -> tuple[str, list[Path]]:
    """('idx', IDX files) or ('images', image files), in a fixed order."""
    entries = _guard_io(folder, lambda: sorted(folder.iterdir()))
    idx = [p for p in entries if p.is_file() and _IDX_NAME.match(p.name)]
    if idx:
        return "idx", idx
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    for sub in entries:
        if sub.is_dir() and not sub.name.startswith("."):
            files += sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return "images", files


def _open_folder(folder: Path) -> Source:
    if looks_like_cifar(folder):
        source = _open_cifar(folder, str(folder))
        return replace(source, content_hash=_guard_io(folder, lambda: hash_tree(folder, _cifar_files(folder))))
    kind, files = _folder_files(folder)
    source = _open_idx_folder(folder, files) if kind == "idx" else _open_image_folder(folder, files)
    return replace(source, content_hash=_guard_io(folder, lambda: hash_tree(folder, files)))


# ---------------------------------------------------------------------------------------------
# Row-major arrays on disk (IDX files, .npy files and .npz members), streamed in lockstep with labels.


@dataclass(frozen=True)
class _ArrayFile:
    """A row-major array in a file: how to open it positioned at its data, its dtype and shape."""

    uri: str
    open: Callable[[], contextlib.AbstractContextManager[BinaryIO]]
    dtype: np.dtype
    shape: tuple[int, ...]  # (N, ...)
    header: str  # what the header declares, for messages: "60000 images of 28x28"
    kind: str  # "IDX" or ".npy"
    exact: bool  # IDX: no bytes may follow the data

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize


def _read(stream: BinaryIO, n: int, uri: str) -> bytes:
    """Up to n bytes (fewer only at the end); a broken compressed stream is one line."""
    try:
        parts, got = [], 0
        while got < n:
            block = stream.read(n - got)
            if not block:
                break
            parts.append(block)
            got += len(block)
        return b"".join(parts) if len(parts) != 1 else parts[0]
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{uri}: truncated or corrupt compressed data: {_first_line(exc)}") from None
    except zipfile.BadZipFile as exc:
        raise DataError(f"{uri}: corrupt .npz member: {_first_line(exc)}") from None
    except OSError as exc:
        raise DataError(f"{uri}: cannot read: {exc.strerror or _first_line(exc)}") from None


def _truncated(array: _ArrayFile, got: int) -> DataError:
    need = array.shape[0] * array.row_bytes
    return DataError(
        f"{array.uri}: truncated {array.kind} file: header says {array.header} "
        f"but only {got} bytes of data follow (expected {need})"
    )


def _stream_rows(images: _ArrayFile, labels: _ArrayFile | None, rows_per_chunk: int) -> Iterator[Chunk]:
    """Chunks of (images (b, *shape), labels (b,)) read from both files side by side."""
    n = images.shape[0]
    with images.open() as image_stream, labels.open() if labels else contextlib.nullcontext() as label_stream:
        done = 0
        while done < n:
            b = min(rows_per_chunk, n - done)
            data = _read(image_stream, b * images.row_bytes, images.uri)
            if len(data) < b * images.row_bytes:
                raise _truncated(images, done * images.row_bytes + len(data))
            chunk = np.frombuffer(data, images.dtype).reshape(b, *images.shape[1:])
            label_chunk = None
            if labels is not None:
                data = _read(label_stream, b * labels.row_bytes, labels.uri)
                if len(data) < b * labels.row_bytes:
                    raise _truncated(labels, done * labels.row_bytes + len(data))
                label_chunk = np.frombuffer(data, labels.dtype)
            yield chunk, label_chunk
            done += b
        for array, stream in ((images, image_stream), (labels, label_stream)):
            if array is not None and array.exact and _read(stream, 1, array.uri):
                raise DataError(
                    f"{array.uri}: data continues after the {array.header} the header declares "
                    f"(expected exactly {array.shape[0] * array.row_bytes} bytes of data)"
                )


def _check_labels(labels: _ArrayFile, images: _ArrayFile) -> None:
    if len(labels.shape) != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{labels.uri}: labels have shape {labels.shape} and dtype {labels.dtype} "
            "(expected one integer label per image)"
        )
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels.uri}: {labels.shape[0]} labels but {Path(images.uri).name} has {images.shape[0]} images "
            "(expected one label per image)"
        )


def _check_file_size(array: _ArrayFile, path: Path, offset: int) -> None:
    """An uncompressed file's size tells truncation before any data is read."""
    size = _guard_io(path, lambda: path.stat().st_size)
    need = array.shape[0] * array.row_bytes
    if size - offset < need:
        raise _truncated(array, max(0, size - offset))
    if array.exact and size - offset > need:
        raise DataError(
            f"{array.uri}: {size - offset - need} bytes follow the {array.header} the header declares "
            f"(expected exactly {need} bytes of data)"
        )


# -- IDX (MNIST, Fashion-MNIST): big-endian magic 0x0000TTDD, DD dimension sizes, then the data.


def _is_gzip(path: Path) -> bool:
    return _head(path, 2) == b"\x1f\x8b"


def _idx_file(path: Path, role: str, uri: str | None = None) -> _ArrayFile:
    """Parse an IDX header; role 'images' wants >= 2 dimensions, 'labels' exactly one."""
    uri = uri or str(path)
    compressed = _is_gzip(path)

    def raw() -> BinaryIO:
        return gzip.open(path, "rb") if compressed else open(path, "rb")

    with _guard_io(path, raw) as stream:
        magic = _read(stream, 4, uri)
        if len(magic) < 4:
            raise DataError(f"{uri}: truncated IDX file: {len(magic)} bytes (expected a 4-byte magic number)")
        if magic[:2] != b"\0\0" or magic[2] not in _IDX_TYPES or magic[3] == 0:
            expected = "0x00000803 for images" if role == "images" else "0x00000801 for labels"
            raise DataError(f"{uri}: wrong magic number 0x{magic.hex()} (expected an IDX file: {expected})")
        ndim = magic[3]
        raw_dims = _read(stream, 4 * ndim, uri)
        if len(raw_dims) < 4 * ndim:
            raise DataError(f"{uri}: truncated IDX file: the header declares {ndim} dimensions but ends early")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    offset = 4 + 4 * ndim
    dtype = _IDX_TYPES[magic[2]]
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
    header = f"{dims[0]} images of {_describe_shape(dims[1:])}" if role == "images" else f"{dims[0]} labels"

    @contextlib.contextmanager
    def positioned() -> Iterator[BinaryIO]:
        with _guard_io(path, raw) as stream:
            _read(stream, offset, uri)
            yield stream

    array = _ArrayFile(uri, positioned, dtype, tuple(dims), header, "IDX", exact=True)
    if not compressed:
        _check_file_size(array, path, offset)
    return array


def _idx_part(
    name: str, images_path: Path, labels_path: Path | None, uri: str | None = None
) -> tuple[Part, _ArrayFile]:
    images = _idx_file(images_path, "images", uri)
    labels = _idx_file(labels_path, "labels") if labels_path else None
    if labels is not None:
        _check_labels(labels, images)
    part = Part(name, images.uri, images.shape[0], lambda rows: _stream_rows(images, labels, rows))
    return part, images


def _open_idx_file(path: Path, uri: str) -> Source:
    part, images = _idx_part("all", path, None, uri)
    return Source(uri, "idx", "", images.shape[1:], images.dtype, False, (part,))


def _open_idx_folder(folder: Path, files: list[Path]) -> Source:
    """train-/t10k- (or test-) image and label pairs; the t10k pair becomes the official test part."""
    groups: dict[str, dict[str, Path]] = {}
    for path in files:
        match = _IDX_NAME.match(path.name)
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
            f"{arrays[1].uri}: images are {_describe_shape(arrays[1].shape[1:])} {arrays[1].dtype} but the train "
            f"images are {_describe_shape(arrays[0].shape[1:])} {arrays[0].dtype} (expected the same for both)"
        )
    if len(parts) == 1:
        parts = [replace(parts[0], name="all")]
    has_labels = "labels" in groups["train"]
    return Source(str(folder), "idx", "", arrays[0].shape[1:], arrays[0].dtype, has_labels, tuple(parts))


# -- NumPy: .npy, and .npz archives (x_train/y_train/x_test/y_test, images/labels, x/y, arr_0/arr_1).

_IMAGE_KEYS = ("images", "x", "X", "data", "arr_0")
_LABEL_KEYS = ("labels", "y", "targets", "target", "arr_1")


def _npy_array(uri: str, opener: Callable[[], contextlib.AbstractContextManager[BinaryIO]]) -> tuple[_ArrayFile, int]:
    """Parse a .npy header; returns the array description and the header's length in bytes."""

    def read_header(stream: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
        try:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                return np.lib.format.read_array_header_1_0(stream)
            return np.lib.format.read_array_header_2_0(stream)
        except (ValueError, EOFError) as exc:
            raise DataError(f"{uri}: not a valid .npy array: {_first_line(exc)}") from None

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

    return _ArrayFile(uri, positioned, dtype, tuple(shape), f"shape {tuple(shape)}", ".npy", exact=False), offset


def _check_images(array: _ArrayFile) -> None:
    if len(array.shape) < 2:
        raise DataError(
            f"{array.uri}: array of shape {array.shape} (expected images: N x height x width, or N x pixels)"
        )


def _open_npy(path: Path, uri: str) -> Source:
    images, offset = _npy_array(uri, lambda: _guard_io(path, lambda: open(path, "rb")))
    _check_images(images)
    _check_file_size(images, path, offset)
    part = Part("all", uri, images.shape[0], lambda rows: _stream_rows(images, None, rows))
    return Source(uri, "npy", "", images.shape[1:], images.dtype, False, (part,))


def _open_npz(path: Path, uri: str) -> Source:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{uri}: not a valid .npz archive: {_first_line(exc)}") from None
    keys = {name[: -len(".npy")]: name for name in members}

    def member(key: str) -> _ArrayFile:
        @contextlib.contextmanager
        def opener() -> Iterator[BinaryIO]:
            try:
                with zipfile.ZipFile(path) as archive, archive.open(keys[key]) as stream:
                    yield stream
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{uri}: corrupt .npz member '{key}': {_first_line(exc)}") from None

        return _npy_array(f"{uri}[{key}]", opener)[0]

    def part(name: str, image_key: str, label_key: str | None) -> tuple[Part, _ArrayFile]:
        images = member(image_key)
        _check_images(images)
        labels = member(label_key) if label_key else None
        if labels is not None:
            _check_labels(labels, images)
        return Part(name, images.uri, images.shape[0], lambda rows: _stream_rows(images, labels, rows)), images

    if "x_train" in keys:
        train, images = part("train", "x_train", "y_train" if "y_train" in keys else None)
        parts = [train]
        if "x_test" in keys:
            test, test_images = part("test", "x_test", "y_test" if "y_test" in keys else None)
            if test_images.shape[1:] != images.shape[1:]:
                raise DataError(
                    f"{test_images.uri}: images are {_describe_shape(test_images.shape[1:])} but x_train's "
                    f"are {_describe_shape(images.shape[1:])} (expected the same)"
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


# -- CSV: one image per row, optional header; a 'label' column is the label, the rest are pixels.


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _square(width: int) -> tuple[int, ...]:
    """A flat row of D pixels is shown as a square image when D is a perfect square."""
    side = math.isqrt(width)
    return (side, side) if side * side == width and width > 1 else (width,)


def _open_csv(path: Path, uri: str) -> Source:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def text() -> BinaryIO:
        return (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb")

    def first_line() -> str:
        with text() as stream:
            return stream.readline(2**24).decode("utf-8", "replace").strip()

    def first_ragged_line(expected: int) -> tuple[int, int] | None:
        """(line number, values) of the first line whose value count differs from the first line's.

        Looked for in Python after Arrow fails: an Arrow `invalid_row_handler` would be a Python
        callable held by Arrow's reader threads, which can outlive the interpreter's shutdown and
        abort the process at exit ("terminate called without an active exception")."""
        import csv
        import io

        with text() as stream:
            lines = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")
            rows = csv.reader(lines)
            for row in rows:
                if row and len(row) != expected:
                    return rows.line_num, len(row)
        return None

    try:
        first = first_line()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{uri}: cannot read: {_first_line(exc)}") from None
    if not first:
        raise DataError(f"{uri}: empty source (expected at least one image)")
    fields = [f.strip() for f in first.split(",")]
    header = not all(_is_number(f) for f in fields)
    names = fields if header else [f"f{i}" for i in range(len(fields))]
    label = next((n for n in names if n.lower() == "label"), None) if header else None
    pixels = [n for n in names if n != label]
    if not pixels:
        raise DataError(f"{uri}: no pixel columns (expected one image per row, optionally a 'label' column)")
    types = {n: pa.float64() for n in pixels} | ({label: pa.int64()} if label else {})

    def batches() -> Iterator:
        try:
            with pacsv.open_csv(
                str(path),
                read_options=pacsv.ReadOptions(
                    use_threads=False, block_size=CHUNK_BYTES // 4, column_names=None if header else names
                ),
                convert_options=pacsv.ConvertOptions(column_types=types),
            ) as reader:
                yield from reader
        except (pa.ArrowInvalid, OSError) as exc:
            ragged = first_ragged_line(len(names)) if isinstance(exc, pa.ArrowInvalid) else None
            if ragged is not None:
                raise DataError(
                    f"{uri}: ragged rows: line {ragged[0]} has {ragged[1]} values "
                    f"(expected {len(names)}, like the first line)"
                ) from None
            raise DataError(f"{uri}: cannot parse CSV: {_first_line(exc)}") from None

    def matrix(batch, offset: int) -> np.ndarray:
        for name in pixels:
            column = batch.column(name)
            if column.null_count:
                row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                raise DataError(
                    f"{uri}: image {offset + row} has an empty value in column '{name}' (expected a number)"
                )
        return np.column_stack([batch.column(name).to_numpy() for name in pixels])  # (b, D) float64

    # A counting pass: the split needs the number of rows, and the storage dtype whether every pixel is whole.
    rows, integral = 0, True
    for batch in batches():
        if integral and batch.num_rows:
            values = matrix(batch, rows)
            integral = bool(np.all(values == np.floor(values)))
        rows += batch.num_rows

    def read(rows_per_chunk: int) -> Iterator[Chunk]:
        offset = 0
        for batch in batches():
            values = matrix(batch, offset)
            labels = batch.column(label).to_numpy(zero_copy_only=False) if label else None
            if labels is not None and batch.column(label).null_count:
                row = int(np.flatnonzero(batch.column(label).is_null().to_numpy(zero_copy_only=False))[0])
                raise DataError(f"{uri}: image {offset + row} has an empty label (expected an integer)")
            yield values, labels  # float64; whole values are stored as integers after the range check
            offset += batch.num_rows

    dtype = np.dtype(np.int64 if integral else np.float64)
    part = Part("all", uri, rows, read)
    return Source(uri, "csv", "", _square(len(pixels)), dtype, label is not None, (part,))


# -- Parquet: an 'image' list column (this library's own format, with its shape) or one column per pixel.


def _open_parquet(path: Path, uri: str) -> Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(exc: BaseException) -> DataError:
        return DataError(f"{uri}: unreadable Parquet file: {_first_line(exc)}")

    try:
        parquet = pq.ParquetFile(path, page_checksum_verification=True)  # where the writer stored checksums
        schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise unreadable(exc) from None
    label = "label" if "label" in schema.names else None
    if label and not pa.types.is_integer(schema.field(label).type):
        raise DataError(f"{uri}: column 'label' is {schema.field(label).type} (expected integers)")
    if "image" in schema.names:
        kind = schema.field("image").type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
            raise DataError(f"{uri}: column 'image' is {kind} (expected a list of pixel values per row)")
        value_type = kind.value_type
        columns = ["image"]
    else:
        numeric = [f for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
        columns = [f.name for f in numeric if f.name != label]
        if not columns:
            raise DataError(f"{uri}: no 'image' column and no numeric pixel columns (expected one image per row)")
        value_type = pa.float64() if any(pa.types.is_floating(schema.field(c).type) for c in columns) else pa.int64()
    if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
        raise DataError(f"{uri}: pixels are {value_type} (expected integers or floats)")
    dtype = np.dtype(value_type.to_pandas_dtype())

    def batches(batch_rows: int) -> Iterator:
        try:
            yield from parquet.iter_batches(batch_size=batch_rows, columns=columns + ([label] if label else []))
        except (OSError, pa.ArrowException) as exc:
            raise unreadable(exc) from None

    # Width: fixed by the type, or the first row's length (every other row is checked against it).
    if columns != ["image"]:
        width = len(columns)
    elif pa.types.is_fixed_size_list(kind):
        width = kind.list_size
    else:
        first = next(batches(1), None)
        width = len(first.column("image")[0]) if first is not None and first.num_rows else 0
    shape = _square(width)
    metadata = (schema.metadata or {}).get(b"vae.shape")
    if metadata and math.prod(json.loads(metadata)) == width:
        shape = tuple(json.loads(metadata))

    def matrix(batch, offset: int) -> np.ndarray:
        if columns != ["image"]:
            for name in columns:
                if batch.column(name).null_count:
                    row = int(np.flatnonzero(batch.column(name).is_null().to_numpy(zero_copy_only=False))[0])
                    raise DataError(
                        f"{uri}: image {offset + row} has an empty value in column '{name}' (expected a number)"
                    )
            return np.column_stack([batch.column(name).to_numpy() for name in columns])
        column = batch.column("image")
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{uri}: image {offset + row} is null (expected {width} pixel values)")
        if not pa.types.is_fixed_size_list(column.type):
            lengths = np.diff(column.offsets.to_numpy())
            if (lengths != width).any():
                row = int(np.flatnonzero(lengths != width)[0])
                raise DataError(
                    f"{uri}: ragged rows: image {offset + row} has {lengths[row]} values "
                    f"(expected {width}, like the first row)"
                )
        values = column.flatten()
        if values.null_count:
            row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) // width
            raise DataError(f"{uri}: image {offset + row} has a null pixel (expected numbers)")
        return values.to_numpy(zero_copy_only=False).reshape(-1, width)

    def read(rows_per_chunk: int) -> Iterator[Chunk]:
        offset = 0
        for batch in batches(rows_per_chunk):
            images = matrix(batch, offset)
            labels = batch.column(label).to_numpy(zero_copy_only=False) if label else None
            if label and batch.column(label).null_count:
                raise DataError(f"{uri}: a label is null near image {offset} (expected an integer per image)")
            yield images, labels
            offset += batch.num_rows

    part = Part("all", uri, rows, read)
    return Source(uri, "parquet", "", shape, dtype, label is not None, (part,))


# -- Folders of images (Pillow): flat, or one subfolder per label.


def _open_image_folder(folder: Path, files: list[Path]) -> Source:
    from PIL import Image, UnidentifiedImageError

    if not files:
        raise DataError(f"{folder}: empty source (expected image files, label subfolders of images, or IDX files)")
    top = [p for p in files if p.parent == folder]
    nested = [p for p in files if p.parent != folder]
    if top and nested:
        raise DataError(f"{top[0]}: an image beside label subfolders (expected all images inside the subfolders)")
    classes = sorted({p.relative_to(folder).parts[0] for p in nested})
    if all(c.isdigit() for c in classes):  # folders named 0..9 carry their own numbers
        label_of = {c: int(c) for c in classes}
    else:
        label_of = {c: i for i, c in enumerate(classes)}

    def load(path: Path):
        try:
            with warnings.catch_warnings():
                # A header claiming more than Image.MAX_IMAGE_PIXELS pixels (a decompression bomb) is refused
                # before any pixel is decoded; Pillow only warns below twice that limit.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    image.load()
                    return image.copy()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(
                f"{path}: image too large: {_first_line(exc)} "
                f"(expected at most {Image.MAX_IMAGE_PIXELS} pixels per image)"
            ) from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read image: {_first_line(exc)}") from None

    first = load(files[0])
    gray = first.mode in ("1", "L", "LA", "I", "I;16", "F")
    mode = "L" if gray else "RGB"  # the first image decides; palette, RGBA, CMYK... become RGB
    size = first.size  # (W, H)
    shape = (size[1], size[0]) if gray else (3, size[1], size[0])  # (H, W) or channel-major (3, H, W)

    def read(rows_per_chunk: int) -> Iterator[Chunk]:
        for start in range(0, len(files), rows_per_chunk):
            batch = files[start : start + rows_per_chunk]
            images = np.empty((len(batch), *shape), np.uint8)
            for i, path in enumerate(batch):
                image = load(path)
                if image.size != size:
                    raise DataError(
                        f"{path}: image is {image.size[0]}x{image.size[1]} but {files[0].name} is {size[0]}x{size[1]} "
                        "(expected one size for the whole folder)"
                    )
                pixels = np.asarray(image.convert(mode))  # (H, W) or (H, W, 3)
                images[i] = pixels if gray else pixels.transpose(2, 0, 1)  # (H, W) or (3, H, W)
            labels = None
            if nested:
                labels = np.array([label_of[p.relative_to(folder).parts[0]] for p in batch], np.int64)
            yield images, labels

    part = Part("all", str(folder), len(files), read)
    return Source(
        str(folder),
        "images",
        "",
        shape,
        np.dtype(np.uint8),
        bool(nested),
        (part,),
        classes=tuple(classes) if nested else None,
        layout=None if gray else "CHW",
    )


# -- In-memory arrays: sklearn's digits, and arrays handed over by callers.


def from_arrays(
    images: np.ndarray,
    labels: np.ndarray | None,
    uri: str,
    digest: str,
    max_value: float | None = None,
    format: str = "arrays",
) -> Source:
    """A source over arrays already in memory: images (N, *shape), labels (N,) or None."""

    def read(rows_per_chunk: int) -> Iterator[Chunk]:
        for start in range(0, images.shape[0], rows_per_chunk):
            stop = start + rows_per_chunk
            yield images[start:stop], None if labels is None else labels[start:stop]

    part = Part("all", uri, int(images.shape[0]), read)
    return Source(uri, format, digest, tuple(images.shape[1:]), images.dtype, labels is not None, (part,), max_value)


def sklearn_digits() -> Source:
    """sklearn's bundled digits: 1797 8x8 images, pixel values 0..16."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)  # (1797, 8, 8)
    labels = bunch.target.astype(np.int64)  # (1797,)
    return from_arrays(images, labels, "sklearn:digits", hash_arrays(images, labels), 16.0, "sklearn")


def sklearn_sample_patches(
    side: int = PATCH_SIDE, train_stride: int = PATCH_TRAIN_STRIDE, test_stride: int = PATCH_TEST_STRIDE
) -> Source:
    """sklearn's two bundled photographs (427x640 RGB) cut into side x side patches, (3, side, side) each.

    The rule that keeps train and test apart: each photograph's columns [0, 480) are the training
    region and [480, 640) the test region, and no patch crosses the boundary, so no test pixel was
    ever trained on while both parts come from both photographs (the same kind of images). Training
    patches start every `train_stride` pixels (50 x 57 per photograph, overlapping), test patches every
    `test_stride` (25 x 9 per photograph); the seeded split draws validation from the training
    patches. Labels are the photograph (0 china, 1 flower).
    """
    from sklearn.datasets import load_sample_images

    def cut(photo: np.ndarray, first: int, last: int, stride: int) -> np.ndarray:
        """The patches of columns [first, last) of a (H, W, 3) photograph → (n, 3, side, side)."""
        rows, columns = range(0, photo.shape[0] - side + 1, stride), range(first, last - side + 1, stride)
        return np.stack([photo[r : r + side, c : c + side].transpose(2, 0, 1) for r in rows for c in columns])

    photos = load_sample_images().images  # 2 x (427, 640, 3) uint8
    train = [cut(photo, 0, PATCH_TEST_COLUMN, train_stride) for photo in photos]
    test = [cut(photo, PATCH_TEST_COLUMN, photo.shape[1], test_stride) for photo in photos]
    train_images, test_images = np.concatenate(train), np.concatenate(test)  # (n, 3, side, side) each
    train_labels = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(train)])
    test_labels = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(test)])
    digest = hash_arrays(
        train_images, test_images, train_labels, test_labels, np.array([side, train_stride, test_stride])
    )
    uri = SAMPLE_PATCHES

    def part(name: str, images: np.ndarray, label: np.ndarray) -> Part:
        def read(rows_per_chunk: int) -> Iterator[Chunk]:
            for start in range(0, images.shape[0], rows_per_chunk):
                yield images[start : start + rows_per_chunk], label[start : start + rows_per_chunk]

        return Part(name, f"{uri}[{name}]", int(images.shape[0]), read)

    parts = (part("train", train_images, train_labels), part("test", test_images, test_labels))
    return Source(
        uri, "sklearn", digest, (3, side, side), np.dtype(np.uint8), True, parts, 255.0, ("china", "flower"), "CHW"
    )


SAMPLE_PATCHES = "sklearn:sample-patches"
SKLEARN_SOURCES: dict[str, Callable[[], Source]] = {
    "sklearn:digits": sklearn_digits,
    SAMPLE_PATCHES: sklearn_sample_patches,
}


# -- CIFAR-10/100 binary (vae.data.cifar): the official train/test split; the pickled version is refused there.


def looks_like_cifar(path: Path) -> bool:
    """A CIFAR download (binary or pickled, by names): vae.data.cifar reads or refuses it."""
    from vae.data import cifar

    return cifar.looks_like_cifar(path)


def _cifar_files(folder: Path) -> list[Path]:
    """The files a CIFAR folder's content hash covers: every file under it, in a fixed order."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _open_cifar(path: Path, uri: str) -> Source:
    """CIFAR-10/100 binary as parts 'train' and 'test' of (3, 32, 32) uint8 images with their (fine) labels."""
    from vae.data import cifar

    data = cifar.read_cifar(path, uri)
    train = from_arrays(data.train_images, data.train_labels, f"{uri}[train]", "")
    test = from_arrays(data.test_images, data.test_labels, f"{uri}[test]", "")
    parts = (replace(train.parts[0], name="train"), replace(test.parts[0], name="test"))
    return Source(uri, "cifar", "", cifar.IMAGE_SHAPE, np.dtype(np.uint8), True, parts, 255.0, data.classes, "CHW")


# -- Arrays with a channel axis: (N, H, W, C) or (N, C, H, W) → stored (C, H, W).


def _channels_first(source: Source) -> Source:
    """A source of (H, W, C) or (C, H, W) images, read as (C, H, W) (vae.data.cifar.image_layout says which)."""
    if len(source.shape) != 3:
        return source
    from vae.data import cifar

    layout = cifar.image_layout((0, *source.shape), source.uri)
    if layout == "NCHW":
        return replace(source, layout="CHW")
    h, w, c = source.shape

    def transposed(part: Part) -> Part:
        def read(rows_per_chunk: int) -> Iterator[Chunk]:
            for images, labels in part.read(rows_per_chunk):
                yield np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels  # (b, H, W, C) → (b, C, H, W)

        return replace(part, read=read)

    return replace(source, shape=(c, h, w), parts=tuple(transposed(p) for p in source.parts), layout="CHW")


# ---------------------------------------------------------------------------------------------
# Downloads.


# A local write failed (the download's folder is full or read-only), not the network.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def download(url: str, directory: Path, *, timeout: float = DOWNLOAD_TIMEOUT) -> tuple[Path, str]:
    """Stream a URL to a file in directory, hashing as it arrives; returns the file and its sha256.

    Messages name the URL with its credentials redacted; the real URL goes only to the request.
    """
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    target = inside(directory, name if name not in ("", ".", "..") else "download")
    shown = redact_url(url)
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": f"vae/{vae.__version__}"})
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as out:
            while block := response.read(HASH_BLOCK):
                digest.update(block)
                out.write(block)
                received += len(block)
    except urllib.error.HTTPError as exc:
        transient = exc.code >= 500 or exc.code in (408, 429)
        raise DownloadError(
            f"{shown}: HTTP {exc.code} {redact_text(str(exc.reason), url)} (expected 200 OK)", transient
        ) from None
    except (TimeoutError, socket.timeout):
        raise DownloadError(
            f"{shown}: timed out after {timeout:g} s without data (expected a response)", True
        ) from None
    except http.client.IncompleteRead as exc:
        got = received + len(exc.partial)
        expected = got + (exc.expected or 0)
        raise DownloadError(f"{shown}: download ended after {got} bytes (expected {expected})", True) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (TimeoutError, socket.timeout)):
            raise DownloadError(
                f"{shown}: timed out after {timeout:g} s without data (expected a response)", True
            ) from None
        raise DownloadError(f"{shown}: cannot download: {redact_text(str(exc.reason), url)}", True) from None
    except (http.client.HTTPException, ConnectionError) as exc:
        raise DownloadError(f"{shown}: cannot download: {redact_text(_first_line(exc), url)}", True) from None
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:
            raise StorageError(
                f"{exc.filename or target}: cannot write the download of {shown}: "
                f"{os.strerror(exc.errno)} (expected a writable temporary folder with free space)"
            ) from None
        raise DownloadError(
            f"{shown}: cannot download: {redact_text(exc.strerror or _first_line(exc), url)}", True
        ) from None
    return target, digest.hexdigest()
