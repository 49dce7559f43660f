"""Conv encoder/decoder for any C x H x W: shapes, the output layout, padding and cropping, gradients."""

from __future__ import annotations

import pytest
import torch

from vae.models.conv import conv_decoder, conv_encoder, conv_nets, padded_size

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 30, 45), (4, 7, 9)]


@pytest.mark.parametrize("widths", [(4, 8), (4, 8, 16)])
@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_round_trip_for_any_channels_and_sides(shape, widths):
    torch.manual_seed(0)
    c, h, w = shape
    d, latent, per = c * h * w, 5, 3
    encoder, decoder = conv_nets(shape, latent, widths, out_per_subpixel=per)
    assert encoder(torch.rand(2, d)).shape == (2, 2 * latent)  # (B, 2L)
    out = decoder(torch.randn(6, latent))  # (N, D*P)
    assert out.shape == (6, d * per)
    # The padded grid: 2^depth divides it, and it is the smallest such grid that holds the image.
    step = 2 ** len(widths)
    for side in (h, w):
        assert padded_size(side, len(widths)) % step == 0 and 0 <= padded_size(side, len(widths)) - side < step


@pytest.mark.parametrize("channels_last", [False, True])
def test_decoder_output_reshapes_to_subpixels_with_their_values_contiguous(channels_last):
    torch.manual_seed(1)
    c, h, w, per = 3, 7, 9, 2
    decoder = conv_decoder((c, h, w), 4, (6, 8), out_per_subpixel=per, channels_last=channels_last)
    z = torch.randn(5, 4)
    grid = decoder[:-1](z)  # (N, C*P, H, W): the cropped conv output, before the layout step
    assert grid.shape == (5, c * per, h, w)
    params = decoder(z).reshape(5, c * h * w, per)  # (N, D, P)
    # Independently: channel c*P + p of the grid is value p of image channel c, at every pixel.
    per_channel = grid.reshape(5, c, per, h, w)  # (N, C, P, H, W)
    for ch, row, col in [(0, 0, 0), (2, 6, 8), (1, 3, 5), (2, 0, 7)]:
        d = (row * w + col) * c + ch if channels_last else (ch * h + row) * w + col  # x's flat index
        assert torch.equal(params[:, d, :], per_channel[:, ch, :, row, col])


def test_channels_last_encoder_equals_the_channel_major_one_on_the_same_pixels():
    torch.manual_seed(2)
    shape = (3, 30, 45)
    first = conv_encoder(shape, 4, (4, 8))
    last = conv_encoder(shape, 4, (4, 8), channels_last=True)
    last.load_state_dict(first.state_dict())
    images = torch.rand(2, *shape)  # (B, C, H, W)
    chw = images.reshape(2, -1)  # (B, D) channel-major
    hwc = images.permute(0, 2, 3, 1).reshape(2, -1)  # (B, D) channel-minor
    assert torch.equal(first(chw), last(hwc))


def test_padding_is_zeros_and_the_crop_removes_exactly_it():
    torch.manual_seed(3)
    encoder = conv_encoder((2, 5, 6), 3, (4,))  # depth 1: 5 → 6 rows padded (the odd one at the bottom), 6 stays
    padded = encoder[:2](torch.ones(1, 60))  # (B, C, Hp, Wp) after ToImage and the zero padding
    assert padded.shape == (1, 2, 6, 6)
    assert torch.equal(padded[:, :, :5], torch.ones(1, 2, 5, 6)) and torch.equal(padded[:, :, 5], torch.zeros(1, 2, 6))
    decoder = conv_decoder((2, 5, 6), 3, (4,))
    z = torch.randn(1, 3)
    assert torch.equal(decoder[:-2](z)[:, :, :5], decoder[:-1](z))  # the crop keeps rows 0..4, all columns


@pytest.mark.parametrize("shape", [(3, 30, 45), (4, 7, 9)])
def test_gradients_reach_every_parameter(shape):
    torch.manual_seed(4)
    encoder, decoder = conv_nets(shape, 3, (4, 8, 8), out_per_subpixel=2)
    x = torch.rand(2, shape[0] * shape[1] * shape[2])
    mean, logvar = encoder(x).chunk(2, -1)  # (B, L) each
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    decoder(z).square().mean().backward()
    for name, parameter in [*encoder.named_parameters(), *decoder.named_parameters()]:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
