"""Importance-sampled and annealed-importance-sampled log p(x) for any vae.families model: pure torch.

IS:  log p(x) ~= log 1/k sum_i w_i,  log w_i = model.log_weights(x)_i = log p(x, s_i) - log q(s_i|x)
     (Burda, Grosse & Salakhutdinov 2016, Eq. 8), noise from vae.estimators.block_noise so that an
     example's estimate depends only on (seed, its global index), never on batch or chunk sizes.
AIS: vae.estimators.annealed_importance_sampling serves every model, the families included: it runs
     HMC over the full latent state with the model's sample_prior, log_prior and log_likelihood_state.
The IS estimator generalises vae.estimators.estimate_log_likelihood, which assumes p(z) = N(0, I) and
one latent layer (and handles 8-bit likelihoods and dequantisation, which the families do not have).
"""

from __future__ import annotations

import torch
from torch import nn

from vae.estimators import (
    CACHE_ROWS,
    DEVICE_ROWS,
    LogLikelihoodEstimate,
    block_noise,
    chunk_size_for,
    estimate_log_likelihood,
    matmul_precision,
    reduce_log_weights,
)
from vae.families import LatentFamily


def log_likelihood_estimator(model: nn.Module):
    """The importance-sampled log p(x) for `model`, called with estimate_log_likelihood's arguments:
    estimate_family_log_likelihood for a vae.families model, vae.estimators.estimate_log_likelihood
    for the standard VAE (whose decoder-input projection and dequantisation it handles)."""
    return estimate_family_log_likelihood if isinstance(model, LatentFamily) else estimate_log_likelihood


def family_width(model: LatentFamily) -> int:
    """Floats per latent sample in the widest activation: a layer's output, the image, or the VampPrior's C."""
    widths = [model.data_dim, *(m.out_features for m in model.modules() if isinstance(m, nn.Linear))]
    if getattr(model, "prior", "standard") == "vamp":
        widths.append(model.pseudo_input_params.shape[0])  # log_prior's (Kc, B, C) components
    return max(widths)


@torch.no_grad()
def estimate_family_log_likelihood(
    model: LatentFamily,
    x: torch.Tensor,
    k: int,
    *,
    batch_size: int | None = 64,
    chunk_size: int | None = None,
    seed: int = 0,
    first_index: int = 0,
    max_memory_bytes: int = 256 * 2**20,
    tf32: bool = False,
) -> LogLikelihoodEstimate:
    """log p̂(x) = logsumexp_i log w_i - log k per example, with the Monte Carlo ELBO and the ESS.

    x: (N, D) → per-example (N,) float64 on the CPU. Row n uses block_noise of example first_index + n,
    so batch and chunk sizes never change an example's noise. batch_size None: as many images as the
    memory budget allows (the GPU setting); chunk_size None: samples per call sized as
    vae.estimators.estimate_log_likelihood sizes them. The arguments are estimate_log_likelihood's.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model.eval()
    # The noise for a batch is K * B * S floats: keep it within half the budget.
    fits = max(1, max_memory_bytes // 2 // (k * model.noise_dim * 4))
    batch_size = max(1, min(batch_size or x.shape[0], fits))
    rows = DEVICE_ROWS if x.device.type == "cuda" else CACHE_ROWS
    widest = family_width(model)
    log_px, elbos, ess = [], [], []
    with matmul_precision(tf32):
        for lo in range(0, x.shape[0], batch_size):
            xb = x[lo : lo + batch_size]  # (B, D)
            eps = block_noise(k, model.noise_dim, first_index + lo, xb.shape[0], seed, xb.device).to(xb)  # (K, B, S)
            chunk = chunk_size or chunk_size_for(k, xb.shape[0], widest, max_memory_bytes // 2, rows)
            chunks = (model.log_weights(xb, e.shape[0], noise=e) for e in eps.split(chunk))  # (Kc, B) each
            for found, value in zip((log_px, elbos, ess), reduce_log_weights(chunks, k)):
                found.append(value)
    return LogLikelihoodEstimate(
        log_px=torch.cat(log_px).cpu(), elbo=torch.cat(elbos).cpu(), ess=torch.cat(ess).cpu(), k=k
    )
