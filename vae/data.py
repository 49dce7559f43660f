"""Dataset sources → versioned, validated Parquet splits with a manifest; readers for training.

Layout: $VAE_HOME/datasets/<name>/<version>/{train,validation,test}.parquet + manifest.json,
where <version> is the first 12 hex digits of the source's content hash. The same content
gives the same version and is not rewritten; a version directory appears only complete
(written to a temporary directory, then renamed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import vae
from vae.config import DatasetConfig, datasets_dir
from vae.errors import DataError

SPLITS = ("train", "validation", "test")
ROW_GROUP_SIZE = 1024  # several row groups per split, so Ray Data can shard them across workers


@dataclass(frozen=True)
class DatasetRef:
    """What ingestion hands to the next stage: where the dataset is and what it contains."""

    name: str
    version: str
    path: str
    content_hash: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class SourceArrays:
    """A source read into memory: images (N, *shape) and optional labels (N,)."""

    images: np.ndarray
    labels: np.ndarray | None
    source_uri: str
    content_hash: str
    max_value: float


def _hash_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def read_sklearn_digits() -> SourceArrays:
    """sklearn's bundled digits: 1797 8x8 images, pixel values 0..16."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)  # (1797, 8, 8)
    labels = bunch.target.astype(np.int64)  # (1797,)
    return SourceArrays(images, labels, "sklearn:digits", _hash_arrays(images, labels), 16.0)


def read_source(source: str) -> SourceArrays:
    """Read a dataset source named in pipelines.yaml."""
    if source == "sklearn:digits":
        return read_sklearn_digits()
    raise DataError(f"dataset source '{source}': unknown source (expected 'sklearn:digits')")


def validate_images(images: np.ndarray, source: str, max_value: float) -> None:
    """Reject empty, non-finite or out-of-range data with one line naming the source."""
    if images.shape[0] == 0:
        raise DataError(f"{source}: empty source (expected at least one image)")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        index = int(np.argwhere(~np.isfinite(images.reshape(images.shape[0], -1)))[0][0])
        raise DataError(f"{source}: image {index} has NaN or infinite values (expected finite pixels)")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > max_value:
        raise DataError(f"{source}: pixel values span [{low}, {high}] (expected within [0, {max_value}])")


def split_indices(n: int, config: DatasetConfig) -> dict[str, np.ndarray]:
    """Deterministic train/validation/test indices from the split seed."""
    order = np.random.default_rng(config.split_seed).permutation(n)
    n_test = max(1, int(round(n * config.test_fraction)))
    n_val = int(round((n - n_test) * config.validation_fraction))
    test, validation, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


def _split_table(images: np.ndarray, labels: np.ndarray | None) -> pa.Table:
    """Fixed schema: image as fixed_size_list<uint8|float32>[D], label int64 (optional)."""
    flat = images.reshape(images.shape[0], -1)
    column = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    columns = {"image": column}
    if labels is not None:
        columns["label"] = pa.array(labels, type=pa.int64())
    return pa.table(columns)


def ingest(config: DatasetConfig, root: Path | None = None) -> DatasetRef:
    """Convert the configured source to Parquet splits + manifest; a known version is reused."""
    source = read_source(config.source)
    return write_dataset(source, config, root)


def write_dataset(source: SourceArrays, config: DatasetConfig, root: Path | None = None) -> DatasetRef:
    """Write (or reuse) the dataset version for this source content."""
    validate_images(source.images, source.source_uri, source.max_value)
    if source.labels is not None and source.labels.shape[0] != source.images.shape[0]:
        raise DataError(
            f"{source.source_uri}: {source.images.shape[0]} images but {source.labels.shape[0]} labels "
            "(expected one label per image)"
        )
    # The version covers the content and everything that changes the written splits.
    split_key = f"{config.test_fraction}/{config.validation_fraction}/{config.split_seed}"
    version = hashlib.sha256(f"{source.content_hash}/{split_key}".encode()).hexdigest()[:12]
    root = root or datasets_dir()
    final = root / config.name / version
    ref = DatasetRef(config.name, version, str(final), source.content_hash)
    if (final / "manifest.json").exists():
        return ref
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
    try:
        rows = {}
        for split, index in split_indices(source.images.shape[0], config).items():
            labels = None if source.labels is None else source.labels[index]
            table = _split_table(source.images[index], labels)
            pq.write_table(table, staging / f"{split}.parquet", row_group_size=ROW_GROUP_SIZE)
            rows[split] = int(index.shape[0])
        manifest = {
            "name": config.name,
            "version": version,
            "source_uri": source.source_uri,
            "content_hash": source.content_hash,
            "shape": list(source.images.shape[1:]),
            "dtype": str(source.images.dtype),
            "value_range": [0.0, source.max_value],
            "rows": rows,
            "labels": source.labels is not None,
            "split_seed": config.split_seed,
            "split_fractions": {"validation": config.validation_fraction, "test": config.test_fraction},
            "binarization": None,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "library_version": vae.__version__,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / "manifest.json").exists():  # lost a race to an identical writer: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ref


def read_manifest(dataset_path: str | Path) -> dict:
    path = Path(dataset_path) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: dataset manifest not found (expected an ingested dataset directory)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: corrupt manifest: {exc.msg} at line {exc.lineno}") from None


def split_path(dataset_path: str | Path, split: str) -> str:
    return str(Path(dataset_path) / f"{split}.parquet")


def load_split(dataset_path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A whole split in memory: images (N, D) in their stored dtype and labels (N,) or None."""
    path = split_path(dataset_path, split)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{path}: cannot read split '{split}': {exc}") from None
    column = table.column("image").combine_chunks()
    width = column.type.list_size
    images = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    labels = table.column("label").to_numpy() if "label" in table.column_names else None
    return images, labels


def prepare_inputs(
    images,
    max_value: float,
    binarize: str,
    generator=None,
):
    """Stored pixels → model inputs x: scale to [0, 1], then binarise as configured.

    images: (B, D) integer or float tensor → (B, D) float32. 'threshold': x > 1/2;
    'dynamic': x ~ Bernoulli(pixel / max_value), a fresh draw per call; 'none': continuous.
    """
    import torch

    x = images.to(torch.float32) / float(max_value)  # (B, D) in [0, 1]
    if binarize == "threshold":
        return (x > 0.5).to(torch.float32)
    if binarize == "dynamic":
        return torch.bernoulli(x, generator=generator)
    return x
