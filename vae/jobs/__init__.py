"""Batch jobs with a trained or registered model over Ray Data: embed, score (per-example log p(x)),
sample, and drift (the champion's density as a monitor, with its statistics).

May import: vae's root modules, vae.data, vae.models, vae.evaluate, vae.registry.
"""
