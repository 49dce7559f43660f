"""Encoder q(z|x), prior p(z) = N(0, I), decoder p(x|z) and its likelihoods.

Shapes: B images, D = prod(image shape) pixels, L latent dimensions, K samples per image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vae.config import ModelConfig
from vae.errors import VAEError

LOG_2PI = math.log(2.0 * math.pi)
CHECKPOINT_FILE = "checkpoint.pt"


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = sum_d x_d l_d - softplus(l_d), the stable form of x log s(l) + (1-x) log(1-s(l)).

    x: (..., D) in {0, 1}; logits: (..., D) → (...,)
    """
    return (x * logits - F.softplus(logits)).sum(-1)


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag exp(2 log_std)) = -sum_d [ (x_d-m_d)^2 / 2s_d^2 + log s_d + log(2pi)/2 ].

    x, mean: (..., D); log_std broadcasts to (..., D) → (...,)
    """
    return -(0.5 * ((x - mean) * torch.exp(-log_std)) ** 2 + log_std + 0.5 * LOG_2PI).sum(-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I). z: (..., L) → (...,)"""
    return -0.5 * (z**2 + LOG_2PI).sum(-1)


def diagonal_normal_log_density(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag exp(logvar)). z, mean, logvar broadcast to (..., L) → (...,)"""
    return -0.5 * ((z - mean) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers of the given widths with `activation` between them (none after the last)."""
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class Unflatten(nn.Module):
    """(..., C*H*W) → (N, C, H, W), folding any leading sample dimensions into N."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.shape)


def conv_nets(image_shape: tuple[int, int], latent_dim: int, channels: tuple[int, int]) -> tuple[nn.Module, nn.Module]:
    """Encoder (B, H*W) → (B, 2L) and decoder (N, L) → (N, H*W) with two stride-2 convolutions."""
    h, w = image_shape
    c1, c2 = channels
    flat = c2 * (h // 4) * (w // 4)
    encoder = nn.Sequential(
        Unflatten((1, h, w)),  # (B, 1, H, W)
        nn.Conv2d(1, c1, 4, stride=2, padding=1),
        nn.ReLU(),  # (B, c1, H/2, W/2)
        nn.Conv2d(c1, c2, 4, stride=2, padding=1),
        nn.ReLU(),  # (B, c2, H/4, W/4)
        nn.Flatten(),
        nn.Linear(flat, 2 * latent_dim),  # (B, 2L)
    )
    decoder = nn.Sequential(
        nn.Linear(latent_dim, flat),
        nn.ReLU(),
        Unflatten((c2, h // 4, w // 4)),  # (N, c2, H/4, W/4)
        nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
        nn.ReLU(),  # (N, c1, H/2, W/2)
        nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),  # (N, 1, H, W)
        nn.Flatten(),  # (N, H*W)
    )
    return encoder, decoder


class VAE(nn.Module):
    """A VAE over flattened images of `data_dim` pixels (Kingma & Welling, 2014)."""

    def __init__(self, config: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.config = config
        self.data_dim = data_dim
        if config.architecture == "conv":
            shape = tuple(image_shape or ())[-2:]
            if len(shape) != 2 or shape[0] % 4 or shape[1] % 4 or shape[0] * shape[1] != data_dim:
                raise VAEError(
                    f"model.architecture 'conv' needs images whose sides divide by 4, got shape {image_shape}"
                )
            self.encoder, self.decoder = conv_nets(shape, config.latent_dim, config.channels)
        else:
            hidden = list(config.hidden)
            self.encoder = mlp([data_dim, *hidden, 2 * config.latent_dim], config.activation)
            self.decoder = mlp([config.latent_dim, *hidden[::-1], data_dim], config.activation)
        if config.likelihood == "gaussian" and config.gaussian_std is None:
            self.log_std = nn.Parameter(torch.zeros(data_dim))  # learned per-pixel std
        else:
            std = config.gaussian_std or 1.0
            self.register_buffer("log_std", torch.full((data_dim,), math.log(std)))

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) parameters. x: (B, D) → mean (B, L), logvar (B, L)"""
        mean, logvar = self.encoder(x).chunk(2, dim=-1)  # (B, L), (B, L)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output: Bernoulli logits or Gaussian means. z: (..., L) → (..., D)"""
        return self.decoder(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], self.data_dim)

    @property
    def _linear_output(self) -> bool:
        return isinstance(self.decoder[-1], nn.Linear)

    def project_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        """x W for the decoder's last layer W: (B, D) → (B, H); reusable across samples of z."""
        return x @ self.decoder[-1].weight if self._linear_output else None

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, x_projected: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z). x: (B, D), z: (..., B, L) → (..., B); x is broadcast, never copied."""
        if self.config.likelihood == "bernoulli" and not self._linear_output:
            return bernoulli_log_likelihood(x, self.decode(z))
        if self.config.likelihood == "bernoulli":
            # sum_d x_d l_d with l = W h + b equals h·(W^T x) + b·x: a (..., B, H) dot instead of
            # a (..., B, D) product, so only softplus(l) touches the full decoder output.
            *body, last = self.decoder
            h = nn.Sequential(*body)(z) if body else z  # (..., B, H)
            logits = last(h)  # (..., B, D)
            xw = self.project_inputs(x) if x_projected is None else x_projected  # (B, H)
            x_dot_logits = (h * xw).sum(-1) + x @ last.bias  # (..., B)
            return x_dot_logits - F.softplus(logits).sum(-1)
        return gaussian_log_likelihood(x, self.decode(z), self.log_std)

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z]: sigmoid(logits) for Bernoulli, the mean for Gaussian. z: (..., L) → (..., D)"""
        out = self.decode(z)
        return torch.sigmoid(out) if self.config.likelihood == "bernoulli" else out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(x)


def build_model(config: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None) -> VAE:
    return VAE(config, data_dim, image_shape)


def model_from_state(state: dict[str, Any]) -> VAE:
    """The VAE a checkpoint's contents describe (model_config, data_dim, image_shape, weights), in eval mode."""
    model = build_model(ModelConfig(**state["model_config"]), int(state["data_dim"]), state.get("image_shape"))
    model.load_state_dict(state["model"])
    return model.eval()


def read_checkpoint_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The contents of a training checkpoint directory, loaded to the CPU (weights_only: no code runs)."""
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VAEError(f"{path}: checkpoint not found (expected a training checkpoint directory)") from None


def load_checkpoint(checkpoint_dir: str | Path) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the VAE from a training checkpoint directory."""
    state = read_checkpoint_state(checkpoint_dir)
    return model_from_state(state), state
