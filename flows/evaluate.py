"""Stage 3: importance-sampled held-out log-likelihood of a checkpoint; returns the summary."""

import hashlib
import json
from pathlib import Path

from prefect import flow, task

from flows.results import cached
from vae import config, evaluation


def evaluation_key(context, parameters: dict) -> str:
    """A checkpoint evaluated with the same settings on the same data gives the same numbers."""
    settings: config.PipelineConfig = parameters["settings"]
    identity = {"checkpoint": parameters["checkpoint"], "dataset": parameters["dataset_path"],
                "evaluation": settings.evaluation.model_dump(mode="json"), "binarize": settings.dataset.binarize}
    return "evaluate-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


@task(name="estimate-log-likelihood", **cached(evaluation_key))
def evaluate_task(checkpoint: str, dataset_path: str, settings: config.PipelineConfig) -> dict:
    scored = evaluation.score_checkpoint(checkpoint, dataset_path, settings.evaluation, settings.dataset.binarize)
    per_example = evaluation.write_per_example(scored, f"{checkpoint}/evaluation-{scored.summary['split']}.parquet")
    return {**scored.summary, "per_example": str(per_example)}


@flow(name="evaluate")
def evaluate_flow(
    pipeline: str, checkpoint: str, dataset_path: str, pipelines_file: str = config.DEFAULT_PIPELINES_FILE,
    settings: config.PipelineConfig | None = None,
) -> dict:
    """Estimate log p(x) on the configured split; returns NLL ± s.e., bits/dim, ELBO, gap, ESS."""
    settings = settings or config.load_pipeline(pipeline, pipelines_file)
    print(f"evaluating log p(x) on the {settings.evaluation.split} split with k={settings.evaluation.k} "
          "importance samples per image", flush=True)
    summary = evaluate_task(checkpoint, dataset_path, settings)
    if not Path(summary["per_example"]).exists():  # a cached summary whose files were removed since
        summary = evaluate_task.with_options(refresh_cache=True)(checkpoint, dataset_path, settings)
    return summary
