"""Convolutional encoder and decoder for images C x H x W of any channel count and any size.

Each of the `depth = len(widths)` levels is a 4x4 convolution of stride 2 (padding 1), which halves
an even side exactly. Sides that 2^depth does not divide are zero-padded up to the next multiple
before the encoder (the padding split top/bottom and left/right, the odd pixel at the bottom or
right), and the decoder, which doubles the padded bottleneck back to the padded size, crops the same
rows and columns off: every H, W works and the decoder's output covers exactly the image.

Layouts.
  Encoder input (B, D), D = C*H*W, flattened channel-major (C, H, W) like CIFAR's bytes and PyTorch,
  or (H, W, C) with channels_last=True (how image folders store RGB).
  Decoder output (N, D*P), P = out_per_subpixel, with subpixel d in the same order as the input and
  its P values contiguous: `out.reshape(N, D, P)` gives subpixel d's parameters (the layout of
  vae.models.likelihoods). Inside, the last convolution's channel c*P + p is value p of image channel c.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

KERNEL, STRIDE, PADDING = 4, 2, 1  # halves an even side: (n + 2 - 4)/2 + 1 = n/2


def padded_size(side: int, depth: int) -> int:
    """The side rounded up to a multiple of 2^depth, so depth stride-2 levels divide it exactly."""
    step = 2**depth
    return -(-side // step) * step


def _split(total: int) -> tuple[int, int]:
    """Padding before and after: half each, the odd one after."""
    return total // 2, total - total // 2


class ToImage(nn.Module):
    """(B, C*H*W) → (B, C, H, W), from channel-major or (channels_last) channel-minor flattening."""

    def __init__(self, shape: tuple[int, int, int], channels_last: bool = False):
        super().__init__()
        self.shape, self.channels_last = tuple(shape), channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.shape
        if self.channels_last:
            return x.reshape(-1, h, w, c).permute(0, 3, 1, 2)  # (B, H, W, C) → (B, C, H, W)
        return x.reshape(-1, c, h, w)  # (B, C, H, W)


class Crop(nn.Module):
    """(N, C', Hp, Wp) → (N, C', H, W): drop the rows and columns the encoder's padding added."""

    def __init__(self, top: int, left: int, height: int, width: int):
        super().__init__()
        self.top, self.left, self.height, self.width = top, left, height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self.top : self.top + self.height, self.left : self.left + self.width]  # (N, C', H, W)


class SubpixelMajor(nn.Module):
    """(N, C*P, H, W) → (N, C*H*W*P): each subpixel's P values contiguous, subpixels in the input's order."""

    def __init__(self, channels: int, per_subpixel: int, channels_last: bool = False):
        super().__init__()
        self.channels, self.per_subpixel, self.channels_last = channels, per_subpixel, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        x = x.reshape(n, self.channels, self.per_subpixel, h, w)  # (N, C, P, H, W)
        order = (0, 3, 4, 1, 2) if self.channels_last else (0, 1, 3, 4, 2)  # → (N, H, W, C, P) or (N, C, H, W, P)
        return x.permute(*order).reshape(n, -1)  # (N, D*P)


def conv_encoder(
    image_shape: tuple[int, int, int], latent_dim: int, widths: Sequence[int], channels_last: bool = False
) -> nn.Sequential:
    """q(z|x) network: (B, C*H*W) → (B, 2L), the mean and log-variance side by side."""
    c, h, w = image_shape
    depth = len(widths)
    if depth < 1:
        raise ValueError("conv_encoder needs at least one width (one stride-2 level)")
    hp, wp = padded_size(h, depth), padded_size(w, depth)
    (top, bottom), (left, right) = _split(hp - h), _split(wp - w)
    layers: list[nn.Module] = [ToImage((c, h, w), channels_last)]  # (B, C, H, W)
    if hp != h or wp != w:  # absent when not needed: a checkpoint of the older 2-level conv VAE still loads
        layers.append(nn.ZeroPad2d((left, right, top, bottom)))  # (B, C, Hp, Wp)
    for n_in, n_out in zip([c, *widths[:-1]], widths):
        layers += [nn.Conv2d(n_in, n_out, KERNEL, STRIDE, PADDING), nn.ReLU()]  # (B, w_i, Hp/2^(i+1), Wp/2^(i+1))
    flat = widths[-1] * (hp >> depth) * (wp >> depth)
    layers += [
        nn.Flatten(),  # (B, w_last * Hp/2^depth * Wp/2^depth)
        nn.Linear(flat, 2 * latent_dim),  # (B, 2L)
    ]
    return nn.Sequential(*layers)


def conv_decoder(
    image_shape: tuple[int, int, int],
    latent_dim: int,
    widths: Sequence[int],
    out_per_subpixel: int = 1,
    channels_last: bool = False,
) -> nn.Sequential:
    """p(x|z) network: (N, L) → (N, C*H*W*P) in the layout of the module docstring; widths as the encoder's."""
    c, h, w = image_shape
    depth = len(widths)
    if depth < 1:
        raise ValueError("conv_decoder needs at least one width (one stride-2 level)")
    hp, wp = padded_size(h, depth), padded_size(w, depth)
    hb, wb = hp >> depth, wp >> depth  # the bottleneck grid
    reverse = list(widths[::-1])  # w_last, ..., w_0
    layers: list[nn.Module] = [
        nn.Linear(latent_dim, reverse[0] * hb * wb),
        nn.ReLU(),  # (N, w_last * hb * wb)
        nn.Unflatten(1, (reverse[0], hb, wb)),  # (N, w_last, hb, wb)
    ]
    outs = [*reverse[1:], c * out_per_subpixel]
    for i, (n_in, n_out) in enumerate(zip(reverse, outs)):
        layers.append(nn.ConvTranspose2d(n_in, n_out, KERNEL, STRIDE, PADDING))  # (N, n_out, hb*2^(i+1), wb*2^(i+1))
        if i < depth - 1:
            layers.append(nn.ReLU())
    layers += [
        Crop(_split(hp - h)[0], _split(wp - w)[0], h, w),  # (N, C*P, H, W)
        SubpixelMajor(c, out_per_subpixel, channels_last),  # (N, C*H*W*P)
    ]
    return nn.Sequential(*layers)


def conv_nets(
    image_shape: tuple[int, int, int],
    latent_dim: int,
    widths: Sequence[int],
    out_per_subpixel: int = 1,
    channels_last: bool = False,
) -> tuple[nn.Sequential, nn.Sequential]:
    """Encoder (B, C*H*W) → (B, 2L) and decoder (N, L) → (N, C*H*W*P), depth = len(widths) levels each."""
    return (
        conv_encoder(image_shape, latent_dim, widths, channels_last),
        conv_decoder(image_shape, latent_dim, widths, out_per_subpixel, channels_last),
    )
