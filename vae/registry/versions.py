"""MLflow model versions: logging the pyfunc and registering it, the aliases `challenger` and
`champion` and the gate that moves `champion` (its rule is vae.registry.gate's), the model card's
description, and fetching or resolving a registered model.

A pipeline run's model version is registered under the pipeline's model name with alias `challenger`,
and `champion` moves to it only when its held-out NLL beats the current champion's by more than the
configured margin.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from vae.config import PipelineConfig
from vae.errors import RegistryError
from vae.paths import tracking_uri
from vae.registry.gate import evaluation_protocol, nll_kind, protocol_of, should_promote
from vae.registry.pyfunc import served_signature
from vae.registry.runs import client, code_version, is_transient

CHAMPION = "champion"
METADATA_FILE = "metadata.json"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Registration:
    """What registration returns: the model version's URI and whether it became champion."""

    model_name: str
    version: int
    model_uri: str
    run_id: str
    champion: bool
    champion_uri: str | None
    previous_champion_nll: float | None
    gate: str = ""  # the gate's verdict, as tagged on the version ("promoted", "not promoted[: why]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _gate_lock(uri: str):
    """Serialise gates that share a local sqlite store (a file lock beside the database); yields the seconds
    `_move_alias` lets a write settle before it reads it back: none under the lock, where no other gate
    writes meanwhile."""
    if not uri.startswith("sqlite:///"):
        yield SETTLE_SECONDS  # a server: the verify-after-write loop of _move_alias settles races
        return
    import fcntl

    with open(uri[len("sqlite:///") :] + ".gate.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield 0.0
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class NotComparableError(RegistryError):
    """The new version's NLL and the champion's measure different things (vae.registry.gate.nll_kind)."""


def _alias_target(mlflow_client, name: str, alias: str):
    """The version `alias` names, or None (no such model or alias)."""
    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _nll_on(mlflow_client, name: str, version, protocol: str, evaluate: Callable[[str], float] | None) -> float | None:
    """A version's NLL under `protocol`: its own tag, a cached re-evaluation, or a new one."""
    if protocol_of(version.tags) == protocol:
        return float(version.tags["test_nll"])
    cached = version.tags.get(f"test_nll_on.{protocol}")
    if cached is not None:
        return float(cached)
    if evaluate is None:
        return None
    nll = float(evaluate(f"models:/{name}/{version.version}"))
    mlflow_client.set_model_version_tag(name, str(version.version), f"test_nll_on.{protocol}", repr(nll))
    return nll


SETTLE_SECONDS = 0.2  # how long an alias write on a shared server is left to meet a concurrent one


def _move_alias(
    mlflow_client, name: str, alias: str, number: int, wins: Callable[[Any], bool], tries: int = 10,
    settle_seconds: float = SETTLE_SECONDS,
) -> bool:  # fmt: skip
    """Point `alias` at version `number` if `wins(the version it names now, or None)`; whether it does.

    MLflow sets an alias by reading, then writing, so two registrations at once race: the later
    write wins, whichever model it is. So after each write the alias is read back and, if another
    version holds it, decided again against that one: whichever write lands last, the version that
    `wins` prefers ends up there. A write refused on the alias table's unique key (a concurrent
    writer created the alias first) is decided again too; a refusal with no alias there is raised.
    """
    for _ in range(tries):
        current = _alias_target(mlflow_client, name, alias)
        if current is not None and int(current.version) == number:
            return True
        if not wins(current):
            return False
        try:
            mlflow_client.set_registered_model_alias(name, alias, str(number))
        except MlflowException:
            if _alias_target(mlflow_client, name, alias) is None:
                raise  # no alias there: not a race, a real failure
        time.sleep(settle_seconds * (1 + random.random()))
    current = _alias_target(mlflow_client, name, alias)
    return current is not None and int(current.version) == number


def promote_if_better(
    mlflow_client,
    name: str,
    number: int,
    nll: float,
    protocol: str,
    margin: float,
    evaluate: Callable[[str], float] | None = None,
    settle_seconds: float = SETTLE_SECONDS,
    kind: str = "binary",
) -> tuple[bool, float | None]:
    """Move `champion` to version `number` iff its NLL beats the champion's on the same data by > margin
    (`should_promote`), settling a race with a concurrent gate as `_move_alias` does.

    The champion is compared under the new version's evaluation protocol (`evaluation_protocol`:
    dataset version, split, k, binarisation seed), re-evaluated with `evaluate` when it was scored
    under another one. NLLs of different kinds (`kind`: an exact 8-bit NLL against a dequantised
    bound, binary pixels against 8-bit ones) are never compared: NotComparableError, the champion
    stays. Returns (promoted, the previous champion's NLL on this dataset or None).
    """
    compared: list[float | None] = []  # the champion's NLL at each decision

    def wins(current) -> bool:
        if current is None:
            return should_promote(nll, None, margin)
        if nll_kind(current.tags) != kind:
            raise NotComparableError(
                f"{name} version {number} is not compared with champion version {current.version}: its NLL "
                f"is of {kind} data, the champion's of "
                f"{nll_kind(current.tags)}; the champion stays (set the alias by hand to switch likelihoods)"
            )
        current_nll = _nll_on(mlflow_client, name, current, protocol, evaluate)
        compared.append(current_nll)
        # Not comparable and no way to evaluate it: keep the champion.
        return current_nll is not None and should_promote(nll, current_nll, margin)

    if _move_alias(mlflow_client, name, CHAMPION, number, wins, settle_seconds=settle_seconds):
        return True, compared[0] if compared else None  # the champion it replaced, as first compared
    return False, compared[-1] if compared else None  # the champion that stays


def _point_challenger(mlflow_client, name: str, number: int, settle_seconds: float = SETTLE_SECONDS) -> None:
    """`challenger` names the newest version registered: a race between two registrations leaves
    it on the later one, and a rerun that registers an older version again does not take it back."""

    def newer(current) -> bool:
        return current is None or int(current.version) < number

    _move_alias(mlflow_client, name, CHALLENGER, number, newer, settle_seconds=settle_seconds)


def _version_of_run(mlflow_client, name: str, run_id: str):
    """The version of `name` already registered from `run_id`, if any."""
    try:
        found = mlflow_client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def _ensure_registered_model(mlflow_client, name: str) -> None:
    """Create the registered model unless it exists; a refused name is one permanent error."""
    try:
        mlflow_client.get_registered_model(name)
        return
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            if is_transient(exc):
                raise
            raise RegistryError(f"registry.model_name '{name}': {str(exc).splitlines()[0]}") from None
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as exc:
        if is_transient(exc):
            raise
        if mlflow_client.search_registered_models(f"name = '{name}'"):
            return  # created concurrently
        raise RegistryError(f"registry.model_name '{name}': {str(exc).splitlines()[0]}") from None


def _log_and_create_version(
    mlflow_client,
    name: str,
    run_id: str,
    checkpoint_dir: str,
    binarize: str,
    manifest: dict[str, Any],
    dataset: dict[str, str],
    example: np.ndarray,
):
    """Log the pyfunc (models from code: checkpoint + metadata as artifacts) and register it."""
    import torch

    from vae.config import ModelConfig
    from vae.models.model import CHECKPOINT_FILE, read_checkpoint_state
    from vae.user_code import add_search_paths, code_paths

    state = read_checkpoint_state(checkpoint_dir, mmap=True)
    add_search_paths(state.get("code_dirs", ()))
    # Users' network modules travel inside the registered model: serving needs nothing else.
    own_code = code_paths(ModelConfig(**state["model_config"]).network_specs)
    _ensure_registered_model(mlflow_client, name)  # a name the registry refuses fails before anything is logged
    with tempfile.TemporaryDirectory() as staging:
        checkpoint = Path(staging) / CHECKPOINT_FILE
        shutil.copy(Path(checkpoint_dir) / CHECKPOINT_FILE, checkpoint)
        metadata = Path(staging) / METADATA_FILE
        metadata.write_text(
            json.dumps(
                {
                    "max_value": manifest["value_range"][1],
                    "binarize": binarize,
                    "shape": manifest["shape"],
                    "dataset_hash": dataset["content_hash"],
                    "dataset_version": dataset["version"],
                }
            )
        )
        with mlflow.start_run(run_id=run_id, log_system_metrics=False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("mlflow_model.py")),  # models from code
                artifacts={"checkpoint": str(checkpoint), "metadata": str(metadata)},
                signature=served_signature(),
                input_example=example.astype(np.float32),
                code_paths=[str(Path(__file__).parents[1]), *own_code],  # the whole vae package
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"numpy=={np.__version__}",
                    f"mlflow=={mlflow.__version__}",
                    "pydantic>=2",
                ],
            )
    version = mlflow_client.create_model_version(name, source=info.model_uri, run_id=run_id, model_id=info.model_id)
    return version


