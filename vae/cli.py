"""The `vae` command: parses arguments, calls flows or the library, prints results.

Errors of ours are printed as one line (no traceback) with a nonzero exit.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vae.config import DEFAULT_PIPELINES_FILE, load_pipeline, load_pipelines
from vae.paths import quiet_environment
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


BINARIZE_MODES = ("threshold", "dynamic", "none")


def check_binarize(binarize: str) -> None:
    if binarize not in BINARIZE_MODES:
        _fail(f"--binarize {binarize!r}: expected threshold, dynamic or none")


def _check_writable_dir(path: Path, what: str) -> None:
    """Fail in one line now, not after minutes of work, when `path` cannot hold new files."""
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vae-write-check-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        _fail(f"{what} {path}: not writable: {exc.strerror or exc}")


def _check_output_file(path: Path, flag: str) -> None:
    """An output file path: not a directory, and its folder writable (checked before any work)."""
    if path.is_dir():
        _fail(f"{flag} {path}: is a directory; expected a file path")
    _check_writable_dir(path.parent, f"{flag} {path}: folder")


def _quiet_logs(verbose: bool) -> None:
    """One line per epoch by default; --verbose lets Prefect and Ray speak."""
    quiet_environment()
    from vae.cluster import prepare_local_ray

    prepare_local_ray()  # before anything imports Ray
    if verbose:
        os.environ["VAE_VERBOSE"] = "1"
    # Prefect's persisted task results (the cached training of a pipeline) live with the rest of
    # the state, so a rerun after a crash finds them wherever VAE_HOME is.
    from vae.paths import vae_home

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
    except VAEError as exc:
        _fail(str(exc))
    from vae.paths import vae_home

    _check_writable_dir(vae_home(), "VAE_HOME")
    if not os.environ.get("PREFECT_API_URL"):  # the local server keeps its database there
        _check_writable_dir(Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser(), "PREFECT_HOME")
    try:
        result = _run_pipeline(pipeline, file, workers, gpu, resume, force)
    except VAEError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        _print_result(result)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc): the local Ray and the Prefect server of this run."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _stop_processes(pids: list[int], grace: float = 5.0) -> None:
    import signal
    import time

    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap our own children so they do not linger as zombies
                pass
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _on_interrupt(pipeline: str) -> None:
    """Ctrl-C or SIGTERM during `vae run`: mark the MLflow run KILLED, stop Ray and the Prefect server,
    remove the checkpoint staging folder, one line, exit 130. The next `vae run` resumes."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    killed: list[str] = []

    def mark_killed() -> None:
        from flows.train import ACTIVE_RUNS
        from vae import registry

        for run_id in sorted(ACTIVE_RUNS):
            with contextlib.suppress(Exception):
                if registry.kill_if_running(run_id):
                    killed.append(run_id)

    # In a thread with a deadline: the interrupted main thread may hold a lock the store needs.
    marker = threading.Thread(target=mark_killed, daemon=True)
    marker.start()
    marker.join(timeout=15)
    _stop_processes(_descendants(os.getpid()))
    import shutil

    from vae.paths import checkpoints_dir

    for run_id in killed:
        for staging in (checkpoints_dir() / ".staging").glob(f"*-{run_id}"):
            shutil.rmtree(staging, ignore_errors=True)
    runs = f"MLflow run {', '.join(killed)} marked KILLED" if killed else "no MLflow run was open"
    sys.stdout.flush()
    sys.stderr.write(f"interrupted: pipeline '{pipeline}' stopped ({runs}); `vae run {pipeline}` resumes\n")
    sys.stderr.flush()
    os._exit(130)


def _in_thread(function, *args) -> Any:
    """Run `function` in a worker thread; the main thread stays free for our signal handlers.

    Off the main thread, Ray Train installs no SIGINT handler of its own (it would swallow Ctrl-C
    into a slow "graceful abort" and a silent exit 1).
    """
    import threading

    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = function(*args)
        except BaseException as exc:  # handed to the main thread as is
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="vae-run", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _run_pipeline(pipeline: str, file: Path, workers, gpu, resume: bool, force: bool) -> dict[str, Any]:
    """The pipeline flow on this run's own Prefect server (unless PREFECT_API_URL names one)."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: _on_interrupt(pipeline))
    arguments = (pipeline, str(file.resolve()), workers, gpu, resume, force)
    if os.environ.get("PREFECT_API_URL"):
        from flows.pipeline import pipeline_flow

        return _in_thread(pipeline_flow, *arguments)
    from flows.local_server import local_server

    with local_server() as api_url:
        os.environ["PREFECT_API_URL"] = api_url  # before Prefect is imported: every thread of it sees the URL
        try:
            from flows.pipeline import pipeline_flow

            return _in_thread(pipeline_flow, *arguments)
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@app.command("pipelines")
def list_pipelines(file: PipelinesFile = Path(DEFAULT_PIPELINES_FILE)) -> None:
    """List the pipelines of the file with their dataset and model name."""
    try:
        pipelines = load_pipelines(file)
    except VAEError as exc:
        _fail(str(exc))
    for name, settings in sorted(pipelines.items()):
        typer.echo(f"{name:20} dataset={settings.dataset.redacted_source:24} model={settings.registry.model_name}")


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
    from vae.config import EvaluationConfig
    from vae.paths import vae_home

    if k < 1:
        _fail(f"--k {k}: expected k >= 1 importance samples per image")
    if split not in ("test", "validation"):
        _fail(f"--split {split!r}: expected test or validation (held-out data)")
    if workers < 1 or max_memory < 1:
        _fail("--workers and --max-memory must be >= 1")
    check_binarize(binarize)
    if output is not None:
        _check_output_file(output, "--output")
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
        if output is None:
            _check_output_file(target, "per-example output")
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


_ENVIRONMENT_ERRNOS = {errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
                      errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def _environment_error(exc: BaseException) -> str | None:
    """A full disk or an unwritable folder anywhere in the chain of causes (Ray and Prefect wrap them)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
            where = f"{exc.filename}: " if exc.filename else ""
            return f"{where}{_ENVIRONMENT_ERRNOS[exc.errno]}"
        match = re.search(r"\[Errno (\d+)\] [^:\n]*(?:: '([^'\n]*)')?", str(exc))
        if match and int(match.group(1)) in _ENVIRONMENT_ERRNOS:
            where = f"{match.group(2)}: " if match.group(2) else ""
            return f"{where}{_ENVIRONMENT_ERRNOS[int(match.group(1))]}"
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "cause", None)
    return None


def main() -> None:
    """Console-script entry point: a full disk or an unwritable folder is one line, not a traceback
    (--verbose shows it); a real bug keeps its traceback."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted: stopped by Ctrl-C", err=True)
        sys.exit(130)
    except Exception as exc:
        reason = _environment_error(exc)
        if reason is None or os.environ.get("VAE_VERBOSE") == "1":
            raise
        typer.echo(f"error: {reason}", err=True)
        sys.exit(1)


