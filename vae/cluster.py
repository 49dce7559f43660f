"""Where Ray runs: connect to $RAY_ADDRESS, or start a quiet local Ray for this process.

The one place that calls `ray.init`; training, evaluation and embedding all ask for Ray here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import threading

from vae.paths import ray_address


def prepare_local_ray() -> None:
    """A local Ray on loopback with token authentication (unless the user configured it); call before importing Ray.

    Ray 2.60's servers bind to the node address, and on Linux Ray turns a loopback node address into
    the host's own IP (gRPC then on every interface, the agents' metrics export on 0.0.0.0), unless
    it is told the node is one machine, as it is by default on macOS and Windows: then every server
    binds 127.0.0.1. The Prometheus metrics servers ask for no token; every other server (its gRPC
    health check aside) refuses a client without the random per-process token, other users of this
    machine included. Ray reads both settings when it is imported; workers inherit them.
    """
    if ray_address() or "ray" in sys.modules:
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read by Ray when imported
    if "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


# Ray Train settings for a Ray this process starts on one machine (unless the user set them): a fit's
# fixed cost on 2 cores is its actors' process starts, ~1.5 s of CPU each (issue 26, BENCHMARKS.md).
LOCAL_TRAIN_ENVIRONMENT = {
    # Spot-instance preemption: there is none to watch on one machine, and the watcher is an actor (a
    # process) per fit.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # The controller polls its workers every 0.25 s, not 2: it sees a worker group up, a fit done or a
    # worker dead up to 1.75 s sooner, at the cost of a few more local RPCs (one per worker per poll).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}

# The raylet's own settings for that Ray: no Python workers started beside the first driver's
# connection (one per logical CPU). Ray Train's actors never run in them (each actor gets a process
# of its own), and on a small machine their imports compete with the start of everything else.
LOCAL_SYSTEM_CONFIG = {"prestart_worker_first_driver": False}


# Set in the environment of a Ray that vae starts, so that its raylet and every worker (a Tune trial
# that fits, say) inherit it: `is_own_ray` there too.
OWN_RAY = "VAE_OWN_RAY"


def is_own_ray() -> bool:
    """Whether this process runs on a Ray that vae started on this machine (`local_ray_options`): one
    node, fixed resources, gone with the command. Not on a cluster reached through $RAY_ADDRESS."""
    return os.environ.get(OWN_RAY) == "1" and not ray_address()


def local_ray_options(num_cpus: int) -> dict:
    """`ray.init` keywords for a Ray this process starts on this machine (the CLI, the flows and the
    tests' own Ray): loopback only, `num_cpus` logical CPUs, and the settings above (Ray Train's read
    from the environment, set here unless the user set them)."""
    for name, value in LOCAL_TRAIN_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    os.environ[OWN_RAY] = "1"
    return {"_node_ip_address": "127.0.0.1", "num_cpus": num_cpus, "_system_config": dict(LOCAL_SYSTEM_CONFIG)}


_STARTING = threading.Lock()  # `vae run` starts Ray in a thread of its own while Prefect starts (vae.cli.interrupts)


def ensure_ray(training_cpus: int = 0) -> None:
    """Connect to $RAY_ADDRESS, or start a quiet local Ray on 127.0.0.1 (token auth: `prepare_local_ray`).

    A local Ray gets two logical CPUs more than the training workers reserve: Ray Data's read
    tasks need CPUs of their own, and with none left they would wait forever for the workers.
    """
    import ray

    with _STARTING:  # a second caller waits for the first's Ray, then finds it
        if not ray.is_initialized():
            try:
                _start_ray(training_cpus)
            except BaseException:
                with contextlib.suppress(Exception):
                    ray.shutdown()  # what a failed start left running: the next call starts clean
                raise


def has_gpu() -> bool:
    """Whether the Ray this process is connected to has a GPU on any node (what `use_gpu` falls back on)."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def wait_for_ray_start(timeout: float) -> None:
    """Return once no thread is inside `ensure_ray` (or after `timeout` seconds): a process that exits while
    another thread starts Ray would run Ray's exit handler beside its start."""
    if _STARTING.acquire(timeout=timeout):
        _STARTING.release()


def _start_ray(training_cpus: int) -> None:
    import ray

    address = ray_address()
    verbose = os.environ.get("VAE_VERBOSE") == "1"
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    local = {}
    if not address:
        # With `prepare_local_ray` every server binds loopback; the dashboard is off (its agent stays, behind the token).
        local = local_ray_options(max(os.cpu_count() or 1, training_cpus) + 2)
    ray.init(
        address=address or "local",  # never a cluster `ray start` left in /tmp/ray/ray_current_cluster
        include_dashboard=False,
        logging_level=logging.INFO if verbose else logging.ERROR,
        # Workers' logs stay in Ray's log files unless asked for; progress comes through a queue.
        log_to_driver=verbose,
        **local,
    )
