"""Ingestion: dataset sources → versioned, validated Parquet splits with a manifest (the writer).

Layout: $VAE_HOME/datasets/<name>/<version>/{train,validation,test}.parquet + manifest.json,
where <version> is the first 12 hex digits of a hash of the source's content hash and the
settings that shape the splits. The same content gives the same version and is not rewritten; a
version directory appears only complete (written to a temporary directory, then renamed), and a
failed ingestion leaves nothing behind. The manifest lists every file with its rows, bytes and
sha256, so a damaged version (a split deleted or truncated) is noticed and written again. Sources
are converted in chunks (vae.data.sources), so peak memory is bounded by the chunk size, not the
source's size. Reading the store is vae.data.datasets.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import vae
from vae.data import sources
from vae.config import DatasetConfig
from vae.paths import dataset_dir, datasets_dir
from vae.errors import DataError, StorageError
from vae.data.sources import DOWNLOAD_TIMEOUT, Source
from vae.data.datasets import SPLITS, DatasetRef, dataset_problem, read_manifest
from vae.data.urls import redact_url

ROW_GROUP_SIZE = 1024  # rows per row group: several per split, so Ray Data can shard them across workers
ROW_GROUP_BYTES = 16 * 2**20  # ...fewer rows for large images, so a buffered group stays small
TRAIN, VALIDATION, TEST = 0, 1, 2
DEFAULT_VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class SourceArrays:
    """A source read into memory: images (N, *shape) and optional labels (N,)."""

    images: np.ndarray
    labels: np.ndarray | None
    source_uri: str
    content_hash: str
    max_value: float


def validate_images(images: np.ndarray, source: str, max_value: float) -> None:
    """Reject empty, non-finite or out-of-range in-memory data with one line naming the source."""
    if images.shape[0] == 0:
        raise DataError(f"{source}: empty source (expected at least one image)")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        index = int(np.argwhere(~np.isfinite(images.reshape(images.shape[0], -1)))[0][0])
        raise DataError(f"{source}: image {index} has NaN or infinite values (expected finite pixels)")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > max_value:
        raise DataError(f"{source}: pixel values span [{low}, {high}] (expected within [0, {max_value}])")


# ---------------------------------------------------------------------------------------------
# Versions and splits.


def dataset_version(config: DatasetConfig, content_hash: str) -> str:
    """12 hex digits of the content hash and every setting that changes the written splits."""
    key = f"{content_hash}/{config.test_fraction}/{config.validation_fraction}/{config.split_seed}"
    # Settings added later enter only when set, so earlier versions keep their names.
    for field in ("split", "max_value", "binarize_test_seed"):
        value = getattr(config, field)
        if value is not None and value != DatasetConfig.model_fields[field].default:
            key += f"/{field}={value}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _ref(config: DatasetConfig, content_hash: str, root: Path) -> DatasetRef:
    version = dataset_version(config, content_hash)
    return DatasetRef(config.name, version, str(dataset_dir(config.name, version, root)), content_hash)


def _complete(ref: DatasetRef) -> bool:
    return dataset_problem(ref.path) is None


def _storage_error(exc: OSError, final: Path) -> StorageError:
    """An OS error while writing a version, as one line naming the path (read-only, full, not permitted)."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc).splitlines()[0]
    # A folder that could not be made (VAE_HOME/datasets/NAME) is named; a file or temporary folder
    # that is gone again is not: the version is.
    where = exc.filename if exc.filename and final.is_relative_to(exc.filename) else final
    return StorageError(
        f"{where}: cannot write the dataset: {reason} "
        f"(expected a writable VAE_HOME with free space; nothing was written)"
    )


def split_indices(n: int, config: DatasetConfig) -> dict[str, np.ndarray]:
    """Deterministic train/validation/test indices of a random split, from the split seed."""
    fraction = DEFAULT_VALIDATION_FRACTION if config.validation_fraction is None else config.validation_fraction
    order = np.random.default_rng(config.split_seed).permutation(n)
    n_test = max(1, int(round(n * config.test_fraction)))
    n_val = int(round((n - n_test) * fraction))
    test, validation, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


