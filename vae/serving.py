"""Where models registered before vae's sub-packages find the served class: their models-from-code file
says `from vae.serving import VAEModel`. It is vae.registry.serving's (test_old_registered_model)."""

from vae.registry.serving import VAEModel

__all__ = ["VAEModel"]
