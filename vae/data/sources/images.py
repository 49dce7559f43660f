"""Folders of images (Pillow): flat, or one subfolder per label.

The first image decides the mode: grayscale images are stored (H, W), anything else is converted
to RGB and stored channel-major (3, H, W). Every image must have the first one's size; a
decompression bomb is refused before its pixels are decoded. Subfolders named by numbers (0..9)
carry their own labels, other names are numbered in sorted order; the names are the class names.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vae.errors import DataError
from vae.data.sources.base import Chunk, Part, Source, error_line

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


def open_image_folder(folder: Path, files: list[Path]) -> Source:
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
                f"{path}: image too large: {error_line(exc)} "
                f"(expected at most {Image.MAX_IMAGE_PIXELS} pixels per image)"
            ) from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read image: {error_line(exc)}") from None

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
