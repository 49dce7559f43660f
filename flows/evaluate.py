"""Stage 3: importance-sampled held-out log-likelihood of a checkpoint; returns the summary."""

from prefect import flow, task

from vae import config, scoring


@task(name="estimate-log-likelihood")
def evaluate_task(checkpoint: str, dataset_path: str, settings: config.PipelineConfig) -> dict:
    scored = scoring.score_checkpoint(checkpoint, dataset_path, settings.evaluation, settings.dataset.binarize)
    per_example = scoring.write_per_example(scored, f"{checkpoint}/evaluation-{scored.summary['split']}.parquet")
    return {**scored.summary, "per_example": str(per_example)}


@flow(name="evaluate")
def evaluate_flow(
    pipeline: str, checkpoint: str, dataset_path: str, pipelines_file: str = config.DEFAULT_PIPELINES_FILE
) -> dict:
    """Estimate log p(x) on the configured split; returns NLL ± s.e., bits/dim, ELBO, gap, ESS."""
    return evaluate_task(checkpoint, dataset_path, config.load_pipeline(pipeline, pipelines_file))
