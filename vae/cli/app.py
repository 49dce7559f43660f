"""The `vae` Typer app and what every command shares: one-line failures, quiet logs, early checks.

Errors of ours are printed as one line (no traceback) with a nonzero exit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vae.paths import quiet_environment

app = typer.Typer(
    help="Train Variational Autoencoders at scale: ingest → train (Ray) → evaluate log p(x) → register (MLflow).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PipelinesFile = Annotated[Path, typer.Option("--file", "-f", help="The pipelines file.", show_default=True)]

# What the commands that read a model share: embed (vae.cli.jobs), score and sample (vae.cli.jobs), evaluate.
ModelArgument = Annotated[
    str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, or a checkpoint directory.")
]
BinarizeOption = Annotated[
    str, typer.Option(help="For a bare checkpoint: how it was trained (threshold, dynamic or none).")
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace the output file if it exists.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray and MLflow logs.")]
DatasetOption = Annotated[str, typer.Option("--dataset", "-d", help="A dataset name (newest version) or directory.")]
ParquetOutOption = Annotated[Path, typer.Option("--out", "-o", help="The Parquet file to write.")]
GpuOption = Annotated[
    Optional[bool],
    typer.Option(
        "--gpu/--cpu", help="Ray Data actors on GPUs (default: when the cluster has them).", show_default=False
    ),
]


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


BINARIZE_MODES = ("threshold", "dynamic", "none")


def build_config(kind, options: dict[str, tuple[str, Any]]):
    """A config object from command-line options {flag: (field, value)}, validated exactly as in
    pipelines.yaml; a value the schema refuses is one line naming the option."""
    from pydantic import ValidationError

    from vae.config import describe_error

    try:
        return kind(**{field: value for field, value in options.values()})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        flag = next((flag for flag, (name, _) in options.items() if name == field), field or "options")
        message = error["msg"]
        if message.startswith("Input should be "):
            message = "expected " + message[len("Input should be ") :]
            for words, sign in (
                ("greater than or equal to ", ">= "),
                ("less than or equal to ", "<= "),
                ("greater than ", "> "),
                ("less than ", "< "),
            ):
                message = message.replace(words, sign)
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        else:
            message = describe_error(error)
        fail(f"{flag} {error['input']!r}: {message}")


def check_binarize(binarize: str) -> None:
    if binarize not in BINARIZE_MODES:
        fail(f"--binarize {binarize!r}: expected threshold, dynamic or none")


def check_writable_dir(path: Path, what: str) -> None:
    """Fail in one line now, not after minutes of work, when `path` cannot hold new files."""
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vae-write-check-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        fail(f"{what} {path}: not writable: {exc.strerror or exc}")


def check_output_file(path: Path, flag: str) -> None:
    """An output file path: not a directory, and its folder writable (checked before any work)."""
    if path.is_dir():
        fail(f"{flag} {path}: is a directory; expected a file path")
    check_writable_dir(path.parent, f"{flag} {path}: folder")


def champion_line(registration: dict[str, Any]) -> str:
    """The summary's champion line: the new champion, or why the champion stayed."""
    if registration["champion"]:
        return f"champion      {registration['champion_uri']}"
    previous = registration.get("previous_champion_nll")
    if previous is not None:
        return f"champion      unchanged (current champion NLL {previous:.3f})"
    gate = registration.get("gate", "")
    return "champion      unchanged" + (f" ({gate.removeprefix('not promoted: ')})" if ":" in gate else "")


@contextlib.contextmanager
def json_stdout(as_json: bool):
    """With --json, stdout carries the one JSON object printed after this block: whatever is printed
    to stdout meanwhile goes to stderr (our progress lines, and Ray's raylet warnings, which its
    driver prints to stdout from a background thread whatever `log_to_driver` says)."""
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        yield


def quiet_logs(verbose: bool) -> None:
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


ENVIRONMENT_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}


def environment_error(exc: BaseException) -> str | None:
    """A full disk or an unwritable folder anywhere in the chain of causes (Ray and Prefect wrap them)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            where = f"{exc.filename}: " if exc.filename else ""
            return f"{where}{ENVIRONMENT_ERRNOS[exc.errno]}"
        match = re.search(r"\[Errno (\d+)\] [^:\n]*(?:: '([^'\n]*)')?", str(exc))
        if match and int(match.group(1)) in ENVIRONMENT_ERRNOS:
            where = f"{match.group(2)}: " if match.group(2) else ""
            return f"{where}{ENVIRONMENT_ERRNOS[int(match.group(1))]}"
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "cause", None)
    return None