def register_model(
    config: PipelineConfig,
    run_id: str,
    checkpoint_dir: str,
    evaluation: dict[str, Any],
    dataset: dict[str, str],
    manifest: dict[str, Any],
    example: np.ndarray,
    uri: str | None = None,
    evaluate_champion: Callable[[str], float] | None = None,
) -> Registration:
    """Log the pyfunc to the run, register a version (alias `challenger`), tag it, apply the gate."""
    uri = uri or tracking_uri()
    mlflow_client = client(uri)
    name = config.registry.model_name
    existing = _version_of_run(mlflow_client, name, run_id)
    if existing is not None:  # a rerun of a flow that crashed after registering: register once
        version = existing
    else:
        version = _log_and_create_version(
            mlflow_client, name, run_id, checkpoint_dir, config.dataset.binarize, manifest, dataset, example
        )
    number = int(version.version)
    kind = evaluation.get("bits_per_dim_kind", "binary")
    protocol = evaluation_protocol(dataset["version"], evaluation["k"], evaluation["split"], config.evaluation.seed)
    tags = {
        "dataset_hash": dataset["content_hash"],
        "dataset_version": dataset["version"],
        "test_nll": repr(float(evaluation["nll"])),  # full precision: what the gate compares
        "test_nll_stderr": repr(float(evaluation["nll_stderr"])),
        "test_nll_pm": f"{evaluation['nll']:.3f} ± {evaluation['nll_stderr']:.3f}",
        "bits_per_dim": f"{evaluation.get('bits_per_dim', math.nan):.4f} ({kind})",
        "nll_kind": kind,
        "k": str(evaluation["k"]),
        "evaluated_as": protocol,
        "code_version": code_version(),
    }
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, str(number), key, value)
    gate = None
    with _gate_lock(uri) as settle_seconds:
        _point_challenger(mlflow_client, name, number, settle_seconds)
        try:
            promoted, previous = promote_if_better(
                mlflow_client,
                name,
                number,
                float(evaluation["nll"]),
                protocol,
                config.registry.promote_margin,
                evaluate_champion,
                settle_seconds=settle_seconds,
                kind=kind,
            )
        except NotComparableError as exc:
            promoted, previous, gate = False, None, f"not promoted: {exc}"
    gate = gate or ("promoted" if promoted else "not promoted")
    mlflow_client.set_model_version_tag(name, str(number), "gate", gate)
    mlflow_client.set_tag(run_id, "model_uri", f"models:/{name}/{number}")
    return Registration(
        model_name=name,
        version=number,
        model_uri=f"models:/{name}/{number}",
        run_id=run_id,
        champion=promoted,
        champion_uri=f"models:/{name}@{CHAMPION}" if promoted else None,
        previous_champion_nll=previous,
        gate=gate,
    )