def _split_plan(source: Source, config: DatasetConfig) -> tuple[str, dict[str, np.ndarray]]:
    """Which split each row goes to: per source part, an int8 code per row (N bytes, never the images)."""
    strategy = config.split
    if strategy == "auto":
        strategy = "official" if source.has_official_test else "random"
    if strategy == "official" and not source.has_official_test:
        raise DataError(
            f"{source.uri}: split 'official' needs a source with its own test file "
            "(IDX t10k- files, or x_test in an .npz)"
        )
    if strategy == "random":
        codes = np.full(source.rows, TRAIN, np.int8)
        index = split_indices(source.rows, config)
        codes[index["validation"]], codes[index["test"]] = VALIDATION, TEST
        plans, start = {}, 0
        for part in source.parts:
            plans[part.name] = codes[start : start + part.rows]
            start += part.rows
        return strategy, plans
    train, test = (next(p for p in source.parts if p.name == name) for name in ("train", "test"))
    if config.validation_fraction is None:  # the MNIST convention: a validation set as large as the test set
        n_val = min(test.rows, train.rows)
    else:
        n_val = int(round(train.rows * config.validation_fraction))
    codes = np.full(train.rows, TRAIN, np.int8)
    codes[np.random.default_rng(config.split_seed).permutation(train.rows)[:n_val]] = VALIDATION
    return strategy, {"train": codes, "test": np.full(test.rows, TEST, np.int8)}


def _validation_fraction(config: DatasetConfig, strategy: str, rows: dict[str, int]) -> float:
    """The share of non-test rows that went to validation (as configured, or as it came out)."""
    if config.validation_fraction is not None:
        return config.validation_fraction
    if strategy == "random":
        return DEFAULT_VALIDATION_FRACTION
    return rows["validation"] / max(1, rows["train"] + rows["validation"])


# ---------------------------------------------------------------------------------------------
# Writing.


def _schema(width: int, dtype: np.dtype, labels: bool, shape: tuple[int, ...]) -> pa.Schema:
    """Fixed schema: image as fixed_size_list<uint8|float32>[D], label int64 (optional); shape in metadata."""
    fields = [pa.field("image", pa.list_(pa.from_numpy_dtype(dtype), width))]
    if labels:
        fields.append(pa.field("label", pa.int64()))
    return pa.schema(fields, metadata={"vae.shape": json.dumps(list(shape))})


class _SplitWriter:
    """One split's Parquet file, written in whole row groups as rows arrive."""

    def __init__(self, path: Path, schema: pa.Schema, group_rows: int):
        self.schema, self.group_rows, self.rows = schema, group_rows, 0
        self._writer = pq.ParquetWriter(path, schema, write_page_checksum=True)  # readers can detect corruption
        self._images: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._buffered = 0

    def append(self, images: np.ndarray, labels: np.ndarray | None) -> None:
        self._images.append(images)
        if labels is not None:
            self._labels.append(labels)
        self._buffered += images.shape[0]
        if self._buffered >= self.group_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._images:
            return
        images = np.concatenate(self._images) if len(self._images) > 1 else self._images[0]  # (n, D)
        labels = (np.concatenate(self._labels) if len(self._labels) > 1 else self._labels[0]) if self._labels else None
        n = images.shape[0] if final else images.shape[0] - images.shape[0] % self.group_rows
        width = images.shape[1]
        # One row group per call: Parquet widens uint8 to INT32 while encoding, so a whole chunk
        # at once would briefly take four times its size.
        for start in range(0, n, self.group_rows):
            stop = min(start + self.group_rows, n)
            columns = [pa.FixedSizeListArray.from_arrays(pa.array(images[start:stop].reshape(-1)), width)]
            if labels is not None:
                columns.append(pa.array(labels[start:stop], type=pa.int64()))
            self._writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
        self.rows += n
        # Keep only the remainder (a copy, so a whole chunk is not pinned by a few rows).
        self._images = [images[n:].copy()] if n < images.shape[0] else []
        self._labels = [labels[n:].copy()] if labels is not None and n < images.shape[0] else []
        self._buffered = images.shape[0] - n

    def close(self) -> None:
        self._flush(final=True)
        self._writer.close()

    def abandon(self) -> None:
        """Release the file without writing what is buffered (its directory is being removed)."""
        try:
            self._writer.close()
        except Exception:  # closing a half-written file can fail; it is deleted next anyway
            pass


