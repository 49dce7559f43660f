"""colour-patches: model family x 8-bit likelihood at one training budget (the pipeline's epochs).

Every row is `colour-patches` from pipelines.yaml (conv, channels [32, 64], latent 32; batch 32,
Adam 1e-3, seed 0, 1 Ray Train worker x 2 CPUs) with only the model's family and likelihood changed,
trained by the project's own training (`vae.train.driver.train`, Ray Train) for the pipeline's epochs
(12: the same number of updates for every row, whatever the machine's other load does to the wall
time), the final checkpoint (the pipeline has no early stopping), then `vae.evaluate.evaluation.score_checkpoint`
with the pipeline's evaluation (test split, seed 0) at --k importance samples on all 450 test patches.
Bits/dim is per 8-bit subpixel (D = 3072, 8.0 = uniform). Rows run one after another.

Families: the standard N(0, I) prior; a VampPrior with K = 50 learned 3x32x32 pseudo-inputs (about 1%
of the 5,130 training patches, the ratio of Tomczak & Welling's K = 500 for 50,000 images; it also keeps
the per-step cost of encoding them at 50 extra images beside a batch of 32); two levels, z1 the
pipeline's 32 and z2 16, with the default 100-100 nets between them.
Likelihoods: discretized_logistic and logistic_mixture with 5 components.

    python bench/bench_colour_families.py                       # 6 rows, JSON lines, then a table
    python bench/bench_colour_families.py --epochs 1 --k 5 --only standard-dlogistic vampprior-dlogistic \
        two-level-dlogistic --no-save                         # a smoke check

Rows are merged into bench/results/colour_families.json by (variant, epochs, k).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {
    "standard": {},
    "vampprior": {"prior": "vampprior", "pseudo_inputs": 50},
    "two-level": {"levels": 2, "latent_dim2": 16},
}
LIKELIHOODS = {
    "dlogistic": {"likelihood": "discretized_logistic"},
    "mixture5": {"likelihood": "logistic_mixture", "components": 5},
}
VARIANTS = {
    f"{family}-{short}": (family, {**fields, **likelihood})
    for family, fields in FAMILIES.items()
    for short, likelihood in LIKELIHOODS.items()
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="training epochs per row (default: the pipeline's, 12)")
    parser.add_argument("--k", type=int, default=100, help="importance samples per test patch")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="a subset of the rows")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/colour_families.json")
    args = parser.parse_args()

    import torch

    from vae.train import driver
    from vae.config import load_pipeline
    from vae.evaluate.evaluation import score_checkpoint
    from vae.data.ingest import ingest

    base = load_pipeline("colour-patches", REPO / "pipelines.yaml")
    epochs = args.epochs or base.training.epochs
    work = Path(tempfile.mkdtemp(prefix="bench-colour-families-"))
    dataset = ingest(base.dataset, root=work)
    rows = []
    for name in args.only if args.only is not None else list(VARIANTS):
        family, fields = VARIANTS[name]
        body = base.model_dump(mode="json")
        body["name"] = f"colour-families-{name}"
        body["model"].update(fields)
        body["training"].update(epochs=epochs)
        config = type(base).model_validate(body)
        started = time.perf_counter()
        result = driver.train(config, dataset, storage_path=work / "runs", echo=None)
        trained = time.perf_counter() - started
        started = time.perf_counter()
        evaluation = config.evaluation.model_copy(update={"k": args.k})
        scored = score_checkpoint(result.checkpoint, dataset.path, evaluation, config.dataset.binarize)
        summary = scored.summary
        last = result.history[-1] if result.history else {}
        row = {
            "variant": name,
            "family": family,
            "model": config.model.model_dump(mode="json"),
            "epochs": result.epochs,
            "batch_size": config.training.batch_size,
            "workers": config.training.workers,
            "cpus_per_worker": config.training.cpus_per_worker,
            "train_wall_seconds": round(trained, 1),
            "training_minutes": round(last.get("training_minutes", 0.0), 2),
            "validation_elbo": last.get("validation_elbo"),
            # the final-epoch checkpoint is scored; the ELBO swings between epochs at this learning rate
            "validation_elbo_by_epoch": [round(m["validation_elbo"], 2) for m in result.history],
            # the machine's other load sets the wall time: its least-loaded epoch is the cost of the model
            "epoch_seconds_by_epoch": [round(m["epoch_seconds"], 1) for m in result.history],
            "test_nll": summary["nll"],
            "test_nll_stderr": summary["nll_stderr"],
            "bits_per_dim": summary["bits_per_dim"],
            "bits_per_dim_kind": summary["bits_per_dim_kind"],
            "elbo": summary["elbo"],
            "active_units": summary.get("active_units"),
            "latent_dim": summary.get("latent_dim"),
            "k": args.k,
            "n": summary["n"],
            "seed": evaluation.seed,
            "device": summary.get("device"),
            "evaluation_seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print(f"colour-patches, {epochs} epochs each, k={args.k} on the test split; bits/dim per 8-bit subpixel")
    print(f"{'variant':26s} {'epochs':>6s} {'train s':>8s} {'test NLL (nats)':>20s} {'bits/dim':>9s} {'AU':>6s}")
    for row in rows:
        nll = f"{row['test_nll']:,.1f} ± {row['test_nll_stderr']:.1f}"
        units = f"{row['active_units']}/{row['latent_dim']}"
        print(
            f"{row['variant']:26s} {row['epochs']:6d} {row['train_wall_seconds']:8.0f} {nll:>20s} "
            f"{row['bits_per_dim']:9.3f} {units:>6s}"
        )
    if args.no_save:
        return
    out = REPO / "bench" / "results" / "colour_families.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(out.read_text()) if out.exists() else []

    def key(row: dict) -> tuple:
        return row["variant"], row["epochs"], row["k"]

    ran = {key(row) for row in rows}
    out.write_text(json.dumps([row for row in kept if key(row) not in ran] + rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
