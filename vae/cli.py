"""The `vae` command: parses arguments, calls flows or the library, prints results.

Errors of ours are printed as one line (no traceback) with a nonzero exit.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vae.config import DEFAULT_PIPELINES_FILE, load_pipeline, load_pipelines, quiet_environment
from vae.errors import VAEError

app = typer.Typer(
    help="Train Variational Autoencoders at scale: ingest → train (Ray) → evaluate log p(x) → register (MLflow).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PipelinesFile = Annotated[
    Path, typer.Option("--file", "-f", help="The pipelines file.", show_default=True)
]


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _quiet_logs(verbose: bool) -> None:
    """One line per epoch by default; --verbose lets Prefect and Ray speak."""
    quiet_environment()
    if verbose:
        os.environ["VAE_VERBOSE"] = "1"
    # Prefect's persisted task results (the cached training of a pipeline) live with the rest of
    # the state, so a rerun after a crash finds them wherever VAE_HOME is.
    from vae.config import vae_home

    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(vae_home() / "prefect-results"))
    level = "INFO" if verbose else "CRITICAL"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", level)
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", level)
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", level)
    os.environ.setdefault("PREFECT_LOGGING_SERVER_LEVEL", "CRITICAL" if not verbose else "WARNING")
    if not verbose:
        os.environ.setdefault("RAY_LOG_TO_STDERR", "0")
        for name in ("ray", "mlflow", "alembic", "prefect"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _print_result(result: dict[str, Any]) -> None:
    evaluation, registration = result["evaluation"], result["registration"]
    typer.echo("")
    typer.echo(
        f"test NLL      {evaluation['nll']:.3f} ± {evaluation['nll_stderr']:.3f} nats "
        f"(k={evaluation['k']}, {evaluation['n']} {evaluation['split']} images, "
        f"{evaluation['bits_per_dim']:.4f} bits/dim)"
    )
    typer.echo(f"ELBO          {evaluation['elbo']:.3f} nats (gap {evaluation['elbo_gap']:.3f} ≈ KL(q(z|x) ‖ p(z|x)))")
    typer.echo(f"dataset       {result['dataset']['name']}@{result['dataset']['version']}")
    reused = "  (training reused: data and settings unchanged)" if result.get("reused") else ""
    typer.echo(f"MLflow run    {result['run_id']}  ({result['tracking_uri']}){reused}")
    typer.echo(f"model         {registration['model_uri']}")
    if registration["champion"]:
        typer.echo(f"champion      {registration['champion_uri']}")
    else:
        typer.echo(
            f"champion      unchanged (current champion NLL {registration['previous_champion_nll']:.3f})"
        )


@app.command()
def run(
    pipeline: Annotated[str, typer.Argument(help="A pipeline name from the pipelines file.")],
    file: PipelinesFile = Path(DEFAULT_PIPELINES_FILE),
    workers: Annotated[Optional[int], typer.Option(min=1, help="Ray Train workers (overrides the file).")] = None,
    gpu: Annotated[Optional[bool], typer.Option("--gpu/--cpu", help="GPU workers (NCCL) or CPU workers (gloo); overrides the file.", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from this pipeline's newest checkpoint.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Train again even if this data and these settings were trained before.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect and Ray logs.")] = False,
) -> None:
    """Run a pipeline end to end as a Prefect flow: ingest, train, evaluate, register."""
    _quiet_logs(verbose)
    try:
        load_pipeline(pipeline, file)  # validate before any service starts
        from flows.pipeline import pipeline_flow

        result = pipeline_flow(pipeline, str(file.resolve()), workers, gpu, resume, force)
    except VAEError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        _print_result(result)


@app.command("pipelines")
def list_pipelines(file: PipelinesFile = Path(DEFAULT_PIPELINES_FILE)) -> None:
    """List the pipelines of the file with their dataset and model name."""
    try:
        pipelines = load_pipelines(file)
    except VAEError as exc:
        _fail(str(exc))
    for name, settings in sorted(pipelines.items()):
        typer.echo(f"{name:20} dataset={settings.dataset.source:24} model={settings.registry.model_name}")


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, or a checkpoint directory.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="A dataset name (newest version) or directory.")],
    k: Annotated[int, typer.Option("--k", help="Importance samples per image.")] = 5000,
    split: Annotated[str, typer.Option(help="Which split: test or validation.")] = "test",
    max_memory: Annotated[int, typer.Option("--max-memory", help="Memory budget for samples, MiB.")] = 256,
    workers: Annotated[int, typer.Option(help="Ray tasks to split the images across.")] = 1,
    seed: Annotated[int, typer.Option(help="Noise seed (per-example streams).")] = 0,
    gpu: Annotated[bool, typer.Option("--gpu/--cpu", help="Estimate on the GPU when there is one (noise drawn on the device).")] = False,
    tf32: Annotated[bool, typer.Option("--tf32", help="Let float32 matmuls use TF32 on the GPU (faster; changes the numbers).")] = False,
    binarize: Annotated[str, typer.Option(help="For a bare checkpoint: threshold, dynamic or none.")] = "threshold",
    output: Annotated[Optional[Path], typer.Option(help="Per-example Parquet (default: under VAE_HOME/evaluations).")] = None,
    ais: Annotated[int, typer.Option(help="Cross-check IS with annealed importance sampling on this many images.")] = 0,
    ais_steps: Annotated[int, typer.Option(help="AIS annealing steps (HMC transitions).")] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray and MLflow logs.")] = False,
) -> None:
    """Estimate held-out log p(x) of a model by importance sampling, with a standard error."""
    _quiet_logs(verbose)
    from vae.config import EvaluationConfig, vae_home

    if k < 1:
        _fail(f"--k {k}: expected k >= 1 importance samples per image")
    if split not in ("test", "validation", "train"):
        _fail(f"--split {split!r}: expected test, validation or train")
    if workers < 1 or max_memory < 1:
        _fail("--workers and --max-memory must be >= 1")
    try:
        from vae import scoring

        dataset_path = scoring.resolve_dataset(dataset)
        if (Path(model) / "checkpoint.pt").exists():
            checkpoint, mode = Path(model), binarize
        else:
            from vae import registry

            checkpoint, metadata = registry.download_model(model)
            mode = metadata["binarize"]
        config = EvaluationConfig(k=k, split=split, max_memory_mb=max_memory, workers=workers, seed=seed,
                                  use_gpu=gpu, tf32=tf32)
        scored = scoring.score_checkpoint(checkpoint, dataset_path, config, mode)
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.split("://")[-1].strip("/"))
        target = output or vae_home() / "evaluations" / f"{slug}-{Path(dataset_path).parent.name}-{split}-k{k}.parquet"
        per_example = scoring.write_per_example(scored, target)
        cross_check = scoring.ais_cross_check(checkpoint, dataset_path, config, mode, scored, ais, ais_steps) if ais else None
    except VAEError as exc:
        _fail(str(exc))
    summary = {**scored.summary, "iwae_bound": -scored.summary["nll"], "model": model,
               "dataset": dataset_path, "per_example": str(per_example)}
    if cross_check:
        summary["ais"] = cross_check
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"NLL           {summary['nll']:.3f} ± {summary['nll_stderr']:.3f} nats "
               f"({summary['bits_per_dim']:.4f} bits/dim; {summary['n']} {split} images)")
    typer.echo(f"IWAE-{k} bound {summary['iwae_bound']:.3f} nats  (= mean log p̂(x))")
    typer.echo(f"ELBO          {summary['elbo']:.3f} nats")
    typer.echo(f"ELBO gap      {summary['elbo_gap']:.3f} nats  (log p̂(x) − ELBO ≈ KL(q(z|x) ‖ p(z|x)))")
    typer.echo(f"ESS           {summary['ess']:.1f} of {k} samples (mean over images)")
    if cross_check:
        typer.echo(f"AIS check     log p̂(x) on {cross_check['n']} images: AIS {cross_check['ais_log_px']:.3f}, "
                   f"IS {cross_check['is_log_px']:.3f}, difference {cross_check['difference']:.3f} ± "
                   f"{cross_check['difference_stderr']:.3f} nats")
    typer.echo(f"per-example   {per_example}")


# Commands that live in their own modules register themselves on `app` when imported.
import vae.cli_data  # noqa: E402,F401
import vae.cli_jobs  # noqa: E402,F401


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


