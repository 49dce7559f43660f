"""OOD detection by the digits champion's log p̂(x): AUROC of the per-row scores, raw -log p̂(x) against the
typicality score |-log p̂(x) - Ĥ_ref|, side by side, and the batch verdict of `vae drift` on each case.

The model: the digits pipeline's model and training settings (pipelines.yaml: latent 8, [128, 128] tanh, Adam
3e-3, 15 epochs, 32 images a step), trained in this process on one thread (seed 0), or any MODEL given with
--model (e.g. models:/vae-digits@champion after `vae run digits`). The reference is the digits test split
(359 images); each case is a dataset built from the shipped sklearn digits, ingested like any other, and
checked with `vae.jobs.drift.check_drift` (Ray Data scoring, the same k and seed for both sides):

  null       the validation split (144 held-out digits): should not be flagged, AUROC ~0.5
  inverted   16 - x (white digits on black)
  noise      uniform pixels 0..16, seeded
  rotated    the test digits turned 90°
  mirrored   the test digits flipped left-right
  blank      every pixel 0: a constant image
  simpler    each test digit replaced by the mean training image of its class, thresholded: clean, smooth
             prototypes that the model finds MORE likely than its own test set (Nalisnick et al. 2019a's trap)

AUROC: P(score of a case row > score of a reference row) (+ ties / 2). Batch detection: the share of 1000
random batches of M rows of the case (with replacement) that each batch test flags at α = 0.01: the two-sided
typicality test against the one-sided likelihood test (mean -log p̂(x) too HIGH), both calibrated by the same
bootstrap of the reference (Ĥ re-estimated in every round, as vae.jobs.drift_statistics.bootstrap_typicality).

    python bench/bench_drift.py [--k 1000] [--model MODEL] [--json bench/results/drift.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = ("null", "inverted", "noise", "rotated", "mirrored", "blank", "simpler")


def case_images(case: str, test: np.ndarray, labels: np.ndarray, train: np.ndarray, train_labels: np.ndarray):
    """(N, 8, 8) uint8 pixels 0..16 of one case, from the digits test split (the null case is not built here)."""
    images = test.reshape(-1, 8, 8)
    if case == "inverted":
        return 16 - images
    if case == "noise":
        return np.random.default_rng(0).integers(0, 17, size=images.shape)
    if case == "rotated":
        return np.rot90(images, 1, axes=(1, 2))
    if case == "mirrored":
        return images[:, :, ::-1]
    if case == "blank":
        return np.zeros_like(images)
    if case == "simpler":
        means = np.stack([train[train_labels == c].mean(0) for c in range(10)])  # (10, 64)
        return np.where(means[labels] > 8, 16, 0).reshape(-1, 8, 8)
    raise ValueError(case)


def train_digits_champion(directory: Path, dataset_path: str) -> str:
    """The digits pipeline's model and training settings, trained here on one thread; a checkpoint directory."""
    import torch

    from vae.config import load_pipeline
    from vae.data.datasets import load_split
    from vae.data.inputs import prepare_inputs
    from vae.models.model import CHECKPOINT_FILE, build_model
    from vae.models.objectives import elbo

    settings = load_pipeline("digits", Path(__file__).resolve().parents[1] / "pipelines.yaml")
    torch.set_num_threads(1)
    torch.manual_seed(settings.training.seed)
    images, _ = load_split(dataset_path, "train")
    x = prepare_inputs(torch.from_numpy(np.array(images)), 16.0, "threshold")  # (N, 64)
    model = build_model(settings.model, 64)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.training.learning_rate)
    step = settings.training.batch_size * settings.training.workers  # 2 workers x 16 = 32 images a step
    for _ in range(settings.training.epochs):
        order = torch.randperm(x.shape[0])
        for start in range(0, x.shape[0], step):
            loss = -elbo(model, x[order[start : start + step]]).elbo.mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "epoch": settings.training.epochs,
            "history": [],
            "model_config": settings.model.model_dump(mode="json"),
            "data_dim": 64,
        },
        directory / CHECKPOINT_FILE,
    )
    return str(directory)


