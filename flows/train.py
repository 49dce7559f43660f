"""Stage 2: fit the VAE with Ray Train; returns the MLflow run id and the checkpoint directory.

Training is cached on the dataset's content hash and the model and training settings: a
scheduled retrain on unchanged data reuses the finished run (and says so), and a flow that
crashed after training reruns without training again (results are persisted by Prefect).
"""

import hashlib
import json

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from flows.results import cached
from vae import config, registry, training
from vae import paths
from vae.datasets import DatasetRef


# MLflow runs this process started or continued; an interrupt marks those still RUNNING as KILLED.
ACTIVE_RUNS: set[str] = set()


def training_key(context, parameters: dict) -> str:
    """Same data content, same settings, same worker layout → the same training result."""
    settings: config.PipelineConfig = parameters["settings"]
    identity = {
        "pipeline": settings.name, "content_hash": parameters["dataset"]["content_hash"],
        "model": settings.model.model_dump(mode="json"), "training": settings.training.model_dump(mode="json"),
        "binarize": settings.dataset.binarize, "workers": parameters.get("workers"), "gpu": parameters.get("gpu"),
        "run_id": parameters.get("run_id"),
    }
    return "train-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


@task(name="start-mlflow-run", **cached(training_key), retries=3, retry_delay_seconds=exponential_backoff(2))
def start_run_task(settings: config.PipelineConfig, dataset: dict[str, str], workers: int | None,
                   gpu: bool | None) -> str:
    return registry.start_run(settings, dataset)


@task(name="train", **cached(training_key))  # no retries: a diverged run must not be silently rerun
def train_task(settings: config.PipelineConfig, dataset: dict[str, str], run_id: str, workers: int | None,
               gpu: bool | None, resume: bool) -> dict:
    try:
        uri = paths.tracking_uri()
        result = training.train(settings, DatasetRef(**dataset), run_id=run_id, workers=workers, use_gpu=gpu,
                                resume=resume, on_epoch=lambda metrics: registry.log_epoch_metrics(
                                    uri, run_id, metrics, step=int(metrics["epoch"])))
    except Exception:
        registry.end_run(run_id, "FAILED")
        raise
    return {"checkpoint": result.checkpoint, "epochs": result.epochs, "history": result.history}


@flow(name="train")
def train_flow(
    pipeline: str, dataset: dict[str, str], pipelines_file: str = config.DEFAULT_PIPELINES_FILE,
    workers: int | None = None, gpu: bool | None = None, resume: bool = False, force: bool = False,
    settings: config.PipelineConfig | None = None,
) -> dict:
    """Train on an ingested dataset; returns {run_id, checkpoint, epochs, history, reused}.

    `force` trains again even when a finished training of the same data and settings exists.
    """
    settings = settings or config.load_pipeline(pipeline, pipelines_file)
    fresh = force or resume
    run_id = start_run_task.with_options(refresh_cache=fresh)(settings, dataset, workers, gpu)
    if not registry.run_exists(run_id):  # the cached run was deleted from MLflow since
        run_id = start_run_task.with_options(refresh_cache=True)(settings, dataset, workers, gpu)
    ACTIVE_RUNS.add(run_id)  # `vae run` marks it KILLED if interrupted before it ends
    state = train_task.with_options(refresh_cache=fresh)(settings, dataset, run_id, workers, gpu, resume,
                                                        return_state=True)
    trained = state.result()
    if state.name == "Cached" and not training.is_checkpoint(trained["checkpoint"]):  # deleted since: train again
        state = train_task.with_options(refresh_cache=True)(settings, dataset, run_id, workers, gpu, resume,
                                                            return_state=True)
        trained = state.result()
    reused = state.name == "Cached"
    if reused:
        message = (f"dataset {dataset['name']}@{dataset['version']} and settings unchanged: reusing the finished "
                   f"training of MLflow run {run_id} (pass --force to train again)")
        print(message, flush=True)  # the terminal of `vae run`
        get_run_logger().info(message)  # the flow run's log in Prefect
    return {"run_id": run_id, **trained, "reused": reused}
