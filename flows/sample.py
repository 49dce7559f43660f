"""Samples from the prior of a pipeline's champion (or another alias): a PNG grid or .npz arrays.

Deployed as 'sample/NAME' when the pipeline has a `sample:` section: on a schedule it draws the
configured samples whenever the alias points at a version not sampled yet with this n and seed.
"""

from pathlib import Path

from prefect import flow, task

from flows.artifacts import say
from flows.embed import resolve_task
from vae import config
from vae.jobs import sampling


@task(name="sample")
def sample_task(model_uri: str, out: str, settings: config.SampleConfig, overwrite: bool) -> dict:
    return sampling.sample(model_uri, out, settings.n, settings.seed, overwrite).to_dict()


@flow(name="sample")
def sample_flow(pipeline: str, pipelines_file: str = config.DEFAULT_PIPELINES_FILE, model_uri: str | None = None,
                out: str | None = None, overwrite: bool = False) -> dict:  # fmt: skip
    """Draw the pipeline's configured samples; returns the output path and what was drawn.

    Default model: models:/MODEL@ALIAS from the pipeline's registry and sample settings.
    Default output: VAE_HOME/samples/MODEL/MODEL-vVERSION-nN-seedS.FORMAT.
    """
    settings = config.load_pipeline(pipeline, pipelines_file)
    job = settings.sample or config.SampleConfig()
    model_uri = model_uri or f"models:/{settings.registry.model_name}@{job.model_alias}"
    name, version = resolve_task(model_uri)
    described = f"{job.n} samples (seed {job.seed}) of {model_uri} (version {version})"
    if out is None:
        out = str(sampling.default_output(name, version, job.n, job.seed, job.format))
        if Path(out).exists() and not overwrite:
            say(f"already drawn {described}: {out}")
            return {"path": out, "model_uri": model_uri, "model_version": version, "skipped": True}
    result = sample_task(model_uri, out, job, overwrite)
    say(f"drew {described} → {result['path']}")
    return {**result, "skipped": False}
