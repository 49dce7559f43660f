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


def _running(pid: int) -> bool:
    """Whether `pid` still runs: a zombie (dead, its exit status not yet collected) does not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# The local Ray's processes that this process's own Ray connection depends on: when the raylet (it
# holds the object store) goes away, Ray ends the process at once with exit code 1 ("The connection
# to the plasma store is failed. Terminate the process.") from a thread of its own.
RAY_CORE_PROCESSES = ("raylet", "gcs_server")


def _freeze_ray_core(pids: list[int]) -> list[int]:
    """SIGSTOP the local Ray's raylet and GCS: they start no worker and close no connection until this
    process exits, and then the kernel kills them (Ray starts them with PR_SET_PDEATHSIG)."""
    import signal

    frozen = [pid for pid in pids if _command_name(pid) in RAY_CORE_PROCESSES]
    for pid in frozen:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGSTOP)
    return frozen


def _stop_processes(pids: list[int], grace: float = 5.0) -> None:
    import signal
    import time

    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap our own children so they do not linger as zombies
                pass
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


FAILED_BY_INTERRUPT_SECONDS = 30.0


def on_interrupt(pipeline: str, session: str) -> None:
    """Ctrl-C or SIGTERM during `vae run`: mark the MLflow runs of this run's `session` KILLED (the token
    run_pipeline passed to the flow, which tagged them), stop Ray and the Prefect server, remove the
    checkpoint staging folder, one line, exit 130. The next `vae run` resumes.

    Nothing else may end the process first: the raylet is frozen rather than killed (its end would make
    Ray exit this process with code 1), and whatever fails in here still ends in the line and exit 130.
    A training that fails from the stopped workers before its run is marked KILLED marks it FAILED, and
    this makes it KILLED (FAILED_BY_INTERRUPT_SECONDS); one that fails after finds it KILLED and leaves it.
    """
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    killed: list[str] = []

    def mark_killed() -> None:
        from vae.registry import runs as mlflow_runs

        try:
            opened = mlflow_runs.runs_of_session(session)
        except Exception:  # the store unreachable: the line still says no run was marked
            return
        for run_id in opened:
            with contextlib.suppress(Exception):
                # A SIGTERM to the whole process group reaches Ray's raylet too: a run whose training
                # failed from it just before this handler ran is KILLED too.
                if mlflow_runs.kill_if_running(run_id, failed_within=FAILED_BY_INTERRUPT_SECONDS):
                    killed.append(run_id)

    try:
        frozen = _freeze_ray_core(_descendants(os.getpid()))
        others = [pid for pid in _descendants(os.getpid()) if pid not in frozen]
        # Ray's workers, agents and monitors at once: with the raylet and GCS stopped they cannot shut
        # down cleanly. This run's Prefect server, in a session of its own (flows.local_server), is
        # given time to.
        _stop_processes([pid for pid in others if _session(pid) == os.getsid(0)], grace=0)
        _stop_processes([pid for pid in others if _session(pid) != os.getsid(0)])
        # In a thread with a deadline: the interrupted main thread may hold a lock the store needs.
        marker = threading.Thread(target=mark_killed, daemon=True)
        marker.start()
        marker.join(timeout=15)
        import shutil

        from vae.paths import checkpoints_dir

        for run_id in killed:  # what the stopped workers left half-written
            for staging in (checkpoints_dir() / ".staging").glob(f"*-{run_id}"):
                shutil.rmtree(staging, ignore_errors=True)
    finally:
        runs = f"MLflow run {', '.join(killed)} marked KILLED" if killed else "no MLflow run was open"
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.write(f"interrupted: pipeline '{pipeline}' stopped ({runs}); `vae run {pipeline}` resumes\n")
            sys.stderr.flush()
        os._exit(130)


def exit_at_once(code: int = 0) -> None:
    """End `vae run` or `vae tune` now, once its result is printed and what it started is of no more use: the
    local Ray's processes are killed and the process exits without Ray's graceful shutdown and the
    interpreter's teardown (~4 s of a ~50 s run on 2 cores, issue 26). Everything the command wrote is
    already durable: MLflow's sqlite store commits each call, checkpoints, Parquet and records are renamed
    into place, and the flow's logs went to its Prefect server before that server stopped
    (flows.local_server.detach_api_logs). Only for a Ray and a Prefect server of this process's own: with
    $RAY_ADDRESS or $PREFECT_API_URL the normal exit disconnects and sends what is still queued."""
    from vae.paths import ray_address

    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    if ray_address() or os.environ.get("PREFECT_API_URL"):
        sys.exit(code)
    _stop_processes(_descendants(os.getpid()), grace=0)
    os._exit(code)


def in_thread(function, *args) -> Any:
    """Run `function` in a worker thread; the main thread stays free for our signal handlers.

    Off the main thread, Ray Train installs no SIGINT handler of its own (it would swallow Ctrl-C
    into a slow "graceful abort" and a silent exit 1).

    The thread does not end when `function` does: the local Ray may be started from it (when
    start_services_early's thread has not started it first), with PR_SET_PDEATHSIG, which the kernel
    fires when the *thread* that started a process ends. Were it to end, the raylet would be killed
    under this process's own Ray connection, and Ray would end the process with exit code 1 before
    an error line or an interrupt's exit 130.
    """
    import threading

    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["result"] = function(*args)
        except BaseException as exc:  # handed to the main thread as is
            outcome["error"] = exc
        done.set()
        threading.Event().wait()  # parked until the process exits (a daemon thread)

    worker = threading.Thread(target=target, name="vae-run", daemon=True)
    worker.start()
    while not done.wait(timeout=0.2):
        pass
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def start_services_early(training_cpus: int) -> None:
    """While `vae run` waits for its Prefect server and ingests, start what the flow will ask for anyway,
    each in a thread of its own: the sqlite MLflow store (vae.registry.runs.prepare_store_in_background:
    the flow's first MLflow call waits for it), and a local Ray sized for the pipeline's training workers,
    in a parked thread (the processes it starts must outlive it, see in_thread; not with $RAY_ADDRESS:
    connecting is quick). A failure here is left for the flow to meet again with its own one-line error;
    vae.cluster.ensure_ray makes the flow's call wait for this one."""
    import threading

    from vae.paths import ray_address
    from vae.registry import runs

    runs.prepare_store_in_background()

    def ray_up() -> None:
        with contextlib.suppress(BaseException):
            from vae.cluster import ensure_ray

            ensure_ray(training_cpus)
        threading.Event().wait()  # parked until the process exits (a daemon thread)

    if not ray_address():
        threading.Thread(target=ray_up, name="vae-ray", daemon=True).start()


def keep_sigterm_from_ray() -> None:
    """Ray's C++ failure-signal handler, installed when this process connects to Ray, would replace
    ours for SIGTERM (the process then aborts: no KILLED run, no line, exit -6). Off for this process
    alone: Ray reads the switch where it connects; the processes it starts keep their crash reports."""
    from ray._private import ray_constants  # imports Ray: after prepare_local_ray (vae.cli.app.quiet_logs)

    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True


def run_pipeline(
    pipeline: str, file: Path, workers, gpu, resume: bool, force: bool, training_cpus: int = 0
) -> dict[str, Any]:
    """The pipeline flow on this run's own Prefect server (unless PREFECT_API_URL names one); Ray and the
    MLflow store start while that server does (`start_services_early`, for `training_cpus`)."""
    import secrets
    import signal

    keep_sigterm_from_ray()
    session = secrets.token_hex(8)  # the flow tags this run's MLflow runs with it; the handler finds them by it
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: on_interrupt(pipeline, session))
    arguments = (pipeline, str(file.resolve()), workers, gpu, resume, force, session)
    if os.environ.get("PREFECT_API_URL"):
        from flows.pipeline import pipeline_flow

        return in_thread(pipeline_flow, *arguments)
    from flows.local_server import starting_local_server, without_heartbeats

    from vae.cluster import wait_for_ray_start

    with starting_local_server() as (api_url, answering):
        os.environ["PREFECT_API_URL"] = api_url  # before Prefect is imported: every thread of it sees the URL
        try:
            # While the server starts: ~6 s of imports (Prefect, torch, Ray Train, MLflow), all in this thread
            # (no two threads import one package at once), then Ray and the MLflow store in threads of their own.
            from flows.pipeline import pipeline_flow

            start_services_early(training_cpus)
            answering()
            return in_thread(without_heartbeats(pipeline_flow), *arguments)
        finally:
            from vae.registry.runs import wait_for_store

            os.environ.pop("PREFECT_API_URL", None)
            # A flow that failed early (bad data) ends after Ray's start and the store's, not during them.
            wait_for_ray_start(timeout=60)
            wait_for_store(timeout=60)
