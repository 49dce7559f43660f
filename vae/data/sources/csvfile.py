"""CSV sources: one image per row, optional header; a 'label' column is the label, the rest are pixels.

Read by Arrow in blocks of a quarter chunk (base.CHUNK_BYTES): a counting pass finds the rows and
whether every pixel is whole, then the reading pass yields them; .csv.gz is read through gzip. A
row of D pixels is a square image when D is a perfect square.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vae.errors import DataError
from vae.data.sources import base
from vae.data.sources.base import Chunk, Part, Source, error_line, square_shape


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def open_csv(path: Path, uri: str) -> Source:
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
        raise DataError(f"{uri}: cannot read: {error_line(exc)}") from None
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
                    use_threads=False, block_size=base.CHUNK_BYTES // 4, column_names=None if header else names
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
            raise DataError(f"{uri}: cannot parse CSV: {error_line(exc)}") from None

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
    return Source(uri, "csv", "", square_shape(len(pixels)), dtype, label is not None, (part,))
