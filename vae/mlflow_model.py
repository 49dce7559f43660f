"""MLflow models-from-code entry point: the logged pyfunc is rebuilt from this file, never unpickled."""

from vae.registry import VAEEncoder, set_model

set_model(VAEEncoder())
