"""What a run shows: a line on the terminal and in the flow run's log; the evaluation table and the
MLflow link on a pipeline run's Prefect page."""

import re

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

from vae.registry import runs


def say(message: str) -> None:
    """One line on the terminal of `vae run` and in the flow run's log in Prefect."""
    print(message, flush=True)
    get_run_logger().info(message)


@task(name="publish-artifacts", retries=2, retry_delay_seconds=exponential_backoff(2))
def publish_artifacts(pipeline: str, result: dict) -> None:
    """On the flow run's page: the evaluation summary as a table, and a link to the MLflow run."""
    key = re.sub(r"[^a-z0-9-]+", "-", pipeline.lower()).strip("-") or "pipeline"
    evaluation, registration = result["evaluation"], result["registration"]
    rows = [
        {
            "quantity": f"test NLL (k={evaluation['k']}, {evaluation['n']} {evaluation['split']} images)",
            "value": f"{evaluation['nll']:.3f} ± {evaluation['nll_stderr']:.3f} nats",
        },
        {"quantity": "bits/dim", "value": f"{evaluation['bits_per_dim']:.4f}"},
        {"quantity": "ELBO", "value": f"{evaluation['elbo']:.3f} nats"},
        {"quantity": "ELBO gap ≈ KL(q(z|x) ‖ p(z|x))", "value": f"{evaluation['elbo_gap']:.3f} nats"},
        {"quantity": "effective sample size", "value": f"{evaluation['ess']:.1f} of {evaluation['k']}"},
        {"quantity": "dataset", "value": f"{result['dataset']['name']}@{result['dataset']['version']}"},
        {"quantity": "model", "value": registration["model_uri"]},
        {"quantity": "champion", "value": "yes" if registration["champion"] else "no (gate kept the champion)"},
        {
            "quantity": "training",
            "value": "reused (data and settings unchanged)" if result["reused"] else f"{result['epochs']} epochs",
        },
    ]
    create_table_artifact(key=f"{key}-evaluation", table=rows, description=f"Evaluation of {registration['model_uri']}")
    create_link_artifact(
        key=f"{key}-mlflow-run",
        link=runs.run_link(result["run_id"]),
        link_text=f"MLflow run {result['run_id']}",
        description=f"Tracking store: {result['tracking_uri']}",
    )
