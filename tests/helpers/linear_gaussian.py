"""A VAE whose marginal and posterior are known exactly: x = W z + b + sigma * noise, z ~ N(0, I).

p(x) = N(b, W W^T + sigma^2 I);  p(z|x) = N(S W^T (x - b) / sigma^2, S),  S = (I + W^T W / sigma^2)^-1.
The encoder is linear too, set near (not at) the exact posterior so estimators have work to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vae.config import ModelConfig
from vae.models.model import VAE, build_model


@dataclass
class LinearGaussian:
    model: VAE
    W: torch.Tensor  # (D, L) float64
    b: torch.Tensor  # (D,)
    sigma: float

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        D, L = self.W.shape
        z = torch.randn((n, L), generator=generator, dtype=torch.float64)
        x = z @ self.W.T + self.b + self.sigma * torch.randn((n, D), generator=generator, dtype=torch.float64)
        return x  # (N, D) float64

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x): (N, D) → (N,)."""
        D = self.W.shape[0]
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(D, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact p(z|x): means (N, L) and the shared covariance (L, L)."""
        L = self.W.shape[1]
        S = torch.linalg.inv(torch.eye(L, dtype=torch.float64) + self.W.T @ self.W / self.sigma**2)
        return (x - self.b) @ self.W @ S / self.sigma**2, S

    def kl_q_to_posterior(self, x: torch.Tensor) -> torch.Tensor:
        """Exact KL(q(z|x) || p(z|x)) for the model's (diagonal) encoder: (N,)."""
        with torch.no_grad():
            mq, logvar = self.model.encode(x.float())
        mq, Sq = mq.double(), torch.exp(logvar.double())  # (N, L)
        mp, Sp = self.posterior(x)
        Sp_inv = torch.linalg.inv(Sp)
        L = mq.shape[1]
        diff = mp - mq  # (N, L)
        trace = (torch.diagonal(Sp_inv) * Sq).sum(-1)  # tr(Sp^-1 diag Sq)
        maha = ((diff @ Sp_inv) * diff).sum(-1)
        return 0.5 * (trace + maha - L + torch.logdet(Sp) - torch.log(Sq).sum(-1))


def make_linear_gaussian(
    D: int = 6, L: int = 2, sigma: float = 0.5, seed: int = 0, mean_shift: float = 0.1, var_scale: float = 1.5
) -> LinearGaussian:
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn((D, L), generator=generator, dtype=torch.float64)
    b = torch.randn((D,), generator=generator, dtype=torch.float64)
    model = build_model(ModelConfig(latent_dim=L, hidden=(), likelihood="gaussian", gaussian_std=sigma), D)
    lg = LinearGaussian(model, W, b, sigma)
    S = torch.linalg.inv(torch.eye(L, dtype=torch.float64) + W.T @ W / sigma**2)
    A = S @ W.T / sigma**2  # exact posterior mean = A (x - b)
    with torch.no_grad():
        model.decoder[0].weight.copy_(W.float())
        model.decoder[0].bias.copy_(b.float())
        encoder = model.encoder[0]  # Linear(D, 2L): [mean | logvar]
        encoder.weight.zero_()
        encoder.weight[:L].copy_((A * (1 - mean_shift)).float())  # shrunk mean: not the exact posterior
        encoder.bias[:L].copy_((-(A * (1 - mean_shift)) @ b + mean_shift * 0.5).float())
        encoder.bias[L:].copy_(torch.log(torch.diagonal(S) * var_scale).float())  # wider than exact
    return lg


def bernoulli_1d_log_marginal(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, points: int = 200001) -> torch.Tensor:
    """log p(x) = log ∫ N(z; 0, 1) prod_d Bern(x_d; sigmoid(w_d z + c_d)) dz by the trapezoid rule.

    x: (N, D) binary, w, c: (D,) → (N,) float64. The integrand is negligible beyond |z| = 12.
    """
    z = torch.linspace(-12.0, 12.0, points, dtype=torch.float64)  # (Z,)
    logits = z[:, None] * w.double() + c.double()  # (Z, D)
    log_lik = x.double() @ logits.T - torch.nn.functional.softplus(logits).sum(-1)  # (N, Z)
    log_integrand = log_lik - 0.5 * z**2 - 0.5 * math.log(2 * math.pi)  # (N, Z)
    dz = z[1] - z[0]
    weights = torch.full((points,), math.log(dz), dtype=torch.float64)
    weights[0] = weights[-1] = math.log(dz / 2)
    return torch.logsumexp(log_integrand + weights, dim=-1)


def make_bernoulli_1d(D: int = 8, encoder_scale: float = 1.0) -> VAE:
    """A VAE with a 1-D latent and a linear Bernoulli decoder (logits w·z + c): log p(x) by quadrature."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=1, hidden=(), likelihood="bernoulli"), D)
    with torch.no_grad():
        model.decoder[0].weight.copy_(torch.linspace(-2.0, 2.5, D)[:, None])
        model.decoder[0].bias.copy_(torch.linspace(0.5, -0.5, D))
        model.encoder[0].weight.mul_(encoder_scale)
    return model


def bernoulli_1d_exact(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) of `make_bernoulli_1d`'s model, (N,)."""
    return bernoulli_1d_log_marginal(x, model.decoder[0].weight[:, 0].detach(), model.decoder[0].bias.detach())


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """The mean of per-example values and its standard error."""
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))
