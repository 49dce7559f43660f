"""Parquet sources: an 'image' list column (this library's own format, with its shape) or one column per pixel.

Read in row batches, with page checksums verified where the writer stored them; an optional
integer 'label' column is the label. A null or a ragged row is refused naming its row, pixels that
are not numbers by their column's type.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vae.errors import DataError
from vae.data.sources.base import Chunk, Part, Source, error_line, square_shape


def open_parquet(path: Path, uri: str) -> Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(exc: BaseException) -> DataError:
        return DataError(f"{uri}: unreadable Parquet file: {error_line(exc)}")

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
    shape = square_shape(width)
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
