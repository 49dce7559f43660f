"""Quality: the Fashion-MNIST test NLL reached within a training-time budget, and its curve.

Runs the pipeline (default `fashion-mnist-quality`: Burda MLP, dynamic binarisation, fixed-
binarised test split, 60 minutes of training, k=5000 evaluation) through `vae run --json`, then
evaluates every kept checkpoint on the first --curve-images test images at k=--curve-k to draw
NLL against training time. Writes bench/results/fashion_quality.{csv,png}.

    python bench/bench_fashion_quality.py [--pipeline fashion-mnist-quality]
    python bench/bench_fashion_quality.py --curve-only RUN_CHECKPOINT_DIR   # redo the curve
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def curve(
    run_dir: Path, dataset_path: str, images: int, k: int, points_wanted: int
) -> list[tuple[float, int, float, float]]:
    from vae.evaluate.estimators import estimate_log_likelihood
    from vae.models.model import load_checkpoint
    from vae.evaluate.evaluation import load_inputs

    points = []
    checkpoints = sorted(
        (p for p in run_dir.glob("checkpoint_*") if (p / "checkpoint.pt").is_file()), key=lambda p: p.stat().st_mtime
    )  # not Ray's checkpoint_manager_snapshot.json
    if len(checkpoints) > points_wanted:  # evenly spaced, always including the last
        step = (len(checkpoints) - 1) / (points_wanted - 1)
        checkpoints = [checkpoints[round(i * step)] for i in range(points_wanted)]
    for checkpoint in checkpoints:
        model, state = load_checkpoint(checkpoint)
        x, _ = load_inputs(dataset_path, "test", model.data_dim, "dynamic", 0)
        estimate = estimate_log_likelihood(model, x[:images], k, seed=0)
        minutes = float(state["history"][-1].get("training_minutes", float("nan")))
        points.append((minutes, int(state["epoch"]), estimate.nll, estimate.stderr))
        print(
            f"  {minutes:6.1f} min  epoch {int(state['epoch']):4d}  NLL {estimate.nll:8.2f} ± {estimate.stderr:.2f}",
            flush=True,
        )
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="fashion-mnist-quality")
    parser.add_argument("--file", default="pipelines.yaml", help="pipelines file (e.g. a copy with a shorter budget)")
    parser.add_argument("--curve-images", type=int, default=1000)
    parser.add_argument("--curve-k", type=int, default=500)
    parser.add_argument("--curve-points", type=int, default=12)
    parser.add_argument("--curve-only", type=Path, default=None)
    parser.add_argument("--dataset", default="fashion-mnist")
    args = parser.parse_args()
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    if args.curve_only is None:
        started = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "vae", "run", args.pipeline, "--file", args.file, "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=dict(os.environ),
        )
        if run.returncode != 0:
            sys.exit(f"vae run failed: {run.stderr[-2000:]}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        evaluation = result["evaluation"]
        print(f"`vae run {args.pipeline}`: {time.perf_counter() - started:.0f} s wall, {result['epochs']} epochs")
        print(
            f"test NLL (k={evaluation['k']}, {evaluation['n']} images) = {evaluation['nll']:.2f} ± "
            f"{evaluation['nll_stderr']:.2f} nats; goal <= 233.5 on CPU within 60 min of training"
        )
        (out / "fashion_quality.json").write_text(json.dumps(result, indent=2, default=str))
        run_dir, dataset_path = Path(result["checkpoint"]).parent, result["dataset"]["path"]
    else:
        from vae.evaluate.evaluation import resolve_dataset

        run_dir, dataset_path = args.curve_only, resolve_dataset(args.dataset)
    print(f"NLL against training time (first {args.curve_images} test images, k={args.curve_k}):")
    points = curve(run_dir, dataset_path, args.curve_images, args.curve_k, args.curve_points)
    (out / "fashion_quality.csv").write_text(
        "training_minutes,epoch,nll,nll_stderr\n" + "".join(f"{m:.2f},{e},{n:.4f},{s:.4f}\n" for m, e, n, s in points)
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.errorbar([p[0] for p in points], [p[2] for p in points], yerr=[p[3] for p in points], marker="o")
    axes.axhline(233.5, color="grey", linestyle="--", label="CPU goal 233.5")
    axes.set_xlabel("training time (minutes)")
    axes.set_ylabel(f"test NLL (nats, k={args.curve_k})")
    axes.set_title("Fashion-MNIST, Burda MLP, 2 CPU workers")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / "fashion_quality.png")


if __name__ == "__main__":
    main()
