"""sklearn's bundled data sets as sources: 'sklearn:digits' and 'sklearn:sample-patches'.

Nothing is downloaded: digits is 1797 8x8 images (pixel values 0..16), sample-patches cuts the two
bundled photographs into 32x32 colour patches with a train/test boundary no patch crosses. Both are
held in memory (they are small) and hashed from their arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from vae.data.sources.base import Chunk, Part, Source, from_arrays, hash_arrays

# sklearn:sample-patches: 32x32 patches, training ones every 8 pixels left of column 480, test ones every 16 right of it
PATCH_SIDE, PATCH_TRAIN_STRIDE, PATCH_TEST_STRIDE, PATCH_TEST_COLUMN = 32, 8, 16, 480


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

# The files of sklearn's installation each source is read from (what its content hash is remembered by).
_BUNDLED = {
    "sklearn:digits": ("datasets/data/digits.csv.gz",),
    SAMPLE_PATCHES: ("datasets/images/china.jpg", "datasets/images/flower.jpg"),
}


def bundled_files(spec: str) -> tuple[list, list[Path]]:
    """How `spec` is read (sklearn's version, the patch geometry) and the files it is read from, found
    without importing sklearn (~1 s); no files if sklearn's layout is not the one expected."""
    import importlib.metadata
    import importlib.util

    found = importlib.util.find_spec("sklearn")
    root = Path(found.origin).parent if found and found.origin else None
    files = [root / relative for relative in _BUNDLED[spec]] if root else []
    how = [
        spec,
        importlib.metadata.version("scikit-learn"),
        PATCH_SIDE,
        PATCH_TRAIN_STRIDE,
        PATCH_TEST_STRIDE,
        PATCH_TEST_COLUMN,
    ]
    return how, files if files and all(path.is_file() for path in files) else []


SKLEARN_SOURCES: dict[str, Callable[[], Source]] = {
    "sklearn:digits": sklearn_digits,
    SAMPLE_PATCHES: sklearn_sample_patches,
}
