"""What every source reader shares: the Source and Part a reader returns, chunk sizes, content hashes.

A reader declares its rows, image shape and pixel dtype up front and yields chunks (images
(b, *shape), labels (b,) or None), so a source larger than memory is never held whole; CHUNK_BYTES
bounds a chunk's pixels (patch it here to change the chunk size everywhere). The content hash is
the sha256 of the source's bytes (for a folder: of its files' names and bytes), computed by
streaming. Also here: the one-line messages of OS errors (guard_io), and Sources over arrays
already in memory (from_arrays).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae.errors import DataError

CHUNK_BYTES = 16 * 2**20  # bytes of pixels per chunk: bounds peak memory whatever the source's size
HASH_BLOCK = 2**20


Chunk = tuple[np.ndarray, "np.ndarray | None"]


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


def chunk_rows(shape: tuple[int, ...], itemsize: int) -> int:
    """Rows per chunk for images of this shape: CHUNK_BYTES of pixels, at least one row."""
    return max(1, CHUNK_BYTES // max(1, math.prod(shape) * itemsize))


def describe_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def error_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def square_shape(width: int) -> tuple[int, ...]:
    """A flat row of D pixels is shown as a square image when D is a perfect square."""
    side = math.isqrt(width)
    return (side, side) if side * side == width and width > 1 else (width,)


def guard_io(path: Path | str, action: Callable):
    """Run a file operation; an OS error becomes one line naming the file."""
    try:
        return action()
    except OSError as exc:
        raise DataError(
            f"{getattr(exc, 'filename', None) or path}: cannot read: {exc.strerror or error_line(exc)}"
        ) from None


def read_head(path: Path, n: int) -> bytes:
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read(n)

    return guard_io(path, read)


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
