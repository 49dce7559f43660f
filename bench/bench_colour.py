"""colour-patches: the discretised-logistic conv VAE against a Gaussian-with-dequantisation baseline.

Both use the architecture of pipelines.yaml's colour-patches (conv, the same widths and latent size),
the same data (both photographs' training regions train, their test regions right of column 480 are
the test set), the same seed, optimiser
and number of steps, in one process (no Ray: the comparison, not the orchestration). Each is scored
by importance sampling with k samples on the test patches; bits/dim is per 8-bit subpixel (8.0 =
uniform), the dequantised one an upper bound with its -D log 256 accounted for in the NLL.

    python bench/bench_colour.py --steps 2000 --k 100
    python bench/bench_colour.py --device cuda --seconds 120 --k 1000 --json   # on a GPU: a time budget each
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from vae.config import load_pipelines
from vae.data.datasets import load_split
from vae.evaluate.estimators import estimate_log_likelihood
from vae.data.ingest import ingest
from vae.data.inputs import prepare_inputs
from vae.models.model import build_model
from vae.models.objectives import elbo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=975)
    parser.add_argument("--seconds", type=float, help="train each model for this long instead of --steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, help="images per step (default: the pipeline's)")
    parser.add_argument("--mixture", action="store_true", help="also a 5-component logistic mixture")
    parser.add_argument("--json", action="store_true", help="one JSON line per model instead of text")
    args = parser.parse_args()
    torch.set_num_threads(2)
    device = torch.device(args.device)
    pipeline = load_pipelines("pipelines.yaml")["colour-patches"]
    with tempfile.TemporaryDirectory() as root:
        ref = ingest(pipeline.dataset, root=root)
        train = prepare_inputs(torch.from_numpy(load_split(ref.path, "train")[0].copy()), 255.0, "none")  # (N, 3072)
        test = prepare_inputs(
            torch.from_numpy(load_split(ref.path, "test")[0][: args.test_images].copy()), 255.0, "none"
        )
    train, test = train.to(device), test.to(device)
    batch = args.batch or pipeline.training.batch_size
    variants = [{"likelihood": "discretized_logistic"}, {"likelihood": "gaussian", "dequantize": True}]
    if args.mixture:
        variants.append({"likelihood": "logistic_mixture", "components": 5})
    for likelihood in variants:
        config = pipeline.model.model_copy(update=likelihood)
        torch.manual_seed(0)
        model = build_model(config, 3072, (3, 32, 32)).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=pipeline.training.learning_rate)
        order = torch.Generator(device=device).manual_seed(0)
        start = time.perf_counter()
        model.train()
        steps = 0
        while steps < args.steps if args.seconds is None else time.perf_counter() - start < args.seconds:
            steps += 1
            rows = torch.randint(0, train.shape[0], (batch,), generator=order, device=device)
            loss = -elbo(model, train[rows]).elbo.mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        trained = time.perf_counter() - start
        with torch.no_grad():
            estimate = estimate_log_likelihood(model.eval(), test, args.k, seed=0)
        summary = estimate.summary(3072, model.bits_per_dim_kind)
        if args.json:
            record = {"likelihood": config.likelihood, "dequantize": config.dequantize, "steps": steps}
            record |= {"train_seconds": trained, "batch": batch, "k": args.k, "device": str(device), **summary}
            print(json.dumps(record, default=str), flush=True)
            continue
        print(
            f"{config.likelihood:22s} dequantize={config.dequantize!s:5s} steps {steps} ({trained:.0f} s)  "
            f"test NLL {summary['nll']:.1f} ± {summary['nll_stderr']:.1f} nats  "
            f"{summary['bits_per_dim']:.3f} bits/dim ({summary['bits_per_dim_kind']}), k={args.k}, n={summary['n']}",
            flush=True,
        )
    print(f"uniform over 0..255: {8.0:.3f} bits/dim; numpy {np.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
