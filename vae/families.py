"""Stronger VAE families behind one interface: a VampPrior, gated MLP bodies, a two-level hierarchical VAE.

Every family is a latent-variable model p(x, s) = p(s) p(x|s) over a latent state s with a
reparameterised proposal q(s|x), and exposes what the objectives and estimators need:

  log_weights(x, k)  log w_i = log p(x, s_i) - log q(s_i|x), s_i ~ q(s|x)          (K, B)
                     ELBO = E[log w] (k = 1); IWAE L_k = logsumexp_i log w_i - log k (Burda et al. 2016, Eq. 8)
  elbo_terms(x)      ELBO = reconstruction - KL, each (B,)
  log_prior(s)       log p(s) over the full latent state (..., S) → (...,)
  log_joint(x, s)    log p(x, s) = log p(s) + log p(x|s): the target of annealed importance sampling
  sample_prior(n)    s ~ p(s), (n, S); sample(n) gives the decoder's pixel means E[x|s]
  encode(x)          (mean, logvar) of the first inference layer q(z|x), (B, L): the embedding
  decode(z)          decoder output (Bernoulli logits or Gaussian means) for the decoder's latent z

Families:
  OneLevelVAE(prior="standard")  p(z) = N(0, I), analytic KL (Kingma & Welling 2014, Appendix B)
  OneLevelVAE(prior="vamp")      p(z) = 1/K sum_k q(z|u_k), K learned pseudo-inputs u_k
                                 (Tomczak & Welling 2018, Eq. 9, "VampPrior")
  body="gated"                   GatedDense hidden layers h = (W x + b) * sigmoid(V x + c)
                                 (Dauphin et al. 2017, Eq. 1; used for VAEs by Tomczak & Welling 2018)
  TwoLevelVAE                    q(z1|x) q(z2|z1), p(z2) = N(0, I), p(z1|z2), p(x|z1)
                                 (Burda, Grosse & Salakhutdinov 2016, two stochastic layers)

Shapes: B images, D pixels, L latent dimensions (L1, L2 per level), K importance samples,
C pseudo-inputs (the VampPrior's mixture components), S = dimensions of the full latent state.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vae.config import ModelConfig
from vae.errors import VAEError
from vae.objectives import (
    LOG_2PI,
    ELBOTerms,
    bernoulli_log_likelihood,
    diagonal_normal_log_density,
    gaussian_kl,
    gaussian_log_likelihood,
    standard_normal_log_density,
)

Body = Literal["mlp", "gated"]
Likelihood = Literal["bernoulli", "gaussian"]
# Tomczak & Welling's code draws the pseudo-inputs' free parameters from N(-0.05, 0.01^2) and clips
# them with hardtanh to [0, 1]; at -0.05 the hardtanh has zero gradient, so we centre them at 0.5
# (inside its linear range, a grey image) with the same small spread to break the symmetry.
PSEUDO_INPUT_INIT = (0.5, 0.01)


class GatedDense(nn.Module):
    """h = (W x + b) * sigmoid(V x + c): a gated linear unit (Dauphin et al. 2017, Eq. 1). (..., in) → (..., out)"""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * torch.sigmoid(self.gate(x))


def dense_net(sizes: list[int], body: Body = "mlp", activation: str = "relu") -> nn.Sequential:
    """Hidden layers of widths sizes[1:-1], then a Linear to sizes[-1].

    body "mlp": Linear + activation per hidden layer, the same layout as vae.model.mlp;
    body "gated": one GatedDense per hidden layer (the gate is the nonlinearity, as in Tomczak & Welling).
    """
    if body not in ("mlp", "gated"):
        raise VAEError(f"model body '{body}' is not one of: mlp, gated")
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh}
    if activation not in acts:
        raise VAEError(f"model activation '{activation}' is not one of: relu, tanh")
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [GatedDense(n_in, n_out)] if body == "gated" else [nn.Linear(n_in, n_out), acts[activation]()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def _gaussian_head(net: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `net` on inputs of any leading shape and split its output into (mean, logvar). (..., I) → (..., L) twice"""
    out = net(inputs.reshape(-1, inputs.shape[-1]))  # (N, 2L)
    mean, logvar = out.reshape(*inputs.shape[:-1], out.shape[-1]).chunk(2, dim=-1)  # (..., L), (..., L)
    return mean, logvar


