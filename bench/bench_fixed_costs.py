"""Fixed costs of a small run, side by side (issue 26): what `vae` pays before and around the model's work.

    python bench/bench_fixed_costs.py [--repeat 3] [--runs] [--only ray-data|fits|services|cli]

- `ray data`: a fresh process starts a local Ray, then makes the Ray Datasets of digits' train and
  validation splits as training did before (`read_parquet(...).materialize()`: Ray Data's read tasks,
  each a worker process to start) and as vae.train.shards.ray_dataset does now for a split under one
  block (`from_arrow(pyarrow.parquet.read_table(...))`); only the dataset part is timed. The two run
  interleaved, in fresh processes, and the shards they give are compared row for row.
- `fits`: a one-worker fit of digits (6 epochs, a checkpoint each) by Ray Train's TorchTrainer and
  in the calling process (`train(..., in_process=True)`, what a search's one-worker trials do),
  each in a fresh process with a fresh local Ray, interleaved; only `train` is timed (Ray's start is
  not), and the two histories are compared bit for bit.
- `services`: digits' own two-worker fit (15 epochs, `vae run digits`'s settings) by vae's TorchTrainer
  on a Ray of vae's own, with Ray Train's cluster services (autoscaling coordinator, placement-group
  cleaner, dataset manager; what `VAE_OWN_RAY=0` gives) and without them (vae.train.trainer), each in
  a fresh process with a fresh local Ray, interleaved; only `train` is timed, histories compared.
- `cli`: `vae --help` and `vae pipelines` wall time (target: 1.5 s).
- `--runs`: a cold `vae run digits` (fresh VAE_HOME and PREFECT_HOME) then a warm one (`--force`,
  the same homes): wall times and the flow's own stage seconds (targets: 45 s and 30 s).
Medians of --repeat; the machine's CPUs are printed with them.
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
ENV = {
    **os.environ,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}

DATASETS = r"""
import json, os, sys, time
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
import numpy as np, pyarrow.parquet as pq, ray
folder, how = sys.argv[1], sys.argv[2]
ray.init(address="local", include_dashboard=False, num_cpus=4, _node_ip_address="127.0.0.1", log_to_driver=False)
started = time.perf_counter()
made = []
for split in ("train", "validation"):
    path = os.path.join(folder, split + ".parquet")
    if how == "read_parquet":
        made.append(ray.data.read_parquet(path).materialize())
    else:
        made.append(ray.data.from_arrow(pq.read_table(path)))
seconds = time.perf_counter() - started
import threading
shards = [None, None]
def take(i, it):
    shards[i] = [np.asarray(r).tolist() for b in it.iter_batches(batch_size=4096, batch_format="numpy") for r in b["image"]]
its = made[0].streaming_split(2, equal=True)
threads = [threading.Thread(target=take, args=(i, it)) for i, it in enumerate(its)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps({"seconds": seconds, "blocks": made[0].num_blocks(), "shards": shards}))
"""


_DIGITS_FIT = r"""
import json, os, sys, tempfile, time
from vae.cluster import ensure_ray, prepare_local_ray
prepare_local_ray()
from vae.config import load_pipeline
from vae.data.ingest import ingest
from vae.train import driver
config = load_pipeline("digits")
"""
_TIMED_TRAIN = r"""
started = time.perf_counter()
result = driver.train(config, dataset, storage_path=tempfile.mkdtemp(), echo=None, **options)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "history": [h["validation_elbo"] for h in result.history]}))
"""

# A one-worker fit, 6 epochs with a checkpoint each: Ray Train (`ray`) or in process (`in`).
FIT = (
    _DIGITS_FIT
    + r"""
import torch
torch.set_num_threads(1)  # as Ray Train gives its worker (1 CPU)
training = config.training.model_copy(update={"workers": 1, "epochs": 6, "checkpoint_every": 1})
config = config.model_copy(update={"training": training})
dataset = ingest(config.dataset)
ensure_ray(1)
options = {"in_process": sys.argv[1] == "in"}
"""
    + _TIMED_TRAIN
)

# digits' own two-worker fit, with Ray Train's cluster services (`with`) or without them (`without`).
TWO_WORKERS = (
    _DIGITS_FIT
    + r"""
