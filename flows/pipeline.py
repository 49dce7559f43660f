"""The whole chain for one named pipeline: ingest → train → evaluate → register."""

import re
import time

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.register import register_flow
from flows.train import train_flow
from vae import config, registry
from vae import paths


@task(name="publish-artifacts", retries=2, retry_delay_seconds=exponential_backoff(2))
def publish_artifacts(pipeline: str, result: dict) -> None:
    """On the flow run's page: the evaluation summary as a table, and a link to the MLflow run."""
    key = re.sub(r"[^a-z0-9-]+", "-", pipeline.lower()).strip("-") or "pipeline"
    evaluation, registration = result["evaluation"], result["registration"]
    rows = [
        {"quantity": f"test NLL (k={evaluation['k']}, {evaluation['n']} {evaluation['split']} images)",
         "value": f"{evaluation['nll']:.3f} ± {evaluation['nll_stderr']:.3f} nats"},
        {"quantity": "bits/dim", "value": f"{evaluation['bits_per_dim']:.4f}"},
        {"quantity": "ELBO", "value": f"{evaluation['elbo']:.3f} nats"},
        {"quantity": "ELBO gap ≈ KL(q(z|x) ‖ p(z|x))", "value": f"{evaluation['elbo_gap']:.3f} nats"},
        {"quantity": "effective sample size", "value": f"{evaluation['ess']:.1f} of {evaluation['k']}"},
        {"quantity": "dataset", "value": f"{result['dataset']['name']}@{result['dataset']['version']}"},
        {"quantity": "model", "value": registration["model_uri"]},
        {"quantity": "champion", "value": "yes" if registration["champion"] else "no (gate kept the champion)"},
        {"quantity": "training", "value": "reused (data and settings unchanged)" if result["reused"]
         else f"{result['epochs']} epochs"},
    ]
    create_table_artifact(key=f"{key}-evaluation", table=rows, description=f"Evaluation of {registration['model_uri']}")
    create_link_artifact(key=f"{key}-mlflow-run", link=registry.run_link(result["run_id"]),
                         link_text=f"MLflow run {result['run_id']}",
                         description=f"Tracking store: {result['tracking_uri']}")


@flow(name="pipeline")
def pipeline_flow(
    pipeline: str, pipelines_file: str = config.DEFAULT_PIPELINES_FILE, workers: int | None = None,
    gpu: bool | None = None, resume: bool = False, force: bool = False,
) -> dict:
    """Run every stage; each passes references (paths, run ids, URIs) to the next.

    Unchanged data and settings reuse the finished training (cached on the content hash);
    `force` trains again.
    """
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        seconds[stage] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    # The file is read once: editing pipelines.yaml during an hour of training changes nothing here.
    settings = config.load_pipeline(pipeline, pipelines_file)
    dataset = ingest_flow(pipeline, pipelines_file, settings)
    lap("ingest")
    trained = train_flow(pipeline, dataset, pipelines_file, workers, gpu, resume, force, settings)
    lap("train")
    evaluation = evaluate_flow(pipeline, trained["checkpoint"], dataset["path"], pipelines_file, settings)
    lap("evaluate")
    registration = register_flow(pipeline, trained["run_id"], trained["checkpoint"], evaluation, dataset,
                                 trained["history"], pipelines_file, settings)
    lap("register")
    result = {
        "pipeline": pipeline,
        "dataset": dataset,
        "run_id": trained["run_id"],
        "tracking_uri": paths.tracking_uri(),
        "checkpoint": trained["checkpoint"],
        "epochs": trained["epochs"],
        "reused": trained["reused"],
        "evaluation": evaluation,
        "registration": registration,
        "stage_seconds": seconds,
    }
    publish_artifacts(pipeline, result)
    return result
