"""The whole chain for one named pipeline: ingest → train → evaluate → register."""

from prefect import flow

from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.register import register_flow
from flows.train import train_flow
from vae import config


@flow(name="pipeline")
def pipeline_flow(
    pipeline: str, pipelines_file: str = config.DEFAULT_PIPELINES_FILE, workers: int | None = None
) -> dict:
    """Run every stage; each passes references (paths, run ids, URIs) to the next."""
    dataset = ingest_flow(pipeline, pipelines_file)
    trained = train_flow(pipeline, dataset, pipelines_file, workers)
    evaluation = evaluate_flow(pipeline, trained["checkpoint"], dataset["path"], pipelines_file)
    registration = register_flow(pipeline, trained["run_id"], trained["checkpoint"], evaluation, dataset,
                                 trained["history"], pipelines_file)
    return {
        "pipeline": pipeline,
        "dataset": dataset,
        "run_id": trained["run_id"],
        "tracking_uri": config.tracking_uri(),
        "checkpoint": trained["checkpoint"],
        "epochs": trained["epochs"],
        "evaluation": evaluation,
        "registration": registration,
    }
