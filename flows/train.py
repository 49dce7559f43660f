"""Stage 2: fit the VAE with Ray Train; returns the MLflow run, the checkpoint and its history.

Training is cached on the dataset's content hash and the model and training settings: a
scheduled retrain on unchanged data reuses the finished run (and says so), and a flow that
crashed after training reruns without training again (results are persisted by Prefect).
"""

import hashlib
import json

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from flows.results import cached, run_cached
from vae import paths, registry, training
from vae.config import PipelineConfig
from vae.datasets import DatasetRef

# MLflow runs this process started or continued; an interrupt marks those still RUNNING as KILLED.
ACTIVE_RUNS: set[str] = set()


def training_key(context, parameters: dict) -> str:
    """Same data content, same settings, same worker layout → the same training result."""
    settings: PipelineConfig = parameters["settings"]
    identity = {
        "pipeline": settings.name,
        "content_hash": parameters["dataset"].content_hash,
        "model": settings.model.model_dump(mode="json"),
        "training": settings.training.model_dump(mode="json"),
        "binarize": settings.dataset.binarize,
        "workers": parameters.get("workers"),
        "gpu": parameters.get("gpu"),
        "run_id": parameters.get("run_id"),
    }
    return "train-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


@task(name="start-mlflow-run", **cached(training_key), retries=3, retry_delay_seconds=exponential_backoff(2))
def start_run_task(settings: PipelineConfig, dataset: DatasetRef, workers: int | None, gpu: bool | None) -> str:
    return registry.start_run(settings, dataset.to_dict())


@task(name="train", **cached(training_key))  # no retries: a diverged run must not be silently rerun
def train_task(
    settings: PipelineConfig, dataset: DatasetRef, run_id: str, workers: int | None, gpu: bool | None, resume: bool
) -> dict:
    uri = paths.tracking_uri()
    try:
        result = training.train(
            settings,
            dataset,
            run_id=run_id,
            workers=workers,
            use_gpu=gpu,
            resume=resume,
            on_epoch=lambda metrics: registry.log_epoch_metrics(uri, run_id, metrics, step=int(metrics["epoch"])),
        )
    except Exception:
        registry.end_run(run_id, "FAILED")
        raise
    return {"checkpoint": result.checkpoint, "epochs": result.epochs, "history": result.history}


@flow(name="train")
def train_flow(
    settings: PipelineConfig,
    dataset: DatasetRef,
    workers: int | None = None,
    gpu: bool | None = None,
    resume: bool = False,
    force: bool = False,
) -> training.TrainingRun:
    """Train on an ingested dataset; `force` trains again even when the same training exists."""
    fresh = force or resume
    run_id, _ = run_cached(
        start_run_task, settings, dataset, workers, gpu, force=fresh, still_valid=registry.run_exists
    )
    ACTIVE_RUNS.add(run_id)  # `vae run` marks it KILLED if interrupted before it ends
    trained, reused = run_cached(
        train_task,
        settings,
        dataset,
        run_id,
        workers,
        gpu,
        resume,
        force=fresh,
        still_valid=lambda done: training.is_checkpoint(done["checkpoint"]),
    )
    if reused:
        message = (
            f"dataset {dataset.name}@{dataset.version} and settings unchanged: reusing the finished "
            f"training of MLflow run {run_id} (pass --force to train again)"
        )
        print(message, flush=True)  # the terminal of `vae run`
        get_run_logger().info(message)  # the flow run's log in Prefect
    return training.TrainingRun(run_id=run_id, reused=reused, **trained)
