"""What a drift check shows people: the verdict as table rows and one line, the log p̂(x) histograms
(reference vs new) as a PNG, its MLflow run (`log_check`: a run of its own experiment MODEL_NAME-drift,
through the client of vae.registry.runs), and the output a scheduled check plans before it scores (so
that a rerun on unchanged inputs can skip). flows/ put the rows and the plot on a flow run's page.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from vae.config import DriftConfig
from vae.jobs.drift import DriftResult, default_output, read_result, resolve_side


def verdict(result: dict[str, Any]) -> str:
    """'no drift', or 'DRIFT: ' and the reasons."""
    return "DRIFT: " + "; ".join(result["reasons"]) if result["drift"] else "no drift"


def verdict_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """A drift check's summary (DriftResult.to_dict()) as (quantity, value) rows for a table."""
    s, ref, new = result["statistics"], result["reference"], result["new"]
    return [
        {"quantity": "verdict", "value": verdict(result)},
        *({"quantity": f"{role} data", "value": f"{side['dataset']}@{side['version']}:{'+'.join(side['splits'])}, "
           f"{side['n']} rows, mean log p̂(x) {side['mean_log_px']:.3f} nats ({side['bits_per_dim']:.4f} bits/dim)"}
          for role, side in (("reference", ref), ("new", new))),
        {"quantity": "typicality |mean -log p̂(x) - Ĥ_ref|",
         "value": f"{s['typicality_statistic']:.3f} nats (threshold {s['typicality_threshold']:.3f}, p = {s['typicality_p_value']:.3g})"},
        {"quantity": "KS test on log p̂(x)", "value": f"D = {s['ks_statistic']:.3f}, p = {s['ks_p_value']:.3g}"},
        {"quantity": "new rows flagged OOD (typicality)", "value": f"{s['new_ood_fraction']:.1%} (reference {s['reference_ood_fraction']:.1%})"},
        {"quantity": "model", "value": f"{result['model_uri']} (version {result['model_version']}), k={result['k']}"},
    ]  # fmt: skip


def planned_output(name: str | None, version: str | None, reference: str, new: str, settings: DriftConfig) -> Path:
    """Where a scheduled check of `new` against `reference` (dataset specs) by this model version writes:
    one file per model version, dataset versions and protocol (vae.jobs.drift.default_output)."""
    sides = (
        resolve_side(reference, "reference", "drift.reference_split", ("test",)),
        resolve_side(new, "new", "drift.dataset", None),
    )
    return default_output(name, version, *sides, settings)


def plot_histograms(path: str | Path, folder: str | Path) -> Path:
    """log p̂(x) of the reference and the new rows of a drift output, as two histograms on shared bins,
    with -Ĥ_ref marked; saved as FOLDER/log_px_histogram.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = read_result(path)
    table = pq.read_table(path, columns=["set", "log_px"])
    roles = np.asarray(table.column("set").to_pylist())
    log_px = table.column("log_px").to_numpy()
    bins = np.histogram_bin_edges(log_px, bins=min(60, max(10, int(np.sqrt(log_px.shape[0])))))
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for role, colour in (("reference", "tab:blue"), ("new", "tab:orange")):
        side = getattr(result, role)
        axes.hist(
            log_px[roles == role], bins=bins, density=True, alpha=0.55, color=colour,
            label=f"{role}: {side['dataset']} {'+'.join(side['splits'])} (n={side['n']})",
        )  # fmt: skip
    axes.axvline(-result.statistics["entropy"], color="black", linestyle="--", label="-Ĥ_ref (mean log p̂(x))")
    axes.set_xlabel("log p̂(x) (nats)")
    axes.set_ylabel("density")
    axes.set_title(f"{result.model_name or result.model_uri} v{result.model_version or '-'}: {result.verdict}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    target = Path(folder) / "log_px_histogram.png"
    figure.savefig(target)
    plt.close(figure)
    return target


def metrics_of(result: DriftResult) -> dict[str, float]:
    """The numbers of a check as MLflow metrics."""
    numbers = {k: float(v) for k, v in result.statistics.items() if isinstance(v, (int, float))}
    return {
        **numbers,
        "reference_mean_log_px": result.reference["mean_log_px"],
        "new_mean_log_px": result.new["mean_log_px"],
        "reference_bits_per_dim": result.reference["bits_per_dim"],
        "new_bits_per_dim": result.new["bits_per_dim"],
        "reference_n": float(result.reference["n"]),
        "new_n": float(result.new["n"]),
        "drift": float(result.drift),
        "seconds": result.seconds,
    }


def log_check(result: DriftResult, experiment: str | None = None) -> str:
    """Record a check as an MLflow run of EXPERIMENT (default MODEL_NAME-drift): tags with the verdict and
    lineage, params, metrics, and the output, its histogram and its summary as artifacts; returns the run id.

    vae.registry.runs offers no run without a pipeline config, so the run is created here with its client.
    """
    from vae.registry import runs
    from vae.paths import artifacts_uri, tracking_uri

    client = runs.client()
    name = experiment or f"{result.model_name or 'vae'}-drift"
    found = client.get_experiment_by_name(name)
    if found is None:
        local = tracking_uri().startswith("sqlite:")
        experiment_id = client.create_experiment(name, artifact_location=artifacts_uri(name) if local else None)
    else:
        experiment_id = found.experiment_id
    tags = {
        "verdict": result.verdict,
        "model_uri": result.model_uri,
        "model_name": result.model_name or "",
        "model_version": result.model_version or "",
        "reference_hash": result.reference["content_hash"],
        "new_hash": result.new["content_hash"],
        "reference_dataset": f"{result.reference['dataset']}@{result.reference['version']}",
        "new_dataset": f"{result.new['dataset']}@{result.new['version']}",
        "code_version": runs.code_version(),
    }
    run = client.create_run(experiment_id, run_name=f"drift-{result.new['dataset']}-{result.new['version']}", tags=tags)
    run_id = run.info.run_id
    params = {
        "k": result.k,
        "seed": result.seed,
        "ood_method": result.statistics["ood_method"],
        "reference_splits": "+".join(result.reference["splits"]),
        "new_splits": "+".join(result.new["splits"]),
        **result.settings,
    }
    for key, value in params.items():
        client.log_param(run_id, key, str(value))
    runs.log_metrics(run_id, metrics_of(result))
    with tempfile.TemporaryDirectory(prefix="vae-drift-") as folder:
        summary = Path(folder) / "drift.json"
        summary.write_text(json.dumps(result.to_dict(), indent=2))
        plot = plot_histograms(result.path, folder)
        runs.log_artifacts(run_id, [(result.path, "drift"), (plot, "drift"), (summary, "drift")])
    runs.end_run(run_id)
    return run_id
