"""AIS with HMC transitions against exact marginals and against IS at large k."""

from __future__ import annotations


import torch

from tests.helpers.linear_gaussian import bernoulli_1d_exact, make_bernoulli_1d, make_linear_gaussian, mean_and_se
from vae.evaluate.estimators import annealed_importance_sampling, estimate_log_likelihood, sigmoid_schedule


def test_schedule_runs_from_prior_to_posterior():
    betas = sigmoid_schedule(100)
    assert betas[0] == 0.0 and betas[-1] == 1.0 and torch.all(betas[1:] > betas[:-1])


def test_ais_matches_the_closed_form_linear_gaussian_marginal():
    lg = make_linear_gaussian(seed=3)
    x = lg.sample(60, torch.Generator().manual_seed(7))
    exact = lg.log_marginal(x)
    ais = annealed_importance_sampling(lg.model, x.float(), steps=200, chains=16, seed=1)
    assert 0.3 < ais.acceptance < 0.95
    mean, se = mean_and_se(ais.log_px - exact)
    # Tolerance from the standard error of the mean difference (plus float32 rounding).
    assert abs(mean) < 4 * se + 2e-3, (mean, se)
    # The per-example standard errors are honest: nearly every example lies within 3 of them.
    within = ((ais.log_px - exact).abs() < 3 * ais.log_px_stderr + 1e-3).double().mean()
    assert within >= 0.9, within


def test_ais_agrees_with_quadrature_and_with_is_at_large_k_on_a_bernoulli_decoder():
    D = 8
    model = make_bernoulli_1d(D)
    x = torch.bernoulli(torch.full((60, D), 0.5), generator=torch.Generator().manual_seed(2))
    exact = bernoulli_1d_exact(model, x)
    ais = annealed_importance_sampling(model, x, steps=200, chains=16, seed=2)
    importance = estimate_log_likelihood(model, x, k=5000, seed=2)
    for estimate in (ais.log_px, importance.log_px):
        mean, se = mean_and_se(estimate - exact)
        assert abs(mean) < 4 * se + 2e-3, (mean, se)
    mean, se = mean_and_se(ais.log_px - importance.log_px)
    assert abs(mean) < 4 * se + 2e-3, (mean, se)
