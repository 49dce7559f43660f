"""Shared test set-up: isolated local state, one Ray session, one Prefect test server.

State goes to a fresh temporary VAE_HOME (datasets, sqlite MLflow, checkpoints) and
PREFECT_HOME, set before Prefect or MLflow are imported so every test sees the same isolation.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_STATE = Path(tempfile.mkdtemp(prefix="vae-tests-"))
os.environ["VAE_HOME"] = str(_STATE / "home")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STATE / 'home' / 'mlflow.db'}"
os.environ["PREFECT_HOME"] = str(_STATE / "prefect")
os.environ["VAE_STATE_KEY_FILE"] = str(_STATE / "keys" / "state.key")  # outside VAE_HOME, like ~/.config/vae
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("PREFECT_API_URL", None)
(_STATE / "home").mkdir(parents=True, exist_ok=True)

from vae.paths import quiet_environment  # noqa: E402 (after VAE_HOME and PREFECT_HOME are set)

quiet_environment()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole suite: starting Ray costs seconds, a fit tens of seconds."""
    import ray

    from vae.cluster import local_ray_options

    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR", **local_ray_options(num_cpus=4))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_server():
    """Prefect's test harness: a real temporary API server and database for the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE
