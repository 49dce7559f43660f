"""`vae ingest` of Fashion-MNIST against a bare baseline in the same run, and peak memory on a big file.

Baseline: gunzip the four IDX files, parse them with numpy, and write one Parquet file with a
single `pyarrow.parquet.write_table` — no hashing, splits, validation or manifest. A second
baseline writes 1024-row row groups, the layout `vae ingest` writes (pyarrow's default of one
70k-row group is slower to encode, which flatters the first ratio). All run as
fresh subprocesses (interpreter start and imports included), alternating, and the medians are
compared; the goal is `vae ingest` ≤ 1.5× baseline. Then a synthetic uncompressed IDX file of
--big-rows 28x28 images (3M = 2.35 GB) is ingested in a subprocess whose peak RSS is read from
os.wait4 (goal: well under 1 GB).

    python bench/bench_ingest.py [--repeat 5] [--source /usr/share/datasets/fashion-mnist] [--big-rows 3000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
from ingest_helpers import write_big_idx  # noqa: E402  (shared with the memory test)

REPO = Path(__file__).resolve().parents[1]

BASELINE = """
import gzip, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
folder, out = sys.argv[1], sys.argv[2]
images, labels = [], []
for prefix in ("train", "t10k"):
    with gzip.open(f"{folder}/{prefix}-images-idx3-ubyte.gz") as f:
        raw = f.read()
    images.append(np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784))
    with gzip.open(f"{folder}/{prefix}-labels-idx1-ubyte.gz") as f:
        labels.append(np.frombuffer(f.read(), np.uint8, offset=8))
flat = np.concatenate(images)
table = pa.table({"image": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), 784),
                  "label": pa.array(np.concatenate(labels).astype(np.int64))})
pq.write_table(table, out, **({"row_group_size": 1024} if len(sys.argv) > 3 else {}))
"""


def timed(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {child.stderr.read().decode()}")
    return wall, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--big-rows", type=int, default=3_000_000, help="0 skips the big file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vae-bench-ingest-"))
    env = {k: v for k, v in os.environ.items() if k != "VAE_HOME"}
    try:
        ours, base, grouped, ours_rss, base_rss = [], [], [], [], []
        for i in range(args.repeat):
            home = work / f"home-{i}"  # a fresh VAE_HOME: a real conversion, not the idempotent skip
            wall, rss = timed(
                [sys.executable, "-m", "vae", "ingest", args.source, "--name", "fashion-mnist"],
                {**env, "VAE_HOME": str(home)},
            )
            ours.append(wall)
            ours_rss.append(rss)
            wall, rss = timed([sys.executable, "-c", BASELINE, args.source, str(work / f"baseline-{i}.parquet")], env)
            base.append(wall)
            base_rss.append(rss)
            grouped_out = str(work / f"grouped-{i}.parquet")
            wall, _rss = timed([sys.executable, "-c", BASELINE, args.source, grouped_out, "1024"], env)
            grouped.append(wall)
            shutil.rmtree(home)
            print(
                f"run {i + 1}/{args.repeat}: vae ingest {ours[-1]:.2f} s, baseline {base[-1]:.2f} s, "
                f"baseline with 1024-row groups {grouped[-1]:.2f} s",
                flush=True,
            )
        for _ in range(2):  # the second finds its version present and skips the conversion
            again_skip, _rss = timed(
                [sys.executable, "-m", "vae", "ingest", args.source, "--name", "fashion-mnist"],
                {**env, "VAE_HOME": str(work / "home-0")},
            )
        mo, mb, mg = statistics.median(ours), statistics.median(base), statistics.median(grouped)
        print(f"\nFashion-MNIST (70k 28x28), median of {args.repeat} fresh subprocesses, {os.cpu_count()} CPUs")
        print(f"baseline (gunzip + numpy + one write_table)  {mb:6.2f} s   peak RSS {max(base_rss) / 2**20:5.0f} MiB")
        print(f"baseline, 1024-row groups                    {mg:6.2f} s")
        print(f"vae ingest                                   {mo:6.2f} s   peak RSS {max(ours_rss) / 2**20:5.0f} MiB")
        print(f"vae ingest, version already present           {again_skip:6.2f} s")
        print(
            f"ratio vae ingest / baseline = {mo / mb:.2f}   (goal <= 1.5);  / baseline with 1024-row groups = "
            f"{mo / mg:.2f}"
        )
        if args.big_rows:
            folder = work / "big"
            folder.mkdir()
            size = write_big_idx(folder, args.big_rows)
            wall, rss = timed(
                [sys.executable, "-m", "vae", "ingest", str(folder), "--name", "big"],
                {**env, "VAE_HOME": str(work / "home-big")},
            )
            print(f"\nsynthetic IDX: {args.big_rows} images, {size / 2**30:.2f} GiB uncompressed")
            print(
                f"vae ingest  {wall:6.1f} s ({size / 2**20 / wall:.0f} MiB/s)   peak RSS {rss / 2**20:.0f} MiB "
                f"({rss / size:.3f} of the file; goal well under 1 GiB)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
