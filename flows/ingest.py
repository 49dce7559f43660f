"""Stage 1: a dataset source → versioned Parquet splits; returns a dataset reference."""

from prefect import flow, task

from flows.results import cached
from vae import config
from vae.datasets import is_ingested
from vae.ingest import cache_key, ingest
from vae.sources import DownloadError


def _source_content(context, parameters: dict) -> str | None:
    """Cache key: the dataset version the source's content (streamed through sha256) would give."""
    return cache_key(parameters["dataset"])


def _transient_download_failure(task, task_run, state) -> bool:
    """Retry downloads that timed out or met a server error; bad data fails at once."""
    return isinstance(state.data, DownloadError) and state.data.transient


@task(name="ingest", **cached(_source_content), retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=_transient_download_failure)
def ingest_task(dataset: config.DatasetConfig) -> dict[str, str]:
    return ingest(dataset).to_dict()


@flow(name="ingest")
def ingest_flow(pipeline: str, pipelines_file: str = config.DEFAULT_PIPELINES_FILE,
                settings: config.PipelineConfig | None = None) -> dict[str, str]:
    """Ingest the pipeline's dataset; returns {name, version, path, content_hash}."""
    dataset = (settings or config.load_pipeline(pipeline, pipelines_file)).dataset
    ref = ingest_task(dataset)
    if not is_ingested(ref["path"]):  # a cached reference to a version deleted since: convert again
        ref = ingest_task.with_options(refresh_cache=True)(dataset)
    return ref
