"""Stage 3, evaluate: held-out log p(x) by importance sampling (IWAE-style, k up to 5000, with a
standard error) and AIS, one estimator for every model of the contract, run as Ray tasks.

May import: vae's root modules, vae.data, vae.models.
"""
