"""`vae run` (a pipeline end to end as a Prefect flow) and `vae pipelines`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vae.cli.app import champion_line, PipelinesFile, app, check_writable_dir, fail, json_stdout, quiet_logs
from vae.cli.interrupts import run_pipeline
from vae.config import DEFAULT_PIPELINES_FILE, load_pipeline, load_pipelines
from vae.errors import VAEError


def print_result(result: dict[str, Any]) -> None:
    evaluation, registration = result["evaluation"], result["registration"]
    typer.echo("")
    typer.echo(
        f"test NLL      {evaluation['nll']:.3f} ± {evaluation['nll_stderr']:.3f} nats "
        f"(k={evaluation['k']}, {evaluation['n']} {evaluation['split']} images, "
        f"{evaluation['bits_per_dim']:.4f} bits/dim)"
    )
    typer.echo(f"ELBO          {evaluation['elbo']:.3f} nats (gap {evaluation['elbo_gap']:.3f} ≈ KL(q(z|x) ‖ p(z|x)))")
    if evaluation.get("active_units") is not None:
        typer.echo(
            f"active units  {evaluation['active_units']} of {evaluation['latent_dim']} latent dimensions "
            "(Cov_x E_q[z_d] > 0.01)"
        )
    typer.echo(f"dataset       {result['dataset']['name']}@{result['dataset']['version']}")
    reused = "  (training reused: data and settings unchanged)" if result.get("reused") else ""
    typer.echo(f"MLflow run    {result['run_id']}  ({result['tracking_uri']}){reused}")
    typer.echo(f"model         {registration['model_uri']}")
    typer.echo(champion_line(registration))


@app.command()
def run(
    pipeline: Annotated[str, typer.Argument(help="A pipeline name from the pipelines file.")],
    file: PipelinesFile = Path(DEFAULT_PIPELINES_FILE),
    workers: Annotated[Optional[int], typer.Option(min=1, help="Ray Train workers (overrides the file).")] = None,
    gpu: Annotated[
        Optional[bool],
        typer.Option(
            "--gpu/--cpu", help="GPU workers (NCCL) or CPU workers (gloo); overrides the file.", show_default=False
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from this pipeline's newest checkpoint.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Train again even if this data and these settings were trained before.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect and Ray logs.")] = False,
) -> None:
    """Run a pipeline end to end as a Prefect flow: ingest, train, evaluate, register."""
    quiet_logs(verbose)
    try:
        load_pipeline(pipeline, file)  # validate before any service starts
    except VAEError as exc:
        fail(str(exc))
    from vae.paths import vae_home

    check_writable_dir(vae_home(), "VAE_HOME")
    if not os.environ.get("PREFECT_API_URL"):  # the local server keeps its database there
        check_writable_dir(Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser(), "PREFECT_HOME")
    try:
        with json_stdout(as_json):
            result = run_pipeline(pipeline, file, workers, gpu, resume, force)
    except VAEError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        print_result(result)


@app.command("pipelines")
def list_pipelines(file: PipelinesFile = Path(DEFAULT_PIPELINES_FILE)) -> None:
    """List the pipelines of the file with their dataset and model name."""
    try:
        pipelines = load_pipelines(file)
    except VAEError as exc:
        fail(str(exc))
    for name, settings in sorted(pipelines.items()):
        typer.echo(f"{name:20} dataset={settings.dataset.redacted_source:24} model={settings.registry.model_name}")
