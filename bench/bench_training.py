"""Ray Train overhead: samples/s of TorchTrainer (1 and 2 workers) against a plain torch loop.

Same model (the Burda et al. MLP, 784-200-200-50 tanh, Bernoulli), same data (the train split of a
dataset under VAE_HOME, default fashion-mnist; digits works too), same batch size, same ELBO.
The plain loop runs in this process with one torch thread, as a 1-CPU Ray worker does. Epoch
throughput excludes validation; the first epoch (warm-up) is dropped; variants are interleaved
over rounds and medians reported.

    python bench/bench_training.py [--dataset fashion-mnist] [--epochs 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np
import torch

from vae.config import DatasetConfig, ModelConfig, PipelineConfig, RegistryConfig, TrainingConfig
from vae.data.datasets import DatasetRef, load_split, read_manifest
from vae.data.inputs import prepare_inputs
from vae.models.model import build_model
from vae.models.objectives import elbo
from vae.evaluate.evaluation import resolve_dataset


def plain_loop(images: np.ndarray, max_value: float, model_config: ModelConfig, batch: int, epochs: int) -> float:
    """Samples/s of a single-process loop over the in-memory split (median epoch after the first)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = torch.from_numpy(images)
    model = build_model(model_config, data.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rates = []
    for _ in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(data.shape[0])
        for i in range(0, data.shape[0], batch):
            x = prepare_inputs(data[order[i : i + batch]], max_value, "dynamic")
            loss = -elbo(model, x).elbo.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        rates.append(data.shape[0] / (time.perf_counter() - started))
    return statistics.median(rates[1:] or rates)


def ray_loop(dataset: DatasetRef, model_config: ModelConfig, batch: int, epochs: int, workers: int) -> float:
    from vae.train import driver

    config = PipelineConfig(
        name="bench-training",
        dataset=DatasetConfig(name=dataset.name, source="sklearn:digits", binarize="dynamic"),
        model=model_config,
        training=TrainingConfig(epochs=epochs, batch_size=batch, workers=workers, checkpoints_to_keep=1),
        registry=RegistryConfig(model_name="bench"),
    )
    result = driver.train(config, dataset, echo=None)
    rates = [h["samples_per_second"] for h in result.history]
    return statistics.median(rates[1:] or rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    path = resolve_dataset(args.dataset)
    manifest = read_manifest(path)
    dataset = DatasetRef(manifest["name"], manifest["version"], path, manifest["content_hash"])
    images, _ = load_split(path, "train")
    data_dim = int(math.prod(manifest["shape"]))
    model_config = ModelConfig(latent_dim=50, hidden=(200, 200), activation="tanh")
    results: dict[str, list[float]] = {"plain": [], "ray-1": [], "ray-2": []}
    for _ in range(args.rounds):
        results["plain"].append(
            plain_loop(images, manifest["value_range"][1], model_config, args.batch_size, args.epochs)
        )
        results["ray-1"].append(ray_loop(dataset, model_config, args.batch_size, args.epochs, 1))
        results["ray-2"].append(ray_loop(dataset, model_config, args.batch_size, args.epochs, 2))
    median = {key: statistics.median(values) for key, values in results.items()}
    print(
        f"{args.dataset}: {images.shape[0]} train rows of {data_dim} pixels, batch {args.batch_size}, "
        f"Burda MLP, {args.rounds} interleaved rounds of {args.epochs} epochs ({os.cpu_count()} CPUs)"
    )
    for key in results:
        print(f"{key:8} {median[key]:9.0f} samples/s   rounds: {', '.join(f'{v:.0f}' for v in results[key])}")
    print(f"\nRay Train 1 worker / plain loop = {median['ray-1'] / median['plain']:.2f}   (goal >= 0.90)")
    print(f"Ray Train 2 workers / 1 worker  = {median['ray-2'] / median['ray-1']:.2f}")


if __name__ == "__main__":
    main()
