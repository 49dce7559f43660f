"""Row-major arrays on disk (IDX files, .npy files and .npz members), streamed in lockstep with labels.

An ArrayFile says how to open a file positioned at its data, and the dtype and shape its header
declares; stream_rows reads images and labels side by side in chunks, and a file that ends early
(or, for IDX, runs on past its data) is one DataError naming it.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vae.errors import DataError
from vae.data.sources.base import Chunk, error_line, guard_io


@dataclass(frozen=True)
class ArrayFile:
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


def read_up_to(stream: BinaryIO, n: int, uri: str) -> bytes:
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
        raise DataError(f"{uri}: truncated or corrupt compressed data: {error_line(exc)}") from None
    except zipfile.BadZipFile as exc:
        raise DataError(f"{uri}: corrupt .npz member: {error_line(exc)}") from None
    except OSError as exc:
        raise DataError(f"{uri}: cannot read: {exc.strerror or error_line(exc)}") from None


def _truncated(array: ArrayFile, got: int) -> DataError:
    need = array.shape[0] * array.row_bytes
    return DataError(
        f"{array.uri}: truncated {array.kind} file: header says {array.header} "
        f"but only {got} bytes of data follow (expected {need})"
    )


def stream_rows(images: ArrayFile, labels: ArrayFile | None, rows_per_chunk: int) -> Iterator[Chunk]:
    """Chunks of (images (b, *shape), labels (b,)) read from both files side by side."""
    n = images.shape[0]
    with images.open() as image_stream, labels.open() if labels else contextlib.nullcontext() as label_stream:
        done = 0
        while done < n:
            b = min(rows_per_chunk, n - done)
            data = read_up_to(image_stream, b * images.row_bytes, images.uri)
            if len(data) < b * images.row_bytes:
                raise _truncated(images, done * images.row_bytes + len(data))
            chunk = np.frombuffer(data, images.dtype).reshape(b, *images.shape[1:])
            label_chunk = None
            if labels is not None:
                data = read_up_to(label_stream, b * labels.row_bytes, labels.uri)
                if len(data) < b * labels.row_bytes:
                    raise _truncated(labels, done * labels.row_bytes + len(data))
                label_chunk = np.frombuffer(data, labels.dtype)
            yield chunk, label_chunk
            done += b
        for array, stream in ((images, image_stream), (labels, label_stream)):
            if array is not None and array.exact and read_up_to(stream, 1, array.uri):
                raise DataError(
                    f"{array.uri}: data continues after the {array.header} the header declares "
                    f"(expected exactly {array.shape[0] * array.row_bytes} bytes of data)"
                )


def check_labels(labels: ArrayFile, images: ArrayFile) -> None:
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


def check_file_size(array: ArrayFile, path: Path, offset: int) -> None:
    """An uncompressed file's size tells truncation before any data is read."""
    size = guard_io(path, lambda: path.stat().st_size)
    need = array.shape[0] * array.row_bytes
    if size - offset < need:
        raise _truncated(array, max(0, size - offset))
    if array.exact and size - offset > need:
        raise DataError(
            f"{array.uri}: {size - offset - need} bytes follow the {array.header} the header declares "
            f"(expected exactly {need} bytes of data)"
        )
