"""Stronger VAE families, implementations of the model contract (vae.models.latent_model): a VampPrior,
gated dense bodies, a two-level hierarchical VAE — on every architecture (mlp, conv, a user's
networks) and every likelihood of vae.models.likelihoods (8-bit ones and dequantisation included).

Each is a latent-variable model p(x, s) = p(s) p(x|s) over a latent state s with a reparameterised
proposal q(s|x); it supplies log_weight_terms (log p(x|s), log p(s), log q(s|x)), log_prior,
sample_prior and decoder_latent, and the contract derives the rest (log_weights, the ELBO, L_k).

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
from vae.models.latent_model import LatentVariableModel, Proposal
from vae.models.likelihood_kinds import LIKELIHOOD_KINDS
from vae.models.networks import GatedDense as GatedDense, build_networks, dense_net
from vae.models.objectives import (
    LOG_2PI,
    ELBOTerms,
    diagonal_normal_log_density,
    gaussian_kl,
    standard_normal_log_density,
)

Body = Literal["mlp", "gated"]
# Tomczak & Welling's code draws the pseudo-inputs' free parameters from N(-0.05, 0.01^2) and clips
# them with hardtanh to [0, 1]; at -0.05 the hardtanh has zero gradient, so we centre them at 0.5
# (inside its linear range, a grey image) with the same small spread to break the symmetry.
PSEUDO_INPUT_INIT = (0.5, 0.01)


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


def _config(config: ModelConfig | None, **fields) -> ModelConfig:
    """The ModelConfig a family was built from, or one made from its constructor's arguments."""
    if config is not None:
        return config
    if fields.get("likelihood") not in LIKELIHOOD_KINDS:
        raise VAEError(f"model likelihood '{fields.get('likelihood')}' is not a likelihood of vae.models.likelihoods")
    return ModelConfig(**{name: value for name, value in fields.items() if value is not None})


class OneLevelVAE(LatentVariableModel):
    """q(z|x) = N(mu(x), diag sigma^2(x)), p(x|z) by `likelihood`, and p(z) a standard normal or a VampPrior.

    prior "standard": p(z) = N(0, I); elbo_terms uses the analytic KL (Kingma & Welling 2014, App. B).
    prior "vamp": p(z) = 1/C sum_c q(z|u_c), u_c = hardtanh_[0,1](theta_c) for data in [0, 1]
    (binary or 8-bit pixels), theta_c for continuous (Gaussian) data (Tomczak & Welling 2018, Eq. 9
    and their code); the pseudo-inputs have the image's D subpixels, so a conv or a user's encoder
    reads them like images. elbo_terms' KL is then a single-sample estimate.
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
        likelihood: str = "bernoulli",
        gaussian_std: float | None = None,
        pseudo_input_init: tuple[float, float] = PSEUDO_INPUT_INIT,
        config: ModelConfig | None = None,
        image_shape: tuple[int, ...] | None = None,
    ):
        if prior not in ("standard", "vamp"):
            raise VAEError(f"model prior '{prior}' is not one of: standard, vamp")
        if prior == "vamp" and pseudo_inputs < 1:
            raise VAEError(f"model pseudo_inputs must be >= 1 for the VampPrior, got {pseudo_inputs}")
        config = _config(
            config,
            latent_dim=latent_dim,
            hidden=tuple(hidden),
            body=body,
            activation=activation,
            prior="vampprior" if prior == "vamp" else "standard",
            pseudo_inputs=pseudo_inputs if prior == "vamp" else None,
            likelihood=likelihood,
            gaussian_std=gaussian_std,
        )
        super().__init__(config, data_dim, image_shape)
        self.latent_dim = self.noise_dim = self.state_dim = latent_dim
        self.prior = prior
        self.encoder, self.decoder = build_networks(
            config, data_dim, image_shape, latent_dim, self.per_subpixel, body=config.body
        )
        self._likelihood_parameters()
        if prior == "vamp":
            mean, std = pseudo_input_init
            self.pseudo_input_params = nn.Parameter(torch.randn(pseudo_inputs, data_dim) * std + mean)  # (C, D)

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The VampPrior's pseudo-inputs u_c, in the data's range. → (C, D)"""
        theta = self.pseudo_input_params
        return theta if self.likelihood.data_kind == "continuous" else F.hardtanh(theta, 0.0, 1.0)

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

    def log_weight_terms(
        self, x: torch.Tensor, eps: torch.Tensor, proposal: Proposal
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p(x|z), log p(z), log q(z|x)) at z = mean + exp(logvar/2) eps. x: (B, D), eps: (K, B, L) → 3 × (K, B)"""
        mean, logvar = proposal.mean, proposal.logvar  # (B, L), (B, L)
        z = mean + torch.exp(0.5 * logvar) * eps  # (K, B, L)
        log_qz = _normal_log_density_from_noise(eps, logvar)
        return self.log_likelihood(x, z, proposal.noise), self.log_prior(z), log_qz

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ELBOTerms:
        """ELBO = log p(x|z) - KL(q(z|x) || p(z)), z ~ q(z|x): the analytic KL for the standard prior
        (Kingma & Welling 2014, Eq. 10), a single-sample estimate log q(z|x) - log p(z) for the VampPrior
        (Tomczak & Welling 2018, Eq. 11). x: (B, D) → terms of shape (B,)
        """
        if self.prior == "vamp":
            return super().elbo_terms(x, generator)
        mean, logvar = self.encode(x)  # (B, L), (B, L)
        eps = self.draw_noise(x, 1, generator)[0]  # (B, L)
        reconstruction = self.log_likelihood(x, mean + torch.exp(0.5 * logvar) * eps)  # (B,)
        kl = gaussian_kl(mean, logvar)  # (B,)
        return ELBOTerms(elbo=reconstruction - kl, reconstruction=reconstruction, kl=kl)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z): N(0, I), or a uniformly chosen VampPrior component q(z|u_c). → (n, L)"""
        weight = self._parameter()
        eps = torch.randn((n, self.latent_dim), generator=generator, device=weight.device, dtype=weight.dtype)
        if self.prior == "standard":
            return eps  # (n, L)
        mean, logvar = self.encode(self.pseudo_inputs)  # (C, L)
        c = torch.randint(mean.shape[0], (n,), generator=generator, device=weight.device)  # (n,)
        return mean[c] + torch.exp(0.5 * logvar[c]) * eps  # (n, L)

    def sample_width(self) -> int:
        width = super().sample_width()
        return max(width, self.pseudo_input_params.shape[0]) if self.prior == "vamp" else width  # log_prior's C


