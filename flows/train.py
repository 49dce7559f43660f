"""Stage 2: fit the VAE with Ray Train; returns the MLflow run id and the checkpoint directory."""

from prefect import flow, task

from vae import config, registry, training
from vae.data import DatasetRef


@task(name="start-mlflow-run", retries=2, retry_delay_seconds=[2, 10])
def start_run_task(pipeline: config.PipelineConfig, dataset: dict[str, str]) -> str:
    return registry.start_run(pipeline, dataset)


@task(name="train")  # no retries: a diverged run must not be silently rerun
def train_task(pipeline: config.PipelineConfig, dataset: dict[str, str], run_id: str, workers: int | None,
               gpu: bool | None, resume: bool) -> dict:
    try:
        result = training.train(pipeline, DatasetRef(**dataset), run_id=run_id, tracking_uri=config.tracking_uri(),
                                workers=workers, use_gpu=gpu, resume=resume)
    except Exception:
        registry.end_run(run_id, "FAILED")
        raise
    return {"checkpoint": result.checkpoint, "epochs": result.epochs, "history": result.history}


@flow(name="train")
def train_flow(
    pipeline: str, dataset: dict[str, str], pipelines_file: str = config.DEFAULT_PIPELINES_FILE,
    workers: int | None = None, gpu: bool | None = None, resume: bool = False,
) -> dict:
    """Train on an ingested dataset; returns {run_id, checkpoint, epochs, history}."""
    settings = config.load_pipeline(pipeline, pipelines_file)
    run_id = start_run_task(settings, dataset)
    return {"run_id": run_id, **train_task(settings, dataset, run_id, workers, gpu, resume)}
