"""Stage 2, train: maximise the ELBO with Ray Train (TorchTrainer) across workers: the driver,
the per-worker loop over Ray Data shards, the optimisation step, checkpoints and resume.

May import: vae's root modules, vae.data, vae.models.
"""
