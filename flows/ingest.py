"""Stage 1: a dataset source → versioned Parquet splits; returns a dataset reference."""

from prefect import flow, task

from flows.results import cached, run_cached
from vae.config import DatasetConfig, PipelineConfig
from vae.data.datasets import DatasetRef, is_ingested
from vae.data.ingest import cache_key, ingest
from vae.data.sources import DownloadError


def _source_content(context, parameters: dict) -> str | None:
    """Cache key: the dataset version the source's content (streamed through sha256) would give."""
    return cache_key(parameters["dataset"])


def _transient_download_failure(task, task_run, state) -> bool:
    """Retry downloads that timed out or met a server error; bad data fails at once."""
    return isinstance(state.data, DownloadError) and state.data.transient


@task(
    name="ingest",
    **cached(_source_content),
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_transient_download_failure,
)
def ingest_task(dataset: DatasetConfig) -> dict[str, str]:
    return ingest(dataset).to_dict()


@flow(name="ingest")
def ingest_flow(settings: PipelineConfig) -> DatasetRef:
    """Ingest the pipeline's dataset (a cached version whose files are gone is converted again)."""
    ref, _ = run_cached(ingest_task, settings.dataset, still_valid=lambda ref: is_ingested(ref["path"]))
    return DatasetRef(**ref)
