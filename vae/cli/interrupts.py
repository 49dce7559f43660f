"""`vae run` under signals: the flow runs in a worker thread, Ctrl-C/SIGTERM end it in one line.

On SIGINT or SIGTERM: the still-RUNNING MLflow runs are marked KILLED, every child process (the
local Ray, this run's Prefect server) is stopped, the checkpoint staging folder is removed, one
`interrupted: …` line is printed and the process exits 130. The next `vae run` resumes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any


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


FAILED_BY_INTERRUPT_SECONDS = 30.0


def on_interrupt(pipeline: str) -> None:
    """Ctrl-C or SIGTERM during `vae run`: mark the MLflow run KILLED, stop Ray and the Prefect server,
    remove the checkpoint staging folder, one line, exit 130. The next `vae run` resumes."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    killed: list[str] = []

    from flows.train import ACTIVE_RUNS, INTERRUPTED

    INTERRUPTED.set()  # a training that fails from here on failed from this interrupt

    def mark_killed() -> None:
        from vae import registry

        for run_id in sorted(ACTIVE_RUNS):
            with contextlib.suppress(Exception):
                # The same Ctrl-C reached the Ray workers: a run whose training failed from it just
                # before this handler ran is KILLED too.
                if registry.kill_if_running(run_id, failed_within=FAILED_BY_INTERRUPT_SECONDS):
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


def in_thread(function, *args) -> Any:
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


def run_pipeline(pipeline: str, file: Path, workers, gpu, resume: bool, force: bool) -> dict[str, Any]:
    """The pipeline flow on this run's own Prefect server (unless PREFECT_API_URL names one)."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: on_interrupt(pipeline))
    arguments = (pipeline, str(file.resolve()), workers, gpu, resume, force)
    if os.environ.get("PREFECT_API_URL"):
        from flows.pipeline import pipeline_flow

        return in_thread(pipeline_flow, *arguments)
    from flows.local_server import local_server

    with local_server() as api_url:
        os.environ["PREFECT_API_URL"] = api_url  # before Prefect is imported: every thread of it sees the URL
        try:
            from flows.pipeline import pipeline_flow

            return in_thread(pipeline_flow, *arguments)
        finally:
            os.environ.pop("PREFECT_API_URL", None)
