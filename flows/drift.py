"""Drift check 'drift/NAME': the champion (or another alias) scores the pipeline's reference split and the new
data of its `drift:` section, tests whether the new data is typical (vae.jobs.drift), records the check in MLflow and
on the flow run's page, and FAILS the flow run when drift is detected. Unchanged inputs (the same model version,
dataset versions and protocol) are not scored again: the stored verdict stands, and fails the run again.
"""

import base64
import re
import tempfile
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

from flows.artifacts import say
from flows.embed import resolve_task
from flows.ingest import ingest_flow, ingest_task
from flows.results import run_cached
from vae import config
from vae.jobs import drift
from vae.registry import runs
from vae.data.datasets import is_ingested
from vae.errors import ConfigError, VAEError


class DriftDetected(VAEError):
    """The new data failed the drift check: the flow run ends Failed with the verdict as its message."""


@task(name="drift-check")
def check_task(model_uri: str, reference: str, new: str, settings: config.DriftConfig, out: str, overwrite: bool):
    return drift.check_drift(model_uri, reference, new, settings, out, overwrite=overwrite).to_dict()


@task(name="log-drift", retries=3, retry_delay_seconds=exponential_backoff(2))
def log_task(path: str, experiment: str | None) -> str:
    return drift.log_check(drift.read_result(path), experiment)


@task(name="publish-drift-artifacts", retries=2, retry_delay_seconds=exponential_backoff(2))
def publish_task(pipeline: str, result: dict, run_id: str) -> None:
    """The verdict as a table, the log p̂(x) histograms (reference vs new) and a link to the MLflow run."""
    key = "drift-" + (re.sub(r"[^a-z0-9-]+", "-", pipeline.lower()).strip("-") or "pipeline")
    s, ref, new = result["statistics"], result["reference"], result["new"]
    rows = [
        {"quantity": "verdict", "value": "DRIFT: " + "; ".join(result["reasons"]) if result["drift"] else "no drift"},
        *({"quantity": f"{role} data", "value": f"{side['dataset']}@{side['version']}:{'+'.join(side['splits'])}, "
           f"{side['n']} rows, mean log p̂(x) {side['mean_log_px']:.3f} nats ({side['bits_per_dim']:.4f} bits/dim)"}
          for role, side in (("reference", ref), ("new", new))),
        {"quantity": "typicality |mean -log p̂(x) - Ĥ_ref|",
         "value": f"{s['typicality_statistic']:.3f} nats (threshold {s['typicality_threshold']:.3f}, p = {s['typicality_p_value']:.3g})"},
        {"quantity": "KS test on log p̂(x)", "value": f"D = {s['ks_statistic']:.3f}, p = {s['ks_p_value']:.3g}"},
        {"quantity": "new rows flagged OOD (typicality)", "value": f"{s['new_ood_fraction']:.1%} (reference {s['reference_ood_fraction']:.1%})"},
        {"quantity": "model", "value": f"{result['model_uri']} (version {result['model_version']}), k={result['k']}"},
    ]  # fmt: skip
    create_table_artifact(key=f"{key}-verdict", table=rows, description=f"Drift check of {result['path']}")
    with tempfile.TemporaryDirectory(prefix="vae-drift-") as folder:
        png = base64.b64encode(drift.plot_histograms(result["path"], folder).read_bytes()).decode()
    markdown = f"### log p̂(x), reference vs new\n\n![log p(x) histograms](data:image/png;base64,{png})\n"
    create_markdown_artifact(key=f"{key}-histogram", markdown=markdown, description="log p̂(x) histograms")
    create_link_artifact(key=f"{key}-mlflow-run", link=runs.run_link(run_id), link_text=f"MLflow run {run_id}")


@flow(name="drift")
def drift_flow(pipeline: str, pipelines_file: str = config.DEFAULT_PIPELINES_FILE, model_uri: str | None = None,
               out: str | None = None, overwrite: bool = False) -> dict:  # fmt: skip
    """Check the pipeline's new data against its reference split; raises DriftDetected (run Failed) on drift.

    Default model: models:/MODEL@ALIAS from the registry section and drift.model_alias.
    Default output: VAE_HOME/drift/NEW/MODEL-vVERSION-REF-SPLITS-NEW-SPLITS-kK-seedS.parquet.
    """
    settings = config.load_pipeline(pipeline, pipelines_file)
    job = settings.drift
    if job is None:
        raise ConfigError(f"{pipelines_file}: pipeline '{pipeline}' has no drift: section")
    model_uri = model_uri or f"models:/{settings.registry.model_name}@{job.model_alias}"
    reference = f"{ingest_flow(settings).path}:{job.reference_split}"
    new = (
        job.dataset or run_cached(ingest_task, job.ingest, still_valid=lambda ref: is_ingested(ref["path"]))[0]["path"]
    )
    name, version = resolve_task(model_uri)
    skip = False
    if out is None:  # one file per model version, dataset versions and protocol: a rerun on the same skips
        sides = (
            drift.resolve_side(reference, "reference", "drift.reference_split", ("test",)),
            drift.resolve_side(new, "new", "drift.dataset", None),
        )
        out = str(drift.default_output(name, version, *sides, job))
        skip = Path(out).exists() and not overwrite
    if skip:
        result, run_id = drift.read_result(out).to_dict(), None
        say(f"already checked {result['new']['dataset']}@{result['new']['version']} with {model_uri}: {out}")
    else:
        result = check_task(model_uri, reference, new, job, out, overwrite)
        run_id = log_task(result["path"], job.experiment)
        publish_task(pipeline, result, run_id)
    verdict = "DRIFT: " + "; ".join(result["reasons"]) if result["drift"] else "no drift"
    checked = f"{result['new']['dataset']}@{result['new']['version']}"
    say(f"drift check of {checked} by {model_uri} (version {version}): {verdict}")
    if result["drift"]:
        raise DriftDetected(f"drift detected in {checked}: {verdict}")
    return {**result, "mlflow_run_id": run_id, "skipped": run_id is None}
