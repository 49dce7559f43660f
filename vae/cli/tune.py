"""`vae tune`: Ray Tune over a pipeline's `search:` section; the best trial goes through the champion gate.

It calls the library directly (ingest, then vae.tune.search.search), as `vae ingest` does: no Prefect
server to start before the trials. The Prefect deployment 'tune/NAME' (flows/tune.py) runs the same.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vae.cli.app import champion_line, PipelinesFile, app, check_writable_dir, fail, json_stdout, quiet_logs
from vae.config import DEFAULT_PIPELINES_FILE
from vae.errors import VAEError


def _print_result(result: dict[str, Any]) -> None:
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


@app.command()
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
        _print_result(result.to_dict())
