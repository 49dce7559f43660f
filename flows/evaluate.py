"""Stage 3: importance-sampled held-out log-likelihood of a checkpoint; returns the summary."""

from pathlib import Path

from prefect import flow, task

from flows.cache_keys import evaluation_key
from flows.results import cached, run_cached
from vae.evaluate import evaluation
from vae.config import PipelineConfig
from vae.data.datasets import DatasetRef


@task(name="estimate-log-likelihood", **cached(evaluation_key))
def evaluate_task(checkpoint: str, dataset_path: str, settings: PipelineConfig) -> dict:
    scored = evaluation.score_checkpoint(
        checkpoint, dataset_path, settings.evaluation, settings.dataset.binarize, progress=evaluation.ProgressLine()
    )
    per_example = evaluation.write_per_example(scored, f"{checkpoint}/evaluation-{scored.summary['split']}.parquet")
    return {**scored.summary, "per_example": str(per_example)}


@flow(name="evaluate")
def evaluate_flow(settings: PipelineConfig, checkpoint: str, dataset: DatasetRef) -> evaluation.EvaluationSummary:
    """Estimate log p(x) on the configured split: NLL ± s.e., bits/dim, ELBO, gap, ESS."""
    print(
        f"evaluating log p(x) on the {settings.evaluation.split} split with k={settings.evaluation.k} "
        "importance samples per image",
        flush=True,
    )
    summary, _ = run_cached(
        evaluate_task, checkpoint, dataset.path, settings, still_valid=lambda done: Path(done["per_example"]).exists()
    )
    return evaluation.EvaluationSummary(**summary)
