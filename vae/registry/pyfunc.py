"""MLflow's side of the served model (vae/registry/serving.py): its base class, its request error and its
signature, so that serving.py imports no MLflow of its own and vae.registry.versions logs the model with
this signature.
"""

from __future__ import annotations

import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ParamSchema, ParamSpec

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