class _Converter:
    """Checks a chunk's pixels against the declared range and casts them to the stored dtype."""

    def __init__(self, max_value: float, storage: np.dtype, width: int):
        self.max_value, self.storage, self.width = max_value, storage, width
        self.low, self.high = np.inf, -np.inf

    def __call__(self, images: np.ndarray, uri: str, offset: int) -> np.ndarray:
        flat = images.reshape(images.shape[0], self.width)  # (b, D)
        if flat.shape[0] == 0:
            return flat.astype(self.storage)
        if flat.dtype.kind == "f":
            finite = np.isfinite(flat).all(axis=1)
            if not finite.all():
                index = offset + int(np.flatnonzero(~finite)[0])
                raise DataError(f"{uri}: image {index} has NaN or infinite values (expected finite pixels)")
        low, high = flat.min(), flat.max()
        if low < 0 or high > self.max_value:
            bad = int(np.flatnonzero((flat < 0).any(axis=1) | (flat > self.max_value).any(axis=1))[0])
            raise DataError(
                f"{uri}: image {offset + bad} has pixel values in [{_number(flat[bad].min())}, "
                f"{_number(flat[bad].max())}] (expected within [0, {_number(self.max_value)}])"
            )
        self.low, self.high = min(self.low, float(low)), max(self.high, float(high))
        return flat.astype(self.storage, copy=False)


