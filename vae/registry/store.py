"""MLflow: runs, metrics, artifacts, model versions, aliases and the champion gate.

The one home of the MLflow client (vae/registry/serving.py holds the served model class, built on PythonModel and RequestError from here). A pipeline run is one MLflow run; its model version is
registered under the pipeline's model name with alias `challenger`, and `champion` moves to
it only when its held-out NLL beats the current champion's by more than the configured margin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
from mlflow import MlflowClient
from mlflow.types.schema import ParamSchema, ParamSpec
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    INTERNAL_ERROR,
    REQUEST_LIMIT_EXCEEDED,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
    ErrorCode,
)

import vae
from vae.config import PipelineConfig
from vae.paths import artifacts_uri, tracking_uri
from vae.errors import RegistryError

CHAMPION = "champion"
METADATA_FILE = "metadata.json"
CHALLENGER = "challenger"


def _quiet() -> None:
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client(uri: str | None = None):
    """An MlflowClient on the tracking store (sqlite under VAE_HOME unless MLFLOW_TRACKING_URI is set)."""
    _quiet()
    uri = uri or tracking_uri()
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # for the fluent API (log_model); it also exports the URI...
    mlflow.set_registry_uri(uri)
    if exported is None:  # ...which must not change where later calls of ours go by default
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def code_version() -> str:
    """The library version, plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parents[1],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{vae.__version__}+g{sha}"
    except (OSError, subprocess.SubprocessError):
        return vae.__version__


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, item, out)
    else:
        out[prefix] = str(value)


def _experiment_id(mlflow_client, name: str, local: bool) -> str:
    """Get or create the experiment; a concurrent pipeline may create it first, which is fine."""
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifacts_uri(name) if local else None)
    except MlflowException:
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def start_run(config: PipelineConfig, dataset: dict[str, str], uri: str | None = None) -> str:
    """Create the pipeline's MLflow run with its params; returns the run id."""
    mlflow_client = client(uri)
    experiment_id = _experiment_id(mlflow_client, config.experiment, (uri or tracking_uri()).startswith("sqlite:"))
    params: dict[str, str] = {}
    # The search section shapes `vae tune`, not this training (and would push past 100 params a batch).
    _flatten("", config.model_dump(mode="json", exclude={"name", "search"}), params)
    run = mlflow_client.create_run(
        experiment_id,
        run_name=f"{config.name}-{dataset['version']}",
        tags={
            "pipeline": config.name,
            "dataset_hash": dataset["content_hash"],
            "dataset_version": dataset["version"],
            "code_version": code_version(),
        },
    )
    mlflow_client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in sorted(params.items())])
    return run.info.run_id


