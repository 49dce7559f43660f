"""MLflow models-from-code entry point: the logged pyfunc is rebuilt from this file, never unpickled."""

from vae.registry import set_model
from vae.serving import VAEModel

set_model(VAEModel())
