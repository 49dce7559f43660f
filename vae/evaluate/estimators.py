"""Importance-sampled log p(x) with a standard error: pure torch, no framework imports.

log p(x) ~= log 1/k sum_{i=1..k} p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x)

(Burda, Grosse & Salakhutdinov 2016, Eq. 8 with the trained encoder as proposal; the estimate is
a lower bound in expectation that tightens to log p(x) as k grows.) Each image is encoded once;
the k latents are decoded in chunks so memory stays bounded, and log-weights are combined in
float64 with a running logsumexp. The noise for example n is drawn on the model's device from
the generator of its fixed block of examples, seeded by (seed, n // 64), so results do not
depend on batch or chunk sizes, nor on how a test set is split across workers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from vae.models.likelihoods import BITS_PER_DIM_UNIT
from vae.models.latent_model import LatentVariableModel as Model

# What bits/dim means for each kind of likelihood (VAE.bits_per_dim_kind): NLL / (D ln 2) either way.
BITS_PER_DIM_MEANING = {
    **BITS_PER_DIM_UNIT,
    "continuous": "nats / (D ln 2) of a continuous density: not a discrete bits/dim, comparable with nothing",
}


@dataclass(frozen=True)
class LogLikelihoodEstimate:
    """Per-example estimates (N,) and their summary over the examples."""

    log_px: torch.Tensor  # (N,) float64, log p̂(x) in nats
    elbo: torch.Tensor  # (N,) float64, mean of the k log-weights: a Monte Carlo ELBO
    ess: torch.Tensor  # (N,) float64, effective sample size (sum w)^2 / sum w^2, in [1, k]
    k: int

    @property
    def n(self) -> int:
        return int(self.log_px.numel())

    @property
    def mean_log_px(self) -> float:
        return float(self.log_px.mean())

    @property
    def stderr(self) -> float:
        """Standard error of the mean of log p̂(x) over the examples."""
        if self.n < 2:
            return float("nan")
        return float(self.log_px.std(unbiased=True) / math.sqrt(self.n))

    @property
    def nll(self) -> float:
        return -self.mean_log_px

    def summary(self, data_dim: int, bits_per_dim_kind: str = "binary") -> dict[str, float | int | str]:
        """The numbers a user reads: NLL ± s.e. (nats), bits/dim and what it counts, ELBO, ELBO gap, ESS.

        bits/dim = NLL / (D ln 2) over D subpixels; `bits_per_dim_kind` (VAE.bits_per_dim_kind) says what
        that is: 'binary' bits per binary pixel, '8bit' bits per 8-bit subpixel, 'dequantized' an upper
        bound on those (the -D log 256 already in the NLL), 'continuous' no discrete bits/dim at all.
        """
        if bits_per_dim_kind not in BITS_PER_DIM_MEANING:
            raise ValueError(
                f"bits_per_dim_kind '{bits_per_dim_kind}': expected one of {', '.join(BITS_PER_DIM_MEANING)}"
            )
        return {
            "nll": self.nll,
            "nll_stderr": self.stderr,
            "bits_per_dim": self.nll / (data_dim * math.log(2.0)),
            "bits_per_dim_kind": bits_per_dim_kind,
            "elbo": float(self.elbo.mean()),
            # log p̂(x) - ELBO estimates KL(q(z|x) || p(z|x)).
            "elbo_gap": float((self.log_px - self.elbo).mean()),
            "ess": float(self.ess.mean()),
            "k": self.k,
            "n": self.n,
        }


CACHE_ROWS = 2048  # CPU: decoder rows per call, large enough for fast matmuls, small enough to stay in cache
DEVICE_ROWS = 2**20  # GPU: ~1M decoder rows per call keeps the GEMMs large (issue 11: 25 TFLOP/s on an H200)
NOISE_BLOCK = 64  # examples per noise block: example n's noise is row n % 64 of block n // 64's draw


def chunk_size_for(k: int, batch: int, width: int, max_memory_bytes: int, rows: int = CACHE_ROWS) -> int:
    """Latent samples per decoder call: about `rows` rows, and K_chunk * B * width floats in budget."""
    per_sample = max(1, batch * width * 4 * 3)  # activations, output and log-weight temporaries
    return int(max(1, min(k, max_memory_bytes // per_sample, max(1, rows // batch))))


def device_memory_budget(device: torch.device, default: int, fraction: float = 0.5) -> int:
    """Bytes the estimator may use: a share of the GPU's free memory, or `default` elsewhere."""
    if device.type != "cuda":
        return default
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * fraction)


