"""`vae --help`'s "Pipelines" group: `vae run` (a pipeline end to end as a Prefect flow), `vae pipelines`,
`vae tune` (Ray Tune over a pipeline's `search:` section, the best trial through the champion gate) and
`vae deploy` (the Prefect deployments of the pipelines file).

`vae tune` calls the library directly (ingest, then vae.tune.search.search), as `vae ingest` does: no
Prefect server to start before the trials. The Prefect deployment 'tune/NAME' (flows/tune.py) runs the
same. `vae deploy` creates or updates one deployment per pipeline on the server of PREFECT_API_URL.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vae.cli.app import champion_line, PipelinesFile, app, check_writable_dir, fail, json_stdout, quiet_logs
from vae.cli.interrupts import exit_at_once, run_pipeline
from vae.config import DEFAULT_PIPELINES_FILE, load_pipeline, load_pipelines
from vae.errors import VAEError

PANEL = "Pipelines"


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


@app.command(rich_help_panel=PANEL)
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
        settings = load_pipeline(pipeline, file)  # validate before any service starts
    except VAEError as exc:
        fail(str(exc))
    from vae.paths import vae_home

    check_writable_dir(vae_home(), "VAE_HOME")
    if not os.environ.get("PREFECT_API_URL"):  # the local server keeps its database there
        check_writable_dir(Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser(), "PREFECT_HOME")
    try:
        with json_stdout(as_json):
            training_cpus = (workers or settings.training.workers) * settings.training.cpus_per_worker
            result = run_pipeline(pipeline, file, workers, gpu, resume, force, training_cpus)
    except VAEError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        print_result(result)
    exit_at_once(0)


@app.command("pipelines", rich_help_panel=PANEL)
def list_pipelines(file: PipelinesFile = Path(DEFAULT_PIPELINES_FILE)) -> None:
    """List the pipelines of the file with their dataset and model name."""
    try:
        pipelines = load_pipelines(file)
    except VAEError as exc:
        fail(str(exc))
    for name, settings in sorted(pipelines.items()):
        typer.echo(f"{name:20} dataset={settings.dataset.redacted_source:24} model={settings.registry.model_name}")


def print_search_result(result: dict[str, Any]) -> None:
    best, evaluation, registration = result["best"], result["evaluation"], result["registration"]
    typer.echo("")
    iwae = f"  val IWAE {best['validation_iwae']:.3f}" if "validation_iwae" in best else ""
    typer.echo(
        f"best trial    {best['trial_id']}  val ELBO {best['validation_elbo']:.3f}{iwae}  ({best['epochs']} epochs)"
    )
    typer.echo(f"settings      {' '.join(f'{k}={v}' for k, v in best['config'].items())}")
    typer.echo(
        f"test NLL      {evaluation['nll']:.3f} ± {evaluation['nll_stderr']:.3f} nats "
        f"(k={evaluation['k']}, {evaluation['n']} {evaluation['split']} images)"
    )
    typer.echo(f"MLflow        parent run {result['parent_run_id']}, best trial's run {best['run_id']}")
    typer.echo(f"model         {registration['model_uri']}")
    typer.echo(champion_line(registration))
    typer.echo(f"search        {result['folder']}  ({result['seconds']:.0f} s)")


@app.command(rich_help_panel=PANEL)
def tune(
    pipeline: Annotated[str, typer.Argument(help="A pipeline name with a 'search:' section.")],
    file: PipelinesFile = Path(DEFAULT_PIPELINES_FILE),
    trials: Annotated[Optional[int], typer.Option(min=1, help="Trials to run (overrides search.trials).")] = None,
    max_minutes: Annotated[
        Optional[float], typer.Option("--max-minutes", min=0.01, help="Wall-clock budget of the search, minutes.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue this pipeline's newest search; finished trials are kept.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray and Tune logs.")] = False,
) -> None:
    """Search hyperparameters with Ray Tune (ASHA on search.metric); register the best through the gate."""
    quiet_logs(verbose)
    from vae.config import load_pipeline

    try:
        settings = load_pipeline(pipeline, file)  # validate before any service starts
    except VAEError as exc:
        fail(str(exc))
    if settings.search is None:
        fail(f"{file}: pipeline '{pipeline}' has no 'search:' section (expected one for `vae tune`)")
    if resume and (trials or max_minutes):
        fail("--resume continues a search with the trials and time budget it started with; drop --trials/--max-minutes")
    from vae.paths import vae_home

    check_writable_dir(vae_home(), "VAE_HOME")
    # Tune stops gracefully on SIGINT (its state saved for --resume); SIGTERM (a cancelled job) does the same,
    # and Ray's own failure-signal handler, installed when this process connects, must not replace ours.
    from vae.cli.interrupts import keep_sigterm_from_ray

    keep_sigterm_from_ray()
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    from vae.tune import search as tuning
    from vae.data.ingest import ingest

    try:
        with json_stdout(as_json):
            dataset = ingest(settings.dataset)
            result = tuning.search(
                settings,
                dataset,
                trials=trials,
                max_minutes=max_minutes,
                resume=resume,
                echo=None if as_json else typer.echo,
            )
    except tuning.SearchInterrupted as exc:
        typer.echo(f"interrupted: {exc}", err=True)
        raise typer.Exit(130) from None
    except VAEError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), default=str))
    else:
        print_search_result(result.to_dict())
    exit_at_once(0)


@app.command(rich_help_panel=PANEL)
def deploy(
    file: PipelinesFile = Path(DEFAULT_PIPELINES_FILE),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; change nothing.")] = False,
    pipeline: Annotated[
        Optional[list[str]], typer.Option("--pipeline", "-p", help="Only these pipelines (repeatable).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect logs.")] = False,
) -> None:
    """Create or update the Prefect deployments 'pipeline/NAME', 'embed/NAME' (and 'score/NAME', 'sample/NAME',
    'tune/NAME' for pipelines with those sections) from the pipelines file.

    The whole file is validated first: a bad entry changes nothing.
    """
    quiet_logs(verbose)
    try:
        from flows import deployments

        changes = deployments.plan(file, only=pipeline)
        for change in changes:
            typer.echo(change.describe())
        if dry_run:
            typer.echo(
                f"dry run: {sum(c.action != 'unchanged' for c in changes)} of {len(changes)} deployments would change"
            )
            return
        deployments.apply(changes)
    except VAEError as exc:
        fail(str(exc))
    typer.echo(
        f"applied: {sum(c.action != 'unchanged' for c in changes)} created or updated, "
        f"{sum(c.action == 'unchanged' for c in changes)} unchanged"
    )
