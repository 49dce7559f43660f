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


@pytest.fixture(autouse=True)
def _environment_restored():
    """What a test's in-process `vae` command sets in os.environ (e.g. PREFECT_LOCAL_STORAGE_PATH under
    a monkeypatched VAE_HOME) ends with the test: later tests, and the commands they start, see the
    suite's own environment whatever order they run in. Session and module fixtures set theirs
    before this snapshot."""
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


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
    """Prefect's test harness: a real temporary API server and database for the session, with flow-run
    heartbeats off as `vae run` has them on a server of its own (flows.local_server.heartbeats_off)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.local_server import heartbeats_off

    with prefect_test_harness(server_startup_timeout=180), heartbeats_off():
        yield


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


# The modules that take longest (a minute or more each, mostly `vae run`s, Ray Train fits and the
# loopback cluster) go first, then the rest of the integration tests, then the unit tests: with the
# suite spread over workers by module (pyproject: -n auto --dist loadfile --no-loadscope-reorder),
# the short modules fill the gaps at the end instead of a long one running alone.
_LONGEST_FIRST = ("test_cluster", "test_hardening_run", "test_registry_gate", "test_training", "test_tune")


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> tuple[int, int]:
        module = item.path.stem
        if module in _LONGEST_FIRST:
            return 0, _LONGEST_FIRST.index(module)
        return (1 if item.get_closest_marker("integration") else 2), 0

    items.sort(key=rank)  # stable: within a rank, collection order


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): a worker per core, at most four. Each worker starts its own
    Ray and Prefect test server (~10 s of CPU) and its own state folder; with more, those set-ups
    outweigh what the integration tests gain."""
    return max(1, min(os.cpu_count() or 1, 4))