def start_search_run(
    config: PipelineConfig, dataset: dict[str, str], search: dict[str, Any], uri: str | None = None
) -> str:
    """The parent run of a hyperparameter search: the pipeline's params plus `search.*`; returns its id."""
    run_id = start_run(config, dataset, uri)
    params: dict[str, str] = {}
    _flatten("search", search, params)
    mlflow_client = client(uri)
    batch = [Param(k, v[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(batch), 100):  # MLflow takes at most 100 params a batch
        mlflow_client.log_batch(run_id, params=batch[start : start + 100])
    mlflow_client.set_tag(run_id, "mlflow.runName", f"{config.name}-search-{dataset['version']}")
    mlflow_client.set_tag(run_id, "search", "parent")
    return run_id


def start_trial_run(
    config: PipelineConfig, dataset: dict[str, str], parent_run_id: str, trial_id: str, uri: str | None = None
) -> str:
    """A trial's child run (MLflow's `mlflow.parentRunId` tag) with the trial's params; a resumed
    search reopens the run its trial already has instead of starting a second one."""
    mlflow_client = client(uri)
    experiment_id = mlflow_client.get_run(parent_run_id).info.experiment_id
    found = mlflow_client.search_runs(
        [experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.trial_id = '{trial_id}'",
        max_results=1,
    )
    if found:
        mlflow_client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run_id = start_run(config, dataset, uri)
    for key, value in (("mlflow.parentRunId", parent_run_id), ("trial_id", trial_id), ("search", "trial")):
        mlflow_client.set_tag(run_id, key, value)
    mlflow_client.set_tag(run_id, "mlflow.runName", f"{config.name}-trial-{trial_id}")
    return run_id


def child_runs(parent_run_id: str, uri: str | None = None) -> dict[str, str]:
    """The trials of a search: {trial_id: run_id} of the parent's child runs."""
    mlflow_client = client(uri)
    experiment_id = mlflow_client.get_run(parent_run_id).info.experiment_id
    runs = mlflow_client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=10000
    )
    return {run.data.tags.get("trial_id", run.info.run_id): run.info.run_id for run in runs}


def ended_runs(run_ids: list[str], uri: str | None = None) -> list[str]:
    """Those of the runs that ended (FINISHED or FAILED): the trials a resumed search need not count again."""
    mlflow_client = client(uri)
    return [run_id for run_id in run_ids if mlflow_client.get_run(run_id).info.status in ("FINISHED", "FAILED")]


def set_tags(run_id: str, tags: dict[str, str], uri: str | None = None) -> None:
    mlflow_client = client(uri)
    for key, value in tags.items():
        mlflow_client.set_tag(run_id, key, str(value))


def reopen_run(run_id: str, uri: str | None = None) -> None:
    """Mark an interrupted run RUNNING again (a resumed search continues its parent run)."""
    client(uri).update_run(run_id, status="RUNNING")


def run_exists(run_id: str, uri: str | None = None) -> bool:
    """Whether the tracking store still holds the run (and it is not deleted)."""
    try:
        return client(uri).get_run(run_id).info.lifecycle_stage != "deleted"
    except MlflowException:
        return False


def run_link(run_id: str, uri: str | None = None) -> str:
    """A URL of the run in the MLflow UI (for a local store: where `mlflow ui` serves it)."""
    uri = uri or tracking_uri()
    experiment_id = client(uri).get_run(run_id).info.experiment_id
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def log_epoch_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Per-epoch metrics at step `step` (the pipeline passes this as training's on_epoch, on the driver)."""
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch" and math.isfinite(v)]
    client(uri).log_batch(run_id, metrics=batch)


def log_metrics(run_id: str, metrics: dict[str, float], uri: str | None = None) -> None:
    """Scalar metrics at step 0 (the evaluation summary); non-finite values are skipped."""
    now = int(time.time() * 1000)
    finite = sorted((k, float(v)) for k, v in metrics.items() if math.isfinite(float(v)))
    client(uri).log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in finite])


def log_artifacts(run_id: str, files: list[tuple[str | Path, str]], uri: str | None = None) -> None:
    """(local file, artifact folder) pairs logged to the run."""
    mlflow_client = client(uri)
    for path, folder in files:
        mlflow_client.log_artifact(run_id, str(path), folder)


def end_run(run_id: str, status: str = "FINISHED", uri: str | None = None) -> None:
    client(uri).set_terminated(run_id, status)


def kill_if_running(run_id: str, uri: str | None = None, failed_within: float | None = None) -> bool:
    """Mark an interrupted run KILLED (a run that finished before, e.g. a reused one, stays as it is).
    With `failed_within` (seconds), a run that FAILED that recently is taken to have failed from the
    interrupt itself and is marked KILLED too."""
    mlflow_client = client(uri)
    info = mlflow_client.get_run(run_id).info
    recent_failure = (
        failed_within is not None
        and info.status == "FAILED"
        and info.end_time is not None
        and time.time() * 1000 - info.end_time <= failed_within * 1000
    )
    if info.status != "RUNNING" and not recent_failure:
        return False
    mlflow_client.set_terminated(run_id, "KILLED")
    return True


# Error codes that say "try again later"; every other MLflow error (a bad name, a missing
# resource, a permission) is permanent and retrying it would only repeat the side effects.
_TRANSIENT_CODES = {ErrorCode.Name(code) for code in (INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE, REQUEST_LIMIT_EXCEEDED)}


def is_transient(exc: BaseException) -> bool:
    """Whether a registry failure is worth retrying: lost connections and 5xx/429, not bad requests."""
    if isinstance(exc, RegistryError):
        return False
    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES
    return isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.startswith(("requests", "urllib3"))


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
    """Serialise gates that share a local sqlite store (a file lock beside the database)."""
    if not uri.startswith("sqlite:///"):
        yield  # a server: the verify-after-write loop of _move_alias settles races
        return
    import fcntl

    with open(uri[len("sqlite:///") :] + ".gate.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class NotComparableError(RegistryError):
    """The new version's NLL and the champion's measure different things (vae.registry.store.nll_kind)."""


def _alias_target(mlflow_client, name: str, alias: str):
    """The version `alias` names, or None (no such model or alias)."""
    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def evaluation_protocol(dataset_version: str, k: int, split: str, seed: int) -> str:
    """What makes two NLLs comparable: the same dataset version, split, number of importance samples
    (a smaller k biases log p̂(x) down, so the NLL up) and binarisation draw of the evaluated split."""
    return f"{dataset_version}.k{int(k)}.{split}.seed{int(seed)}"


def _protocol_of(tags: dict[str, str]) -> str:
    """A version's evaluation protocol: its tag, or for versions from before it, the defaults they
    were evaluated with (test split, seed 0) and their own dataset version and k."""
    if tags.get("evaluated_as"):
        return tags["evaluated_as"]
    if "dataset_version" not in tags or "k" not in tags:
        return "?"  # matches no protocol: re-evaluated
    return evaluation_protocol(tags["dataset_version"], int(tags["k"]), "test", 0)


def _nll_on(mlflow_client, name: str, version, protocol: str, evaluate: Callable[[str], float] | None) -> float | None:
    """A version's NLL under `protocol`: its own tag, a cached re-evaluation, or a new one."""
    if _protocol_of(version.tags) == protocol:
        return float(version.tags["test_nll"])
    cached = version.tags.get(f"test_nll_on.{protocol}")
    if cached is not None:
        return float(cached)
    if evaluate is None:
        return None
    nll = float(evaluate(f"models:/{name}/{version.version}"))
    mlflow_client.set_model_version_tag(name, str(version.version), f"test_nll_on.{protocol}", repr(nll))
    return nll


def nll_kind(tags: dict[str, str]) -> str:
    """What a version's NLL is a probability of (vae.models.likelihoods.DATA_KIND: binary, 8bit, dequantized,
    continuous): its `nll_kind` tag, else the kind in its `bits_per_dim` tag's brackets, else binary
    (versions from before colour images)."""
    if tags.get("nll_kind"):
        return tags["nll_kind"]
    found = re.search(r"\((\w+)\)\s*$", tags.get("bits_per_dim", ""))
    return found.group(1) if found else "binary"


def _nll_key(nll: float) -> float:
    """The precision NLLs are compared at: the 6 decimals that tags before full precision kept."""
    return round(float(nll), 6)


def should_promote(candidate_nll: float, champion_nll: float | None, margin: float) -> bool:
    """The gate's rule: a new version takes `champion` iff there is none, or its held-out NLL beats the
    champion's (on the same data, under the same protocol) by more than `margin` nats.

    NLLs are compared rounded to 6 decimals (older versions' tags hold no more), so an identical
    rerun ties and the champion stays; a NaN beats nothing.
    """
    if champion_nll is None:
        return True
    return _nll_key(candidate_nll) < _nll_key(champion_nll) - margin


def _move_alias(
    mlflow_client, name: str, alias: str, number: int, wins: Callable[[Any], bool], tries: int = 10,
    settle_seconds: float = 0.2,
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
    settle_seconds: float = 0.2,
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


def _point_challenger(mlflow_client, name: str, number: int) -> None:
    """`challenger` names the newest version registered: a race between two registrations leaves
    it on the later one, and a rerun that registers an older version again does not take it back."""

    def newer(current) -> bool:
        return current is None or int(current.version) < number

    _move_alias(mlflow_client, name, CHALLENGER, number, newer)


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
    with _gate_lock(uri):
        _point_challenger(mlflow_client, name, number)
        try:
            promoted, previous = promote_if_better(
                mlflow_client,
                name,
                number,
                float(evaluation["nll"]),
                protocol,
                config.registry.promote_margin,
                evaluate_champion,
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


# ---------------------------------------------------------------------------------------------
# MLflow's side of the served model (vae/registry/serving.py): its base class, its request error and its
# signature, so that MLflow is imported here only.

PythonModel = mlflow.pyfunc.PythonModel


class RequestError(MlflowException):
    """A bad request (HTTP 400) whose message stays as written.

    MLflow's scoring server prefixes every prediction error with the whole input array
    ("Failed to predict data '…'"); this message keeps its one line.
    """

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._short

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_short"):  # the first assignment (ours) wins
            self._short = value


def served_signature() -> ModelSignature:
    """No input schema (images come as (N, D) or (N, *shape), latents as (N, L)); the method is a param."""
    return ModelSignature(
        params=ParamSchema(
            [
                ParamSpec("method", "string", "encode"),
                ParamSpec("k", "long", 1000),
                ParamSpec("seed", "long", 0),
            ]
        )
    )
