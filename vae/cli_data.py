"""`vae ingest` and `vae datasets`: dataset commands, registered on the main `vae` app."""

from __future__ import annotations

from vae.cli import app  # noqa: F401  (commands below register on it)
