"""MLflow models-from-code entry point: the logged pyfunc is rebuilt from this file, never unpickled."""

from mlflow.models import set_model

from vae.registry.serving import VAEModel

set_model(VAEModel())
