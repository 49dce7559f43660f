"""Importance-sampled and annealed-importance-sampled log p(x) for any vae.families model: pure torch.

IS:  log p(x) ~= log 1/k sum_i w_i,  log w_i = model.log_weights(x)_i = log p(x, s_i) - log q(s_i|x)
     (Burda, Grosse & Salakhutdinov 2016, Eq. 8), noise from vae.estimators.block_noise so that an
     example's estimate depends only on (seed, its global index), never on batch or chunk sizes.
AIS: from p(s) to p(s|x) along f_t(s) = p(s) p(x|s)^b_t with HMC over the full latent state
     (Neal 2001; Wu et al. 2017), using the family's sample_prior, log_prior and log_likelihood_state.
These generalise the estimators of vae.estimators, which assume p(z) = N(0, I) and one latent layer.
"""

from __future__ import annotations

import math

import torch

from vae.estimators import AISEstimate, LogLikelihoodEstimate, block_noise, sigmoid_schedule
from vae.families import LatentFamily


@torch.no_grad()
def estimate_family_log_likelihood(
    model: LatentFamily,
    x: torch.Tensor,
    k: int,
    *,
    batch_size: int = 64,
    chunk_size: int = 256,
    seed: int = 0,
    first_index: int = 0,
    max_memory_bytes: int = 256 * 2**20,
) -> LogLikelihoodEstimate:
    """log p̂(x) = logsumexp_i log w_i - log k per example, with the Monte Carlo ELBO and the ESS.

    x: (N, D) → per-example (N,) float64 on the CPU. Row n uses block_noise of example first_index + n.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model.eval()
    # The noise for a batch is K * B * S floats: keep it within half the budget.
    batch_size = max(1, min(batch_size, max_memory_bytes // 2 // (k * model.noise_dim * 4)))
    log_px, elbos, ess = [], [], []
    for lo in range(0, x.shape[0], batch_size):
        xb = x[lo : lo + batch_size]  # (B, D)
        eps = block_noise(k, model.noise_dim, first_index + lo, xb.shape[0], seed, xb.device).to(xb)  # (K, B, S)
        lse = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=xb.device)  # (B,)
        lse2, total = lse.clone(), torch.zeros_like(lse)
        for done in range(0, k, chunk_size):
            e = eps[done : done + chunk_size]  # (Kc, B, S)
            log_w = model.log_weights(xb, e.shape[0], noise=e).double()  # (Kc, B)
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=0))
            lse2 = torch.logaddexp(lse2, torch.logsumexp(2.0 * log_w, dim=0))
            total += log_w.sum(0)
        log_px.append(lse - math.log(k))
        elbos.append(total / k)
        ess.append(torch.exp(2.0 * lse - lse2))  # (sum w)^2 / sum w^2
    return LogLikelihoodEstimate(
        log_px=torch.cat(log_px).cpu(), elbo=torch.cat(elbos).cpu(), ess=torch.cat(ess).cpu(), k=k
    )


def family_annealed_importance_sampling(
    model: LatentFamily,
    x: torch.Tensor,
    *,
    steps: int = 500,
    chains: int = 16,
    leapfrog_steps: int = 10,
    step_size: float = 0.05,
    target_acceptance: float = 0.65,
    seed: int = 0,
) -> AISEstimate:
    """log p(x) by AIS from p(s) to p(s|x) along f_t(s) = p(s) p(x|s)^b_t, over the full latent state s.

    log w = sum_t (b_t - b_{t-1}) log p(x | s_{t-1}),  s_t ~ HMC leaving f_t invariant  (Neal 2001, Eq. 3)
    p̂(x) = mean over chains of w. The same transitions as vae.estimators.annealed_importance_sampling,
    with -log p(s) from the family in place of |z|^2 / 2. x: (N, D) → (N,)
    """
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    n = x.shape[0]
    betas = sigmoid_schedule(steps).tolist()
    with torch.no_grad():
        s = model.sample_prior(chains * n, generator).reshape(chains, n, model.state_dim)  # (C, N, S) ~ p(s)
        current_ll = model.log_likelihood_state(x, s)  # (C, N)
    log_w = torch.zeros((chains, n), dtype=torch.float64, device=x.device)  # (C, N)
    eps = torch.full((1, n, 1), step_size, device=x.device)  # per-example step size, adapted
    accepted = 0.0

    def energy_and_grad(s_: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """U(s) = -log p(s) - b log p(x|s) and its gradient. (C, N, S) → (C, N), (C, N, S)"""
        with torch.enable_grad():
            s_ = s_.detach().requires_grad_(True)
            energy = -model.log_prior(s_) - beta * model.log_likelihood_state(x, s_)  # (C, N)
            (grad,) = torch.autograd.grad(energy.sum(), s_)
        return energy.detach(), grad

    for t in range(1, steps + 1):
        log_w += (betas[t] - betas[t - 1]) * current_ll.double()
        beta = betas[t]
        momentum = torch.randn(s.shape, generator=generator, device=x.device)  # (C, N, S)
        energy, grad = energy_and_grad(s, beta)
        h_start = energy + 0.5 * (momentum**2).sum(-1)  # (C, N)
        s_new, p_new = s.clone(), momentum - 0.5 * eps * grad
        for i in range(leapfrog_steps):
            s_new = s_new + eps * p_new
            energy_new, grad_new = energy_and_grad(s_new, beta)
            if i < leapfrog_steps - 1:
                p_new = p_new - eps * grad_new
        p_new = p_new - 0.5 * eps * grad_new
        h_end = energy_new + 0.5 * (p_new**2).sum(-1)  # (C, N)
        log_u = torch.log(torch.rand(h_end.shape, generator=generator, device=x.device))
        accept = (log_u < (h_start - h_end)) & torch.isfinite(h_end)  # (C, N)
        s = torch.where(accept[..., None], s_new, s)
        with torch.no_grad():
            current_ll = model.log_likelihood_state(x, s)
        rate = accept.double().mean(0)  # (N,)
        accepted += float(rate.mean())
        eps = eps * torch.where(rate > target_acceptance, 1.02, 0.98).to(eps)[None, :, None]
    log_px = torch.logsumexp(log_w, 0) - math.log(chains)  # (N,)
    normalized = torch.exp(log_w - log_w.max(0).values)  # (C, N)
    stderr = normalized.std(0) / (math.sqrt(chains) * normalized.mean(0))  # delta method
    return AISEstimate(log_px.cpu(), stderr.cpu(), accepted / steps, chains, steps)
