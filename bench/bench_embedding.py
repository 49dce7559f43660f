"""Embedding throughput: `vae embed` with Ray Data (1 and 2 encoder actors) against a plain loop.

Same encoder (the Burda et al. MLP, 784-200-200-50 tanh; weights do not change the cost), same
Parquet files, same batch size, same output file (one atomic Parquet). The plain loop reads
pyarrow batches in this process with one torch thread, as a 1-CPU Ray actor has. Ray is started
once before timing (a session cost, not a job's); each job's actor start-up is timed. The data is
Fashion-MNIST's 70,000 images tiled --repeat times; variants are interleaved over rounds and
medians reported.

    python bench/bench_embedding.py [--repeat 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from vae.jobs import embedding
from vae.config import DatasetConfig, ModelConfig
from vae.data.ingest import ingest
from vae.data.datasets import SPLITS, load_split
from vae.models.model import build_model
from vae.evaluate.evaluation import resolve_dataset


def tiled_dataset(source: str, repeat: int, root: Path) -> str:
    """Every image of `source` repeated `repeat` times, ingested as a new dataset under `root`."""
    images = np.concatenate([load_split(source, split)[0] for split in SPLITS])
    path = root / "tiled.npy"
    np.save(path, np.tile(images, (repeat, 1)).reshape(-1, 28, 28))
    return ingest(DatasetConfig(name="tiled", source=str(path), split="random", test_fraction=0.1), root=root).path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()

    from vae.cluster import ensure_ray

    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    dataset_path = tiled_dataset(resolve_dataset(args.dataset), args.repeat, work)
    torch.manual_seed(0)
    config = ModelConfig(latent_dim=50, hidden=(200, 200), activation="tanh")
    model = build_model(config, 784)
    state = {"model": model.state_dict(), "model_config": config.model_dump(mode="json"), "data_dim": 784}
    ensure_ray(2)
    torch.set_num_threads(1)
    variants = {
        "plain loop": {"plain": True},
        "Ray Data, 1 actor": {"workers": 1},
        "Ray Data, 2 actors": {"workers": 2},
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    rows = 0
    for round_ in range(args.rounds):
        for name, options in variants.items():
            result = embedding.embed_dataset(
                state,
                dataset_path,
                work / "out.parquet",
                model_uri="bench",
                batch_size=args.batch_size,
                overwrite=True,
                **options,
            )
            rows = result.rows
            rates[name].append(result.rows / result.seconds)
            print(
                f"round {round_ + 1}  {name:20} {result.rows / result.seconds:12,.0f} rows/s  ({result.seconds:.1f} s)",
                flush=True,
            )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\n{rows:,} rows of 784 pixels, batch {args.batch_size}; medians of {args.rounds} interleaved rounds:")
    for name, value in medians.items():
        print(f"  {name:20} {value:12,.0f} rows/s")
    plain = medians["plain loop"]
    print(f"Ray Data 1 actor / plain loop = {medians['Ray Data, 1 actor'] / plain:.2f}  (goal >= 0.8)")
    print(f"Ray Data 2 actors / 1 actor   = {medians['Ray Data, 2 actors'] / medians['Ray Data, 1 actor']:.2f}")


if __name__ == "__main__":
    main()
