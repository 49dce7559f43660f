"""The whole chain for one named pipeline: ingest → train → evaluate → register."""

import time

from prefect import flow

from flows.artifacts import publish_artifacts
from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.register import register_flow
from flows.train import train_flow
from vae import config, paths


@flow(name="pipeline")
def pipeline_flow(
    pipeline: str,
    pipelines_file: str = config.DEFAULT_PIPELINES_FILE,
    workers: int | None = None,
    gpu: bool | None = None,
    resume: bool = False,
    force: bool = False,
    session: str | None = None,
) -> dict:
    """Run every stage; each passes references (paths, run ids, URIs) to the next. Unchanged data and
    settings reuse the finished training (cached on the content hash); `force` trains again. `session`:
    `vae run`'s token for its interrupt handler (flows.train). Returns the record as plain JSON values.
    """
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        seconds[stage] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    # The file is read once: editing pipelines.yaml during an hour of training changes nothing here.
    settings = config.load_pipeline(pipeline, pipelines_file)
    dataset = ingest_flow(settings)
    lap("ingest")
    trained = train_flow(settings, dataset, workers, gpu, resume, force, session)
    lap("train")
    summary = evaluate_flow(settings, trained.checkpoint, dataset)
    lap("evaluate")
    registration = register_flow(settings, trained, summary, dataset)
    lap("register")
    result = {
        "pipeline": pipeline,
        "dataset": dataset.to_dict(),
        "run_id": trained.run_id,
        "tracking_uri": paths.tracking_uri(),
        "checkpoint": trained.checkpoint,
        "epochs": trained.epochs,
        "reused": trained.reused,
        "evaluation": summary.to_dict(),
        "registration": registration.to_dict(),
        "stage_seconds": seconds,
    }
    publish_artifacts(pipeline, result)
    return result
