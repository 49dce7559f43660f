"""Encoder q(z|x), prior p(z) = N(0, I), decoder p(x|z) and its likelihoods; build_model and checkpoints.

build_model also builds the stronger families of vae.families (VampPrior, gated body, two levels)
when the ModelConfig asks for one; a checkpoint's model_config rebuilds the same class.

Shapes: B images, D = prod(image shape) pixels, L latent dimensions, K samples per image.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vae import likelihoods
from vae.config import ModelConfig
from vae.conv import conv_nets
from vae.errors import VAEError
from vae.families import LatentFamily, build_family
from vae.objectives import (  # the log densities live with the objectives; imported from here by older code
    LOG_2PI as LOG_2PI,
    bernoulli_log_likelihood as bernoulli_log_likelihood,
    diagonal_normal_log_density as diagonal_normal_log_density,
    gaussian_log_likelihood as gaussian_log_likelihood,
    standard_normal_log_density as standard_normal_log_density,
)

CHECKPOINT_FILE = "checkpoint.pt"
# Where 8-bit likelihoods' scales start: a logistic scale of e^-2 in [-1, 1] units (about 17 pixel
# levels) and, for the dequantised Gaussian, a std of e^-2.5 on [0, 1] (about 21 levels) alike.
INITIAL_LOG_SCALE = -2.0
INITIAL_DEQUANTIZED_LOG_STD = -2.5


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers of the given widths with `activation` between them (none after the last)."""
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def image_shape_of(image_shape: tuple[int, ...] | None, data_dim: int) -> tuple[int, int, int]:
    """The stored image shape as (C, H, W): grayscale (H, W) is (1, H, W); (C, H, W) is channel-major."""
    shape = tuple(int(s) for s in image_shape or ())
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or math.prod(shape) != data_dim:
        raise VAEError(
            f"model.architecture 'conv' needs images (H, W) or (C, H, W) of {data_dim} pixels, got shape {image_shape}"
        )
    return shape  # (C, H, W)