def batch_detection(
    nll_ref: np.ndarray, nll_new: np.ndarray, m: int, alpha: float, seed: int = 0
) -> tuple[float, float]:
    """(one-sided likelihood test, two-sided typicality test): shares of 1000 batches of m rows flagged."""
    rng = np.random.default_rng(seed)
    n_ref = nll_ref.shape[0]
    signed = nll_ref[rng.integers(0, n_ref, (4000, m))].mean(1) - nll_ref[rng.integers(0, n_ref, (4000, n_ref))].mean(1)
    one_sided, two_sided = np.quantile(signed, 1 - alpha), np.quantile(np.abs(signed), 1 - alpha)
    batches = nll_new[rng.integers(0, nll_new.shape[0], (1000, m))].mean(1) - nll_ref.mean()  # (1000,)
    return float(np.mean(batches > one_sided)), float(np.mean(np.abs(batches) > two_sided))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument(
        "--model", help="A model URI or checkpoint directory (default: train the digits champion here)."
    )
    parser.add_argument("--batch", type=int, default=10, help="M, the batch size of the batch-detection columns.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()

    os.environ.setdefault("VAE_HOME", tempfile.mkdtemp(prefix="bench-drift-"))
    from vae.cli.app import quiet_logs

    quiet_logs(False)
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from vae.jobs import drift
    from vae.jobs import drift_statistics as stats
    from vae.config import DatasetConfig, DriftConfig
    from vae.data.datasets import load_split
    from vae.data.ingest import ingest

    digits = ingest(DatasetConfig(name="digits", source="sklearn:digits", validation_fraction=0.1))
    test, labels = load_split(digits.path, "test")
    train, train_labels = load_split(digits.path, "train")
    work = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    started = time.perf_counter()
    model = args.model or train_digits_champion(work / "champion", digits.path)
    trained = time.perf_counter() - started
    settings = DriftConfig(dataset="case", k=args.k)
    rows = []
    for case in CASES:
        if case == "null":
            new = f"{digits.path}:validation"
        else:
            source = work / f"{case}.npz"
            images = case_images(case, test, labels, train, train_labels)
            np.savez(source, images=images.astype(np.uint8), labels=labels)
            new = ingest(DatasetConfig(name=f"digits-{case}", source=str(source), max_value=16)).path
        clock = time.perf_counter()
        result = drift.check_drift(model, f"{digits.path}:test", new, settings, work / f"{case}.parquet")
        seconds = time.perf_counter() - clock
        table = pq.read_table(result.path)
        ref, out = (table.filter(pc.equal(table["set"], role)) for role in ("reference", "new"))
        nll_ref, nll_new = (-t.column("log_px").to_numpy() for t in (ref, out))
        entropy = stats.entropy_estimate(nll_ref)
        aurocs = {
            method: stats.auroc(stats.ood_scores(nll_ref, entropy, method), stats.ood_scores(nll_new, entropy, method))
            for method in ("raw", "typicality")
        }
        one_sided, two_sided = batch_detection(nll_ref, nll_new, args.batch, 0.01)
        s = result.statistics
        rows.append(
            {
                "case": case,
                "n": int(nll_new.shape[0]),
                "mean_log_px": float(-nll_new.mean()),
                "auroc_raw": aurocs["raw"],
                "auroc_typicality": aurocs["typicality"],
                "verdict": result.verdict,
                "typicality_statistic": s["typicality_statistic"],
                "typicality_threshold": s["typicality_threshold"],
                "ks_p_value": s["ks_p_value"],
                "rows_flagged_raw": s["new_raw_flagged_fraction"],
                "rows_flagged_typicality": s["new_ood_fraction"],
                f"batch{args.batch}_likelihood": one_sided,
                f"batch{args.batch}_typicality": two_sided,
                "seconds": round(seconds, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    reference = float(-nll_ref.mean())
    print(f"\nreference: digits test split, 359 rows, mean log p̂(x) {reference:.3f} nats; k = {args.k}")
    print(f"model: {model if args.model else f'trained here in {trained:.1f} s'}\n")
    m = args.batch
    print(
        "| case | rows | mean log p̂(x) | AUROC raw -log p̂(x) | AUROC typicality | rows flagged raw / typ. (1%) "
        f"| batches of {m} flagged: likelihood / typicality (α 0.01) | `vae drift` verdict (T vs ε; KS p) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(
            f"| {r['case']} | {r['n']} | {r['mean_log_px']:.2f} | {r['auroc_raw']:.3f} | {r['auroc_typicality']:.3f} "
            f"| {r['rows_flagged_raw']:.0%} / {r['rows_flagged_typicality']:.0%} "
            f"| {r[f'batch{m}_likelihood']:.0%} / {r[f'batch{m}_typicality']:.0%} "
            f"| {r['verdict']} ({r['typicality_statistic']:.2f} vs {r['typicality_threshold']:.2f}; {r['ks_p_value']:.2g}) |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"k": args.k, "model": args.model, "reference_mean_log_px": reference, "cases": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
