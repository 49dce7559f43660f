"""The model contract: one interface for every latent-variable model p(x, s) = p(s) p(x|s) with a
reparameterised proposal q(s|x), which the estimators, objectives, training, serving, sampling and
the model card use. The standard VAE (vae.models.model.VAE), the VampPrior, gated and two-level families
(vae.models.families) and users' own networks (vae.models.networks) are implementations of it.

  encode(x)                      (mean, logvar) of the first inference layer q(z|x), (B, L): the embedding
  decode(z)                      decoder output for the decoder's latent z, (..., D*P) (vae.models.likelihoods' layout)
  log_likelihood(x, z, noise)    log p(x|z) by the model's likelihood (the table in vae.models.likelihoods)
  log_prior(s), sample_prior(n)  p(s) over the full latent state s, (..., S)
  decoder_latent(s)              the part of s the decoder reads, (..., L)
  proposal(x, u)                 what q(s|x) needs once per image (the encoder's output, u)
  log_weights_given_noise(x, eps, proposal)
                                 log w = log p(x, s) - log q(s|x) at s = the reparameterised sample of
                                 eps ~ N(0, I), (K, B, noise_dim) → (K, B)  (Burda et al. 2016, Eq. 8's w)
  log_weights(x, k)              the same with fresh eps: ELBO = E[log w] (k = 1), L_k = logsumexp - log k
  elbo_terms(x), iwae_bound(x, k)  the training objectives
  mean_image(z), sample_image(z) E[x|z] and x ~ p(x|z) on the inputs' [0, 1] scale

Shapes: B images, D = prod(image shape) subpixels, P likelihood parameters per subpixel, L latent
dimensions the decoder reads, S dimensions of the full latent state, K samples per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vae.models import likelihoods
from vae.config import ModelConfig
from vae.models.objectives import ELBOTerms


@dataclass(frozen=True)
class Proposal:
    """q(s|x) for a batch, computed once per image and reused by every chunk of samples."""

    mean: torch.Tensor  # (B, L) first inference layer's mean
    logvar: torch.Tensor  # (B, L)
    noise: torch.Tensor | None = None  # (B, D) dequantisation u, fixed across the image's samples
    x_projected: torch.Tensor | None = None  # (B, H): x W of a linear Bernoulli output layer (vae.models.model.VAE)


class LatentVariableModel(nn.Module):
    """The contract above; subclasses build `encoder` and `decoder` and define the latent structure."""

    latent_dim: int  # dimensions of encode()'s mean and of decode()'s input
    state_dim: int  # dimensions S of the full latent state
    noise_dim: int  # standard normals per posterior sample of the full latent state

    def __init__(self, config: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.config = config
        self.data_dim = data_dim
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.likelihood = likelihoods.make_likelihood(
            config.likelihood, components=config.components, dequantize=config.dequantize
        )

    # --- the likelihood ------------------------------------------------------------------------------

    def _likelihood_parameters(self) -> None:
        """The likelihood's own parameters, once the decoder exists: the logistics' starting log-scales
        (through the decoder's last bias) and the Gaussian's per-pixel log-std (learned or fixed)."""
        if self.likelihood.initial_log_scale is not None:
            self._start_log_scales(self.likelihood.initial_log_scale)
        if self.config.likelihood == "gaussian" and self.config.gaussian_std is None:
            self.log_std = nn.Parameter(torch.full((self.data_dim,), self.likelihood.initial_log_std()))
        else:
            self.register_buffer("log_std", torch.full((self.data_dim,), math.log(self.config.gaussian_std or 1.0)))

    @torch.no_grad()
    def _start_log_scales(self, value: float) -> None:
        """Start the logistics' log-scales at `value` through the last layer's bias, whose outputs are
        P per subpixel (Linear: D*P) or per channel (ConvTranspose2d: C*P): a scale of 1 (half the
        [-1, 1] range) would take thousands of Adam steps to shrink. A user's decoder without such a
        last layer keeps its own initialisation."""
        layers = [m for m in self.decoder.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))]
        if not layers or layers[-1].bias is None or layers[-1].bias.numel() % self.per_subpixel:
            return
        bias = layers[-1].bias.view(-1, self.per_subpixel)  # (D or C, P)
        k = self.config.components if self.config.likelihood == likelihoods.MIXTURE else 1
        bias[:, self.per_subpixel - k :] = value  # the log-scales are the last k of each subpixel's P

    @property
    def per_subpixel(self) -> int:
        """Decoder outputs P per subpixel (vae.models.likelihoods)."""
        return self.likelihood.params_per_subpixel

    @property
    def eight_bit(self) -> bool:
        """Whether log p(x|z) is a probability of 8-bit pixels (the inputs must be v/255)."""
        return self.likelihood.eight_bit

    @property
    def dequantized(self) -> bool:
        """Whether log p(x|z) reads dequantisation noise u (a Gaussian on x~ = (x + u)/256)."""
        return self.likelihood.dequantized

    @property
    def bits_per_dim_kind(self) -> str:
        """What NLL / (D ln 2) counts: 'binary', '8bit', 'dequantized' or 'continuous'."""
        return self.likelihood.bits_per_dim_kind

    def dequantization_noise(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """u ~ U[0, 1)^D per example for the dequantised Gaussian. x: (B, D) → (B, D)"""
        return torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    # --- decoder ---------------------------------------------------------------------------------

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output in vae.models.likelihoods' layout. z: (..., L) → (..., D*P)"""
        out = self.decoder(z.reshape(-1, z.shape[-1]))  # (N, D*P)
        return out.reshape(*z.shape[:-1], self.data_dim * self.per_subpixel)

    def decode_params(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters per subpixel. z: (..., L) → (..., D, P)"""
        return self.decode(z).reshape(*z.shape[:-1], self.data_dim, self.per_subpixel)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z) for the decoder's latent z. x: (B, D), z: (..., B, L) → (..., B); `noise` is the
        dequantisation u (B, D), drawn fresh when None (training), fixed by the caller for IS and AIS."""
        return self.likelihood.log_prob(x, self.decode(z), self.log_std, noise)

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] on the inputs' [0, 1] scale. z: (..., L) → (..., D)"""
        return self.likelihood.mean(self.decode(z), self.log_std)

    def sample_image(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x ~ p(x|z) on the inputs' [0, 1] scale (8-bit kinds: v/255). z: (..., L) → (..., D)"""
        return self.likelihood.sample(self.decode(z), self.log_std, generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixel means E[x|s] of n draws s ~ p(s). → (n, D)"""
        return self.mean_image(self.decoder_latent(self.sample_prior(n, generator)))

    # --- latent state ------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) parameters of the first inference layer. x: (B, D) → mean (B, L), logvar (B, L)"""
        mean, logvar = self.encoder(x).chunk(2, dim=-1)  # (B, L), (B, L)
        return mean, logvar

    def decoder_latent(self, state: torch.Tensor) -> torch.Tensor:
        """The part of the full latent state the decoder reads. (..., S) → (..., L)"""
        return state

    def log_prior(self, state: torch.Tensor) -> torch.Tensor:  # (..., S) → (...,)
        raise NotImplementedError

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:  # → (n, S)
        raise NotImplementedError

    def log_likelihood_state(
        self, x: torch.Tensor, state: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x|s) for a full latent state. x: (B, D), state: (..., B, S) → (..., B)"""
        return self.log_likelihood(x, self.decoder_latent(state), noise)

    def log_joint(self, x: torch.Tensor, state: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x, s) = log p(s) + log p(x|s): the target of annealed importance sampling. → (..., B)"""
        return self.log_prior(state) + self.log_likelihood_state(x, state, noise)

    def _parameter(self) -> torch.Tensor:
        return next(self.parameters())

    # --- importance weights and objectives -----------------------------------------------------------

    def proposal(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> Proposal:
        """q(s|x)'s per-image part for a batch, computed once. x: (B, D); noise: dequantisation u (B, D)"""
        mean, logvar = self.encode(x)  # (B, L), (B, L)
        return Proposal(mean, logvar, noise)

    def log_weights_given_noise(self, x: torch.Tensor, eps: torch.Tensor, proposal: Proposal) -> torch.Tensor:
        """log w = log p(x|s) + log p(s) - log q(s|x) at the sample that eps (K, B, noise_dim) reparameterises.

        x: (B, D), eps: (K, B, noise_dim) → (K, B)
        """
        log_px_given_s, log_ps, log_qs = self.log_weight_terms(x, eps, proposal)
        return log_px_given_s + log_ps - log_qs  # (K, B)

    def draw_noise(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None, noise: torch.Tensor | None = None
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
        return self.log_weights_given_noise(x, self.draw_noise(x, k, generator, noise), self.proposal(x))

    def iwae_bound(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_k(x) = logsumexp_i log w_i - log k (Burda et al. 2016, Eq. 8). x: (B, D) → (B,)"""
        return torch.logsumexp(self.log_weights(x, k, generator), dim=0) - math.log(k)

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ELBOTerms:
        """ELBO = log p(x|s) - [log q(s|x) - log p(s)] at one s ~ q(s|x); the KL is that single-sample
        estimate (Kingma & Welling 2014, Eq. 7, the SGVB estimator A). x: (B, D) → terms of shape (B,)"""
        log_px_given_s, log_ps, log_qs = self.log_weight_terms(x, self.draw_noise(x, 1, generator), self.proposal(x))
        reconstruction, kl = log_px_given_s[0], (log_qs - log_ps)[0]  # (B,), (B,)
        return ELBOTerms(elbo=reconstruction - kl, reconstruction=reconstruction, kl=kl)

    def log_weight_terms(self, x, eps, proposal) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p(x|s), log p(s), log q(s|x)) at the reparameterised sample of eps, each (K, B)."""
        raise NotImplementedError

    def sample_width(self) -> int:
        """Floats per latent sample in the widest activation of one log-weight: sizes the estimator's chunks."""
        widths = [self.data_dim * self.per_subpixel]
        widths += [m.out_features for m in self.modules() if isinstance(m, nn.Linear)]
        sizes: list[int] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel())) for m in self.decoder.modules()]
        try:
            with torch.no_grad():
                weight = self._parameter()
                self.decoder(torch.zeros((1, self.latent_dim), device=weight.device, dtype=weight.dtype))
        finally:
            for hook in hooks:
                hook.remove()
        return max(widths + sizes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(x)
