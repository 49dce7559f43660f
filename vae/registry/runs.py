"""MLflow runs: the one home of the MLflow client, a pipeline's run (and a search's parent and trial
runs) with its params, tags, metrics and artifacts, how runs end, and which registry failures are
worth retrying.

A pipeline run is one MLflow run; its model version is logged and registered by vae.registry.versions.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    REQUEST_LIMIT_EXCEEDED,
    TEMPORARILY_UNAVAILABLE,
    ErrorCode,
)

import vae
from vae.config import PipelineConfig
from vae.errors import RegistryError
from vae.paths import artifacts_uri, tracking_uri


def quiet_logs() -> None:
    """MLflow's, alembic's (the store's migrations) and urllib3's loggers: warnings only."""
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


# Held while a thread prepares the store (`prepare_store_in_background`): a client made meanwhile, in
# any thread, waits for it, since two first connections to a new sqlite store would both create its tables.
_PREPARING = threading.Lock()


def prepare_store_in_background(uri: str | None = None) -> None:
    """Open (and for a new sqlite store, create and migrate) the tracking store in a thread of its own, as
    the first client call would, quietly and without touching the process's MLflow settings (`vae run`
    does it while the flow ingests: ~1 s, mostly importing the SQLAlchemy store). `client()` waits for it;
    a failure here is left for the first client call to meet again and report."""
    uri = uri or tracking_uri()
    if not uri.startswith("sqlite:"):
        return
    _PREPARING.acquire()  # here, not in the thread: a client made before the thread runs waits too

    def prepare() -> None:
        try:
            quiet_logs()
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception:  # noqa: BLE001 - the first client call meets it again and reports it
            pass
        finally:
            _PREPARING.release()

    threading.Thread(target=prepare, name="vae-mlflow-store", daemon=True).start()


def wait_for_store(timeout: float) -> None:
    """Return once no thread prepares the store (or after `timeout` seconds): a process that exits while
    a new store's tables are being created would leave it half-migrated."""
    if _PREPARING.acquire(timeout=timeout):
        _PREPARING.release()


def client(uri: str | None = None):
    """An MlflowClient on the tracking store (sqlite under VAE_HOME unless MLFLOW_TRACKING_URI is set)."""
    wait_for_store(timeout=120)
    quiet_logs()
    uri = uri or tracking_uri()
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # for the fluent API (log_model); it also exports the URI...
    mlflow.set_registry_uri(uri)
    if exported is None:  # ...which must not change where later calls of ours go by default
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def code_version() -> str:
    """The library version, plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parents[1],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{vae.__version__}+g{sha}"
    except (OSError, subprocess.SubprocessError):
        return vae.__version__


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, item, out)
    else:
        out[prefix] = str(value)


def _experiment_id(mlflow_client, name: str, local: bool) -> str:
    """Get or create the experiment; a concurrent pipeline may create it first, which is fine."""
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifacts_uri(name) if local else None)
    except MlflowException:
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def start_run(config: PipelineConfig, dataset: dict[str, str], uri: str | None = None) -> str:
    """Create the pipeline's MLflow run with its params; returns the run id."""
    mlflow_client = client(uri)
    experiment_id = _experiment_id(mlflow_client, config.experiment, (uri or tracking_uri()).startswith("sqlite:"))
    params: dict[str, str] = {}
    # The search section shapes `vae tune`, not this training (and would push past 100 params a batch).
    _flatten("", config.model_dump(mode="json", exclude={"name", "search"}), params)
    run = mlflow_client.create_run(
        experiment_id,
        run_name=f"{config.name}-{dataset['version']}",
        tags={
            "pipeline": config.name,
            "dataset_hash": dataset["content_hash"],
            "dataset_version": dataset["version"],
            "code_version": code_version(),
        },
    )
    mlflow_client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in sorted(params.items())])
    return run.info.run_id


