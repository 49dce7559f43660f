"""Fashion-MNIST: model family x objective at one training budget, on the issue-16 protocol.

Every row is the project's own training (`vae.train.driver.train`: Ray Train, 2 CPU workers, batch 100
per worker, Adam 1e-3 with the fashion-mnist-quality decay) for --minutes of wall time, the best
validation-ELBO checkpoint, then `vae.evaluate.evaluation.score_checkpoint` at k = 5000 on all 10,000 test
images (binarised once, seed 0): the same protocol as BENCHMARKS.md's quality section (50k/10k/10k,
dynamic train binarisation). Rows run one after another, so each has the machine to itself.

    python bench/bench_families.py --minutes 8            # ~60 minutes on 2 cores; JSON lines on stdout
    python bench/bench_families.py --minutes 0.2 --k 50 --only standard   # a smoke check
    python bench/bench_families.py --minutes 60 --search ~/.vae/tune/fashion-mnist/20261127-081500 --only
        # one row, "tuned": the best trial of a `vae tune fashion-mnist` search, trained for 60 minutes
    python bench/bench_families.py --minutes 240 --search ~/.vae/tune/fashion-mnist/20261127-081500 --only --from-trial
        # the same row, but continuing the best trial's own checkpoint (weights, optimizer, schedule; the
        # minutes it trained count) with its own worker count and batch, on --cpus cores per worker.
        # Checkpoints go to VAE_HOME/bench/families-tuned/STAMP: run it again and it resumes from there.

Each row says which search found its settings ("search"): a `vae tune` folder, or by hand with the
reference it follows. Rows are merged into bench/results/families.json by (variant, minutes, device).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from vae.config import SEARCHABLE, load_pipeline

REPO = Path(__file__).resolve().parents[1]
BURDA = {"latent_dim": 50, "hidden": [200, 200], "activation": "tanh"}
GATED = {"latent_dim": 40, "hidden": [300, 300], "body": "gated"}
FOUND_BY = {  # how each hand-set row's settings were chosen
    "standard": "by hand: Burda et al. 2016's 200-200 tanh MLP, 50 latents",
    "standard-iwae5": "by hand: Burda et al. 2016's architecture and IWAE objective, k=5",
    "gated": "by hand: Tomczak & Welling 2018's GatedDense 300-300, 40 latents",
    "gated-vampprior": "by hand: Tomczak & Welling 2018, K=500 pseudo-inputs",
    "hvae-2-level": "by hand: a 2-level HVAE after Tomczak & Welling 2018 (z2 50, z1 50)",
}
VARIANTS = {  # name: (model fields, training fields); the rest is fashion-mnist-quality's
    "standard": (BURDA, {"objective": "elbo"}),
    "standard-iwae5": (BURDA, {"objective": "iwae", "iwae_k": 5}),
    "gated": (GATED, {"objective": "elbo"}),
    "gated-vampprior": ({**GATED, "prior": "vampprior", "pseudo_inputs": 500}, {"objective": "elbo"}),
    "hvae-2-level": ({**BURDA, "levels": 2, "latent_dim2": 50, "latent_hidden": [100, 100]}, {"objective": "elbo"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall-time budget per row")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="a subset of the rows")
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument(
        "--search", type=Path, help="a finished `vae tune` folder: adds the row 'tuned', its best trial's settings"
    )
    parser.add_argument(
        "--gpu", action="store_true", help="one GPU worker (fashion-mnist-gpu's training settings) and evaluation on it"
    )
    parser.add_argument(
        "--from-trial",
        action="store_true",
        help="with --search: continue the best trial's checkpoint (resumable) instead of starting over",
    )
    parser.add_argument("--cpus", type=int, default=2, help="with --from-trial: CPUs (torch threads) per worker")
    args = parser.parse_args()
    if args.from_trial and args.search is None:
        parser.error("--from-trial needs --search FOLDER")
    variants = dict(VARIANTS)
    found_by = dict(FOUND_BY)
    if args.search is not None:
        variants["tuned"], found_by["tuned"] = tuned_variant(args.search)

    from vae.train import driver
    from vae.evaluate.evaluation import score_checkpoint
    from vae.data.ingest import ingest

    base = load_pipeline("fashion-mnist-quality", REPO / "pipelines.yaml")
    work = Path(tempfile.mkdtemp(prefix="bench-families-"))
    dataset = ingest(base.dataset.model_copy(update={"source": args.source}), root=work)
    rows = []
    names = args.only if args.only is not None else list(VARIANTS)
    for name in names + (["tuned"] if args.search is not None else []):
        model_fields, training_fields = variants[name]
        body = base.model_dump(mode="json")
        body["name"] = f"families-{name}"
        body["model"] = {"likelihood": "bernoulli", **model_fields}
        body["training"].update(training_fields, max_minutes=args.minutes, checkpoint_every=5)
        if args.gpu:
            body["training"].update(use_gpu=True, workers=1, cpus_per_worker=2)
            body["evaluation"].update(use_gpu=True)
        config = type(base).model_validate(body)
        started = time.perf_counter()
        if name == "tuned" and args.from_trial:
            config, used, result = continue_trial(args.search, config, args.cpus)
        else:
            used, result = dataset, driver.train(config, dataset, storage_path=work / "runs", echo=None)
        trained = time.perf_counter() - started
        started = time.perf_counter()
        scored = score_checkpoint(
            result.checkpoint, used.path, config.evaluation.model_copy(update={"k": args.k}), "dynamic"
        )
        summary = scored.summary
        row = {
            "variant": name,
            "search": found_by[name],
            "model": model_fields,
            "training": training_fields,
            "minutes": args.minutes,
            "device": summary.get("device"),
            "train_wall_seconds": round(trained, 1),
            "training_minutes": round(result.history[-1].get("training_minutes", 0.0), 1) if result.history else None,
            # --from-trial: the trial's own checkpoint trained on; train_wall_seconds is this invocation's only
            "continued_from_trial": name == "tuned" and args.from_trial,
            "workers": config.training.workers,
            "cpus_per_worker": config.training.cpus_per_worker,
            "epochs": result.epochs,
            "test_nll": summary["nll"],
            "test_nll_stderr": summary["nll_stderr"],
            "elbo": summary["elbo"],
            "active_units": summary.get("active_units"),
            "k": args.k,
            "n": summary["n"],
            "evaluation_seconds": round(time.perf_counter() - started, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = REPO / "bench" / "results" / "families.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(out.read_text()) if out.exists() else []

    def key(row: dict) -> tuple:
        return row["variant"], row["minutes"], row.get("device", "cpu")

    ran = {key(row) for row in rows}
    merged = [row for row in kept if key(row) not in ran] + rows
    out.write_text(json.dumps(merged, indent=2))


def continue_trial(folder: Path, config, cpus: int):
    """Train the search's best trial on from its own checkpoint: same dataset version, worker count
    and batch (so the same updates), `cpus` torch threads per worker. Resumable: a rerun continues
    from the newest checkpoint under VAE_HOME/bench/families-tuned/<search stamp>. --minutes counts
    the trial's own training time too (the checkpoint carries it)."""
    from vae.train import checkpoints, driver
    from vae.data.datasets import DatasetRef
    from vae.paths import vae_home

    record = json.loads((folder / "search.json").read_text())
    best = record["result"]["best"]
    searched = load_pipeline(record["pipeline"], REPO / "pipelines.yaml")
    workers = searched.search.workers
    config = config.model_copy(
        update={"training": config.training.model_copy(update={"workers": workers, "cpus_per_worker": cpus})}
    )
    storage = vae_home() / "bench" / "families-tuned" / folder.name
    start = checkpoints.latest_checkpoint(config.name, storage) or best["checkpoint"]
    print(f"continuing {start} ({workers} worker(s) x {cpus} CPUs)", file=sys.stderr, flush=True)
    dataset = DatasetRef(**record["dataset"])
    result = driver.train(
        config,
        dataset,
        storage_path=storage,
        resume_from=start,
        echo=lambda line: print(line, file=sys.stderr, flush=True),
    )
    return config, dataset, result


def tuned_variant(folder: Path) -> tuple[tuple[dict, dict], str]:
    """(model fields, training fields) of a finished search's best trial, and a line naming the search."""
    record = json.loads((folder / "search.json").read_text())
    if record.get("status") != "done":
        raise SystemExit(f"{folder}: the search has not finished (expected status 'done' in search.json)")
    result = record["result"]
    best = result["best"]
    # The searched pipeline's model as written, with the trial's draws over it: the model the trial trained.
    searched = load_pipeline(result["pipeline"], REPO / "pipelines.yaml").model
    fields: dict[str, dict] = {"model": searched.model_dump(mode="json", exclude_unset=True), "training": {}}
    for name, value in best["config"].items():
        fields[SEARCHABLE[name]][name] = value
    trained = sum(1 for trial in result["trials"] if trial["epochs"])
    line = (
        f"vae tune {result['pipeline']} ({folder.name}): best of {len(result['trials'])} trials started "
        f"({trained} trained an epoch or more), "
        f"val ELBO {best['validation_elbo']:.2f} after {best['epochs']} epochs"
    )
    return (fields["model"], fields["training"]), line


if __name__ == "__main__":
    main()
