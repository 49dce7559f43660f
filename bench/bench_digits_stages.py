"""Time each stage of a cold `vae run digits`: how much is real work, how much start-up.

Each repetition is a cold start: a fresh VAE_HOME and PREFECT_HOME (so the ephemeral Prefect
server migrates a new database), a new local Ray, a new sqlite MLflow store. Prints per-stage
medians and the share of wall time spent in real work (ingest, training epochs, evaluation,
registration) as opposed to imports and service start-up.

    python bench/bench_digits_stages.py [--repeat 3] [--pipeline digits]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cold_run(pipeline: str) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="vae-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS")}
    env.update(VAE_HOME=str(home / "vae"), PREFECT_HOME=str(home / "prefect"))
    try:
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "vae", "run", pipeline, "--json"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - started
        result = json.loads(out.stdout.strip().splitlines()[-1])
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{home / 'vae' / 'mlflow.db'}")
        epochs = sum(m.value for m in client.get_metric_history(result["run_id"], "epoch_seconds"))
        stages = result["stage_seconds"]
        return {
            "wall": wall,
            "startup": wall - sum(stages.values()),
            **stages,
            "train_epochs": epochs,
            "train_overhead": stages["train"] - epochs,
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pipeline", default="digits")
    args = parser.parse_args()
    runs = []
    for i in range(args.repeat):
        runs.append(cold_run(args.pipeline))
        print(f"run {i + 1}/{args.repeat}: {runs[-1]['wall']:.1f} s", flush=True)
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    rows = [
        ("imports + Prefect server start/stop", "startup"),
        ("ingest", "ingest"),
        ("train (total)", "train"),
        ("  of which epochs", "train_epochs"),
        ("  of which Ray start, workers, data, MLflow run", "train_overhead"),
        ("evaluate (k=5000)", "evaluate"),
        ("register (log pyfunc, gate)", "register"),
        ("wall time of `vae run`", "wall"),
    ]
    print(f"\nmedian of {args.repeat} cold runs of `vae run {args.pipeline}` ({os.cpu_count()} CPUs)")
    for label, key in rows:
        print(f"{label:50} {median[key]:7.1f} s  {100 * median[key] / median['wall']:5.1f} %")
    work = median["ingest"] + median["train_epochs"] + median["evaluate"] + median["register"]
    print(f"\nreal work / wall = {work / median['wall']:.2f}   (goal: wall < 180 s, mostly work)")
    print(f"wall / 180 s budget = {median['wall'] / 180:.2f}")


if __name__ == "__main__":
    main()