def start_search_run(
    config: PipelineConfig, dataset: dict[str, str], search: dict[str, Any], uri: str | None = None
) -> str:
    """The parent run of a hyperparameter search: the pipeline's params plus `search.*`; returns its id."""
    run_id = start_run(config, dataset, uri)
    params: dict[str, str] = {}
    _flatten("search", search, params)
    mlflow_client = client(uri)
    batch = [Param(k, v[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(batch), 100):  # MLflow takes at most 100 params a batch
        mlflow_client.log_batch(run_id, params=batch[start : start + 100])
    mlflow_client.set_tag(run_id, "mlflow.runName", f"{config.name}-search-{dataset['version']}")
    mlflow_client.set_tag(run_id, "search", "parent")
    return run_id


def start_trial_run(
    config: PipelineConfig, dataset: dict[str, str], parent_run_id: str, trial_id: str, uri: str | None = None
) -> str:
    """A trial's child run (MLflow's `mlflow.parentRunId` tag) with the trial's params; a resumed
    search reopens the run its trial already has instead of starting a second one."""
    mlflow_client = client(uri)
    experiment_id = mlflow_client.get_run(parent_run_id).info.experiment_id
    found = mlflow_client.search_runs(
        [experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.trial_id = '{trial_id}'",
        max_results=1,
    )
    if found:
        mlflow_client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run_id = start_run(config, dataset, uri)
    for key, value in (("mlflow.parentRunId", parent_run_id), ("trial_id", trial_id), ("search", "trial")):
        mlflow_client.set_tag(run_id, key, value)
    mlflow_client.set_tag(run_id, "mlflow.runName", f"{config.name}-trial-{trial_id}")
    return run_id


SEARCH_PAGE = 1000  # MLflow's own page size for searches


def _every_page(search, **arguments) -> list:
    """Every result of an MLflow search, page by page (one call returns at most a page)."""
    found, token = [], None
    while True:
        page = search(max_results=SEARCH_PAGE, page_token=token, **arguments)
        found.extend(page)
        token = page.token
        if not token:
            return found


def child_runs(parent_run_id: str, uri: str | None = None) -> dict[str, str]:
    """The trials of a search: {trial_id: run_id} of the parent's child runs."""
    mlflow_client = client(uri)
    experiment_id = mlflow_client.get_run(parent_run_id).info.experiment_id
    children = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    runs = _every_page(mlflow_client.search_runs, experiment_ids=[experiment_id], filter_string=children)
    return {run.data.tags.get("trial_id", run.info.run_id): run.info.run_id for run in runs}


def ended_runs(run_ids: list[str], uri: str | None = None) -> list[str]:
    """Those of the runs that ended (FINISHED or FAILED): the trials a resumed search need not count again."""
    mlflow_client = client(uri)
    return [run_id for run_id in run_ids if mlflow_client.get_run(run_id).info.status in ("FINISHED", "FAILED")]


def set_tags(run_id: str, tags: dict[str, str], uri: str | None = None) -> None:
    mlflow_client = client(uri)
    for key, value in tags.items():
        mlflow_client.set_tag(run_id, key, str(value))


def reopen_run(run_id: str, uri: str | None = None) -> None:
    """Mark an interrupted run RUNNING again (a resumed search continues its parent run)."""
    client(uri).update_run(run_id, status="RUNNING")


def run_exists(run_id: str, uri: str | None = None) -> bool:
    """Whether the tracking store still holds the run (and it is not deleted)."""
    try:
        return client(uri).get_run(run_id).info.lifecycle_stage != "deleted"
    except MlflowException:
        return False


def run_link(run_id: str, uri: str | None = None) -> str:
    """A URL of the run in the MLflow UI (for a local store: where `mlflow ui` serves it)."""
    uri = uri or tracking_uri()
    experiment_id = client(uri).get_run(run_id).info.experiment_id
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def log_epoch_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Per-epoch metrics at step `step` (the pipeline passes this as training's on_epoch, on the driver)."""
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch" and math.isfinite(v)]
    client(uri).log_batch(run_id, metrics=batch)


def log_metrics(run_id: str, metrics: dict[str, float], uri: str | None = None) -> None:
    """Scalar metrics at step 0 (the evaluation summary); non-finite values are skipped."""
    now = int(time.time() * 1000)
    finite = sorted((k, float(v)) for k, v in metrics.items() if math.isfinite(float(v)))
    client(uri).log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in finite])


def log_artifacts(run_id: str, files: list[tuple[str | Path, str]], uri: str | None = None) -> None:
    """(local file, artifact folder) pairs logged to the run."""
    mlflow_client = client(uri)
    for path, folder in files:
        mlflow_client.log_artifact(run_id, str(path), folder)


def end_run(run_id: str, status: str = "FINISHED", uri: str | None = None) -> None:
    client(uri).set_terminated(run_id, status)


SESSION_TAG = "vae.session"  # the `vae run` process that opened or continued the run (its interrupt handler's key)


def claim_run(run_id: str, session: str | None, uri: str | None = None) -> None:
    """A `vae run` takes over its pipeline's MLflow run: tagged with its session token (what its interrupt
    handler looks for), and RUNNING again if an earlier interrupt or failure ended it (this run continues
    it: registration marks it FINISHED). A FINISHED run stays FINISHED."""
    mlflow_client = client(uri)
    if session:
        mlflow_client.set_tag(run_id, SESSION_TAG, session)
    if mlflow_client.get_run(run_id).info.status in ("KILLED", "FAILED"):
        mlflow_client.update_run(run_id, status="RUNNING")


def runs_of_session(session: str, uri: str | None = None) -> list[str]:
    """The runs a `vae run` process tagged with its session token that are RUNNING or FAILED: what its
    interrupt handler marks KILLED (kill_if_running decides each)."""
    mlflow_client = client(uri)
    experiments = [e.experiment_id for e in _every_page(mlflow_client.search_experiments)]
    if not experiments:
        return []
    unfinished = f"tags.`{SESSION_TAG}` = '{session}' and attributes.status != 'FINISHED'"
    found = _every_page(mlflow_client.search_runs, experiment_ids=experiments, filter_string=unfinished)
    return sorted(run.info.run_id for run in found)


def fail_if_running(run_id: str, uri: str | None = None) -> bool:
    """Mark a run whose training raised FAILED, unless it already ended: a run an interrupt handler
    marked KILLED meanwhile stays KILLED."""
    return _end_if_running(run_id, "FAILED", uri)


def kill_if_running(run_id: str, uri: str | None = None, failed_within: float | None = None) -> bool:
    """Mark an interrupted run KILLED (a run that finished before, e.g. a reused one, stays as it is).
    With `failed_within` (seconds), a run that FAILED that recently is taken to have failed from the
    interrupt itself and is marked KILLED too."""
    return _end_if_running(run_id, "KILLED", uri, failed_within)


def _end_if_running(run_id: str, status: str, uri: str | None, failed_within: float | None = None) -> bool:
    """End a RUNNING run (or one that FAILED within `failed_within` seconds) with `status`; True if it did."""
    mlflow_client = client(uri)
    info = mlflow_client.get_run(run_id).info
    recent_failure = (
        failed_within is not None
        and info.status == "FAILED"
        and info.end_time is not None
        and time.time() * 1000 - info.end_time <= failed_within * 1000
    )
    if info.status != "RUNNING" and not recent_failure:
        return False
    mlflow_client.set_terminated(run_id, status)
    return True


# Error codes that say "try again later"; every other MLflow error (a bad name, a missing
# resource, a permission) is permanent and retrying it would only repeat the side effects.
_TRANSIENT_CODES = {ErrorCode.Name(code) for code in (INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE, REQUEST_LIMIT_EXCEEDED)}


def is_transient(exc: BaseException) -> bool:
    """Whether a registry failure is worth retrying: lost connections and 5xx/429, not bad requests."""
    if isinstance(exc, RegistryError):
        return False
    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES
    return isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.startswith(("requests", "urllib3"))
