"""Stage 4: log the run's record and the model to MLflow, register a version, apply the champion gate."""

from prefect import flow, task
from prefect.tasks import exponential_backoff

from vae.registry import registration
from vae.registry import runs, versions
from vae.config import PipelineConfig
from vae.data.datasets import DatasetRef
from vae.evaluate.evaluation import EvaluationSummary
from vae.train.driver import TrainingRun


# Registry calls are I/O: retried with backoff. Registering is idempotent per MLflow run, so a
# retry (or a rerun of a crashed flow) never registers a second version of the same training.
def _transient_registry_failure(task, task_run, state) -> bool:
    """Retry lost connections and 5xx; a name the registry refuses fails at once (nothing logged twice)."""
    return runs.is_transient(state.result(raise_on_failure=False))


@task(
    name="register",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=_transient_registry_failure,
)
def register_task(
    settings: PipelineConfig,
    run_id: str,
    checkpoint: str,
    evaluation: dict,
    dataset: dict[str, str],
    history: list[dict],
) -> dict:
    return registration.register_run(settings, run_id, checkpoint, evaluation, dataset, history).to_dict()


@flow(name="register")
def register_flow(
    settings: PipelineConfig, trained: TrainingRun, summary: EvaluationSummary, dataset: DatasetRef
) -> versions.Registration:
    """Register the trained model; `champion` moves only if its held-out NLL is better."""
    done = register_task(
        settings, trained.run_id, trained.checkpoint, summary.to_dict(), dataset.to_dict(), trained.history
    )
    return versions.Registration(**done)
