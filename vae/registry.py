"""MLflow: runs, per-epoch metrics, the pyfunc model, registration and the champion gate.

The only module that imports MLflow. A pipeline run is one MLflow run; its model version is
registered under the pipeline's model name with alias `challenger`, and `champion` moves to
it only when its held-out NLL beats the current champion's by more than the configured margin.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import Schema, TensorSpec

import vae
from vae.config import PipelineConfig, artifacts_uri, tracking_uri
from vae.errors import RegistryError

CHAMPION = "champion"
CHALLENGER = "challenger"


def _quiet() -> None:
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client(uri: str | None = None):
    """An MlflowClient on the tracking store (sqlite under VAE_HOME unless MLFLOW_TRACKING_URI is set)."""
    _quiet()
    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def code_version() -> str:
    """The library version, plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=True,
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


def start_run(config: PipelineConfig, dataset: dict[str, str], uri: str | None = None) -> str:
    """Create the pipeline's MLflow run with its params; returns the run id."""
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(config.experiment)
    if experiment is None:
        local = (uri or tracking_uri()).startswith("sqlite:")
        experiment_id = mlflow_client.create_experiment(
            config.experiment, artifact_location=f"{artifacts_uri()}/{config.experiment}" if local else None
        )
    else:
        experiment_id = experiment.experiment_id
    params: dict[str, str] = {}
    _flatten("", config.model_dump(mode="json", exclude={"name"}), params)
    run = mlflow_client.create_run(
        experiment_id,
        run_name=f"{config.name}-{dataset['version']}",
        tags={"pipeline": config.name, "dataset_hash": dataset["content_hash"],
              "dataset_version": dataset["version"], "code_version": code_version()},
    )
    mlflow_client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in sorted(params.items())])
    return run.info.run_id