def _number(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _binarize(images: np.ndarray, rng: np.random.Generator, max_value: float) -> np.ndarray:
    """Bernoulli(pixel / max_value) per pixel, stored as 0 or max_value; (b, D) → (b, D)."""
    out = np.empty_like(images)
    for start in range(0, images.shape[0], 1024):  # bounded float64 temporaries
        block = images[start : start + 1024]
        u = rng.random(block.shape)  # (b', D) in [0, 1)
        out[start : start + 1024] = np.where(u * max_value < block, max_value, 0)
    return out


def _storage(source: Source, max_value: float) -> np.dtype:
    """uint8 for whole pixel values up to 255, float32 otherwise."""
    whole = source.dtype.kind in "biu" and float(max_value).is_integer()
    return np.dtype(np.uint8) if whole and max_value <= 255 else np.dtype(np.float32)


def _declared_max(source: Source, config: DatasetConfig) -> float:
    if config.max_value is not None:
        return float(config.max_value)
    if source.max_value is not None:
        return float(source.max_value)
    return {"b": 1.0, "f": 1.0}.get(source.dtype.kind, 255.0)


UNCHANGED, WRITTEN = "unchanged", "written"


def _write(source: Source, config: DatasetConfig, root: Path, *, verify: bool = False) -> tuple[DatasetRef, str]:
    """Write (or reuse) the dataset version for this source content.

    Returns UNCHANGED (a complete version was there), WRITTEN, or 'rewritten (<what was damaged>)'
    when a version was there but incomplete (with `verify`: or its files' sha256 differ).
    """
    ref = _ref(config, source.content_hash, root)
    final = Path(ref.path)
    damage = dataset_problem(final, content=verify) if final.exists() else None
    if damage is None and final.exists() and source.layout:
        stored = read_manifest(final).get("layout", "HWC")  # versions written before layouts were channels-last
        if stored != source.layout:
            damage = f"stored {stored}, expected channel-major {source.layout}"
    if final.exists() and damage is None:
        return ref, UNCHANGED
    try:
        _convert(source, config, ref, damaged=damage is not None)
    except OSError as exc:
        raise _storage_error(exc, final) from None
    return ref, WRITTEN if damage is None else f"rewritten ({damage})"


def _convert(source: Source, config: DatasetConfig, ref: DatasetRef, *, damaged: bool) -> None:
    """Convert the source into a temporary folder beside the version, then rename it into place
    (`damaged`: moving the damaged version there aside first)."""
    final = Path(ref.path)
    if source.rows == 0 or any(part.rows == 0 for part in source.parts):
        empty = next((p for p in source.parts if p.rows == 0), source.parts[0])
        raise DataError(f"{empty.uri}: empty source (expected at least one image)")
    strategy, plan = _split_plan(source, config)
    max_value = _declared_max(source, config)
    storage = _storage(source, max_value)
    width = int(np.prod(source.shape))
    schema = _schema(width, storage, source.labels, source.shape)
    group_rows = max(1, min(ROW_GROUP_SIZE, ROW_GROUP_BYTES // max(1, width * storage.itemsize)))
    rows_per_chunk = sources.chunk_rows(source.shape, max(source.dtype.itemsize, storage.itemsize))
    convert = _Converter(max_value, storage, width)
    binarizer = None if config.binarize_test_seed is None else np.random.default_rng(config.binarize_test_seed)

    created, missing = [], final.parent  # folders made here are removed again if ingestion fails
    while not missing.exists():
        created.append(missing)
        missing = missing.parent
    writers: list[_SplitWriter] = []
    staging = trash = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{ref.version}-", dir=final.parent))
        os.chmod(staging, final.parent.stat().st_mode & 0o777)  # mkdtemp's 0700 would hide it from other users
        writers = [_SplitWriter(staging / f"{split}.parquet", schema, group_rows) for split in SPLITS]
        for part in source.parts:
            codes, offset = plan[part.name], 0
            for images, labels in part.read(rows_per_chunk):
                b = images.shape[0]
                if offset + b > part.rows:
                    raise DataError(f"{part.uri}: more rows than the {part.rows} it declares")
                flat = convert(images, part.uri, offset)  # (b, D) stored dtype
                chunk_codes = codes[offset : offset + b]
                for code, writer in enumerate(writers):
                    mask = chunk_codes == code
                    if not mask.any():
                        continue
                    rows = flat if mask.all() else flat[mask]
                    if code == TEST and binarizer is not None:
                        rows = _binarize(rows, binarizer, max_value)
                    writer.append(rows, None if labels is None else (labels if mask.all() else labels[mask]))
                offset += b
            if offset != part.rows:
                raise DataError(f"{part.uri}: {offset} rows read but {part.rows} declared")
        for writer in writers:
            writer.close()
        rows = {split: writer.rows for split, writer in zip(SPLITS, writers)}
        files = {}
        for split in SPLITS:
            written = staging / f"{split}.parquet"
            files[written.name] = {
                "rows": rows[split],
                "bytes": written.stat().st_size,
                "sha256": sources.hash_file(written),
            }
        manifest = {
            "name": config.name,
            "version": ref.version,
            "source_uri": redact_url(source.uri),
            "source_format": source.format,
            "content_hash": source.content_hash,
            "shape": list(source.shape),
            **({"layout": source.layout} if source.layout else {}),  # 'CHW': colour stored channel-major
            "dtype": str(storage),
            "value_range": [0.0, max_value],
            "observed_range": [_plain(convert.low), _plain(convert.high)],
            "rows": rows,
            "files": files,
            "labels": source.labels,
            **({"classes": list(source.classes)} if source.classes else {}),
            "split": strategy,
            "split_seed": config.split_seed,
            "split_fractions": {
                "validation": _validation_fraction(config, strategy, rows),
                "test": config.test_fraction if strategy == "random" else None,
            },
            "binarization": None if binarizer is None else {"split": "test", "seed": config.binarize_test_seed},
            "row_group_rows": group_rows,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "library_version": vae.__version__,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if damaged and final.exists():  # aside, then deleted: readers never see a half-replaced version
            trash = Path(tempfile.mkdtemp(prefix=f".{ref.version}-damaged-", dir=final.parent))
            os.rename(final, trash / ref.version)
        try:
            os.rename(staging, final)
        except OSError:
            if not _complete(ref):  # lost a race to an identical writer: fine
                raise
    except BaseException:
        for writer in writers:
            writer.abandon()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for directory in created:
            try:
                directory.rmdir()  # only if still empty
            except OSError:
                pass
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


# ---------------------------------------------------------------------------------------------
# Entry points.


def ingest(config: DatasetConfig, root: Path | None = None) -> DatasetRef:
    """Convert the configured source to Parquet splits + manifest; a known version is reused."""
    return ingest_status(config, root)[0]


def ingest_status(
    config: DatasetConfig, root: Path | None = None, *, timeout: float = DOWNLOAD_TIMEOUT
) -> tuple[DatasetRef, bool]:
    """Ingest, and say whether this call wrote the version (False: it existed and was left alone)."""
    ref, status = ingest_report(config, root, timeout=timeout)
    return ref, status != UNCHANGED


def ingest_report(
    config: DatasetConfig, root: Path | None = None, *, timeout: float = DOWNLOAD_TIMEOUT, verify: bool = False
) -> tuple[DatasetRef, str]:
    """Ingest; the status is UNCHANGED, WRITTEN or 'rewritten (<what was damaged>)'.

    A stored version is trusted only when every file its manifest lists is there with its rows and
    size; `verify` also compares each file's sha256 with the manifest's.
    """
    root = Path(root) if root else datasets_dir()
    expected = config.sha256.lower() if config.sha256 else None
    if expected and sources.is_url(config.source):
        ref = _ref(config, expected, root)
        if dataset_problem(ref.path, content=verify) is None:  # known content already ingested: no download
            return ref, UNCHANGED
    with sources.open_source(config.source, timeout=timeout) as source:
        if expected and source.content_hash != expected:
            raise DataError(f"{source.uri}: sha256 mismatch: expected {expected}, got {source.content_hash}")
        return _write(source, config, root, verify=verify)


HASH_MEMO = ".content-hashes.json"


def cache_key(config: DatasetConfig, root: Path | None = None) -> str | None:
    """A key naming the version this config's source content would give: its path, hashed.

    Local sources are streamed through sha256 (no conversion), once: the hash of unchanged files is
    remembered under `root` (vae.data.sources.memo); a URL has a key only with a given sha256. None when
    there is no cheap answer, or the source is unreadable (ingest reports why).
    """
    root = Path(root) if root else datasets_dir()
    try:
        digest = config.sha256.lower() if config.sha256 else sources.content_hash(config.source, root / HASH_MEMO)
    except DataError:
        return None
    if digest is None:
        return None
    return f"vae-ingest-{hashlib.sha256(_ref(config, digest, root).path.encode()).hexdigest()[:32]}"


def write_dataset(source: SourceArrays, config: DatasetConfig, root: Path | None = None) -> DatasetRef:
    """Write (or reuse) the dataset version for in-memory arrays."""
    validate_images(source.images, source.source_uri, source.max_value)
    if source.labels is not None and source.labels.shape[0] != source.images.shape[0]:
        raise DataError(
            f"{source.source_uri}: {source.images.shape[0]} images but {source.labels.shape[0]} labels "
            "(expected one label per image)"
        )
    streamed = sources.from_arrays(
        source.images, source.labels, source.source_uri, source.content_hash, source.max_value
    )
    return _write(streamed, config, Path(root) if root else datasets_dir())[0]
