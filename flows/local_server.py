"""The Prefect server of one `vae run`: Prefect's ephemeral server, started so that it dies with us.

Prefect's own ephemeral server (SubprocessASGIServer) is a plain child process: a terminal's
Ctrl-C reaches it before the flow could report its end, and a SIGKILL of `vae run` leaves it
running. This starts the same uvicorn command in a session of its own (no terminal signals) with
PR_SET_PDEATHSIG (the kernel kills it when `vae run` dies, however it dies).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vae.errors import VAEError

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answers(
    url: str,
    what: str,
    timeout: float,
    process: subprocess.Popen | None = None,
    last_output: Callable[[], str] = lambda: "",
    interval: float = 0.2,
) -> None:
    """Poll `url` until it answers; VAEError naming `what` if `process` exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise VAEError(f"{what} exited ({process.returncode}): {last_output()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise VAEError(f"{what} did not answer within {timeout:.0f} s") from None
            time.sleep(interval)


def detach_api_logs() -> None:
    """Send the flow-run logs still queued to the server, then stop sending any: a log line emitted after
    the server stops (Ray's workers, `--verbose`) would make Prefect's log worker retry against a closed
    port at exit, for about a minute ("--- Error logging to API ---")."""
    if "prefect.logging.handlers" not in sys.modules:
        return
    import logging

    from prefect.logging.handlers import APILogHandler, APILogWorker

    with contextlib.suppress(Exception):
        APILogWorker.drain_all(timeout=5)
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, APILogHandler):
                logger.removeHandler(handler)


@contextlib.contextmanager
def heartbeats_off() -> Iterator[None]:
    """Prefect's flow-run heartbeats off for the flow runs started inside, in this thread (a settings context).

    A heartbeat lets a long-lived server mark a flow run whose process died as crashed; a server of this
    process's own dies with the run, so there is nothing to tell it. And each flow run's end joins the
    heartbeat thread, which sleeps in one-second steps: ~0.5 s per flow run, five of them in a pipeline
    (issue 26). On a server named by PREFECT_API_URL (a deployment's) the heartbeats stay. Prefect's own
    test session turns them off the same way (None); so does this project's (tests/conftest.py)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def without_heartbeats(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` under `heartbeats_off`, wherever it is called: a settings context does not follow a
    function into the thread that `vae run` runs its flow in (vae.cli.interrupts.in_thread)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with heartbeats_off():
            return function(*args, **kwargs)

    return call


@contextlib.contextmanager
def starting_local_server(timeout: float = 180) -> Iterator[tuple[str, Callable[[], None]]]:
    """Start the ephemeral API server on 127.0.0.1; yields its API URL at once, with the function that
    waits until it answers (one VAEError line if it does not within `timeout`): the caller can set
    PREFECT_API_URL and import Prefect and its flows while the server starts. Stops it on exit."""
    import importlib.util

    package = Path(importlib.util.find_spec("prefect").origin).parent  # not imported: settings read env at import
    port = free_port()
    log = tempfile.TemporaryFile()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(package.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent(os.getpid()),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}/api"

    def last_line() -> str:
        log.seek(0)
        return (log.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]

    try:
        yield url, lambda: wait_until_answers(f"{url}/health", "the local Prefect server", timeout, process, last_line)
    finally:
        detach_api_logs()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