def log_epoch_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Per-epoch metrics (called from rank 0 of the training workers)."""
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch" and math.isfinite(v)]
    client(uri).log_batch(run_id, metrics=batch)


def log_artifact_file(run_id: str, path: str | Path, artifact_path: str | None = None, uri: str | None = None) -> None:
    client(uri).log_artifact(run_id, str(path), artifact_path)


def end_run(run_id: str, status: str = "FINISHED", uri: str | None = None) -> None:
    client(uri).set_terminated(run_id, status)


# ---------------------------------------------------------------------------------------------
# The pyfunc: images in, q(z|x) parameters out.


class VAEEncoder(mlflow.pyfunc.PythonModel):
    """Encoder of a trained VAE: pixel values (N, D) → {'z_mean': (N, L), 'z_logvar': (N, L)}.

    Inputs are raw pixel values on the dataset's scale [0, max_value]; they are scaled (and
    thresholded, for models trained on thresholded data) exactly as in training.
    """

    def load_context(self, context):
        import torch

        from vae.config import ModelConfig
        from vae.model import build_model

        state = torch.load(context.artifacts["checkpoint"], map_location="cpu", weights_only=True)
        meta = json.loads(Path(context.artifacts["metadata"]).read_text())
        self.model = build_model(ModelConfig(**state["model_config"]), int(state["data_dim"])).eval()
        self.model.load_state_dict(state["model"])
        self.data_dim = int(state["data_dim"])
        self.max_value = float(meta["max_value"])
        self.binarize = meta["binarize"]

    def predict(self, context, model_input: np.ndarray, params=None):  # validated against the signature
        import torch

        from vae.data import prepare_inputs

        raw = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
        array = np.asarray(raw, dtype=np.float32)
        if array.ndim < 2 or math.prod(array.shape[1:]) != self.data_dim:
            raise MlflowException(
                f"input of shape {list(array.shape)}: expected images of {self.data_dim} pixels each, "
                f"shaped (N, {self.data_dim}) or (N, H, W)",
                error_code=INVALID_PARAMETER_VALUE,
            )
        array = array.reshape(array.shape[0], self.data_dim)
        if not np.isfinite(array).all():
            raise MlflowException(
                "input has NaN or infinite pixels: expected finite values", error_code=INVALID_PARAMETER_VALUE
            )
        binarize = "threshold" if self.binarize == "threshold" else "none"
        x = prepare_inputs(torch.from_numpy(array), self.max_value, binarize)  # (N, D)
        with torch.no_grad():
            mean, logvar = self.model.encode(x)  # (N, L), (N, L)
        return {"z_mean": mean.numpy(), "z_logvar": logvar.numpy()}


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _signature(data_dim: int, latent_dim: int):
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, data_dim))]),
        outputs=Schema([
            TensorSpec(np.dtype(np.float32), (-1, latent_dim), "z_mean"),
            TensorSpec(np.dtype(np.float32), (-1, latent_dim), "z_logvar"),
        ]),
    )


def _champion_nll(mlflow_client, name: str) -> tuple[Any, float | None]:
    try:
        version = mlflow_client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    return version, float(version.tags.get("test_nll", "inf"))


def register_model(
    config: PipelineConfig,
    run_id: str,
    checkpoint_dir: str,
    evaluation: dict[str, Any],
    dataset: dict[str, str],
    manifest: dict[str, Any],
    example: np.ndarray,
    uri: str | None = None,
) -> Registration:
    """Log the pyfunc to the run, register a version, tag it, and apply the champion gate."""
    import torch

    from vae.model import CHECKPOINT_FILE

    mlflow_client = client(uri)
    name = config.registry.model_name
    state = torch.load(Path(checkpoint_dir) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    with tempfile.TemporaryDirectory() as staging:
        checkpoint = Path(staging) / CHECKPOINT_FILE
        shutil.copy(Path(checkpoint_dir) / CHECKPOINT_FILE, checkpoint)
        metadata = Path(staging) / "metadata.json"
        metadata.write_text(json.dumps({
            "max_value": manifest["value_range"][1], "binarize": config.dataset.binarize,
            "shape": manifest["shape"], "dataset_hash": dataset["content_hash"],
        }))
        with mlflow.start_run(run_id=run_id, log_system_metrics=False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("mlflow_model.py")),  # models from code
                artifacts={"checkpoint": str(checkpoint), "metadata": str(metadata)},
                signature=_signature(int(state["data_dim"]), int(state["model_config"]["latent_dim"])),
                input_example=example.astype(np.float32),
                code_paths=[str(Path(__file__).parent)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                                  f"mlflow=={mlflow.__version__}", "pydantic>=2"],
            )
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException:
        pass  # it exists already (or was created concurrently)
    version = mlflow_client.create_model_version(name, source=info.model_uri, run_id=run_id)
    number = int(version.version)
    tags = {
        "dataset_hash": dataset["content_hash"],
        "dataset_version": dataset["version"],
        "test_nll": f"{evaluation['nll']:.6f}",
        "test_nll_stderr": f"{evaluation['nll_stderr']:.6f}",
        "k": str(evaluation["k"]),
        "code_version": code_version(),
    }
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, str(number), key, value)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, str(number))
    current, current_nll = _champion_nll(mlflow_client, name)
    promote = current is None or evaluation["nll"] < current_nll - config.registry.promote_margin
    if promote:
        mlflow_client.set_registered_model_alias(name, CHAMPION, str(number))
    mlflow_client.set_tag(run_id, "model_uri", f"models:/{name}/{number}")
    return Registration(
        model_name=name,
        version=number,
        model_uri=f"models:/{name}/{number}",
        run_id=run_id,
        champion=promote,
        champion_uri=f"models:/{name}@{CHAMPION}" if promote else None,
        previous_champion_nll=current_nll,
    )


def load_encoder(model_uri: str, uri: str | None = None):
    """Load a registered or logged model as a pyfunc; a bad URI or alias is one line."""
    client(uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise RegistryError(f"model '{model_uri}': {str(exc).splitlines()[0]}") from None


def record_and_register(
    config: PipelineConfig,
    run_id: str,
    checkpoint_dir: str,
    evaluation: dict[str, Any],
    dataset: dict[str, str],
    history: list[dict[str, float]],
    uri: str | None = None,
) -> Registration:
    """Log the evaluation summary, manifest and plots to the run, then register through the gate."""
    from vae.data import load_split, read_manifest
    from vae.plots import plot_elbo_curve

    mlflow_client = client(uri)
    manifest = read_manifest(dataset["path"])
    numbers = {f"{evaluation['split']}_{k}": float(v) for k, v in evaluation.items()
               if isinstance(v, (int, float)) and math.isfinite(v)}
    now = int(time.time() * 1000)
    mlflow_client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(numbers.items())])
    with tempfile.TemporaryDirectory() as staging:
        manifest_path = Path(staging) / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2))
        mlflow_client.log_artifact(run_id, str(manifest_path), "dataset")
        if history:
            mlflow_client.log_artifact(run_id, str(plot_elbo_curve(history, Path(staging) / "elbo_curve.png")),
                                       "plots")
    images, _ = load_split(dataset["path"], evaluation["split"])
    registration = register_model(config, run_id, checkpoint_dir, evaluation, dataset, manifest, images[:4],
                                  uri=uri)
    mlflow_client.set_terminated(run_id, "FINISHED")
    return registration
