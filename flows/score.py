"""Batch scoring: per-example log p̂(x) of a pipeline's dataset under its champion (or another alias).

Deployed as 'score/NAME' when the pipeline has a `score:` section: on a schedule it scores the
freshly ingested dataset whenever the alias points at a version not yet scored with these k and seed.
"""

from pathlib import Path

from prefect import flow, task

from flows.artifacts import say
from flows.embed import resolve_task
from flows.ingest import ingest_flow
from vae import config
from vae.jobs import scoring


@task(name="score")
def score_task(model_uri: str, dataset_path: str, out: str, settings: config.ScoreConfig, overwrite: bool) -> dict:
    return scoring.score(model_uri, dataset_path, out, settings, overwrite=overwrite).to_dict()


@flow(name="score")
def score_flow(pipeline: str, pipelines_file: str = config.DEFAULT_PIPELINES_FILE, model_uri: str | None = None,
               out: str | None = None, overwrite: bool = False) -> dict:  # fmt: skip
    """Score the pipeline's (freshly ingested) dataset; returns the output path and what was scored.

    Default model: models:/MODEL@ALIAS from the pipeline's registry and score settings.
    Default output: VAE_HOME/scores/DATASET/MODEL-vVERSION-DATASETVERSION-kK-seedS.parquet.
    """
    settings = config.load_pipeline(pipeline, pipelines_file)
    job = settings.score or config.ScoreConfig()
    model_uri = model_uri or f"models:/{settings.registry.model_name}@{job.model_alias}"
    dataset = ingest_flow(settings)
    name, version = resolve_task(model_uri)
    described = f"{dataset.name}@{dataset.version} with {model_uri} (version {version}, k={job.k}, seed {job.seed})"
    if out is None:
        out = str(scoring.default_output(dataset.name, dataset.version, name, version, job))
        if Path(out).exists() and not overwrite:
            say(f"already scored {described}: {out}")
            return {"path": out, "model_uri": model_uri, "model_version": version, "skipped": True}
    result = score_task(model_uri, dataset.path, out, job, overwrite)
    say(f"scored {result['rows']} rows of {described} → {result['path']}")
    return {**result, "skipped": False}
