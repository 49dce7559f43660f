"""Stage 2: fit the VAE with Ray Train; returns the MLflow run, the checkpoint and its history. Cached
(flows/cache_keys.py): unchanged data and settings reuse the finished run and say so; a flow that crashed
after training reruns without training again."""

from prefect import flow, task
from prefect.tasks import exponential_backoff

from flows.artifacts import say
from flows.cache_keys import training_key
from flows.results import cached, run_cached
from vae import paths
from vae.registry import runs
from vae.train import checkpoints, checks, driver
from vae.config import PipelineConfig
from vae.data.datasets import DatasetRef


@task(name="start-mlflow-run", **cached(training_key), retries=3, retry_delay_seconds=exponential_backoff(2))
def start_run_task(settings: PipelineConfig, dataset: DatasetRef, workers: int | None, gpu: bool | None) -> str:
    return runs.start_run(settings, dataset.to_dict())


@task(name="claim-mlflow-run", retries=3, retry_delay_seconds=exponential_backoff(2))
def claim_task(run_id: str, session: str | None) -> None:
    runs.claim_run(run_id, session)


@task(name="train", **cached(training_key))  # no retries: a diverged run must not be silently rerun
def train_task(settings: PipelineConfig, dataset: DatasetRef, run_id: str, workers: int | None, gpu: bool | None,
               resume: bool) -> dict:  # fmt: skip
    uri = paths.tracking_uri()

    def log_epoch(metrics: dict) -> None:
        runs.log_epoch_metrics(uri, run_id, metrics, step=int(metrics["epoch"]))

    try:
        result = driver.train(settings, dataset, run_id=run_id, workers=workers, use_gpu=gpu, resume=resume,
                              on_epoch=log_epoch)  # fmt: skip
    except Exception:
        runs.fail_if_running(run_id)  # not a run `vae run`'s interrupt handler marked KILLED meanwhile
        raise
    return {"checkpoint": result.checkpoint, "epochs": result.epochs, "history": result.history}


@flow(name="train")
def train_flow(settings: PipelineConfig, dataset: DatasetRef, workers: int | None = None, gpu: bool | None = None,
               resume: bool = False, force: bool = False, session: str | None = None) -> driver.TrainingRun:  # fmt: skip
    """Train on an ingested dataset; `force` trains again even when the same training exists. `session`: the
    token `vae run` tags the MLflow run with, so that its interrupt handler can mark that run KILLED."""
    fresh = force or resume
    checks.check_inputs(settings, dataset)  # bad data or networks: one line, no MLflow run, no training
    run_id, _ = run_cached(start_run_task, settings, dataset, workers, gpu, force=fresh, still_valid=runs.run_exists)
    claim_task(run_id, session)  # KILLED by an interrupt before: RUNNING again, under this session's token
    arguments = (settings, dataset, run_id, workers, gpu, resume)
    trained, reused = run_cached(train_task, *arguments, force=fresh, still_valid=lambda done: checkpoints.is_checkpoint(done["checkpoint"]))  # fmt: skip
    if reused:
        message = (f"dataset {dataset.name}@{dataset.version} and settings unchanged: reusing the finished "
                   f"training of MLflow run {run_id} (pass --force to train again)")  # fmt: skip
        say(message)
    return driver.TrainingRun(run_id=run_id, reused=reused, **trained)
