"""What a run shows: a line on the terminal and in the flow run's log; the evaluation table and the
MLflow link on a pipeline run's Prefect page; a drift check's verdict, histograms and MLflow link."""

import base64
import re
import tempfile

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

from vae.jobs import drift_report
from vae.registry import runs


def artifact_key(pipeline: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", pipeline.lower()).strip("-") or "pipeline"


def say(message: str) -> None:
    """One line on the terminal of `vae run` and in the flow run's log in Prefect."""
    print(message, flush=True)
    get_run_logger().info(message)


@task(name="publish-artifacts", retries=2, retry_delay_seconds=exponential_backoff(2))
def publish_artifacts(pipeline: str, result: dict) -> None:
    """On the flow run's page: the evaluation summary as a table, and a link to the MLflow run."""
    key = artifact_key(pipeline)
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


@task(name="publish-drift-artifacts", retries=2, retry_delay_seconds=exponential_backoff(2))
def publish_drift(pipeline: str, result: dict, run_id: str) -> None:
    """On a drift check's flow run page: the verdict as a table, the log p̂(x) histograms (reference vs
    new) and a link to the check's MLflow run."""
    key = "drift-" + artifact_key(pipeline)
    rows = drift_report.verdict_rows(result)
    create_table_artifact(key=f"{key}-verdict", table=rows, description=f"Drift check of {result['path']}")
    with tempfile.TemporaryDirectory(prefix="vae-drift-") as folder:
        png = base64.b64encode(drift_report.plot_histograms(result["path"], folder).read_bytes()).decode()
    markdown = f"### log p̂(x), reference vs new\n\n![log p(x) histograms](data:image/png;base64,{png})\n"
    create_markdown_artifact(key=f"{key}-histogram", markdown=markdown, description="log p̂(x) histograms")
    create_link_artifact(key=f"{key}-mlflow-run", link=runs.run_link(run_id), link_text=f"MLflow run {run_id}")
