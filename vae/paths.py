"""Where local state lives and which services a process talks to: VAE_HOME and the environment.

VAE_HOME (default ./.vae) holds datasets, the sqlite MLflow store and its artifacts, Ray
checkpoints and Prefect's task results; the standard variables (MLFLOW_TRACKING_URI,
PREFECT_API_URL, RAY_ADDRESS) win when set. Every path built from a name of pipelines.yaml goes
through `inside`, so a name can never lead out of its root.
"""

from __future__ import annotations

import os
from pathlib import Path

from vae.errors import ConfigError


def vae_home() -> Path:
    """The root of local state: $VAE_HOME, else ./.vae (absolute, so Ray workers agree)."""
    return Path(os.environ.get("VAE_HOME") or ".vae").expanduser().resolve()


def inside(root: str | Path, *parts: str) -> Path:
    """root / parts, refused unless it stays strictly inside root (names from a file build these paths).

    Judged on the spelled path (no symlinks followed), so a root that is itself a link still works.
    """
    base = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(base, *(str(p) for p in parts)))
    if not parts or path == base or os.path.commonpath([base, path]) != base:
        spelled = "/".join(str(p) for p in parts)
        raise ConfigError(
            f"{base}: {spelled!r} leads to {path}, not inside it "
            "(expected names of letters, digits, '_', '.' or '-', without '/' or '..')"
        )
    return Path(path)


def datasets_dir() -> Path:
    return vae_home() / "datasets"


def dataset_dir(name: str, version: str, root: str | Path | None = None) -> Path:
    """Where a dataset version lives: root (VAE_HOME/datasets) / name / version, checked to stay inside."""
    return inside(root if root is not None else datasets_dir(), name, version)


def checkpoints_dir() -> Path:
    return vae_home() / "checkpoints"


def embeddings_dir() -> Path:
    return vae_home() / "embeddings"


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI if set, else a sqlite store under VAE_HOME."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home = vae_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def artifacts_uri(experiment: str | None = None) -> str:
    """Where the local sqlite store keeps artifacts (of one experiment, checked to stay inside)."""
    root = vae_home() / "mlartifacts"
    return (inside(root, experiment) if experiment is not None else root).as_uri()


def ray_address() -> str | None:
    """$RAY_ADDRESS if set (connect to a cluster); None starts a local Ray."""
    return os.environ.get("RAY_ADDRESS") or None


def quiet_environment() -> None:
    """Defaults for a machine with no internet and a user who wants one line per epoch."""
    defaults = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The ephemeral server's first start migrates its database: >20 s on a busy 2-core box.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "TQDM_DISABLE": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
