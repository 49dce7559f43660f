"""Batch embedding: encode a pipeline's dataset with its champion (or another alias) into Parquet.

Deployed as 'embed/NAME': on a schedule it re-embeds whenever the alias points at a model
version that has not been embedded yet, and says so when there is nothing new.
"""

from pathlib import Path

from prefect import flow, task
from prefect.tasks import exponential_backoff

from flows.artifacts import say
from flows.ingest import ingest_flow
from vae import config
from vae.jobs import embedding
from vae.registry import versions


@task(name="resolve-model", retries=3, retry_delay_seconds=exponential_backoff(2))
def resolve_task(model_uri: str) -> tuple[str | None, str | None]:
    return versions.resolve_model_version(model_uri)


@task(name="embed")
def embed_task(model_uri: str, dataset_path: str, out: str, settings: config.EmbeddingConfig, overwrite: bool) -> dict:
    options = settings.model_dump(include={"splits", "workers", "batch_size"})
    return embedding.embed(model_uri, dataset_path, out, overwrite=overwrite, **options).to_dict()


@flow(name="embed")
def embed_flow(pipeline: str, pipelines_file: str = config.DEFAULT_PIPELINES_FILE, model_uri: str | None = None,
               out: str | None = None, overwrite: bool = False) -> dict:  # fmt: skip
    """Embed the pipeline's (freshly ingested) dataset; returns the output path and what was encoded.

    Default model: models:/MODEL@ALIAS from the pipeline's registry and embedding settings.
    Default output: VAE_HOME/embeddings/DATASET/MODEL-vVERSION-DATASETVERSION.parquet.
    """
    settings = config.load_pipeline(pipeline, pipelines_file)
    model_uri = model_uri or f"models:/{settings.registry.model_name}@{settings.embedding.model_alias}"
    dataset = ingest_flow(settings)
    name, version = resolve_task(model_uri)
    described = f"{dataset.name}@{dataset.version} with {model_uri} (version {version})"
    if out is None:
        out = str(embedding.default_output(dataset.name, dataset.version, name, version))
        if Path(out).exists() and not overwrite:
            say(f"already embedded {described}: {out}")
            return {"path": out, "model_uri": model_uri, "model_version": version, "skipped": True}
    result = embed_task(model_uri, dataset.path, out, settings.embedding, overwrite)
    say(f"embedded {result['rows']} rows of {described} → {result['path']}")
    return {**result, "skipped": False}
