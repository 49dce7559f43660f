"""Images with a channel axis: (N, H, W, C) or (N, C, H, W), always stored channel-major (C, H, W).

image_layout tells which of the two an array is (or refuses it when it cannot tell);
to_channels_first converts an array in memory, channels_first a source's images as they are read.
RGB image folders are transposed as they are read, CIFAR's records are channel-major already.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from vae.errors import DataError
from vae.data.sources.base import Chunk, Part, Source

CHANNEL_COUNTS = (1, 3, 4)  # what an image axis must be to be read as the channel axis


def image_layout(shape: tuple[int, ...], uri: str, layout: str | None = None) -> str:
    """'NHWC' or 'NCHW' for an array of shape (N, a, b, c).

    Rule: the channel axis is the one of a (first image axis) and c (last) that is 1, 3 or 4 when
    the other is not; when both are (a 3x3 or 4x4 image, say) the caller must say which with
    layout='NHWC' or 'NCHW'; when neither is, the array is not an image batch with channels.
    """
    if len(shape) != 4:
        raise DataError(f"{uri}: array of shape {tuple(shape)} (expected 4 axes: (N, H, W, C) or (N, C, H, W))")
    if layout is not None:
        if layout not in ("NHWC", "NCHW"):
            raise DataError(f"{uri}: layout '{layout}' (expected 'NHWC' or 'NCHW')")
        return layout
    first, last = shape[1] in CHANNEL_COUNTS, shape[3] in CHANNEL_COUNTS
    if last and not first:
        return "NHWC"
    if first and not last:
        return "NCHW"
    if first and last:
        raise DataError(
            f"{uri}: array of shape {tuple(shape)} could be (N, H, W, C) or (N, C, H, W) "
            "(expected the layout to be named: 'NHWC' or 'NCHW')"
        )
    raise DataError(
        f"{uri}: array of shape {tuple(shape)} has no channel axis "
        f"(expected {', '.join(map(str, CHANNEL_COUNTS))} channels on the second or the last axis)"
    )


def to_channels_first(images: np.ndarray, uri: str, layout: str | None = None) -> np.ndarray:
    """(N, H, W, C) or (N, C, H, W) → (N, C, H, W), C-contiguous; image_layout tells which it is."""
    if image_layout(images.shape, uri, layout) == "NHWC":
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # (N, C, H, W)
    return np.ascontiguousarray(images)  # (N, C, H, W)


def channels_first(source: Source) -> Source:
    """A source of (H, W, C) or (C, H, W) images, read as (C, H, W) (image_layout says which)."""
    if len(source.shape) != 3:
        return source
    layout = image_layout((0, *source.shape), source.uri)
    if layout == "NCHW":
        return replace(source, layout="CHW")
    h, w, c = source.shape

    def transposed(part: Part) -> Part:
        def read(rows_per_chunk: int) -> Iterator[Chunk]:
            for images, labels in part.read(rows_per_chunk):
                yield np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels  # (b, H, W, C) → (b, C, H, W)

        return replace(part, read=read)

    return replace(source, shape=(c, h, w), parts=tuple(transposed(p) for p in source.parts), layout="CHW")
