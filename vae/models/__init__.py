"""The model contract and its implementations: vae.models.latent_model (the interface every model
implements, Proposal), the standard VAE (model), the families (VampPrior, gated body, two levels),
networks (MLP, conv, users' own by import path), likelihoods (one table of small classes) and the
ELBO/IWAE objectives. Pure PyTorch: no Ray, MLflow or files beyond checkpoints.

May import: vae's root modules (errors, config, user_code). Importing this package imports no torch.
"""
