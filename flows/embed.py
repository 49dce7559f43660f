"""Batch embedding: encode a pipeline's dataset with its champion (or another alias) into Parquet.

Deployed as 'embed/NAME': on a schedule it re-embeds whenever the alias points at a model
version that has not been embedded yet, and says so when there is nothing new.
"""

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from flows.ingest import ingest_flow
from vae import config, embedding, paths, registry


@task(name="resolve-model", retries=3, retry_delay_seconds=exponential_backoff(2))
def resolve_task(model_uri: str) -> tuple[str | None, str | None]:
    return registry.resolve_model_version(model_uri)


@task(name="embed")
def embed_task(model_uri: str, dataset_path: str, out: str, settings: config.EmbeddingConfig, overwrite: bool) -> dict:
    return embedding.embed(
        model_uri,
        dataset_path,
        out,
        splits=settings.splits,
        workers=settings.workers,
        batch_size=settings.batch_size,
        overwrite=overwrite,
    ).to_dict()


@flow(name="embed")
def embed_flow(
    pipeline: str,
    pipelines_file: str = config.DEFAULT_PIPELINES_FILE,
    model_uri: str | None = None,
    out: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Embed the pipeline's (freshly ingested) dataset; returns the output path and what was encoded.

    Default model: models:/MODEL@ALIAS from the pipeline's registry and embedding settings.
    Default output: VAE_HOME/embeddings/DATASET/MODEL-vVERSION-DATASETVERSION.parquet.
    """
    settings = config.load_pipeline(pipeline, pipelines_file)
    model_uri = model_uri or f"models:/{settings.registry.model_name}@{settings.embedding.model_alias}"
    dataset = ingest_flow(settings).to_dict()
    name, version = resolve_task(model_uri)
    if out is None:
        folder = paths.embeddings_dir() / dataset["name"]
        folder.mkdir(parents=True, exist_ok=True)
        out = str(folder / f"{name or 'model'}-v{version or 'x'}-{dataset['version']}.parquet")
        if Path(out).exists() and not overwrite:
            message = (
                f"{model_uri} (version {version}) has already embedded {dataset['name']}@{dataset['version']}: {out}"
            )
            print(message, flush=True)
            get_run_logger().info(message)
            return {"path": out, "model_uri": model_uri, "model_version": version, "skipped": True}
    result = embed_task(model_uri, dataset["path"], out, settings.embedding, overwrite)
    message = (
        f"embedded {result['rows']} rows of {dataset['name']}@{dataset['version']} with {model_uri} "
        f"(version {version}) → {result['path']}"
    )
    print(message, flush=True)
    get_run_logger().info(message)
    return {**result, "skipped": False}
