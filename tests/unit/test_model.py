"""Model mechanics: the fast Bernoulli path equals the textbook one; conv shapes; objectives."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.linear_gaussian import make_linear_gaussian
from vae.config import ModelConfig
from vae.models.model import bernoulli_log_likelihood, build_model
from vae.train.stepper import Objective


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(latent_dim=3, hidden=(16, 8), activation="tanh"),
        ModelConfig(latent_dim=3, hidden=()),
        ModelConfig(architecture="conv", latent_dim=4, channels=(4, 8)),
    ],
)
def test_log_likelihood_equals_the_bernoulli_log_density_of_the_decoded_logits(config):
    torch.manual_seed(0)
    model = build_model(config, 64, (8, 8))
    x = torch.bernoulli(torch.full((5, 64), 0.4))
    z = torch.randn(7, 5, config.latent_dim)  # (K, B, L)
    fast = model.log_likelihood(x, z)
    reference = torch.distributions.Bernoulli(logits=model.decode(z)).log_prob(x).sum(-1)
    assert fast.shape == (7, 5)
    assert torch.allclose(fast, reference, atol=1e-4, rtol=1e-5)
    assert torch.allclose(fast, bernoulli_log_likelihood(x, model.decode(z)), atol=1e-4, rtol=1e-5)


def test_conv_model_shapes_for_28x28_images():
    model = build_model(ModelConfig(architecture="conv", latent_dim=10), 784, (28, 28))
    mean, logvar = model.encode(torch.rand(3, 784))
    assert mean.shape == logvar.shape == (3, 10)
    assert model.decode(torch.randn(6, 3, 10)).shape == (6, 3, 784)


def test_conv_model_takes_sides_not_divisible_by_four_and_refuses_a_wrong_shape():
    from vae.errors import VAEError

    model = build_model(ModelConfig(architecture="conv", latent_dim=3), 100, (10, 10))  # padded to 12, cropped
    assert model.decode(torch.randn(2, 3)).shape == (2, 100)
    with pytest.raises(VAEError, match=r"of 100 pixels, got shape \(9, 10\)"):
        build_model(ModelConfig(architecture="conv"), 100, (9, 10))


def test_iwae_objective_bounds_above_the_elbo_objective_on_the_same_model():
    lg = make_linear_gaussian(seed=1, mean_shift=0.3, var_scale=2.0)
    x = lg.sample(2000, torch.Generator().manual_seed(0)).float()
    torch.manual_seed(0)
    with torch.no_grad():
        iwae, *_ = Objective(lg.model, "iwae", 10)(x)
        elbo_objective, elbo_terms, *_ = Objective(lg.model, "elbo", 10)(x)
    difference = (iwae - elbo_objective).double()
    se = float(difference.std() / math.sqrt(difference.numel()))
    assert float(difference.mean()) > 3 * se
    assert float(iwae.mean()) < float(lg.log_marginal(x.double()).mean()) + 3 * se  # and still a bound
    assert torch.equal(elbo_objective, elbo_terms)  # beta = 1: the objective is the ELBO itself


def test_beta_weights_the_kl_term():
    lg = make_linear_gaussian()
    x = lg.sample(10, torch.Generator().manual_seed(0)).float()
    torch.manual_seed(1)
    target, _, reconstruction, kl = Objective(lg.model, "elbo", 1)(x, beta=0.25)
    assert torch.allclose(target, reconstruction - 0.25 * kl)
