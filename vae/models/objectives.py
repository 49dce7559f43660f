"""Training objectives as pure tensor functions: the ELBO, the IWAE bound and the log densities they sum.

log p(x) >= E_q[log p(x|z) + log p(z) - log q(z|x)]              (ELBO, by Jensen)
log p(x) - ELBO = KL(q(z|x) || p(z|x))                             (the gap, exactly)
log p(x) >= E[log 1/k sum_i p(x, z_i) / q(z_i|x)], z_i ~ q(z|x)    (IWAE, Burda et al. 2016, Eq. 8)

`elbo` and `iwae_bound` take any model of the contract (vae.models.latent_model): each model computes its
own terms (the standard VAE's analytic KL, a VampPrior's or two levels' single-sample estimate).
This module imports no other of ours, so every model can build on its pure functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I). z: (..., L) → (...,)"""
    return -0.5 * (z**2 + LOG_2PI).sum(-1)


def diagonal_normal_log_density(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag exp(logvar)). z, mean, logvar broadcast to (..., L) → (...,)"""
    return -0.5 * ((z - mean) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag exp(logvar)) || N(0, I)) = -1/2 sum_j (1 + logvar_j - mean_j^2 - exp(logvar_j)).

    Kingma & Welling (2014), Appendix B. mean, logvar: (B, L) → (B,)
    """
    return -0.5 * (1.0 + logvar - mean**2 - torch.exp(logvar)).sum(-1)


def sample_latents(
    mean: torch.Tensor, logvar: torch.Tensor, k: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Reparameterised z = mean + exp(logvar/2) * eps, eps ~ N(0, I) (Kingma & Welling, Eq. 10).

    mean, logvar: (B, L) → (B, L) if k is None else (K, B, L)
    """
    shape = mean.shape if k is None else (k, *mean.shape)
    eps = torch.randn(shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean + torch.exp(0.5 * logvar) * eps


def log_importance_weights(
    model: nn.Module, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) for a vae.models.model.VAE (p(z) = N(0, I)).

    x: (B, D); mean, logvar: (B, L); z: (K, B, L) → (K, B)
    """
    return (
        model.log_likelihood(x, z)  # (K, B)
        + standard_normal_log_density(z)  # (K, B)
        - diagonal_normal_log_density(z, mean, logvar)  # (K, B)
    )


@dataclass(frozen=True)
class ELBOTerms:
    """Per-example ELBO = reconstruction - KL, each (B,)."""

    elbo: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def elbo(model: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None) -> ELBOTerms:
    """ELBO(x) = E_q[log p(x|s)] - KL(q(s|x) || p(s)) per example, by the model's own estimator
    (the standard VAE: one reparameterised sample and the analytic KL, Kingma & Welling 2014, Eq. 10).
    x: (B, D) → terms of shape (B,)"""
    return model.elbo_terms(x, generator)


def iwae_bound(model: nn.Module, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """L_k(x) = log 1/k sum_{i=1..k} w_i, w_i = p(x, s_i) / q(s_i|x), s_i ~ q(s|x).

    Burda, Grosse & Salakhutdinov (2016), Eq. 8; L_1 is the ELBO and L_k rises to log p(x). x: (B, D) → (B,)
    """
    return model.iwae_bound(x, k, generator)
