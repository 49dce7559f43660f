"""The model contract (vae.models.latent_model) against exact answers, for every implementation on the
architectures and likelihoods the families were once refused: the one IS estimator and the one AIS
agree with log p(x) by quadrature over the latent state (1-D and 2-D grids); every likelihood of the
table is a normalised distribution whose mean and sampler agree with brute-force sums."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from tests.helpers.linear_gaussian import mean_and_se
from vae.config import ModelConfig
from vae.evaluate.estimators import annealed_importance_sampling, block_uniform, estimate_log_likelihood
from vae.models.latent_model import LatentVariableModel
from vae.models.likelihood_kinds import LIKELIHOOD_KINDS
from vae.models.likelihoods import LIKELIHOODS, make_likelihood
from vae.models.model import VAE, build_model


def _grid(points: int, half_width: float = 9.0) -> tuple[torch.Tensor, torch.Tensor]:
    """An even grid on [-w, w] and the log of its trapezoid weights. → (Z,), (Z,)"""
    grid = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    log_w = torch.full_like(grid, math.log(float(grid[1] - grid[0])))
    log_w[0] = log_w[-1] = log_w[0] - math.log(2.0)
    return grid, log_w


@torch.no_grad()
def quadrature_log_px(model: LatentVariableModel, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """log p(x) = log ∫ p(s) p(x|s) ds on a grid over the whole latent state (S = 1 or 2). x: (N, D) → (N,)"""
    grid, log_w = _grid(1201 if model.state_dim == 1 else 121)
    if model.state_dim == 1:
        states, log_cell = grid[:, None], log_w  # (Z, 1), (Z,)
    else:
        a, b = torch.meshgrid(grid, grid, indexing="ij")
        states = torch.stack([a.flatten(), b.flatten()], -1)  # (Z², 2)
        log_cell = (log_w[:, None] + log_w[None, :]).flatten()  # (Z²,)
    states = states[:, None, :].expand(-1, x.shape[0], -1)  # (Z, N, S): one grid per example
    log_joint = model.log_joint(x, states, noise)  # (Z, N)
    return torch.logsumexp(log_joint + log_cell[:, None], dim=0)  # (N,)


def _pixels(n: int, d: int, seed: int) -> torch.Tensor:
    """8-bit images v/255 (the model's inputs), (n, d)."""
    return torch.randint(0, 256, (n, d), generator=torch.Generator().manual_seed(seed)).double() / 255.0


CASES = {
    # name: (ModelConfig fields, D, image shape)
    "vampprior-mlp-logistic": (dict(prior="vampprior", pseudo_inputs=3, likelihood="discretized_logistic"), 2, None),
    "vampprior-conv-categorical": (
        dict(prior="vampprior", pseudo_inputs=2, architecture="conv", channels=(2,), likelihood="categorical"),
        4,
        (1, 2, 2),
    ),
    "two-level-mlp-mixture": (dict(levels=2, latent_dim2=1, likelihood="logistic_mixture", components=2), 2, None),
    "two-level-conv-logistic": (
        dict(levels=2, latent_dim2=1, architecture="conv", channels=(2,), likelihood="discretized_logistic"),
        4,
        (1, 2, 2),
    ),
    "gated-dequantized": (dict(body="gated", likelihood="gaussian", dequantize=True), 2, None),
    "standard-conv-mixture": (
        dict(architecture="conv", channels=(2,), likelihood="logistic_mixture", components=2),
        4,
        (1, 2, 2),
    ),
}


def _model(name: str) -> LatentVariableModel:
    fields, d, shape = CASES[name]
    torch.manual_seed(3)
    levels = {"latent_hidden": (4,)} if fields.get("levels") == 2 else {}
    config = ModelConfig(latent_dim=1, hidden=(6,), **levels, **fields)
    model = build_model(config, d, shape).double().eval()
    if model.likelihood.initial_log_scale is not None or model.dequantized:
        # Wide scales keep the posterior broad enough for a grid and a random encoder.
        last = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
        with torch.no_grad():
            last.bias.add_(1.5)
            model.log_std.fill_(-1.0)
    return model


@pytest.mark.parametrize("name", CASES)
def test_importance_sampling_and_ais_match_quadrature_for_every_model(name):
    model = _model(name)
    assert (type(model) is VAE) == (name == "standard-conv-mixture")
    conv = CASES[name][2] is not None
    x = _pixels(12 if conv or model.state_dim > 1 else 24, CASES[name][1], seed=1)
    noise = block_uniform(model.data_dim, 0, x.shape[0], 4).double() if model.dequantized else None  # the IS's u
    exact = quadrature_log_px(model, x, noise)
    estimate = estimate_log_likelihood(model, x, k=1000 if conv else 3000, seed=4)
    mean, se = mean_and_se(estimate.log_px - exact)
    assert abs(mean) < 4 * se + 2e-3, (mean, se)
    assert float(estimate.elbo.mean()) < float(exact.mean()) + 1e-3  # the ELBO is below log p(x)
    if model.dequantized or conv or model.state_dim > 1:
        return  # AIS is one code path for every model (test_families.py runs it on two levels); its
        # own-u dequantised case is below
    ais = annealed_importance_sampling(model, x[:8], steps=60, chains=8, seed=5)
    mean, se = mean_and_se(ais.log_px - exact[:8])
    assert abs(mean) < 4 * se + 5e-3, (mean, se)


def test_ais_on_a_dequantized_family_matches_quadrature_with_its_own_noise():
    model = _model("gated-dequantized")
    x = _pixels(8, 2, seed=2)
    exact = quadrature_log_px(model, x, block_uniform(2, 0, 8, 6).double())
    ais = annealed_importance_sampling(model, x, steps=80, chains=8, seed=6)
    mean, se = mean_and_se(ais.log_px - exact)
    assert abs(mean) < 4 * se + 5e-3, (mean, se)


def test_the_vampprior_pseudo_inputs_take_the_images_shape_and_range():
    model = _model("vampprior-conv-categorical")
    assert model.pseudo_inputs.shape == (2, 4)  # C pseudo-images of D = 1 x 2 x 2 subpixels
    assert bool(((model.pseudo_inputs >= 0) & (model.pseudo_inputs <= 1)).all())  # in the 8-bit inputs' [0, 1]
    z = model.sample_prior(5, torch.Generator().manual_seed(0))
    images = model.sample_image(z, torch.Generator().manual_seed(1))
    assert images.shape == (5, 4) and torch.equal(images, torch.round(images * 255) / 255)  # v/255 pixels


# --- the likelihood table ---------------------------------------------------------------------------


def test_the_table_and_the_configs_names_agree():
    assert {name: cls.data_kind for name, cls in LIKELIHOODS.items()} == LIKELIHOOD_KINDS
    assert set(ModelConfig.model_fields["likelihood"].annotation.__args__) == set(LIKELIHOODS)


@pytest.mark.parametrize("name", ["discretized_logistic", "logistic_mixture", "categorical"])
def test_each_8bit_likelihood_is_a_distribution_with_its_mean_and_sampler(name):
    likelihood = make_likelihood(name, components=3)
    p = likelihood.params_per_subpixel
    out = torch.randn(2, 2 * p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # (2, D*P), D = 2
    values = torch.arange(256, dtype=torch.float64)
    # Every pair (v1, v2) of a 2-subpixel image: the 65,536 probabilities sum to 1.
    grid = torch.stack(torch.meshgrid(values, values, indexing="ij"), -1).reshape(-1, 2) / 255.0  # (65536, 2)
    log_p = likelihood.log_prob(grid, out[:, None, :], None)  # (2, 65536)
    torch.testing.assert_close(torch.logsumexp(log_p, -1), torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0)
    # The mean: the brute-force sum over every value of each subpixel's marginal.
    marginal = torch.exp(log_p).reshape(2, 256, 256)  # (2, v1, v2)
    brute = torch.stack([(marginal.sum(2) * values).sum(-1), (marginal.sum(1) * values).sum(-1)], -1) / 255.0
    torch.testing.assert_close(likelihood.mean(out, None), brute, atol=1e-9, rtol=0)
    # The sampler: 20,000 draws' mean within 4 standard errors of the exact mean.
    draws = likelihood.sample(out[0].expand(20_000, -1), None, torch.Generator().manual_seed(1))  # (20000, 2)
    assert torch.equal(draws, torch.round(draws * 255) / 255)
    spread = draws.std(0) / math.sqrt(draws.shape[0])
    assert bool(((draws.mean(0) - brute[0]).abs() < 4 * spread + 1e-6).all())


def test_bernoulli_and_gaussian_are_their_textbook_densities():
    out = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    p = torch.sigmoid(out)
    expected = float(torch.log(p[0, 0]) + torch.log(1 - p[0, 1]))
    assert float(make_likelihood("bernoulli").log_prob(x, out, None)) == pytest.approx(expected, abs=1e-12)
    log_std = torch.tensor([0.1, -0.4], dtype=torch.float64)
    gaussian = make_likelihood("gaussian").log_prob(x, out, log_std)
    reference = stats.norm.logpdf(x.numpy(), out.numpy(), torch.exp(log_std).numpy()).sum()
    assert float(gaussian) == pytest.approx(reference, abs=1e-12)
    # Dequantised: the density of x~ = (v + u)/256 minus D log 256, at the given u.
    v, u = torch.tensor([[3.0, 250.0]], dtype=torch.float64), torch.tensor([[0.25, 0.75]], dtype=torch.float64)
    dequantized = make_likelihood("gaussian", dequantize=True).log_prob(v / 255, out, log_std, u)
    tilde = ((v + u) / 256).numpy()
    reference = stats.norm.logpdf(tilde, out.numpy(), torch.exp(log_std).numpy()).sum() - 2 * math.log(256)
    assert float(dequantized) == pytest.approx(reference, abs=1e-9)