def _normal_log_density_from_noise(eps: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; m, diag exp(logvar)) at z = m + exp(logvar / 2) eps, written through eps (exact, cheaper).

    eps: (..., L), logvar broadcasts to (..., L) → (...,)
    """
    return -0.5 * (eps * eps + logvar + LOG_2PI).sum(-1)


class LatentFamily(nn.Module):
    """The interface shared by the families; subclasses supply the latent structure.

    Subclasses define: encode, decode (through self.decoder), log_weight_terms, log_prior,
    sample_prior, decoder_latent, latent_dim, noise_dim, state_dim.
    """

    latent_dim: int  # dimensions of encode()'s mean and of decode()'s input
    noise_dim: int  # standard normals per posterior sample of the full latent state
    state_dim: int  # dimensions S of the full latent state
    config: ModelConfig | None = None  # set by build_family: what the checkpoint stores
    # What code written for vae.model.VAE asks of any model: no 8-bit likelihood, no dequantisation.
    eight_bit = False
    dequantized = False

    def __init__(self, data_dim: int, likelihood: Likelihood, gaussian_std: float | None):
        super().__init__()
        if likelihood not in ("bernoulli", "gaussian"):
            raise VAEError(f"model likelihood '{likelihood}' is not one of: bernoulli, gaussian")
        self.data_dim = data_dim
        self.likelihood = likelihood
        if likelihood == "gaussian" and gaussian_std is None:
            self.log_std = nn.Parameter(torch.zeros(data_dim))  # learned per-pixel std, as in vae.model.VAE
        else:
            self.register_buffer("log_std", torch.full((data_dim,), math.log(gaussian_std or 1.0)))

    # --- decoder ---------------------------------------------------------------------------------

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output: Bernoulli logits or Gaussian means. z: (..., L) → (..., D)"""
        return self.decoder(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], self.data_dim)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) for the decoder's latent z. x: (B, D), z: (..., B, L) → (..., B)"""
        out = self.decode(z)  # (..., B, D)
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood(x, out)
        return gaussian_log_likelihood(x, out, self.log_std)

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z]: sigmoid(logits) for Bernoulli, the mean for Gaussian. z: (..., L) → (..., D)"""
        out = self.decode(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def sample_image(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x ~ p(x|z) for the decoder's latent z, as vae.model.VAE.sample_image. z: (..., L) → (..., D)"""
        out = self.decode(z)  # (..., D)
        if self.likelihood == "bernoulli":
            u = torch.rand(out.shape, generator=generator, dtype=out.dtype, device=out.device)
            return (u < torch.sigmoid(out)).to(out.dtype)
        eps = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        return out + torch.exp(self.log_std) * eps

    @property
    def bits_per_dim_kind(self) -> str:
        """What NLL / (D ln 2) counts (vae.estimators.BITS_PER_DIM_MEANING): 'binary' or 'continuous'."""
        return "binary" if self.likelihood == "bernoulli" else "continuous"

    def decoder_latent(self, state: torch.Tensor) -> torch.Tensor:
        """The part of the full latent state the decoder reads. (..., S) → (..., L)"""
        return state

    def log_likelihood_state(
        self, x: torch.Tensor, state: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x|s) for a full latent state. x: (B, D), state: (..., B, S) → (..., B)

        `noise` (dequantisation, vae.model.VAE's) does not apply to the families and is ignored."""
        return self.log_likelihood(x, self.decoder_latent(state))

    def log_joint(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """log p(x, s) = log p(s) + log p(x|s). x: (B, D), state: (..., B, S) → (..., B)"""
        return self.log_prior(state) + self.log_likelihood_state(x, state)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixel means E[x|s] of n draws s ~ p(s). → (n, D)"""
        return self.mean_image(self.decoder_latent(self.sample_prior(n, generator)))

    # --- objectives --------------------------------------------------------------------------------

    def draw_noise(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """eps ~ N(0, I) for k posterior samples per image, or the given noise checked. → (K, B, noise_dim)"""
        shape = (k, x.shape[0], self.noise_dim)
        if noise is None:
            return torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        return noise.to(x)

    def log_weights(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log w = log p(x, s) - log q(s|x), s ~ q(s|x) reparameterised (differentiable).

        x: (B, D); noise (optional, (K, B, noise_dim)) replaces the draw → (K, B)
        """
        log_px_given_s, log_ps, log_qs = self.log_weight_terms(x, self.draw_noise(x, k, generator, noise))
        return log_px_given_s + log_ps - log_qs  # (K, B)

    def iwae_bound(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_k(x) = logsumexp_i log w_i - log k (Burda et al. 2016, Eq. 8). x: (B, D) → (B,)"""
        return torch.logsumexp(self.log_weights(x, k, generator), dim=0) - math.log(k)

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ELBOTerms:
        """ELBO = log p(x|s) - [log q(s|x) - log p(s)] at one s ~ q(s|x); the KL is that single-sample estimate.

        (Kingma & Welling 2014, Eq. 7, the SGVB estimator A.) x: (B, D) → terms of shape (B,)
        """
        log_px_given_s, log_ps, log_qs = self.log_weight_terms(x, self.draw_noise(x, 1, generator, None))
        reconstruction, kl = log_px_given_s[0], (log_qs - log_ps)[0]  # (B,), (B,)
        return ELBOTerms(elbo=reconstruction - kl, reconstruction=reconstruction, kl=kl)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(x)


class OneLevelVAE(LatentFamily):
    """q(z|x) = N(mu(x), diag sigma^2(x)), p(x|z) by `likelihood`, and p(z) a standard normal or a VampPrior.

    prior "standard": p(z) = N(0, I); elbo_terms uses the analytic KL (Kingma & Welling 2014, App. B).
    prior "vamp": p(z) = 1/C sum_c q(z|u_c), u_c = hardtanh_[0,1](theta_c) for Bernoulli data, theta_c
    for Gaussian (Tomczak & Welling 2018, Eq. 9 and their code); elbo_terms' KL is a single-sample estimate.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: tuple[int, ...] = (300, 300),
        *,
        body: Body = "mlp",
        activation: str = "relu",
        prior: Literal["standard", "vamp"] = "standard",
        pseudo_inputs: int = 500,
        likelihood: Likelihood = "bernoulli",
        gaussian_std: float | None = None,
        pseudo_input_init: tuple[float, float] = PSEUDO_INPUT_INIT,
    ):
        super().__init__(data_dim, likelihood, gaussian_std)
        if prior not in ("standard", "vamp"):
            raise VAEError(f"model prior '{prior}' is not one of: standard, vamp")
        if prior == "vamp" and pseudo_inputs < 1:
            raise VAEError(f"model pseudo_inputs must be >= 1 for the VampPrior, got {pseudo_inputs}")
        self.latent_dim = self.noise_dim = self.state_dim = latent_dim
        self.prior = prior
        hidden = list(hidden)
        self.encoder = dense_net([data_dim, *hidden, 2 * latent_dim], body, activation)
        self.decoder = dense_net([latent_dim, *hidden[::-1], data_dim], body, activation)
        if prior == "vamp":
            mean, std = pseudo_input_init
            self.pseudo_input_params = nn.Parameter(torch.randn(pseudo_inputs, data_dim) * std + mean)  # (C, D)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) parameters. x: (B, D) → mean (B, L), logvar (B, L)"""
        mean, logvar = self.encoder(x).chunk(2, dim=-1)  # (B, L), (B, L)
        return mean, logvar

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The VampPrior's pseudo-inputs u_c, in the data's range. → (C, D)"""
        theta = self.pseudo_input_params
        return F.hardtanh(theta, 0.0, 1.0) if self.likelihood == "bernoulli" else theta

    @torch.no_grad()
    def set_pseudo_inputs(self, x: torch.Tensor) -> None:
        """Start the pseudo-inputs at C data points (Tomczak & Welling's `use_training_data_init`). x: (C, D)"""
        self.pseudo_input_params.copy_(x.to(self.pseudo_input_params))

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z): N(0, I), or the VampPrior log 1/C sum_c N(z; m_c, diag v_c), (m_c, log v_c) = encode(u_c).

        z: (..., L) → (...,)
        """
        if self.prior == "standard":
            return standard_normal_log_density(z)
        mean, logvar = self.encode(self.pseudo_inputs)  # (C, L), (C, L)
        precision = torch.exp(-logvar)  # (C, L)
        # sum_l (z_l - m_cl)^2 / v_cl expanded into three matmuls: no (..., C, L) temporary.
        quadratic = (
            (z * z) @ precision.T  # (..., C)
            - 2.0 * z @ (mean * precision).T  # (..., C)
            + (mean * mean * precision).sum(-1)  # (C,)
        )
        log_components = -0.5 * (quadratic + logvar.sum(-1) + z.shape[-1] * LOG_2PI)  # (..., C)
        return torch.logsumexp(log_components, dim=-1) - math.log(mean.shape[0])  # (...,)

    def log_weight_terms(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p(x|z), log p(z), log q(z|x)) at z = mean + exp(logvar/2) eps. x: (B, D), eps: (K, B, L) → 3 × (K, B)"""
        mean, logvar = self.encode(x)  # (B, L), (B, L)
        z = mean + torch.exp(0.5 * logvar) * eps  # (K, B, L)
        return self.log_likelihood(x, z), self.log_prior(z), _normal_log_density_from_noise(eps, logvar)

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ELBOTerms:
        """ELBO = log p(x|z) - KL(q(z|x) || p(z)), z ~ q(z|x): the analytic KL for the standard prior
        (Kingma & Welling 2014, Eq. 10), a single-sample estimate log q(z|x) - log p(z) for the VampPrior
        (Tomczak & Welling 2018, Eq. 11). x: (B, D) → terms of shape (B,)
        """
        if self.prior == "vamp":
            return super().elbo_terms(x, generator)
        mean, logvar = self.encode(x)  # (B, L), (B, L)
        eps = self.draw_noise(x, 1, generator, None)[0]  # (B, L)
        reconstruction = self.log_likelihood(x, mean + torch.exp(0.5 * logvar) * eps)  # (B,)
        kl = gaussian_kl(mean, logvar)  # (B,)
        return ELBOTerms(elbo=reconstruction - kl, reconstruction=reconstruction, kl=kl)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z): N(0, I), or a uniformly chosen VampPrior component q(z|u_c). → (n, L)"""
        device, dtype = self.decoder[-1].weight.device, self.decoder[-1].weight.dtype
        eps = torch.randn((n, self.latent_dim), generator=generator, device=device, dtype=dtype)  # (n, L)
        if self.prior == "standard":
            return eps
        mean, logvar = self.encode(self.pseudo_inputs)  # (C, L)
        c = torch.randint(mean.shape[0], (n,), generator=generator, device=device)  # (n,)
        return mean[c] + torch.exp(0.5 * logvar[c]) * eps  # (n, L)


class TwoLevelVAE(LatentFamily):
    """Two stochastic layers (Burda, Grosse & Salakhutdinov 2016, Sec. 5 "two stochastic layers"):

    q(z1, z2|x) = q(z1|x) q(z2|z1),   p(x, z1, z2) = p(z2) p(z1|z2) p(x|z1),   p(z2) = N(0, I),
    every conditional a diagonal Gaussian whose parameters a dense net computes. The latent state is
    s = [z1, z2] (S = L1 + L2); encode() returns q(z1|x), the decoder reads z1, and elbo_terms' KL is
    the single-sample estimate log q(z1, z2|x) - log p(z1, z2).
    `hidden` are the widths between x and z1, `latent_hidden` those between z1 and z2 (Burda et al.
    used latent_dims (100, 50), hidden (200, 200), latent_hidden (100, 100), tanh).
    """

    def __init__(
        self,
        data_dim: int,
        latent_dims: tuple[int, int] = (100, 50),
        hidden: tuple[int, ...] = (200, 200),
        latent_hidden: tuple[int, ...] = (100, 100),
        *,
        body: Body = "mlp",
        activation: str = "tanh",
        likelihood: Likelihood = "bernoulli",
        gaussian_std: float | None = None,
    ):
        super().__init__(data_dim, likelihood, gaussian_std)
        l1, l2 = latent_dims
        self.latent_dims = (l1, l2)
        self.latent_dim = l1
        self.noise_dim = self.state_dim = l1 + l2
        hidden, latent_hidden = list(hidden), list(latent_hidden)
        self.encoder = dense_net([data_dim, *hidden, 2 * l1], body, activation)  # q(z1|x)
        self.encoder_z2 = dense_net([l1, *latent_hidden, 2 * l2], body, activation)  # q(z2|z1)
        self.prior_z1 = dense_net([l2, *latent_hidden[::-1], 2 * l1], body, activation)  # p(z1|z2)
        self.decoder = dense_net([l1, *hidden[::-1], data_dim], body, activation)  # p(x|z1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z1|x) parameters. x: (B, D) → mean (B, L1), logvar (B, L1)"""
        mean, logvar = self.encoder(x).chunk(2, dim=-1)  # (B, L1), (B, L1)
        return mean, logvar

    def split(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., L1 + L2) → z1 (..., L1), z2 (..., L2)"""
        return state[..., : self.latent_dims[0]], state[..., self.latent_dims[0] :]

    def decoder_latent(self, state: torch.Tensor) -> torch.Tensor:
        return self.split(state)[0]

    def log_prior(self, state: torch.Tensor) -> torch.Tensor:
        """log p(z1, z2) = log N(z2; 0, I) + log N(z1; mu(z2), diag sigma^2(z2)). (..., L1 + L2) → (...,)"""
        z1, z2 = self.split(state)  # (..., L1), (..., L2)
        mean1, logvar1 = _gaussian_head(self.prior_z1, z2)  # (..., L1), (..., L1)
        return standard_normal_log_density(z2) + diagonal_normal_log_density(z1, mean1, logvar1)

    def log_weight_terms(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p(x|z1), log p(z1, z2), log q(z1, z2|x)), z1 ~ q(z1|x), z2 ~ q(z2|z1), reparameterised.

        x: (B, D), eps: (K, B, L1 + L2) → 3 × (K, B)
        """
        eps1, eps2 = self.split(eps)  # (K, B, L1), (K, B, L2)
        mean1, logvar1 = self.encode(x)  # (B, L1), (B, L1)
        z1 = mean1 + torch.exp(0.5 * logvar1) * eps1  # (K, B, L1)
        mean2, logvar2 = _gaussian_head(self.encoder_z2, z1)  # (K, B, L2), (K, B, L2)
        z2 = mean2 + torch.exp(0.5 * logvar2) * eps2  # (K, B, L2)
        log_q = _normal_log_density_from_noise(eps1, logvar1) + _normal_log_density_from_noise(eps2, logvar2)  # (K, B)
        state = torch.cat([z1, z2], dim=-1)  # (K, B, L1 + L2)
        return self.log_likelihood(x, z1), self.log_prior(state), log_q

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral draws z2 ~ N(0, I), z1 ~ p(z1|z2). → (n, L1 + L2)"""
        device, dtype = self.decoder[-1].weight.device, self.decoder[-1].weight.dtype
        l1, l2 = self.latent_dims
        eps = torch.randn((n, l1 + l2), generator=generator, device=device, dtype=dtype)  # (n, L1 + L2)
        eps1, z2 = self.split(eps)  # (n, L1), (n, L2)
        mean1, logvar1 = _gaussian_head(self.prior_z1, z2)  # (n, L1)
        return torch.cat([mean1 + torch.exp(0.5 * logvar1) * eps1, z2], dim=-1)


def family_elbo(model: LatentFamily, x: torch.Tensor, generator: torch.Generator | None = None) -> ELBOTerms:
    """The ELBO's terms for any family: model.elbo_terms. x: (B, D) → terms of shape (B,)"""
    return model.elbo_terms(x, generator)


def family_iwae_bound(
    model: LatentFamily, x: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """L_k(x) = log 1/k sum_i w_i for any family (Burda et al. 2016, Eq. 8). x: (B, D) → (B,)"""
    return model.iwae_bound(x, k, generator)


def build_family(config: ModelConfig, data_dim: int) -> LatentFamily:
    """The vae.families model a ModelConfig with `config.family` names (vae.config.ModelConfig's checks
    have already refused what is not built). x: (B, D) with D = data_dim."""
    common = dict(body=config.body, activation=config.activation, likelihood=config.likelihood)
    if config.levels == 2:
        model: LatentFamily = TwoLevelVAE(
            data_dim,
            (config.latent_dim, config.latent_dim2),
            config.hidden,
            config.latent_hidden,
            gaussian_std=config.gaussian_std,
            **common,
        )
    else:
        prior = "vamp" if config.prior == "vampprior" else "standard"
        model = OneLevelVAE(
            data_dim,
            config.latent_dim,
            config.hidden,
            prior=prior,
            pseudo_inputs=config.pseudo_inputs,
            gaussian_std=config.gaussian_std,
            **common,
        )
    model.config = config
    return model