def champion_version(name: str, uri: str | None = None) -> str | None:
    """The version `champion` points at now, or None (no such model or alias)."""
    current = _alias_target(client(uri), name, CHAMPION)
    return None if current is None else str(current.version)


def describe_version(name: str, version: int | str, tags: dict[str, str], card, uri: str | None = None) -> str:
    """Add `tags` to a model version, then set its description to `card(all its tags)` (the model card)."""
    mlflow_client = client(uri)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, str(version), key, value)
    text = card(dict(mlflow_client.get_model_version(name, str(version)).tags))
    mlflow_client.update_model_version(name, str(version), description=text)
    return text


def version_description(model_uri: str, uri: str | None = None) -> tuple[str, str, str]:
    """models:/NAME@ALIAS or models:/NAME/VERSION → (NAME, VERSION, its description)."""
    name, version = resolve_model_version(model_uri, uri)
    if name is None:
        raise RegistryError(f"model '{model_uri}': expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, version, client(uri).get_model_version(name, version).description or ""


def download_model(model_uri: str, uri: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Fetch a logged or registered model's checkpoint; returns (checkpoint directory, metadata)."""
    client(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except MlflowException as exc:
        raise RegistryError(f"model '{model_uri}': {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise RegistryError(f"model '{model_uri}': cannot download: {exc}") from None
    artifacts = local / "artifacts"
    if not (artifacts / METADATA_FILE).exists():
        raise RegistryError(f"model '{model_uri}': not a vae model (no artifacts/{METADATA_FILE})")
    return artifacts, json.loads((artifacts / METADATA_FILE).read_text())


def resolve_model_version(model_uri: str, uri: str | None = None) -> tuple[str | None, str | None]:
    """models:/NAME@ALIAS or models:/NAME/VERSION → (NAME, VERSION); other URIs → (None, None).

    An alias or version that does not exist is one line naming it.
    """
    if not model_uri.startswith("models:/"):
        return None, None
    path = model_uri[len("models:/") :].strip("/")
    mlflow_client = client(uri)
    try:
        if "@" in path:
            name, alias = path.split("@", 1)
            return name, str(mlflow_client.get_model_version_by_alias(name, alias).version)
        name, _, version = path.partition("/")
        if not version:
            raise RegistryError(f"model '{model_uri}': expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return name, str(mlflow_client.get_model_version(name, version).version)
    except MlflowException as exc:
        raise RegistryError(f"model '{model_uri}': {str(exc).splitlines()[0]}") from None
