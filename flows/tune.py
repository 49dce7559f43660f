"""`tune/NAME`: Ray Tune over a pipeline's `search:` section; the best trial goes through the champion gate."""

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.ingest import ingest_flow
from vae import config
from vae.tune import search as tuning
from vae.data.datasets import DatasetRef
from vae.errors import ConfigError


@task(name="tune", cache_policy=NO_CACHE)  # no retries: `resume` continues an interrupted search instead
def tune_task(settings: config.PipelineConfig, dataset: DatasetRef, trials: int | None, max_minutes: float | None,
              resume: bool) -> dict:  # fmt: skip
    return tuning.search(settings, dataset, trials=trials, max_minutes=max_minutes, resume=resume).to_dict()


@flow(name="tune")
def tune_flow(
    pipeline: str,
    pipelines_file: str = config.DEFAULT_PIPELINES_FILE,
    trials: int | None = None,
    max_minutes: float | None = None,
    resume: bool = False,
) -> dict:
    """Ingest the pipeline's data, search its `search:` space, register the best trial through the gate."""
    settings = config.load_pipeline(pipeline, pipelines_file)
    if settings.search is None:
        raise ConfigError(f"{pipelines_file}: pipeline '{pipeline}' has no 'search:' section")
    dataset = ingest_flow(settings)
    return tune_task(settings, dataset, trials, max_minutes, resume)
