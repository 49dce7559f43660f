"""Active units (Burda et al. 2016): the latent dimensions whose posterior mean varies across x."""

from __future__ import annotations

import torch

from vae.config import ModelConfig
from vae.evaluate.evaluation import ACTIVE_UNIT_THRESHOLD, active_units
from vae.models.model import build_model


def test_active_units_counts_dimensions_whose_mean_varies_more_than_the_threshold():
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=4, hidden=()), 6)  # encoder: one Linear, (B, 6) → (B, 8)
    x = torch.bernoulli(torch.full((500, 6), 0.5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.encoder[0].weight.zero_()
        model.encoder[0].bias.zero_()
        model.encoder[0].weight[0, 0] = 2.0  # mean_0 = 2 x_0: variance ~1
        model.encoder[0].weight[1, 1] = 0.3  # mean_1 = 0.3 x_1: variance ~0.0225
        model.encoder[0].weight[2, 2] = 0.1  # mean_2 = 0.1 x_2: variance ~0.0025, below the threshold
        model.encoder[0].weight[7, 3] = 5.0  # a log-variance, not a mean: never counted
    expected = sum(float((x[:, d] * w).var()) > ACTIVE_UNIT_THRESHOLD for d, w in ((0, 2.0), (1, 0.3), (2, 0.1)))
    assert expected == 2
    assert active_units(model, x) == expected
    assert active_units(model, x, batch_size=7) == expected  # batching does not change it


def test_traversal_sweeps_the_most_active_dimensions_one_at_a_time():
    from vae.registry.registration import TRAVERSAL_STEPS, latent_traversal

    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=3, hidden=(8,)), 6)
    means = torch.stack([torch.randn(50) * s for s in (0.1, 2.0, 1.0)], dim=1)  # (50, 3): dim 1 varies most
    images, dims = latent_traversal(model, means, rows=2)
    assert dims == [1, 2] and images.shape == (2 * TRAVERSAL_STEPS, 6)
    expected_z = means[0].repeat(TRAVERSAL_STEPS, 1)
    expected_z[:, 2] = torch.linspace(-3, 3, TRAVERSAL_STEPS)  # the second row sweeps dimension 2 only
    with torch.no_grad():
        assert torch.allclose(images[TRAVERSAL_STEPS:], model.mean_image(expected_z))


def test_interpolation_starts_and_ends_at_the_two_images_reconstructions():
    from vae.registry.registration import TRAVERSAL_STEPS, latent_interpolation

    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=3, hidden=(8,)), 6)
    means = torch.randn(4, 3)
    strip = latent_interpolation(model, means, pairs=2).reshape(2, TRAVERSAL_STEPS, 6)
    with torch.no_grad():
        assert torch.allclose(strip[1, 0], model.mean_image(means[2]), atol=1e-6)
        assert torch.allclose(strip[1, -1], model.mean_image(means[3]), atol=1e-6)
