"""Stage 1: a dataset source → versioned Parquet splits; returns a dataset reference."""

from prefect import flow, task

from vae import config, data


@task(name="ingest", retries=2, retry_delay_seconds=[2, 10])  # I/O: sources may be remote
def ingest_task(dataset: config.DatasetConfig) -> dict[str, str]:
    return data.ingest(dataset).to_dict()


@flow(name="ingest")
def ingest_flow(pipeline: str, pipelines_file: str = config.DEFAULT_PIPELINES_FILE) -> dict[str, str]:
    """Ingest the pipeline's dataset; returns {name, version, path, content_hash}."""
    return ingest_task(config.load_pipeline(pipeline, pipelines_file).dataset)
