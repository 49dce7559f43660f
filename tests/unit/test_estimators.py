"""Estimators against exact answers: closed-form linear-Gaussian marginals and 1-D quadrature."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.linear_gaussian import bernoulli_1d_exact, make_bernoulli_1d, make_linear_gaussian, mean_and_se
from vae.evaluate.estimators import estimate_log_likelihood, reduce_log_weights
from vae.models.model import diagonal_normal_log_density, standard_normal_log_density
from vae.models.objectives import elbo, gaussian_kl, iwae_bound, sample_latents


@pytest.fixture(scope="module")
def lg():
    return make_linear_gaussian()


@pytest.fixture(scope="module")
def data(lg):
    return lg.sample(400, torch.Generator().manual_seed(1))  # (N, D) float64


def test_importance_sampling_matches_closed_form_marginal(lg, data):
    exact = lg.log_marginal(data)  # (N,)
    estimate = estimate_log_likelihood(lg.model, data.float(), k=2000, seed=3)
    mean, se = mean_and_se(estimate.log_px - exact)
    # The per-example error is IS noise; its mean over 400 examples must be within 4 s.e. of 0
    # (plus the O(1/k) downward bias, which is far below float32 rounding here).
    assert abs(mean) < 4 * se + 1e-4, (mean, se)
    assert se < 0.01  # the estimator is precise at k = 2000, not merely unbiased
    # ...and the summary's standard error is the s.e. of the mean over examples.
    assert estimate.stderr == pytest.approx(float(estimate.log_px.std() / math.sqrt(400)))


def test_elbo_lies_below_log_marginal_by_exactly_the_posterior_kl(lg, data):
    exact = lg.log_marginal(data)
    gap = lg.kl_q_to_posterior(data)  # KL(q(z|x) || p(z|x)), closed form
    assert (gap > 0).all()
    torch.manual_seed(0)
    x = data.float().repeat(50, 1)  # 50 single-sample ELBO draws per example
    with torch.no_grad():
        draws = elbo(lg.model, x).elbo.double().view(50, -1)  # (50, N)
    mean, se = mean_and_se((draws - (exact - gap)).flatten())
    assert abs(mean) < 4 * se, (mean, se)
    assert float(draws.mean()) < float(exact.mean())


def test_iwae_bound_rises_with_k_toward_log_marginal(lg, data):
    exact = float(lg.log_marginal(data).mean())
    torch.manual_seed(0)
    x = data.float().repeat(20, 1)
    with torch.no_grad():
        bounds = {k: iwae_bound(lg.model, x, k).double() for k in (1, 5, 50)}  # (20 N,) each
    for small, large in ((1, 5), (5, 50)):
        rise, se = mean_and_se(bounds[large] - bounds[small])  # paired over the same x
        assert rise > 3 * se, (small, large, rise, se)
    mean, se = mean_and_se(bounds[50])
    assert mean < exact + 3 * se


def test_k1_importance_sampling_has_the_elbos_expectation(lg, data):
    exact_elbo = lg.log_marginal(data) - lg.kl_q_to_posterior(data)
    estimate = estimate_log_likelihood(lg.model, data.float(), k=1, seed=5)
    mean, se = mean_and_se(estimate.log_px - exact_elbo)
    assert abs(mean) < 4 * se, (mean, se)


def test_analytic_kl_matches_monte_carlo():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn((3, 4), generator=generator, dtype=torch.float64)
    logvar = torch.randn((3, 4), generator=generator, dtype=torch.float64) * 0.5
    z = sample_latents(mean, logvar, k=200_000, generator=generator)  # (K, B, L)
    samples = diagonal_normal_log_density(z, mean, logvar) - standard_normal_log_density(z)  # (K, B)
    mc = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    assert torch.all((mc - gaussian_kl(mean, logvar)).abs() < 4 * se), (mc, gaussian_kl(mean, logvar), se)


def test_bernoulli_1d_latent_matches_quadrature():
    D = 8
    model = make_bernoulli_1d(D, encoder_scale=0.3)
    x = torch.bernoulli(torch.full((300, D), 0.5), generator=torch.Generator().manual_seed(2))
    exact = bernoulli_1d_exact(model, x)
    estimate = estimate_log_likelihood(model, x, k=3000, seed=1)
    mean, se = mean_and_se(estimate.log_px - exact)
    assert abs(mean) < 4 * se + 1e-4, (mean, se)
    # A poor encoder is still a valid proposal: the ELBO is below the exact marginal.
    assert float(estimate.elbo.mean()) < float(exact.mean())


def test_bernoulli_likelihood_is_the_stable_form_of_the_log_density():
    logits = torch.tensor([[-50.0, -3.0, 0.0, 2.0, 60.0]], dtype=torch.float64)
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    reference = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    from vae.models.model import bernoulli_log_likelihood

    assert torch.allclose(bernoulli_log_likelihood(x, logits), reference)
    assert torch.isfinite(bernoulli_log_likelihood(x, logits)).all()


@pytest.mark.parametrize("chunk", [1, 7, 500])
def test_chunked_reduction_of_log_weights_is_the_one_shot_answer(chunk):
    """log 1/k sum w, 1/k sum log w and (sum w)^2 / sum w^2, computed directly in float64, whatever the chunking."""
    log_w = 30.0 * torch.randn(500, 6, generator=torch.Generator().manual_seed(0))  # (K, B): weights spanning e^±90
    log_px, elbo_, ess = reduce_log_weights(iter(log_w.float().split(chunk)), 500)
    w = log_w.float().double()
    torch.testing.assert_close(log_px, torch.logsumexp(w, 0) - math.log(500), rtol=0, atol=1e-12)
    torch.testing.assert_close(elbo_, w.mean(0), rtol=0, atol=1e-12)
    expected = torch.exp(2 * torch.logsumexp(w, 0) - torch.logsumexp(2 * w, 0))
    torch.testing.assert_close(ess, expected, rtol=1e-12, atol=0)
    assert bool((ess >= 1).all() and (ess <= 500).all())
    with pytest.raises(ValueError, match="no log-weights"):
        reduce_log_weights(iter(()), 1)
