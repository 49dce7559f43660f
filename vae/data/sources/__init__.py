"""Dataset sources read in chunks: IDX, NumPy, CSV, Parquet, image folders, CIFAR binary, sklearn, URLs.

This package's entry points are open_source (a spec from pipelines.yaml or the command line → a
Source to stream) and content_hash (the hash open_source would report, without converting
anything); here a spec is told apart (sklearn name, URL, file, folder) and a file's format is
found (by name, then by its first bytes), and each format is read by its own module:

  base        Source and Part, chunk sizes (CHUNK_BYTES), content hashes, from_arrays
  arrays      row-major arrays on disk streamed with their labels (shared by idx and npy)
  idx         IDX files and train-/t10k- folders      npy        .npy and .npz
  csvfile     CSV (.csv, .csv.gz)                     parquet    Parquet
  images      folders of images (Pillow)              cifar      CIFAR-10/100 binary (.tar.gz or folder)
  sklearn_data   sklearn:digits, sklearn:sample-patches
  download    http(s) URLs, fetched to a temporary file
  layout      (N, H, W, C) or (N, C, H, W) arrays → stored channel-major
  memo        content hashes remembered by their files' identity (a stat, not a read, per run)

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
import gzip
import re
import tempfile
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from vae.errors import DataError
from vae.data.urls import redact_url
from vae.data.sources.base import (
    Chunk,
    Part,
    Source,
    chunk_rows,
    from_arrays,
    guard_io,
    hash_file,
    hash_tree,
    read_head,
)
from vae.data.sources.cifar import cifar_files, looks_like_cifar, open_cifar
from vae.data.sources.csvfile import open_csv
from vae.data.sources.download import DOWNLOAD_TIMEOUT, DownloadError, download, is_url
from vae.data.sources.idx import IDX_NAME, IDX_TYPES, open_idx_file, open_idx_folder
from vae.data.sources.images import IMAGE_SUFFIXES, open_image_folder
from vae.data.sources.layout import channels_first
from vae.data.sources.npy import open_npy, open_npz
from vae.data.sources.parquet import open_parquet
from vae.data.sources.memo import remembered
from vae.data.sources.sklearn_data import SKLEARN_SOURCES, bundled_files, sklearn_digits, sklearn_sample_patches

# What the rest of vae uses; CHUNK_BYTES is not among them: it lives (and is patched) in base.
__all__ = [
    "DOWNLOAD_TIMEOUT",
    "SKLEARN_SOURCES",
    "Chunk",
    "DownloadError",
    "Part",
    "Source",
    "chunk_rows",
    "content_hash",
    "download",
    "from_arrays",
    "hash_file",
    "hash_tree",
    "is_url",
    "open_source",
    "sklearn_digits",
    "sklearn_sample_patches",
]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def content_hash(spec: str, memo: Path | None = None) -> str | None:
    """The content hash open_source would report, without converting anything; None for a URL. With a
    `memo` file, the hash of files unchanged since it was last computed is not computed again (memo.py)."""
    if is_url(spec):
        return None
    if spec in SKLEARN_SOURCES:
        how, files = bundled_files(spec)
        return remembered(memo if files else None, how, files, lambda: SKLEARN_SOURCES[spec]().content_hash)
    path = _local_path(spec)
    if path.is_dir() and looks_like_cifar(path):
        files = guard_io(path, lambda: cifar_files(path))
        return guard_io(path, lambda: remembered(memo, ["cifar"], files, lambda: hash_tree(path, files)))
    if path.is_dir():
        _, files = _folder_files(path)
        return guard_io(path, lambda: remembered(memo, ["folder"], files, lambda: hash_tree(path, files)))
    return guard_io(path, lambda: remembered(memo, ["file"], [path], lambda: hash_file(path)))


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
    if IDX_NAME.match(name) or re.search(r"idx\d", name) or name.endswith(("-ubyte", "-ubyte.gz")):
        return "idx"
    head = read_head(path, 8)
    if head[:2] == b"\x1f\x8b":  # gzip: look inside
        with contextlib.suppress(OSError, EOFError, zlib.error), gzip.open(path) as f:
            head = f.read(8)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if len(head) >= 4 and head[:2] == b"\0\0" and head[2] in IDX_TYPES:
        return "idx"
    raise DataError(
        f"{uri}: cannot tell the file format (expected .npz, .npy, .csv, .parquet, an IDX file or a folder)"
    )


def _open_file(path: Path, uri: str, digest: str | None = None) -> Source:
    """A single file; its format is validated (headers, counts) before its bytes are hashed."""
    opener = {"npz": open_npz, "npy": open_npy, "csv": open_csv, "parquet": open_parquet, "idx": open_idx_file}
    if looks_like_cifar(path):
        source = open_cifar(path, uri)
    else:
        source = channels_first(opener[_file_format(path, uri)](path, uri))
    return replace(source, content_hash=digest or guard_io(path, lambda: hash_file(path)))


def _folder_files(folder: Path) -> tuple[str, list[Path]]:
    """('idx', IDX files) or ('images', image files), in a fixed order."""
    entries = guard_io(folder, lambda: sorted(folder.iterdir()))
    idx = [p for p in entries if p.is_file() and IDX_NAME.match(p.name)]
    if idx:
        return "idx", idx
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    for sub in entries:
        if sub.is_dir() and not sub.name.startswith("."):
            files += sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return "images", files


def _open_folder(folder: Path) -> Source:
    if looks_like_cifar(folder):
        source = open_cifar(folder, str(folder))
        return replace(source, content_hash=guard_io(folder, lambda: hash_tree(folder, cifar_files(folder))))
    kind, files = _folder_files(folder)
    source = open_idx_folder(folder, files) if kind == "idx" else open_image_folder(folder, files)
    return replace(source, content_hash=guard_io(folder, lambda: hash_tree(folder, files)))
