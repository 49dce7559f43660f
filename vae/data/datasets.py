"""The dataset store, read side: references, manifests, splits and completeness checks.

Layout: $VAE_HOME/datasets/<name>/<version>/{train,validation,test}.parquet + manifest.json
(written by vae.data.ingest). The manifest lists every file with its rows, bytes and sha256, so a
damaged version (a split deleted or truncated) is noticed instead of trusted.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vae.data import sources
from vae.errors import ConfigError, DataError
from vae.paths import datasets_dir, inside
from vae.data.urls import redact_url

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class DatasetRef:
    """What ingestion hands to the next stage: where the dataset is and what it contains."""

    name: str
    version: str
    path: str
    content_hash: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def dataset_problem(dataset_path: str | Path, *, content: bool = False) -> str | None:
    """Why the version at this path is not complete, or None: every file its manifest lists is there
    with its rows and size (and, with `content`, its sha256). Manifests from before the file list
    are checked against their row counts."""
    path = Path(dataset_path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        return "manifest.json is missing"
    except (OSError, ValueError) as exc:
        return f"manifest.json is unreadable ({exc.__class__.__name__})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("rows"), dict):
        return "manifest.json has no row counts"
    files = manifest.get("files") or {f"{split}.parquet": {"rows": manifest["rows"].get(split)} for split in SPLITS}
    for name, expected in files.items():
        try:
            file = inside(path, name)
        except ConfigError:
            return f"manifest.json lists {name!r}, outside the version"
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as exc:
            return f"{name} is unreadable ({exc.strerror})"
        if expected.get("bytes") is not None and size != expected["bytes"]:
            return f"{name} has {size} bytes (the manifest says {expected['bytes']})"
        try:
            rows = pq.ParquetFile(file).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            return f"{name} is unreadable ({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})"
        if expected.get("rows") is not None and rows != expected["rows"]:
            return f"{name} has {rows} rows (the manifest says {expected['rows']})"
        if content and expected.get("sha256") and sources.hash_file(file) != expected["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
    return None


def is_ingested(dataset_path: str | Path) -> bool:
    """Whether a complete dataset version is at this path: every file of its manifest, with its rows."""
    return dataset_problem(dataset_path) is None


def list_datasets(root: Path | None = None) -> list[dict]:
    """Every ingested version's manifest (plus its path, and 'damaged': why, if incomplete), by name and time."""
    root = Path(root) if root else datasets_dir()
    found = []
    for manifest in sorted(root.glob("*/*/manifest.json")) if root.is_dir() else []:
        if manifest.parent.name.startswith(".") or manifest.parent.parent.name.startswith("."):
            continue
        try:
            entry = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            entry = {"name": manifest.parent.parent.name, "version": manifest.parent.name, "error": "corrupt manifest"}
        if "error" not in entry:
            problem = dataset_problem(manifest.parent)
            if isinstance(entry.get("source_uri"), str):  # manifests written before redaction may hold secrets
                entry["source_uri"] = redact_url(entry["source_uri"])
            if problem:
                entry["damaged"] = problem
        found.append({**entry, "path": str(manifest.parent)})
    return sorted(found, key=lambda m: (m.get("name", ""), m.get("created_at", "")))


def read_manifest(dataset_path: str | Path) -> dict:
    path = Path(dataset_path) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: dataset manifest not found (expected an ingested dataset directory)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: corrupt manifest: {exc.msg} at line {exc.lineno}") from None


def check_pixels(dataset_path: str | Path, manifest: dict, data_dim: int, hint: str = "") -> None:
    """A dataset whose images have another number of pixels than the model is one line naming both."""
    pixels = int(math.prod(manifest["shape"]))
    if pixels != int(data_dim):
        shape = "x".join(str(s) for s in manifest["shape"])
        raise DataError(
            f"{dataset_path}: images are {shape} ({pixels} pixels) but the model expects "
            f"{data_dim} pixels per image{hint}"
        )


def check_eight_bit_pixels(where: str, manifest: dict, model, advice: str) -> None:
    """An 8-bit likelihood (or dequantisation) is a probability of whole pixels 0..255: a dataset of
    other pixels (digits' 0..16, values already divided by 255) is one line naming it, `where` it is,
    its value_range and `advice`. `model`: a vae.config.ModelConfig."""
    if not model.eight_bit:
        return
    high = float(manifest["value_range"][1])
    if high != 255:
        what = "dequantize" if model.dequantize else f"likelihood '{model.likelihood}'"
        raise DataError(
            f"{where} holds pixels 0..{high:g} (its manifest's value_range): model {what} needs 8-bit pixels "
            f"0..255; {advice}"
        )


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
