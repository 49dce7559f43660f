"""The model families against exact answers: brute-force mixtures, 1-D and 2-D quadrature, hand formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from tests.helpers.linear_gaussian import make_bernoulli_1d, mean_and_se
from vae.evaluate.estimators import annealed_importance_sampling, estimate_log_likelihood
from vae.models.families import GatedDense, OneLevelVAE, TwoLevelVAE, dense_net
from vae.evaluate.estimators import estimate_log_likelihood as estimate_family_log_likelihood

D = 6  # pixels of the tiny models
W_DEC = torch.linspace(-2.0, 2.5, D, dtype=torch.float64)  # decoder logits w_d z + c_d
C_DEC = torch.linspace(0.5, -0.5, D, dtype=torch.float64)


def trapezoid_log_weights(grid: torch.Tensor) -> torch.Tensor:
    """log of the trapezoid rule's weights on an even grid. (Z,) → (Z,)"""
    dz = float(grid[1] - grid[0])
    weights = torch.full_like(grid, math.log(dz))
    weights[0] = weights[-1] = math.log(dz / 2)
    return weights


def bernoulli_log_lik(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log prod_d Bern(x_d; sigmoid(w_d z + c_d)) on a grid, written out. x: (N, D), z: (Z,) → (N, Z)"""
    logits = z[:, None] * W_DEC + C_DEC  # (Z, D)
    log_p, log_not_p = torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
    return x.double() @ log_p.T + (1 - x.double()) @ log_not_p.T


def normal_logpdf(z, mean, var) -> torch.Tensor:
    """log N(z; mean, var), elementwise."""
    var = torch.as_tensor(var, dtype=torch.float64)
    return -0.5 * ((z - mean) ** 2 / var + math.log(2 * math.pi) + torch.log(var))


def binary_data(n: int, seed: int) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, D), 0.5), generator=torch.Generator().manual_seed(seed))


# --- a tiny VampPrior: 1-D z, three pseudo-inputs, linear encoder and decoder ------------------------

PSEUDO = torch.tensor(
    [[0.1, 0.9, 0.3, 0.7, 0.5, 0.2], [0.8, 0.1, 0.6, 0.4, 0.9, 0.7], [0.5, 0.5, 0.0, 1.0, 0.2, 0.6]],
    dtype=torch.float64,
)  # (C, D)
ENC_MEAN_W = torch.tensor([1.5, -1.0, 0.8, 0.6, -0.7, 1.2], dtype=torch.float64)  # mean = w·x + b
ENC_LOGVAR_W = torch.tensor([0.3, -0.2, 0.1, -0.3, 0.2, 0.1], dtype=torch.float64)
ENC_MEAN_B, ENC_LOGVAR_B = -0.4, -0.2


def make_tiny_vamp() -> OneLevelVAE:
    model = OneLevelVAE(D, 1, (), prior="vamp", pseudo_inputs=3)
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.stack([ENC_MEAN_W, ENC_LOGVAR_W]))
        model.encoder[0].bias.copy_(torch.tensor([ENC_MEAN_B, ENC_LOGVAR_B]))
        model.decoder[0].weight.copy_(W_DEC[:, None])
        model.decoder[0].bias.copy_(C_DEC)
        model.pseudo_input_params.copy_(PSEUDO)
    return model


def tiny_vamp_exact(x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log ∫ 1/3 sum_c N(z; m_c, v_c) p(x|z) dz by the trapezoid rule, every density by hand. (N,)"""
    means = (PSEUDO @ ENC_MEAN_W + ENC_MEAN_B).numpy()  # (C,)
    stds = np.exp(0.5 * (PSEUDO @ ENC_LOGVAR_W + ENC_LOGVAR_B).numpy())  # (C,)
    z = torch.linspace(-14.0, 14.0, 40001, dtype=torch.float64)  # (Z,)
    prior = stats.norm.pdf(z.numpy()[:, None], means, stds).mean(-1)  # (Z,) the mixture, by scipy
    log_integrand = bernoulli_log_lik(x, z) + torch.log(torch.from_numpy(prior))  # (N, Z)
    return torch.logsumexp(log_integrand + trapezoid_log_weights(z), dim=-1)


# --- a tiny two-level HVAE: 1-D z1, 1-D z2, linear Gaussian conditionals -----------------------------

A, B_, S = 1.2, 0.3, 0.6  # p(z1|z2) = N(A z2 + B_, S^2)
Q_MEAN_W = 0.25 * W_DEC  # q(z1|x) = N(r·x + r0, Q_VAR), wider than the posterior
Q_MEAN_B, Q_VAR = -0.2, 1.5
ALPHA, BETA, TAU2 = 0.5, -0.1, 0.8  # q(z2|z1) = N(ALPHA z1 + BETA, TAU2)


def make_tiny_hvae() -> TwoLevelVAE:
    model = TwoLevelVAE(D, (1, 1), (), ())
    with torch.no_grad():
        model.decoder[0].weight.copy_(W_DEC[:, None])
        model.decoder[0].bias.copy_(C_DEC)
        model.prior_z1[0].weight.copy_(torch.tensor([[A], [0.0]]))
        model.prior_z1[0].bias.copy_(torch.tensor([B_, 2 * math.log(S)]))
        model.encoder[0].weight.copy_(torch.stack([Q_MEAN_W, torch.zeros(D, dtype=torch.float64)]))
        model.encoder[0].bias.copy_(torch.tensor([Q_MEAN_B, math.log(Q_VAR)]))
        model.encoder_z2[0].weight.copy_(torch.tensor([[ALPHA], [0.0]]))
        model.encoder_z2[0].bias.copy_(torch.tensor([BETA, math.log(TAU2)]))
    return model


Z1 = torch.linspace(-12.0, 12.0, 1201, dtype=torch.float64)
Z2 = torch.linspace(-12.0, 12.0, 1201, dtype=torch.float64)


def tiny_hvae_exact(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact log p(x) and exact ELBO by 2-D trapezoid quadrature over (z1, z2). x: (N, D) → (N,), (N,)"""
    z1, z2 = Z1[:, None], Z2[None, :]  # (Z1, 1), (1, Z2)
    log_prior = normal_logpdf(z2, 0.0, 1.0) + normal_logpdf(z1, A * z2 + B_, S**2)  # (Z1, Z2)
    w1, w2 = trapezoid_log_weights(Z1), trapezoid_log_weights(Z2)
    log_m = torch.logsumexp(log_prior + w2, dim=-1)  # (Z1,) log p(z1), integrated over z2
    log_lik = bernoulli_log_lik(x, Z1)  # (N, Z1)
    log_px = torch.logsumexp(log_lik + log_m + w1, dim=-1)  # (N,)
    # ELBO = ∫ q(z1|x) [log p(x|z1) + g(z1) - log q(z1|x)] dz1, g(z1) = ∫ q(z2|z1) [log p(z1, z2) - log q(z2|z1)] dz2
    log_q2 = normal_logpdf(z2, ALPHA * z1 + BETA, TAU2)  # (Z1, Z2)
    g = (torch.exp(log_q2 + w2) * (log_prior - log_q2)).sum(-1)  # (Z1,)
    q1_mean = x.double() @ Q_MEAN_W + Q_MEAN_B  # (N,)
    log_q1 = normal_logpdf(Z1[None, :], q1_mean[:, None], Q_VAR)  # (N, Z1)
    elbo = (torch.exp(log_q1 + w1) * (log_lik + g - log_q1)).sum(-1)  # (N,)
    return log_px, elbo


# --- tests ---------------------------------------------------------------------------------------------


def test_gated_dense_is_the_gated_linear_unit_computed_by_hand():
    torch.manual_seed(0)
    layer = GatedDense(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    W, b = layer.linear.weight.detach().numpy(), layer.linear.bias.detach().numpy()
    V, c = layer.gate.weight.detach().numpy(), layer.gate.bias.detach().numpy()
    xn = x.numpy()
    expected = (xn @ W.T + b) / (1.0 + np.exp(-(xn @ V.T + c)))
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-12)
    # A gated body is gated layers then a linear head, with no activation in between.
    net = dense_net([4, 3, 2], "gated").double()
    head = net[1]
    np.testing.assert_allclose(
        net(x).detach().numpy(), (net[0](x) @ head.weight.T + head.bias).detach().numpy(), rtol=1e-12
    )
    assert [type(m) for m in net] == [GatedDense, torch.nn.Linear]


def test_vamp_prior_is_the_brute_force_mixture_of_its_components():
    torch.manual_seed(1)
    model = OneLevelVAE(D, 3, (5,), prior="vamp", pseudo_inputs=4).double()
    with torch.no_grad():  # some parameters outside [0, 1]: the hardtanh must clip them
        model.pseudo_input_params.copy_(torch.rand(4, D, dtype=torch.float64) * 1.6 - 0.3)
    u = np.clip(model.pseudo_input_params.detach().numpy(), 0.0, 1.0)
    np.testing.assert_array_equal(model.pseudo_inputs.detach().numpy(), u)
    z = torch.randn(7, 2, 3, dtype=torch.float64) * 2.0  # (K, B, L)
    means, logvars = (t.detach().numpy() for t in model.encode(torch.from_numpy(u)))  # (C, L) each
    brute = np.empty((7, 2))
    for i in range(7):
        for j in range(2):
            components = [
                stats.multivariate_normal(means[c], np.diag(np.exp(logvars[c]))).logpdf(z[i, j].numpy())
                for c in range(4)
            ]
            brute[i, j] = special.logsumexp(components) - math.log(4)
    np.testing.assert_allclose(model.log_prior(z).detach().numpy(), brute, rtol=1e-10, atol=1e-10)


def test_vamp_prior_with_one_standard_normal_component_is_the_standard_prior_model():
    """K = 1 and an encoder that maps u_1 to N(0, I): the VampPrior model is the standard-prior VAE."""
    torch.manual_seed(2)
    vamp = OneLevelVAE(D, 2, (8,), prior="vamp", pseudo_inputs=1).double()
    with torch.no_grad():  # shift the encoder's last bias so that encode(u_1) = (0, 0) exactly
        mean, logvar = vamp.encode(vamp.pseudo_inputs)
        vamp.encoder[-1].bias -= torch.cat([mean, logvar], -1)[0]
    standard = OneLevelVAE(D, 2, (8,), prior="standard").double()
    standard.load_state_dict({k: v for k, v in vamp.state_dict().items() if k != "pseudo_input_params"})
    x = binary_data(10, 3).double()
    noise = torch.randn(5, 10, 2, dtype=torch.float64)
    torch.testing.assert_close(vamp.log_weights(x, 5, noise=noise), standard.log_weights(x, 5, noise=noise))
    # With one component the KL is Gaussian-to-Gaussian; the VampPrior's single-sample KL averages to it.
    with torch.no_grad():
        draws = vamp.elbo_terms(x.repeat(4000, 1)).kl.view(4000, -1)  # (R, B): 4000 draws per example
        exact = standard.elbo_terms(x).kl  # analytic KL(q(z|x) || N(0, I))
    error = (draws.mean(0) - exact).abs()
    assert torch.all(error < 4 * draws.std(0) / math.sqrt(4000) + 1e-9), (draws.mean(0), exact)


def test_tiny_vamp_prior_model_importance_sampling_and_ais_match_quadrature():
    model = make_tiny_vamp()
    x = binary_data(200, 4)
    exact = tiny_vamp_exact(x)
    estimate = estimate_family_log_likelihood(model, x, k=3000, seed=1)
    mean, se = mean_and_se(estimate.log_px - exact)
    assert abs(mean) < 4 * se + 1e-4, (mean, se)
    assert float(estimate.elbo.mean()) < float(exact.mean())
    ais = annealed_importance_sampling(model, x[:32], steps=150, chains=16, seed=2)
    assert ais.acceptance > 0.3  # HMC moves; (1-D targets accept often)
    mean, se = mean_and_se(ais.log_px - exact[:32])
    assert abs(mean) < 4 * se + 2e-3, (mean, se)


def test_tiny_hvae_quadrature_is_consistent_with_the_closed_form_marginal_of_z1():
    """The 2-D grid integrates z2 out exactly: p(z1) = N(B_, A^2 + S^2) (a check of the reference itself)."""
    x = torch.zeros(1, D)
    z1 = Z1[:, None]
    log_prior = normal_logpdf(Z2[None, :], 0.0, 1.0) + normal_logpdf(z1, A * Z2[None, :] + B_, S**2)
    log_m = torch.logsumexp(log_prior + trapezoid_log_weights(Z2), dim=-1)
    inner = Z1.abs() < 6
    torch.testing.assert_close(log_m[inner], normal_logpdf(Z1, B_, A**2 + S**2)[inner], rtol=0, atol=1e-9)
    assert torch.isfinite(tiny_hvae_exact(x)[0]).all()


def test_tiny_hvae_importance_sampling_and_ais_match_2d_quadrature():
    model = make_tiny_hvae()
    x = binary_data(200, 5)
    exact, _ = tiny_hvae_exact(x)
    estimate = estimate_family_log_likelihood(model, x, k=3000, seed=3)
    mean, se = mean_and_se(estimate.log_px - exact)
    assert abs(mean) < 4 * se + 1e-4, (mean, se)
    assert se < 0.01
    ais = annealed_importance_sampling(model, x[:32], steps=150, chains=16, seed=4)
    assert ais.acceptance > 0.3  # HMC moves; (1-D targets accept often)
    mean, se = mean_and_se(ais.log_px - exact[:32])
    assert abs(mean) < 4 * se + 2e-3, (mean, se)


def test_tiny_hvae_elbo_is_the_quadrature_elbo_below_log_px_and_iwae_rises_with_k():
    model = make_tiny_hvae()
    x = binary_data(100, 6)
    exact, exact_elbo = tiny_hvae_exact(x)
    assert torch.all(exact_elbo < exact)  # the gap is KL(q || posterior) > 0
    torch.manual_seed(0)
    with torch.no_grad():
        draws = model.elbo_terms(x.repeat(200, 1)).elbo.double().view(200, -1)  # (R, N): 200 draws per example
        terms = model.elbo_terms(x)
    torch.testing.assert_close(terms.elbo, terms.reconstruction - terms.kl)
    mean, se = mean_and_se((draws - exact_elbo).flatten())
    assert abs(mean) < 4 * se, (mean, se)
    xs = x.repeat(20, 1)
    with torch.no_grad():
        bounds = {k: model.iwae_bound(xs, k).double() for k in (1, 5, 50)}  # (20 N,) each
    for small, large in ((1, 5), (5, 50)):
        rise, se = mean_and_se(bounds[large] - bounds[small])
        assert rise > 3 * se, (small, large, rise, se)
    mean, se = mean_and_se(bounds[50])
    assert mean < float(exact.mean()) + 3 * se


def test_prior_samples_have_the_priors_moments():
    """sample_prior (the AIS start) draws from p(s): the mixture's and the hierarchy's exact moments."""
    generator = torch.Generator().manual_seed(7)
    n = 200_000
    vamp = make_tiny_vamp()
    means = PSEUDO @ ENC_MEAN_W + ENC_MEAN_B  # (C,)
    variances = torch.exp(PSEUDO @ ENC_LOGVAR_W + ENC_LOGVAR_B)
    mixture_mean = float(means.mean())
    mixture_var = float((variances + means**2).mean()) - mixture_mean**2
    hvae = make_tiny_hvae()
    with torch.no_grad():
        z = vamp.sample_prior(n, generator)[:, 0].double()
        z1, z2 = hvae.split(hvae.sample_prior(n, generator).double())
    for sample, mu, var in ((z, mixture_mean, mixture_var), (z1[:, 0], B_, A**2 + S**2), (z2[:, 0], 0.0, 1.0)):
        assert abs(float(sample.mean()) - mu) < 4 * math.sqrt(var / n)
        assert abs(float(sample.var()) - var) < 4 * var * math.sqrt(2 / n) + 1e-3
    images = hvae.sample(5, generator)
    assert images.shape == (5, D) and bool(((images >= 0) & (images <= 1)).all())


def test_standard_prior_family_loads_a_vae_and_reproduces_its_importance_sampled_log_px():
    """OneLevelVAE(mlp, standard) has vae.models.model.VAE's layout: same weights, same noise, same log p̂(x)."""
    vae = make_bernoulli_1d(D, encoder_scale=0.3)
    family = OneLevelVAE(D, 1, ())
    family.load_state_dict(vae.state_dict())
    x = binary_data(130, 8)
    ours = estimate_family_log_likelihood(family, x, k=500, seed=1, batch_size=50, chunk_size=97)
    theirs = estimate_log_likelihood(vae, x, k=500, seed=1)
    torch.testing.assert_close(ours.log_px, theirs.log_px, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.elbo, theirs.elbo, rtol=0, atol=1e-4)
    # ...and batching does not change an example's noise.
    again = estimate_family_log_likelihood(family, x, k=500, seed=1, batch_size=64, chunk_size=500)
    torch.testing.assert_close(ours.log_px, again.log_px, rtol=0, atol=1e-5)


FAMILIES = {
    "mlp-standard": lambda: OneLevelVAE(D, 3, (8, 8)),
    "gated-standard": lambda: OneLevelVAE(D, 3, (8, 8), body="gated"),
    "mlp-vamp": lambda: OneLevelVAE(D, 3, (8,), prior="vamp", pseudo_inputs=4),
    "gated-vamp-gaussian": lambda: OneLevelVAE(
        D, 3, (8,), body="gated", prior="vamp", pseudo_inputs=4, likelihood="gaussian"
    ),
    "hvae-mlp": lambda: TwoLevelVAE(D, (3, 2), (8,), (5,)),
    "hvae-gated": lambda: TwoLevelVAE(D, (3, 2), (8, 8), (5, 5), body="gated"),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_every_parameter_gets_a_gradient_from_the_objectives(name):
    torch.manual_seed(3)
    model = FAMILIES[name]()
    x = binary_data(16, 9)
    log_w = model.log_weights(x, 4)
    assert log_w.shape == (4, 16)
    loss = -(torch.logsumexp(log_w, 0).mean() + model.elbo_terms(x).elbo.mean())
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and bool((param.grad != 0).any()), param_name
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (16, model.latent_dim)
    assert model.decode(torch.zeros(2, 16, model.latent_dim)).shape == (2, 16, D)
    assert model.log_prior(torch.zeros(4, 16, model.state_dim)).shape == (4, 16)