class TwoLevelVAE(LatentVariableModel):
    """Two stochastic layers (Burda, Grosse & Salakhutdinov 2016, Sec. 5 "two stochastic layers"):

    q(z1, z2|x) = q(z1|x) q(z2|z1),   p(x, z1, z2) = p(z2) p(z1|z2) p(x|z1),   p(z2) = N(0, I),
    every conditional a diagonal Gaussian whose parameters a dense net computes (x ↔ z1 by the
    architecture: dense, conv or a user's networks). The latent state is s = [z1, z2] (S = L1 + L2);
    encode() returns q(z1|x), the decoder reads z1, and elbo_terms' KL is the single-sample estimate
    log q(z1, z2|x) - log p(z1, z2).
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
        likelihood: str = "bernoulli",
        gaussian_std: float | None = None,
        config: ModelConfig | None = None,
        image_shape: tuple[int, ...] | None = None,
    ):
        l1, l2 = latent_dims
        config = _config(
            config,
            latent_dim=l1,
            latent_dim2=l2,
            levels=2,
            hidden=tuple(hidden),
            latent_hidden=tuple(latent_hidden),
            body=body,
            activation=activation,
            likelihood=likelihood,
            gaussian_std=gaussian_std,
        )
        super().__init__(config, data_dim, image_shape)
        self.latent_dims = (l1, l2)
        self.latent_dim = l1
        self.noise_dim = self.state_dim = l1 + l2
        latent_hidden = list(latent_hidden)
        self.encoder, decoder = build_networks(
            config, data_dim, image_shape, l1, self.per_subpixel, body=body
        )  # q(z1|x)
        self.encoder_z2 = dense_net([l1, *latent_hidden, 2 * l2], body, activation)  # q(z2|z1)
        self.prior_z1 = dense_net([l2, *latent_hidden[::-1], 2 * l1], body, activation)  # p(z1|z2)
        self.decoder = decoder  # p(x|z1)
        self._likelihood_parameters()

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

    def log_weight_terms(
        self, x: torch.Tensor, eps: torch.Tensor, proposal: Proposal
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p(x|z1), log p(z1, z2), log q(z1, z2|x)), z1 ~ q(z1|x), z2 ~ q(z2|z1), reparameterised.

        x: (B, D), eps: (K, B, L1 + L2) → 3 × (K, B)
        """
        eps1, eps2 = self.split(eps)  # (K, B, L1), (K, B, L2)
        mean1, logvar1 = proposal.mean, proposal.logvar  # (B, L1), (B, L1)
        z1 = mean1 + torch.exp(0.5 * logvar1) * eps1  # (K, B, L1)
        mean2, logvar2 = _gaussian_head(self.encoder_z2, z1)  # (K, B, L2), (K, B, L2)
        z2 = mean2 + torch.exp(0.5 * logvar2) * eps2  # (K, B, L2)
        log_q = _normal_log_density_from_noise(eps1, logvar1) + _normal_log_density_from_noise(eps2, logvar2)  # (K, B)
        state = torch.cat([z1, z2], dim=-1)  # (K, B, L1 + L2)
        return self.log_likelihood(x, z1, proposal.noise), self.log_prior(state), log_q

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral draws z2 ~ N(0, I), z1 ~ p(z1|z2). → (n, L1 + L2)"""
        weight = self._parameter()
        l1, l2 = self.latent_dims
        eps = torch.randn((n, l1 + l2), generator=generator, device=weight.device, dtype=weight.dtype)  # (n, L1 + L2)
        eps1, z2 = self.split(eps)  # (n, L1), (n, L2)
        mean1, logvar1 = _gaussian_head(self.prior_z1, z2)  # (n, L1)
        return torch.cat([mean1 + torch.exp(0.5 * logvar1) * eps1, z2], dim=-1)


LatentFamily = LatentVariableModel  # older code's name for the families' interface


def build_family(config: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None) -> LatentVariableModel:
    """The vae.models.families model a ModelConfig with `config.family` names (vae.config.ModelConfig's checks
    have already refused what is not built). x: (B, D) with D = data_dim."""
    if config.levels == 2:
        return TwoLevelVAE(
            data_dim,
            (config.latent_dim, config.latent_dim2),
            config.hidden,
            config.latent_hidden,
            body=config.body,
            activation=config.activation,
            config=config,
            image_shape=image_shape,
        )
    return OneLevelVAE(
        data_dim,
        config.latent_dim,
        config.hidden,
        body=config.body,
        activation=config.activation,
        prior="vamp" if config.prior == "vampprior" else "standard",
        pseudo_inputs=config.pseudo_inputs,
        config=config,
        image_shape=image_shape,
    )