dataset = ingest(config.dataset)
ensure_ray(config.training.workers)
os.environ["VAE_OWN_RAY"] = "1" if sys.argv[1] == "without" else "0"  # vae.cluster.is_own_ray
options = {}
"""
    + _TIMED_TRAIN
)


def _interleaved(script: str, args: list[str], variants: tuple[str, str], repeat: int, env: dict | None = None):
    """Each variant's median seconds and last JSON result: `script ARGS VARIANT` in a fresh process, in turns."""
    seconds: dict[str, list[float]] = {how: [] for how in variants}
    last = {}
    for _ in range(repeat):
        for how in variants:
            _, out = _timed([sys.executable, "-c", script, *args, how], env)
            last[how] = json.loads(out.strip().splitlines()[-1])
            seconds[how].append(last[how]["seconds"])
    return [statistics.median(seconds[how]) for how in variants], last


def _two_fits(title: str, script: str, variants: dict[str, str], repeat: int, home: str) -> None:
    """Two ways of one fit, side by side: `variants` maps the script's argument to its label."""
    (a, b), last = _interleaved(script, [], tuple(variants), repeat, {**ENV, "VAE_HOME": home})
    (first, second), (label_a, label_b) = tuple(variants), variants.values()
    print(f"{title} (median of {repeat}, fresh Ray each, only train() timed):")
    print(f"  {label_a:<36} {a:6.2f} s")
    print(f"  {label_b:<36} {b:6.2f} s   ratio {b / a:.3f}")
    print(f"  validation ELBO per epoch identical bit for bit: {last[first]['history'] == last[second]['history']}")


def fits(repeat: int, home: str) -> None:
    variants = {"ray": "Ray Train TorchTrainer", "in": "in process (a search's trials)"}
    _two_fits("one-worker fit of digits, 6 epochs", FIT, variants, repeat, home)


def services(repeat: int, home: str) -> None:
    variants = {"with": "with Ray Train's cluster services", "without": "without them (vae.train.trainer)"}
    _two_fits("two-worker fit of digits, 15 epochs", TWO_WORKERS, variants, repeat, home)


def _timed(command: list[str], env: dict | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env or ENV, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout


def ray_data(folder: str, repeat: int) -> None:
    (a, b), last = _interleaved(DATASETS, [folder], ("read_parquet", "from_arrow"), repeat)
    print(f"ray data, digits train+validation datasets (median of {repeat}, fresh Ray each):")
    print(f"  read_parquet().materialize()  {a:6.2f} s")
    print(f"  from_arrow(read_table())      {b:6.2f} s   ratio {b / a:.3f}")
    same = last["read_parquet"]["shards"] == last["from_arrow"]["shards"]
    print(f"  the two shards of the train split identical row for row: {same}")


def cli(repeat: int) -> None:
    for args in (["--help"], ["pipelines"]):
        walls = [_timed([str(Path(sys.executable).parent / "vae"), *args])[0] for _ in range(repeat)]
        print(f"vae {' '.join(args):<10} {statistics.median(walls):5.2f} s (median of {repeat}; target 1.5 s)")


def runs() -> None:
    home = Path(tempfile.mkdtemp(prefix="vae-fixed-"))
    env = {**ENV, "VAE_HOME": str(home / "vae"), "PREFECT_HOME": str(home / "prefect")}
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS"):
        env.pop(key, None)
    try:
        for label, extra in (("cold", []), ("warm (--force)", ["--force"])):
            wall, out = _timed([sys.executable, "-m", "vae", "run", "digits", "--json", *extra], env)
            stages = json.loads(out.strip().splitlines()[-1])["stage_seconds"]
            outside = wall - sum(stages.values())
            staged = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
            print(f"vae run digits, {label}: {wall:.1f} s ({staged}; outside the flow {outside:.1f})")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", action="store_true", help="also a cold and a warm `vae run digits`")
    parser.add_argument("--only", choices=["ray-data", "fits", "services", "cli"], help="one section")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    sys.path.insert(0, str(REPO))
    from vae.data.ingest import ingest
    from vae.config import DatasetConfig

    folder = ingest(DatasetConfig(name="digits", source="sklearn:digits", validation_fraction=0.1)).path
    home = os.environ.get("VAE_HOME") or tempfile.mkdtemp(prefix="vae-fits-")
    sections = {
        "ray-data": lambda: ray_data(folder, args.repeat),
        "fits": lambda: fits(args.repeat, home),
        "services": lambda: services(args.repeat, home),
        "cli": lambda: cli(max(args.repeat, 5)),
    }
    for name, section in sections.items():
        if args.only in (None, name):
            section()
    if args.runs:
        runs()


if __name__ == "__main__":
    main()
