"""Training objectives as pure tensor functions: the ELBO and the IWAE bound.

log p(x) >= E_q[log p(x|z) + log p(z) - log q(z|x)]              (ELBO, by Jensen)
log p(x) - ELBO = KL(q(z|x) || p(z|x))                             (the gap, exactly)
log p(x) >= E[log 1/k sum_i p(x, z_i) / q(z_i|x)], z_i ~ q(z|x)    (IWAE, Burda et al. 2016, Eq. 8)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vae.model import VAE, diagonal_normal_log_density, standard_normal_log_density


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
    model: VAE, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x).

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


def elbo(model: VAE, x: torch.Tensor, generator: torch.Generator | None = None) -> ELBOTerms:
    """ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), one reparameterised sample, analytic KL.

    Kingma & Welling (2014), Eq. 10 (the SGVB estimator B). x: (B, D) → terms of shape (B,)
    """
    mean, logvar = model.encode(x)  # (B, L), (B, L)
    z = sample_latents(mean, logvar, generator=generator)  # (B, L)
    reconstruction = model.log_likelihood(x, z)  # (B,)
    kl = gaussian_kl(mean, logvar)  # (B,)
    return ELBOTerms(elbo=reconstruction - kl, reconstruction=reconstruction, kl=kl)


def iwae_bound(model: VAE, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """L_k(x) = log 1/k sum_{i=1..k} w_i, w_i = p(x, z_i) / q(z_i|x), z_i ~ q(z|x).

    Burda, Grosse & Salakhutdinov (2016), Eq. 8; L_1 is the ELBO and L_k rises to log p(x).
    x: (B, D) → (B,)
    """
    mean, logvar = model.encode(x)  # (B, L), (B, L)
    z = sample_latents(mean, logvar, k, generator=generator)  # (K, B, L)
    log_w = log_importance_weights(model, x, mean, logvar, z)  # (K, B)
    return torch.logsumexp(log_w, dim=0) - torch.log(torch.tensor(float(k), dtype=log_w.dtype))
