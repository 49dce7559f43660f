"""Importance-sampled log p(x) with a standard error: pure torch, no framework imports.

log p(x) ~= log 1/k sum_{i=1..k} p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x)

(Burda, Grosse & Salakhutdinov 2016, Eq. 8 with the trained encoder as proposal; the estimate is
a lower bound in expectation that tightens to log p(x) as k grows.) Each image is encoded once;
the k latents are decoded in chunks so memory stays bounded, and log-weights are combined in
float64 with a running logsumexp. The noise for example n comes from its own generator seeded
by (seed, n), so results do not depend on batch or chunk sizes, nor on how a test set is split
across workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vae.config import EvaluationConfig
from vae.errors import DataError
from vae.model import VAE, load_checkpoint
from vae.objectives import log_importance_weights


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

    def summary(self, data_dim: int) -> dict[str, float | int]:
        """The numbers a user reads: NLL ± s.e. (nats), bits/dim, ELBO, ELBO gap, ESS."""
        return {
            "nll": self.nll,
            "nll_stderr": self.stderr,
            "bits_per_dim": self.nll / (data_dim * math.log(2.0)),
            "elbo": float(self.elbo.mean()),
            # log p̂(x) - ELBO estimates KL(q(z|x) || p(z|x)).
            "elbo_gap": float((self.log_px - self.elbo).mean()),
            "ess": float(self.ess.mean()),
            "k": self.k,
            "n": self.n,
        }


def chunk_size_for(k: int, batch: int, width: int, max_memory_bytes: int) -> int:
    """Latent samples per decoder call so that K_chunk * B * width float32s fit the budget."""
    per_sample = max(1, batch * width * 4 * 3)  # activations, output and log-weight temporaries
    return int(max(1, min(k, max_memory_bytes // per_sample)))


def _example_noise(k: int, latent_dim: int, first: int, count: int, seed: int) -> torch.Tensor:
    """eps ~ N(0, I) for examples first..first+count-1, each from its own seeded stream: (K, B, L)."""
    noise = torch.empty((count, k, latent_dim))  # (B, K, L)
    generator = torch.Generator()
    for i in range(count):
        generator.manual_seed((seed * 0x9E3779B1 + first + i) % 2**63)
        torch.randn((k, latent_dim), generator=generator, out=noise[i])
    return noise.transpose(0, 1)  # (K, B, L)


@torch.no_grad()
def estimate_log_likelihood(
    model: VAE,
    x: torch.Tensor,
    k: int,
    *,
    batch_size: int = 128,
    chunk_size: int | None = None,
    max_memory_bytes: int = 256 * 2**20,
    seed: int = 0,
    first_index: int = 0,
) -> LogLikelihoodEstimate:
    """Estimate log p(x) per example with k importance samples from q(z|x).

    x: (N, D); row n uses the noise stream of global example `first_index + n`.
    Returns per-example log p̂(x), Monte Carlo ELBO and ESS, all (N,) float64.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model.eval()
    widest = max([model.data_dim, *model.config.hidden])
    # The noise for a batch is K * B * L floats: keep it within half the budget.
    batch_size = max(1, min(batch_size, max_memory_bytes // 2 // (k * model.latent_dim * 4)))
    log_px, elbos, ess = [], [], []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]  # (B, D)
        mean, logvar = model.encode(xb)  # (B, L): once per image, never per sample
        eps = _example_noise(k, mean.shape[-1], first_index + start, xb.shape[0], seed).to(mean)  # (K, B, L)
        chunk = chunk_size or chunk_size_for(k, xb.shape[0], widest, max_memory_bytes // 2)
        lse = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=xb.device)  # (B,)
        lse2 = lse.clone()  # logsumexp of 2 log w, for the ESS
        total = torch.zeros_like(lse)  # sum of log w, for the ELBO
        for done in range(0, k, chunk):
            kc = min(chunk, k - done)
            z = mean + torch.exp(0.5 * logvar) * eps[done : done + kc]  # (Kc, B, L)
            log_w = log_importance_weights(model, xb, mean, logvar, z).double()  # (Kc, B)
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=0))
            lse2 = torch.logaddexp(lse2, torch.logsumexp(2.0 * log_w, dim=0))
            total += log_w.sum(0)
        log_px.append(lse - math.log(k))  # log 1/k sum w
        elbos.append(total / k)
        ess.append(torch.exp(2.0 * lse - lse2))  # (sum w)^2 / sum w^2
    return LogLikelihoodEstimate(
        log_px=torch.cat(log_px).cpu(), elbo=torch.cat(elbos).cpu(), ess=torch.cat(ess).cpu(), k=k
    )


def evaluate_checkpoint(
    checkpoint_dir: str,
    dataset_path: str,
    config: EvaluationConfig,
    binarize: str,
) -> dict[str, float | int]:
    """Load a checkpoint and a dataset split, estimate log p(x) on it; returns the summary."""
    from vae.data import load_split, prepare_inputs, read_manifest

    model, _ = load_checkpoint(checkpoint_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    manifest = read_manifest(dataset_path)
    images, _ = load_split(dataset_path, config.split)
    if images.shape[0] == 0:
        raise DataError(f"{dataset_path}: split '{config.split}' is empty (expected at least one image)")
    if images.shape[1] != model.data_dim:
        raise DataError(
            f"{dataset_path}: images have {images.shape[1]} pixels but the model expects {model.data_dim}"
        )
    # Dynamic binarisation is evaluated on one fixed draw, so NLLs are comparable across runs.
    generator = torch.Generator().manual_seed(config.seed)
    x = prepare_inputs(torch.from_numpy(images.copy()), manifest["value_range"][1], binarize, generator=generator)
    estimate = estimate_log_likelihood(
        model, x.to(device), config.k, batch_size=config.batch_size, max_memory_bytes=config.max_memory_mb * 2**20,
        seed=config.seed,
    )
    return {**estimate.summary(model.data_dim), "split": config.split}