class VAE(nn.Module):
    """A VAE over flattened images of `data_dim` subpixels (Kingma & Welling, 2014).

    The decoder outputs P values per subpixel (vae.likelihoods.param_count): 1 for Bernoulli logits
    and Gaussian means; 2, 3K or 256 for the 8-bit likelihoods, laid out (..., D*P) with each
    subpixel's P values together. The 8-bit likelihoods (and dequantisation) read the inputs
    x = v/255 of vae.inputs.prepare_inputs back as whole pixel values v = round(255 x).
    """

    def __init__(self, config: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.config = config
        self.data_dim = data_dim
        self.eight_bit = config.likelihood in likelihoods.EIGHT_BIT_KINDS
        self.per_subpixel = likelihoods.param_count(config.likelihood, config.components) if self.eight_bit else 1
        out = data_dim * self.per_subpixel  # decoder outputs: D*P
        if config.architecture == "conv":
            shape = image_shape_of(image_shape, data_dim)  # (C, H, W)
            self.encoder, self.decoder = conv_nets(shape, config.latent_dim, config.channels, self.per_subpixel)
        else:
            hidden = list(config.hidden)
            self.encoder = mlp([data_dim, *hidden, 2 * config.latent_dim], config.activation)
            self.decoder = mlp([config.latent_dim, *hidden[::-1], out], config.activation)
        if config.likelihood in (likelihoods.LOGISTIC, likelihoods.MIXTURE):
            self._start_log_scales(INITIAL_LOG_SCALE)
        if config.likelihood == "gaussian" and config.gaussian_std is None:
            start = INITIAL_DEQUANTIZED_LOG_STD if config.dequantize else 0.0
            self.log_std = nn.Parameter(torch.full((data_dim,), start))  # learned per-pixel std
        else:
            std = config.gaussian_std or 1.0
            self.register_buffer("log_std", torch.full((data_dim,), math.log(std)))

    @torch.no_grad()
    def _start_log_scales(self, value: float) -> None:
        """Start the logistics' log-scales at `value` through the last layer's bias, whose outputs are
        P per subpixel (Linear: D*P) or per channel (ConvTranspose2d: C*P): a scale of 1 (half the
        [-1, 1] range) would take thousands of Adam steps to shrink."""
        last = [m for m in self.decoder if isinstance(m, (nn.Linear, nn.ConvTranspose2d))][-1]
        bias = last.bias.view(-1, self.per_subpixel)  # (D or C, P)
        k = self.config.components if self.config.likelihood == likelihoods.MIXTURE else 1
        bias[:, self.per_subpixel - k :] = value  # the log-scales are the last k of each subpixel's P

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def dequantized(self) -> bool:
        """Whether log p(x|z) reads dequantisation noise u (a Gaussian on x~ = (x + u)/256)."""
        return self.config.dequantize

    @property
    def bits_per_dim_kind(self) -> str:
        """What NLL / (D ln 2) counts for this likelihood: 'binary', '8bit', 'dequantized' or 'continuous'."""
        if self.dequantized:
            return "dequantized"
        return likelihoods.DATA_KIND[self.config.likelihood]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) parameters. x: (B, D) → mean (B, L), logvar (B, L)"""
        mean, logvar = self.encoder(x).chunk(2, dim=-1)  # (B, L), (B, L)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output: Bernoulli logits, Gaussian means or 8-bit parameters. z: (..., L) → (..., D*P)"""
        out = self.decoder(z.reshape(-1, z.shape[-1]))  # (N, D*P)
        return out.reshape(*z.shape[:-1], self.data_dim * self.per_subpixel)

    def decode_params(self, z: torch.Tensor) -> torch.Tensor:
        """The 8-bit likelihood's parameters in vae.likelihoods' layout. z: (..., L) → (..., D, P)"""
        return self.decode(z).reshape(*z.shape[:-1], self.data_dim, self.per_subpixel)

    @staticmethod
    def pixels(x: torch.Tensor) -> torch.Tensor:
        """Inputs x = v/255 back to whole pixel values v in {0..255}. (B, D) → (B, D)

        Inputs that are not v/255 (a dataset whose max_value is not 255) are refused in one line.
        """
        scaled = x * 255.0  # (B, D)
        v = torch.round(scaled).clamp(0, 255)  # (B, D)
        if not torch.compiler.is_compiling() and bool(((scaled - v).abs() > 1e-3).any()):
            raise VAEError(
                "8-bit likelihood: inputs are not pixel values v/255 with v in 0..255 "
                "(expected a dataset of 8-bit pixels, value_range [0, 255], and dataset.binarize 'none')"
            )
        return v

    def dequantization_noise(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """u ~ U[0, 1)^D per example for the dequantised Gaussian. x: (B, D) → (B, D)"""
        return torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    @property
    def _linear_output(self) -> bool:
        return isinstance(self.decoder[-1], nn.Linear)

    def project_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        """x W for the decoder's last layer W: (B, D) → (B, H); reusable across samples of z."""
        return x @ self.decoder[-1].weight if self._linear_output else None

    def log_likelihood(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        x_projected: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log p(x|z). x: (B, D), z: (..., B, L) → (..., B); x is broadcast, never copied.

        Dequantised Gaussian: log p~(x~|z) - D log 256 with x~ = (v + u)/256 (Theis et al. 2016,
        Sec. 3.1), whose expectation over u is a lower bound on log P(v|z); `noise` is u (B, D),
        drawn fresh when None (training), fixed by the caller when it must not move (IS, AIS).
        """
        kind = self.config.likelihood
        if kind == "bernoulli" and not self._linear_output:
            return bernoulli_log_likelihood(x, self.decode(z))
        if kind == "bernoulli":
            # sum_d x_d l_d with l = W h + b equals h·(W^T x) + b·x: a (..., B, H) dot instead of
            # a (..., B, D) product, so only softplus(l) touches the full decoder output.
            *body, last = self.decoder
            h = nn.Sequential(*body)(z) if body else z  # (..., B, H)
            logits = last(h)  # (..., B, D)
            xw = self.project_inputs(x) if x_projected is None else x_projected  # (B, H)
            x_dot_logits = (h * xw).sum(-1) + x @ last.bias  # (..., B)
            return x_dot_logits - F.softplus(logits).sum(-1)
        if self.eight_bit:
            return likelihoods.discrete_log_likelihood(kind, self.pixels(x), self.decode_params(z))  # (..., B)
        if self.dequantized:
            v = self.pixels(x)  # (B, D)
            u = self.dequantization_noise(x) if noise is None else noise  # (B, D)
            x_tilde = (v + u) / likelihoods.LEVELS  # (B, D) in [0, 1)
            return gaussian_log_likelihood(x_tilde, self.decode(z), self.log_std) - self.data_dim * likelihoods.LOG_256
        return gaussian_log_likelihood(x, self.decode(z), self.log_std)

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] on the inputs' [0, 1] scale: sigmoid(logits) for Bernoulli, the mean for Gaussian,
        E[v]/255 for 8-bit likelihoods (and (256 E[x~] - 1/2)/255 when dequantised). z: (..., L) → (..., D)"""
        if self.eight_bit:
            return likelihoods.mean_pixels(self.config.likelihood, self.decode_params(z)) / 255.0  # (..., D)
        out = self.decode(z)  # (..., D)
        if self.config.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return (likelihoods.LEVELS * out - 0.5) / 255.0 if self.dequantized else out

    def sample_image(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x ~ p(x|z) on the inputs' [0, 1] scale (8-bit kinds: v/255). z: (..., L) → (..., D)"""
        if self.eight_bit:
            return likelihoods.sample_pixels(self.config.likelihood, self.decode_params(z), generator) / 255.0
        out = self.decode(z)  # (..., D)
        if self.config.likelihood == "bernoulli":
            u = torch.rand(out.shape, generator=generator, dtype=out.dtype, device=out.device)
            return (u < torch.sigmoid(out)).to(out.dtype)
        eps = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        x = out + torch.exp(self.log_std) * eps  # (..., D)
        if self.dequantized:  # x~ falls in the bin of v = floor(256 x~)
            return torch.floor(likelihoods.LEVELS * x).clamp(0, 255) / 255.0
        return x

    # --- the latent state, as vae.families models expose it (AIS, prior samples) -------------------

    @property
    def state_dim(self) -> int:
        """Dimensions of the full latent state: z itself."""
        return self.config.latent_dim

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = log N(z; 0, I). z: (..., L) → (...,)"""
        return standard_normal_log_density(z)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I) on the model's device. → (n, L)"""
        weight = next(self.parameters())
        return torch.randn((n, self.latent_dim), generator=generator, device=weight.device, dtype=weight.dtype)

    def decoder_latent(self, state: torch.Tensor) -> torch.Tensor:
        """The latent the decoder reads: the whole state. (..., L) → (..., L)"""
        return state

    def log_likelihood_state(
        self, x: torch.Tensor, state: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x|z) for the state z, with `noise` the fixed dequantisation u (B, D) when dequantised.

        x: (B, D), state: (..., B, L) → (..., B)
        """
        return self.log_likelihood(x, state, None, noise)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(x)


Model = VAE | LatentFamily  # what build_model returns: the standard VAE or a vae.families model


def build_model(config: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None) -> Model:
    """The model `config` names: vae.model.VAE, or with a VampPrior, gated body or two levels
    (config.family) the vae.families model (vae.families.build_family)."""
    if config.family:
        return build_family(config, data_dim)
    return VAE(config, data_dim, image_shape)


def model_from_state(state: dict[str, Any]) -> Model:
    """The model a checkpoint's contents describe (model_config, data_dim, image_shape, weights), in eval mode.

    model_config decides the class (build_model), so a family checkpoint rebuilds its family."""
    model = build_model(ModelConfig(**state["model_config"]), int(state["data_dim"]), state.get("image_shape"))
    model.load_state_dict(state["model"])
    return model.eval()


def read_checkpoint_state(checkpoint_dir: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """The contents of a training checkpoint directory, loaded to the CPU (weights_only: no code runs).

    `mmap` maps the tensors instead of reading them (for the epoch and history alone). A file that
    weights_only refuses (a planted pickle naming code) or cannot read is one line, nothing loaded."""
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise VAEError(f"{path}: checkpoint not found (expected a training checkpoint directory)") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VAEError(
            f"{path}: not a checkpoint this project wrote (only tensors and plain values are loaded; {reason})"
        ) from None


def load_checkpoint(checkpoint_dir: str | Path) -> tuple[Model, dict[str, Any]]:
    """Rebuild the model (VAE or family, as its model_config says) from a training checkpoint directory."""
    state = read_checkpoint_state(checkpoint_dir)
    return model_from_state(state), state
