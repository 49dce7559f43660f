"""Where Ray runs: connect to $RAY_ADDRESS, or start a quiet local Ray for this process.

The one place that calls `ray.init`; training, evaluation and embedding all ask for Ray here.
"""

from __future__ import annotations

import logging
import os

from vae.config import ray_address


def ensure_ray(training_cpus: int = 0) -> None:
    """Connect to $RAY_ADDRESS, or start a quiet local Ray.

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
    ray.init(
        address=address,
        num_cpus=None if address else max(os.cpu_count() or 1, training_cpus) + 2,
        include_dashboard=False,
        logging_level=logging.INFO if verbose else logging.ERROR,
        # Workers' logs stay in Ray's log files unless asked for; progress comes through a queue.
        log_to_driver=verbose,
    )
