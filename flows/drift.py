"""Drift check 'drift/NAME': the champion (or another alias) scores the reference split and the new data of the
`drift:` section (vae.jobs.drift), records the check in MLflow and on the flow run's page, and FAILS the flow run on
drift. Unchanged inputs (model version, dataset versions, protocol) are not scored again: the stored verdict stands."""

from pathlib import Path

from prefect import flow, task
from prefect.tasks import exponential_backoff

from flows.artifacts import publish_drift, say
from flows.embed import resolve_task
from flows.ingest import ingest_flow, ingest_task
from flows.results import run_cached
from vae import config
from vae.data.datasets import is_ingested
from vae.errors import ConfigError, VAEError
from vae.jobs import drift, drift_report


class DriftDetected(VAEError):
    """The new data failed the drift check: the flow run ends Failed with the verdict as its message."""


@task(name="drift-check")
def check_task(model_uri: str, reference: str, new: str, settings: config.DriftConfig, out: str, overwrite: bool):
    return drift.check_drift(model_uri, reference, new, settings, out, overwrite=overwrite).to_dict()


@task(name="log-drift", retries=3, retry_delay_seconds=exponential_backoff(2))
def log_task(path: str, experiment: str | None) -> str:
    return drift_report.log_check(drift.read_result(path), experiment)


@flow(name="drift")
def drift_flow(pipeline: str, pipelines_file: str = config.DEFAULT_PIPELINES_FILE, model_uri: str | None = None,
               out: str | None = None, overwrite: bool = False) -> dict:  # fmt: skip
    """Check the pipeline's new data against its reference split; raises DriftDetected (run Failed) on drift.
    Default model: models:/MODEL@ALIAS from the registry section and drift.model_alias; default output:
    VAE_HOME/drift/NEW/MODEL-vVERSION-REF-SPLITS-NEW-SPLITS-kK-seedS.parquet (a rerun on the same skips)."""
    settings = config.load_pipeline(pipeline, pipelines_file)
    if (job := settings.drift) is None:
        raise ConfigError(f"{pipelines_file}: pipeline '{pipeline}' has no drift: section")
    model_uri = model_uri or f"models:/{settings.registry.model_name}@{job.model_alias}"
    reference = f"{ingest_flow(settings).path}:{job.reference_split}"
    new = job.dataset or run_cached(ingest_task, job.ingest, still_valid=lambda r: is_ingested(r["path"]))[0]["path"]
    name, version = resolve_task(model_uri)
    planned = out is None
    out = out or str(drift_report.planned_output(name, version, reference, new, job))
    if planned and Path(out).exists() and not overwrite:
        result, run_id = drift.read_result(out).to_dict(), None
        say(f"already checked {result['new']['dataset']}@{result['new']['version']} with {model_uri}: {out}")
    else:
        result = check_task(model_uri, reference, new, job, out, overwrite)
        publish_drift(pipeline, result, run_id := log_task(result["path"], job.experiment))
    checked = f"{result['new']['dataset']}@{result['new']['version']}"
    say(f"drift check of {checked} by {model_uri} (version {version}): {drift_report.verdict(result)}")
    if result["drift"]:
        raise DriftDetected(f"drift detected in {checked}: {drift_report.verdict(result)}")
    return {**result, "mlflow_run_id": run_id, "skipped": run_id is None}
