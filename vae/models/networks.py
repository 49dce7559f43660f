"""Encoder and decoder networks: the built-in MLP, gated and convolutional ones, and users' own by import path.

Every model of the contract (vae.models.latent_model) has an `encoder` x (B, D) → (B, 2L), the mean and
log-variance of q(z|x) side by side, and a `decoder` z (N, L) → (N, D*P), each subpixel's P
likelihood parameters contiguous (vae.models.likelihoods' layout), inputs flattened channel-major (C, H, W).

A user's network is a factory named in pipelines.yaml by import path (model.encoder / model.decoder,
vae.config.NetworkSpec), called with keyword arguments

    factory(image_shape=(C, H, W), latent_dim=L, params_per_subpixel=P, **args) -> torch.nn.Module

(an nn.Module class works as its own factory). A module in a file beside pipelines.yaml is found.
It is checked when the file is read (importable, callable) and, once the data's shape is known,
on a dummy batch (output shapes); each problem is one line. Its module travels with the model: to
Ray workers (their search path, from the checkpoint's `code_dirs`) and into the registered MLflow
model (code_paths), so serving needs only the registered model.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from vae.config import ModelConfig, NetworkSpec
from vae.models.conv import conv_decoder, conv_encoder
from vae.errors import ConfigError, VAEError
from vae.user_code import one_line, resolve_factory

Body = Literal["mlp", "gated"]


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers of the given widths with `activation` between them (none after the last)."""
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


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

    body "mlp": Linear + activation per hidden layer (the layout of `mlp`);
    body "gated": one GatedDense per hidden layer (the gate is the nonlinearity, as in Tomczak & Welling).
    """
    if body not in ("mlp", "gated"):
        raise VAEError(f"model body '{body}' is not one of: mlp, gated")
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh}
    if activation not in acts:
        raise VAEError(f"model activation '{activation}' is not one of: relu, tanh")
    if body == "mlp":
        return mlp(sizes, activation)
    layers: list[nn.Module] = [GatedDense(n_in, n_out) for n_in, n_out in zip(sizes[:-2], sizes[1:-1])]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
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


def user_shape(image_shape: tuple[int, ...] | None, data_dim: int) -> tuple[int, ...]:
    """What a user's factory is told: (C, H, W) for images, (D,) for flat vectors."""
    try:
        return image_shape_of(image_shape, data_dim)
    except VAEError:
        return (data_dim,)


def build_networks(
    config: ModelConfig,
    data_dim: int,
    image_shape: tuple[int, ...] | None,
    latent_dim: int,
    per_subpixel: int,
    *,
    body: Body,
) -> tuple[nn.Module, nn.Module]:
    """The encoder x (B, D) → (B, 2L) and decoder z (N, L) → (N, D*P) that `config` names: a user's
    (config.encoder / config.decoder), the convolutional ones (architecture conv) or dense ones of `body`."""
    hidden = list(config.hidden)
    if config.architecture == "conv" and not (config.encoder and config.decoder):
        shape = image_shape_of(image_shape, data_dim)  # (C, H, W)
        encoder: nn.Module = conv_encoder(shape, latent_dim, config.channels)
        decoder: nn.Module = conv_decoder(shape, latent_dim, config.channels, per_subpixel)
    elif not (config.encoder and config.decoder):
        encoder = dense_net([data_dim, *hidden, 2 * latent_dim], body, config.activation)
        decoder = dense_net([latent_dim, *hidden[::-1], data_dim * per_subpixel], body, config.activation)
    shape = user_shape(image_shape, data_dim)
    keywords = {"image_shape": shape, "latent_dim": latent_dim, "params_per_subpixel": per_subpixel}
    if config.encoder is not None:
        encoder = _call(config.encoder, "model.encoder", keywords)
    if config.decoder is not None:
        decoder = _call(config.decoder, "model.decoder", keywords)
    return encoder, decoder


# --- users' networks ----------------------------------------------------------------------------


def _call(spec: NetworkSpec, field: str, keywords: dict[str, Any]) -> nn.Module:
    factory = resolve_factory(spec, field)
    try:
        network = factory(**keywords, **spec.args)
    except Exception as exc:  # noqa: BLE001 - a user's factory that raises is one line
        raise ConfigError(f"{field} '{spec.factory}': calling it raised {one_line(exc)}") from None
    if not isinstance(network, nn.Module):
        raise ConfigError(f"{field} '{spec.factory}': returned {type(network).__name__}, expected a torch.nn.Module")
    return network
