"""The `vae` command: parses arguments, builds configs, calls flows or the library, prints results.

Errors of ours are printed as one line (no traceback) with a nonzero exit.
"""

from __future__ import annotations

import os
import sys

import typer

# One module per group of `vae --help` (its panel); each registers its commands on `app`, in this order.
from vae.cli import pipelines, data, models, jobs  # noqa: F401  isort: skip
from vae.cli.app import app, environment_error

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: a full disk or an unwritable folder is one line, not a traceback
    (--verbose shows it); a real bug keeps its traceback."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted: stopped by Ctrl-C", err=True)
        sys.exit(130)
    except Exception as exc:
        reason = environment_error(exc)
        if reason is None or os.environ.get("VAE_VERBOSE") == "1":
            raise
        typer.echo(f"error: {reason}", err=True)
        sys.exit(1)
