"""The whole chain for one named pipeline: ingest → train → evaluate → register."""

import time

from prefect import flow

from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.register import register_flow
from flows.train import train_flow
from vae import config


@flow(name="pipeline")
def pipeline_flow(
    pipeline: str, pipelines_file: str = config.DEFAULT_PIPELINES_FILE, workers: int | None = None,
    gpu: bool | None = None, resume: bool = False,
) -> dict:
    """Run every stage; each passes references (paths, run ids, URIs) to the next."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        seconds[stage] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    dataset = ingest_flow(pipeline, pipelines_file)
    lap("ingest")
    trained = train_flow(pipeline, dataset, pipelines_file, workers, gpu, resume)
    lap("train")
    evaluation = evaluate_flow(pipeline, trained["checkpoint"], dataset["path"], pipelines_file)
    lap("evaluate")
    registration = register_flow(pipeline, trained["run_id"], trained["checkpoint"], evaluation, dataset,
                                 trained["history"], pipelines_file)
    lap("register")
    return {
        "pipeline": pipeline,
        "dataset": dataset,
        "run_id": trained["run_id"],
        "tracking_uri": config.tracking_uri(),
        "checkpoint": trained["checkpoint"],
        "epochs": trained["epochs"],
        "evaluation": evaluation,
        "registration": registration,
        "stage_seconds": seconds,
    }
