"""Batch embedding: a registered encoder over a dataset's Parquet with Ray Data, into one Parquet file.

The rows of each split are cut into ranges of `batch_size` rows that Ray Data hands to a pool of
encoder actors (one GPU each where the cluster has GPUs); each actor reads its range of the split's
Parquet file. The driver streams the results, in order, into a temporary file that is renamed into
place, so a failed job leaves nothing behind. Each output row carries the split, the row's index
within its split, the label, q(z|x)'s mean and log-variance, and the model and dataset it came from.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from vae.jobs.batch import (
    RangeActor,
    check_inputs,
    input_mode,
    job_output,
    map_ranges,
    row_ranges,
    run_dataset_job,
    split_files,
    with_lineage,
    write_parquet,
)
from vae.data.datasets import SPLITS
from vae.data.inputs import prepare_inputs

DEFAULT_BATCH_SIZE = 4096


@dataclass(frozen=True)
class EmbeddingResult:
    """What an embedding job wrote."""

    path: str
    rows: int
    splits: dict[str, int]
    model_uri: str
    model_name: str | None
    model_version: str | None
    dataset_hash: str
    latent_dim: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Encoder(RangeActor):
    """A Ray Data actor: holds one copy of the encoder; row ranges in, q(z|x)'s mean and log-variance per image out."""

    def __init__(self, state: dict[str, Any] | tuple, max_value: float, mode: str, use_gpu: bool = False):
        super().__init__(state, use_gpu)
        self.max_value, self.mode = max_value, mode

    def compute(self, images: torch.Tensor, first: int) -> dict[str, pa.Array]:
        x = prepare_inputs(images.to(self.device), self.max_value, self.mode)  # (B, D) float32
        with torch.no_grad():
            mean, logvar = self.model.encode(x)  # (B, L), (B, L)
        latent = mean.shape[1]
        return {
            "z_mean": pa.FixedSizeListArray.from_arrays(pa.array(mean.cpu().numpy().ravel()), latent),
            "z_logvar": pa.FixedSizeListArray.from_arrays(pa.array(logvar.cpu().numpy().ravel()), latent),
        }


def embed_dataset(
    state: dict[str, Any],
    dataset_path: str | Path,
    out: str | Path,
    *,
    model_uri: str,
    model_name: str | None = None,
    model_version: str | None = None,
    binarize: str = "threshold",
    splits: tuple[str, ...] = SPLITS,
    workers: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    use_gpu: bool | None = None,
    overwrite: bool = False,
    plain: bool = False,
) -> EmbeddingResult:
    """Encode every row of `splits` with Ray Data actors; write one Parquet file atomically.

    `state` is a checkpoint's contents (model_config, data_dim, model weights). `plain` runs the
    same encoder in this process over pyarrow batches instead (the reference for tests and
    benchmarks).
    """
    started = time.perf_counter()
    manifest = check_inputs(state, dataset_path, out, overwrite, "embed", binarize, density=False)
    paths = split_files(dataset_path, manifest, splits)
    work = row_ranges(paths, manifest, batch_size)
    options = {"max_value": float(manifest["value_range"][1]), "mode": input_mode(binarize)}
    batches = map_ranges(work, Encoder, state, options, workers, use_gpu, plain=plain)
    constants = {
        "model_uri": model_uri,
        "model_name": model_name,
        "model_version": model_version,
        "dataset_hash": manifest["content_hash"],
    }
    latent = int(state["model_config"]["latent_dim"])
    schema = pa.schema(
        [
            ("split", pa.string()),
            ("row", pa.int64()),
            ("label", pa.int64()),
            ("z_mean", pa.list_(pa.float32(), latent)),
            ("z_logvar", pa.list_(pa.float32(), latent)),
            ("model_uri", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("dataset_hash", pa.string()),
        ]
    )
    counts = {split: 0 for split in paths.values()}

    def counted(batch: pa.Table) -> pa.Table:
        for split in batch.column("split").to_pylist():
            counts[split] += 1
        return with_lineage(batch, constants, schema)

    write_parquet(out, schema, (counted(batch) for batch in batches))
    return EmbeddingResult(
        path=str(out),
        rows=sum(counts.values()),
        splits=counts,
        model_uri=model_uri,
        model_name=model_name,
        model_version=model_version,
        dataset_hash=manifest["content_hash"],
        latent_dim=latent,
        seconds=round(time.perf_counter() - started, 3),
    )


def embed(
    model_uri: str,
    dataset: str,
    out: str | Path,
    **options: Any,
) -> EmbeddingResult:
    """Resolve `model_uri` (aliases included) and a dataset name or directory, then `embed_dataset`.

    The output path is checked first, so a refused job downloads and starts nothing.
    """
    return run_dataset_job(embed_dataset, model_uri, dataset, out, **options)


def default_output(dataset_name: str, dataset_version: str, model_name: str | None, model_version: str | None) -> Path:
    """Where the scheduled job writes: VAE_HOME/embeddings/DATASET/MODEL-vVERSION-DATASETVERSION.parquet."""
    from vae.paths import embeddings_dir

    return job_output(
        embeddings_dir(), dataset_name, f"{model_name or 'model'}-v{model_version or 'x'}-{dataset_version}.parquet"
    )
