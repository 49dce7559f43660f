"""Importance-sampled log p(x) at k=5000: throughput against the matmul roofline and a naive loop.

Model: a 784-512-50 MLP VAE with a Bernoulli decoder (random weights: speed does not depend on
training). In one run, interleaved over rounds (medians reported):
  - roofline: decoder FLOPs per image ÷ the FLOP rate of a large square float32 matmul on the
    same threads — the images/s the decoder matmuls would reach at full matmul speed;
  - estimator: vae.evaluate.estimators.estimate_log_likelihood (encode once, decode in chunks);
  - naive: the common per-image loop that encodes k copies of x and decodes them at once.

    python bench/bench_evaluation.py [--k 5000] [--images 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from vae.config import ModelConfig
from vae.evaluate.estimators import estimate_log_likelihood
from vae.models.model import bernoulli_log_likelihood, build_model


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def decoder_flops_per_image(data_dim: int, hidden: int, latent: int, k: int) -> float:
    return k * 2.0 * (latent * hidden + hidden * data_dim)


@torch.no_grad()
def naive_log_px(model, x: torch.Tensor, k: int) -> torch.Tensor:
    """The common way: for each image, encode k copies of it, sample, decode, logsumexp."""
    out = []
    for xi in x:
        xs = xi.expand(k, -1)  # (K, D): k copies of one image
        mean, logvar = model.encode(xs)  # (K, L): the encoder runs k times on the same x
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        log_w = (
            bernoulli_log_likelihood(xs, model.decode(z))
            - 0.5 * (z**2).sum(-1)
            + 0.5 * (((z - mean) ** 2) * torch.exp(-logvar) + logvar).sum(-1)
        )  # (K,) up to constants
        out.append(torch.logsumexp(log_w.double(), 0) - math.log(k))
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--naive-images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=50, hidden=(512,), activation="tanh"), 784).eval()
    x = torch.bernoulli(torch.full((args.images, 784), 0.3))
    flops = decoder_flops_per_image(784, 512, 50, args.k)
    results: dict[str, list[float]] = {"roofline": [], "estimator": [], "naive": []}
    estimate_log_likelihood(model, x[:2], args.k)  # warm-up
    for _ in range(args.rounds):
        results["roofline"].append(matmul_gflops() * 1e9 / flops)
        started = time.perf_counter()
        estimate_log_likelihood(model, x, args.k)
        results["estimator"].append(args.images / (time.perf_counter() - started))
        started = time.perf_counter()
        naive_log_px(model, x[: args.naive_images], args.k)
        results["naive"].append(args.naive_images / (time.perf_counter() - started))
    median = {key: statistics.median(values) for key, values in results.items()}
    print(
        f"k={args.k}, 784-512-50 Bernoulli MLP, {torch.get_num_threads()} torch threads, "
        f"{args.rounds} interleaved rounds (medians)"
    )
    print(
        f"matmul roofline      {median['roofline']:8.2f} images/s  "
        f"({median['roofline'] * flops / 1e9:.1f} GFLOPS, {flops / 1e9:.2f} GFLOP/image)"
    )
    print(f"estimator            {median['estimator']:8.2f} images/s")
    print(f"naive per-image loop {median['naive']:8.2f} images/s")
    print(f"\nestimator / roofline = {median['estimator'] / median['roofline']:.2f}   (goal >= 0.80)")
    print(f"estimator / naive    = {median['estimator'] / median['naive']:.2f}   (goal >= 4)")


if __name__ == "__main__":
    main()
