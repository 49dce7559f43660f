"""Prefect flows: thin orchestration over the `vae` library, one flow per stage."""
