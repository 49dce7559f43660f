"""Where Ray runs: connect to $RAY_ADDRESS, or start a quiet local Ray for this process.

The one place that calls `ray.init`; training, evaluation and embedding all ask for Ray here.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys

from vae.paths import ray_address


def prepare_local_ray() -> None:
    """Token authentication for a local Ray, on unless the user configured it; call before importing Ray.

    Ray 2.60's gRPC servers (GCS, raylet, workers, agents) bind to every interface whatever the
    node address, so binding to 127.0.0.1 alone cannot keep them closed: a random per-process token
    does. Ray reads the mode when it is imported; workers inherit both from the environment.
    """
    if ray_address() or "RAY_AUTH_MODE" in os.environ or "ray" in sys.modules:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def ensure_ray(training_cpus: int = 0) -> None:
    """Connect to $RAY_ADDRESS, or start a quiet local Ray on 127.0.0.1 (token auth: `prepare_local_ray`).

    A local Ray gets two logical CPUs more than the training workers reserve: Ray Data's read
    tasks need CPUs of their own, and with none left they would wait forever for the workers.
    """
    import ray

    if ray.is_initialized():
        return
    address = ray_address()
    verbose = os.environ.get("VAE_VERBOSE") == "1"
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    local = {}
    if not address:
        # Advertised and HTTP addresses on loopback; the dashboard is off (its agent stays, behind the token).
        local = {"_node_ip_address": "127.0.0.1", "num_cpus": max(os.cpu_count() or 1, training_cpus) + 2}
    ray.init(
        address=address,
        include_dashboard=False,
        logging_level=logging.INFO if verbose else logging.ERROR,
        # Workers' logs stay in Ray's log files unless asked for; progress comes through a queue.
        log_to_driver=verbose,
        **local,
    )