def block_noise(
    k: int, latent_dim: int, first: int, count: int, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """eps ~ N(0, I) for examples first..first+count-1, drawn on `device`: (K, B, L).

    Examples come in fixed blocks of NOISE_BLOCK, each block drawn from a generator seeded by
    (seed, block): an example's noise depends only on its global index, never on batch sizes or on
    how the examples are split across workers. (The draw differs between CPU and CUDA generators.)
    """
    first_block, last_block = first // NOISE_BLOCK, (first + count - 1) // NOISE_BLOCK
    generator = torch.Generator(device=device)
    parts = []
    for block in range(first_block, last_block + 1):
        generator.manual_seed((seed * 0x9E3779B1 + block) % 2**63)
        parts.append(torch.randn((k, NOISE_BLOCK, latent_dim), generator=generator, device=device))  # (K, 64, L)
    offset = first - first_block * NOISE_BLOCK
    noise = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (K, blocks * 64, L)
    return noise[:, offset : offset + count]  # (K, B, L)


def block_uniform(data_dim: int, first: int, count: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Dequantisation noise u ~ U[0, 1)^D for examples first..first+count-1, one draw per example: (B, D).

    Drawn in the blocks of `block_noise` from generators of their own seeds, so example n's u depends
    only on n and the seed, and the IS estimate and AIS of one example see the same x~.
    """
    first_block, last_block = first // NOISE_BLOCK, (first + count - 1) // NOISE_BLOCK
    generator = torch.Generator(device=device)
    parts = []
    for block in range(first_block, last_block + 1):
        generator.manual_seed((seed * 0x9E3779B1 + block + 0x5DEECE66D) % 2**63)
        parts.append(torch.rand((NOISE_BLOCK, data_dim), generator=generator, device=device))  # (64, D)
    offset = first - first_block * NOISE_BLOCK
    return torch.cat(parts)[offset : offset + count]  # (B, D)


def decoder_width(model: Model) -> int:
    """Floats per latent sample in the widest activation of one log-weight (the model's sample_width)."""
    return model.sample_width()


def _aligned_batches(first_index: int, n: int, batch_size: int):
    """(lo, hi) row ranges of at most batch_size rows whose global edges fall on block boundaries."""
    step = max(NOISE_BLOCK, batch_size - batch_size % NOISE_BLOCK) if batch_size >= NOISE_BLOCK else batch_size
    lo = 0
    while lo < n:
        hi = min(n, lo + step - (first_index + lo) % step) if step % NOISE_BLOCK == 0 else min(n, lo + step)
        yield lo, hi
        lo = hi


@contextlib.contextmanager
def matmul_precision(tf32: bool):
    """TF32 float32 matmuls on the GPU only when asked: it is faster and it changes the numbers."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def reduce_log_weights(chunks: Iterable[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example, from k log-weights log w_i = log p(x, z_i) - log q(z_i|x) arriving in chunks (Kc, B):
    log p̂(x) = log 1/k sum_i w_i (Burda et al. 2016, Eq. 8), the Monte Carlo ELBO 1/k sum_i log w_i
    and the effective sample size (sum w)^2 / sum w^2, each (B,) float64. A running float64
    logsumexp, so only one chunk of weights is ever held."""
    lse = lse2 = total = None
    for log_w in chunks:
        log_w = log_w.double()
        first, second = torch.logsumexp(log_w, dim=0), torch.logsumexp(2.0 * log_w, dim=0)  # (B,)
        if lse is None:
            lse, lse2, total = first, second, log_w.sum(0)
        else:
            lse, lse2, total = torch.logaddexp(lse, first), torch.logaddexp(lse2, second), total + log_w.sum(0)
    if lse is None:
        raise ValueError("no log-weights: k must be >= 1")
    return lse - math.log(k), total / k, torch.exp(2.0 * lse - lse2)


@torch.no_grad()
def estimate_log_likelihood(
    model: Model,
    x: torch.Tensor,
    k: int,
    *,
    batch_size: int | None = 128,
    chunk_size: int | None = None,
    max_memory_bytes: int = 256 * 2**20,
    seed: int = 0,
    first_index: int = 0,
    tf32: bool = False,
) -> LogLikelihoodEstimate:
    """Estimate log p(x) per example with k importance samples from q(s|x), on x's device, for any
    model of the contract (vae.models.latent_model): log p̂(x) = logsumexp_i log w_i - log k,
    log w_i = log p(x, s_i) - log q(s_i|x) (Burda et al. 2016, Eq. 8).

    x: (N, D); row n uses the noise of global example `first_index + n` (see `block_noise`), and
    with dequantisation one u per example (`block_uniform`), fixed across its k samples (Theis et
    al. 2016, Sec. 3.1). batch_size None: as many images per batch as the memory budget allows (the
    GPU setting). Returns per-example log p̂(x), Monte Carlo ELBO and ESS, all (N,) float64, on the CPU.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model.eval()
    widest = model.sample_width()
    rows = DEVICE_ROWS if x.device.type == "cuda" else CACHE_ROWS
    # The noise for a batch is K * B * S floats: keep it within half the budget.
    fits = max(1, max_memory_bytes // 2 // (k * model.noise_dim * 4))
    batch_size = max(1, min(batch_size or x.shape[0], fits))
    log_px, elbos, ess = [], [], []
    with matmul_precision(tf32):
        for lo, hi in _aligned_batches(first_index, x.shape[0], batch_size):
            xb = x[lo:hi]  # (B, D)
            u = (
                block_uniform(model.data_dim, first_index + lo, xb.shape[0], seed, xb.device)
                if model.dequantized
                else None
            )  # (B, D)
            proposal = model.proposal(xb, u)  # q(s|x)'s per-image part: once per image, never per sample
            eps = block_noise(k, model.noise_dim, first_index + lo, xb.shape[0], seed, xb.device)  # (K, B, S)
            eps = eps.to(proposal.mean)
            chunk = chunk_size or chunk_size_for(k, xb.shape[0], widest, max_memory_bytes // 2, rows)
            chunks = (model.log_weights_given_noise(xb, e, proposal) for e in eps.split(chunk))  # (Kc, B) each
            estimate = reduce_log_weights(chunks, k)  # (B,) each
            for found, value in zip((log_px, elbos, ess), estimate):
                found.append(value)
    return LogLikelihoodEstimate(
        log_px=torch.cat(log_px).cpu(), elbo=torch.cat(elbos).cpu(), ess=torch.cat(ess).cpu(), k=k
    )


# ---------------------------------------------------------------------------------------------
# Annealed importance sampling (Neal 2001) with HMC transitions: an independent cross-check of
# the IS estimate, as in Wu, Burda, Salakhutdinov & Grosse (2017) for decoder-based models.


@dataclass(frozen=True)
class AISEstimate:
    """Per-example AIS estimates (N,) with the per-example standard error of log p̂(x)."""

    log_px: torch.Tensor  # (N,) float64
    log_px_stderr: torch.Tensor  # (N,) float64, delta-method s.e. of log mean w over the chains
    acceptance: float  # mean HMC acceptance rate over all transitions
    chains: int
    steps: int

    @property
    def mean_log_px(self) -> float:
        return float(self.log_px.mean())


def sigmoid_schedule(steps: int, rad: float = 4.0) -> torch.Tensor:
    """Inverse temperatures 0 = b_0 < ... < b_T = 1, dense near both ends (Grosse et al. 2015)."""
    s = torch.sigmoid(torch.linspace(-rad, rad, steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])  # (T+1,)


def _hmc_transition(
    z: torch.Tensor, beta: float, eps: torch.Tensor, energy_and_grad, leapfrog_steps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One HMC transition leaving f_beta invariant: leapfrog, then Metropolis-Hastings (Neal 2011).

    z: (C, N, S) → new z (C, N, S) and the acceptances (C, N).
    """
    momentum = torch.randn(z.shape, generator=generator, device=z.device)  # (C, N, S)
    energy, grad = energy_and_grad(z, beta)
    h_start = energy + 0.5 * (momentum**2).sum(-1)  # (C, N)
    z_new, p_new = z.clone(), momentum - 0.5 * eps * grad
    for i in range(leapfrog_steps):
        z_new = z_new + eps * p_new
        energy_new, grad_new = energy_and_grad(z_new, beta)
        if i < leapfrog_steps - 1:
            p_new = p_new - eps * grad_new
    p_new = p_new - 0.5 * eps * grad_new
    h_end = energy_new + 0.5 * (p_new**2).sum(-1)  # (C, N)
    log_u = torch.log(torch.rand(h_end.shape, generator=generator, device=z.device))
    accept = (log_u < (h_start - h_end)) & torch.isfinite(h_end)  # (C, N)
    return torch.where(accept[..., None], z_new, z), accept


def annealed_importance_sampling(
    model: Model,
    x: torch.Tensor,
    *,
    steps: int = 500,
    chains: int = 16,
    leapfrog_steps: int = 10,
    step_size: float = 0.05,
    target_acceptance: float = 0.65,
    seed: int = 0,
) -> AISEstimate:
    """log p(x) by AIS from the prior p(s) to the posterior along f_t(s) = p(s) p(x|s)^b_t.

    log w = sum_t (b_t - b_{t-1}) log p(x | s_{t-1}),  s_t ~ HMC leaving f_t invariant  (Neal 2001, Eq. 3)
    p̂(x) = mean over chains of w, an unbiased estimate of p(x). x: (N, D) → (N,)
    s is the model's full latent state: z for vae.models.model.VAE (p(z) = N(0, I)), [z1, z2] for a two-level
    vae.models.families model; any model of the contract (vae.models.latent_model) supplies sample_prior, log_prior,
    log_likelihood_state and state_dim.
    """
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    n = x.shape[0]
    betas = sigmoid_schedule(steps).tolist()
    with torch.no_grad():
        s = model.sample_prior(chains * n, generator).reshape(chains, n, model.state_dim)  # (C, N, S) ~ p(s)
    log_w = torch.zeros((chains, n), dtype=torch.float64, device=x.device)  # (C, N)
    eps = torch.full((1, n, 1), step_size, device=x.device)  # per-example step size, adapted
    accepted = 0.0

    u = block_uniform(model.data_dim, 0, n, seed, x.device) if model.dequantized else None  # (N, D): fixed x~

    def log_lik(s_: torch.Tensor) -> torch.Tensor:
        return model.log_likelihood_state(x, s_, u)  # (C, N)

    def energy_and_grad(s_: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """U(s) = -log p(s) - b log p(x|s) and its gradient. (C, N, S) → (C, N), (C, N, S)"""
        with torch.enable_grad():
            s_ = s_.detach().requires_grad_(True)
            energy = -model.log_prior(s_) - beta * log_lik(s_)  # (C, N)
            (grad,) = torch.autograd.grad(energy.sum(), s_)
        return energy.detach(), grad

    with torch.no_grad():
        current_ll = log_lik(s)
    for t in range(1, steps + 1):
        log_w += (betas[t] - betas[t - 1]) * current_ll.double()
        s, accept = _hmc_transition(s, betas[t], eps, energy_and_grad, leapfrog_steps, generator)
        with torch.no_grad():
            current_ll = log_lik(s)
        rate = accept.double().mean(0)  # (N,) acceptance over chains
        accepted += float(rate.mean())
        # Nudge each example's step size toward the target acceptance (Wu et al. 2017, Sec. 4).
        eps = eps * torch.where(rate > target_acceptance, 1.02, 0.98).to(eps)[None, :, None]
    log_px = torch.logsumexp(log_w, 0) - math.log(chains)  # (N,)
    normalized = torch.exp(log_w - log_w.max(0).values)  # (C, N), max weight = 1
    # Delta method: s.e.(log mean w) ≈ std(w) / (sqrt(C) mean(w)).
    stderr = normalized.std(0) / (math.sqrt(chains) * normalized.mean(0))
    return AISEstimate(log_px.cpu(), stderr.cpu(), accepted / steps, chains, steps)
