"""8-bit likelihoods against exact answers: normalisation, reductions, closed forms, bits/dim."""

from __future__ import annotations

import math

import pytest
import torch

from vae.models.likelihoods import (
    CATEGORICAL,
    LOGISTIC,
    MIXTURE,
    bits_per_dim,
    categorical_log_likelihood,
    dequantize,
    discrete_log_likelihood,
    discretized_logistic_log_likelihood,
    discretized_logistic_log_probs,
    logistic_mixture_log_likelihood,
    mean_pixels,
    param_count,
    sample_pixels,
)

VALUES = torch.arange(256)  # every pixel value, (256,)


def _random_logistic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means across and beyond [-1, 1] and log-scales from far below the clamp to very wide: (n,) each."""
    g = torch.Generator().manual_seed(seed)
    edges = torch.tensor([-1.0, 1.0, -1 - 1 / 255, 1 - 1 / 255, 0.2, -50.0, 50.0])  # on bin edges, far outside
    mean = torch.cat([torch.randn(n, generator=g) * 2, edges])
    log_scale = torch.cat(
        [torch.rand(n, generator=g) * 30 - 15, torch.tensor([-7.0, -7.0, -20.0, -3.0, 40.0, 0.0, 0.0])]
    )
    return mean, log_scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_discretized_logistic_sums_to_one_over_the_256_values(dtype):
    mean, log_scale = _random_logistic(500, seed=0)
    mean, log_scale = mean.to(dtype), log_scale.to(dtype)  # (n,)
    log_p = discretized_logistic_log_probs(VALUES[:, None], mean, log_scale)  # (256, n), x as integers
    total = torch.logsumexp(log_p.double(), dim=0).exp()  # (n,)
    assert torch.isfinite(log_p).all()  # no bin underflows to log 0, not even 50 scales into a tail
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6, rtol=0)
    # The edge bins hold whole tails: a mean far left puts nearly all mass on 0, far right on 255.
    assert float(log_p[0, -2].exp()) > 0.999 and float(log_p[255, -1].exp()) > 0.999


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_sums_to_one_and_reduces_to_the_single_logistic(dtype):
    g = torch.Generator().manual_seed(1)
    k = 5
    logits = (torch.randn(300, k, generator=g) * 4).to(dtype)  # (n, K)
    means = (torch.randn(300, k, generator=g) * 1.5).to(dtype)
    log_scales = (torch.rand(300, k, generator=g) * 20 - 12).to(dtype)
    x = VALUES[:, None, None].to(dtype)  # (256, 1, 1): value v as an image of D = 1, as floats this time
    per_value = logistic_mixture_log_likelihood(x, logits[:, None], means[:, None], log_scales[:, None])  # (256, n)
    total = torch.logsumexp(per_value.double(), dim=0).exp()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6, rtol=0)

    mean, log_scale = _random_logistic(100, seed=2)
    x = torch.randint(0, 256, (7, mean.numel()), generator=g)  # (B, D)
    single = discretized_logistic_log_likelihood(x, mean.to(dtype), log_scale.to(dtype))  # (B,)
    one = logistic_mixture_log_likelihood(
        x, torch.randn(mean.numel(), 1, dtype=dtype), mean.to(dtype)[:, None], log_scale.to(dtype)[:, None]
    )
    assert torch.allclose(one, single, rtol=1e-6 if dtype == torch.float32 else 1e-12)


def test_mixture_equals_the_weighted_sum_of_component_probabilities():
    g = torch.Generator().manual_seed(3)
    logits, means = (
        torch.randn(4, 3, generator=g, dtype=torch.float64),
        torch.randn(4, 3, generator=g, dtype=torch.float64),
    )
    log_scales = torch.randn(4, 3, generator=g, dtype=torch.float64) - 2
    x = torch.tensor([0, 17, 200, 255])  # (D,) edges and middles
    weights = torch.softmax(logits, -1)  # (D, K)
    components = torch.stack(
        [discretized_logistic_log_probs(x, means[:, j], log_scales[:, j]).exp() for j in range(3)], -1
    )
    expected = torch.log((weights * components).sum(-1)).sum()
    assert torch.allclose(logistic_mixture_log_likelihood(x, logits, means, log_scales), expected, rtol=1e-12)


def test_discretized_logistic_matches_the_cdf_difference_and_stays_exact_in_the_tails():
    sigmoid = torch.sigmoid
    # Well-conditioned cases: the textbook CDF difference in float64 is the reference.
    mean = torch.tensor([0.0, 0.3, -0.5, 0.9], dtype=torch.float64)
    log_scale = torch.tensor([-2.0, -4.0, 0.5, -4.0], dtype=torch.float64)
    x = torch.tensor([128, 166, 30, 254])
    c = 2 * x.double() / 255 - 1
    s = log_scale.exp()
    reference = torch.log(sigmoid((c + 1 / 255 - mean) / s) - sigmoid((c - 1 / 255 - mean) / s))
    ours = discretized_logistic_log_probs(x, mean.float(), log_scale.float())
    assert torch.allclose(ours.double(), reference, rtol=1e-5)
    # Far tail: in float32 the textbook difference is 1 - 1 = 0 (log = -inf); ours is finite and equals
    # the float64 value of the same difference written on the side where it does not cancel.
    mean, log_scale, x = torch.tensor([-0.9]), torch.tensor([-5.0]), torch.tensor([128])
    c = 2 * x / 255 - 1
    naive = torch.log(sigmoid((c + 1 / 255 - mean) / log_scale.exp()) - sigmoid((c - 1 / 255 - mean) / log_scale.exp()))
    assert naive.item() == -math.inf
    a = (c.double() + 1 / 255 - mean.double()) / log_scale.double().exp()
    b = (c.double() - 1 / 255 - mean.double()) / log_scale.double().exp()
    exact = torch.log(sigmoid(-b) - sigmoid(-a))  # s(a) - s(b) = s(-b) - s(-a), tiny numbers, no cancellation
    ours = discretized_logistic_log_probs(x, mean, log_scale)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours.double(), exact, rtol=1e-5)
    # A scale so wide that 2/(255 s) underflows: the mid-bin fallback log(density * width) takes over.
    huge = discretized_logistic_log_probs(torch.tensor([100]), torch.tensor([0.0]), torch.tensor([120.0]))
    assert torch.allclose(huge, torch.tensor([math.log(2 / 255) - 120.0 - math.log(4.0)]), rtol=1e-6)


def test_gradients_are_finite_at_extreme_parameters():
    mean, log_scale = _random_logistic(200, seed=4)
    mean, log_scale = mean.requires_grad_(), log_scale.requires_grad_()
    x = torch.randint(0, 256, (3, mean.numel()), generator=torch.Generator().manual_seed(4))  # (B, D)
    discretized_logistic_log_likelihood(x, mean, log_scale).sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()
    assert mean.grad.abs().sum() > 0


def test_categorical_matches_log_softmax_and_a_uniform_model_gives_exactly_8_bits_per_dim():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 2, 6, 256, generator=g)  # (K, B, D, 256)
    x = torch.randint(0, 256, (2, 6), generator=g)  # (B, D), broadcast against the K samples
    expected = torch.log_softmax(logits, -1).gather(-1, x.expand(4, 2, 6)[..., None]).squeeze(-1).sum(-1)
    assert torch.allclose(categorical_log_likelihood(x, logits), expected, atol=1e-5)

    d = 3 * 32 * 32
    x = torch.randint(0, 256, (5, d), generator=g)
    nll = -categorical_log_likelihood(x, torch.zeros(5, d, 256, dtype=torch.float64))  # (B,)
    assert torch.allclose(bits_per_dim(nll, d, "8bit"), torch.full((5,), 8.0, dtype=torch.float64), atol=1e-12)
    assert bits_per_dim(d * math.log(2), d, "binary") == pytest.approx(1.0, abs=1e-15)  # uniform Bernoulli
    assert bits_per_dim(float(nll[0]), d, CATEGORICAL) == pytest.approx(8.0, abs=1e-12)


def test_bits_per_dim_refuses_a_continuous_density_unless_dequantised():
    with pytest.raises(ValueError, match="continuous density"):
        bits_per_dim(100.0, 10, "continuous")
    with pytest.raises(ValueError, match="continuous density"):
        bits_per_dim(100.0, 10, "gaussian")
    with pytest.raises(ValueError, match="unknown bits/dim kind"):
        bits_per_dim(100.0, 10, "nats")
    assert bits_per_dim(10 * math.log(256), 10, "dequantized") == pytest.approx(8.0)


def test_param_count_and_the_decoder_layout():
    assert (param_count(LOGISTIC), param_count(MIXTURE, 10), param_count(CATEGORICAL)) == (2, 30, 256)
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, 256, (2, 5), generator=g)  # (B, D)
    flat = torch.randn(2, 5 * 2, generator=g)  # a decoder's (B, D*P) output, P = 2
    params = flat.reshape(2, 5, 2)  # (B, D, P): subpixel d's values contiguous
    assert torch.equal(
        discrete_log_likelihood(LOGISTIC, x, params),
        discretized_logistic_log_likelihood(x, flat[:, 0::2], flat[:, 1::2]),
    )
    flat = torch.randn(2, 5 * 9, generator=g)  # P = 3K, K = 3: [logits, means, log_scales]
    p = flat.reshape(2, 5, 9)
    assert torch.equal(
        discrete_log_likelihood(MIXTURE, x, p),
        logistic_mixture_log_likelihood(x, p[..., 0:3], p[..., 3:6], p[..., 6:9]),
    )


def test_mean_pixels_is_the_exact_expectation_and_samples_follow_the_probabilities():
    g = torch.Generator().manual_seed(7)
    params = {
        LOGISTIC: torch.stack([torch.tensor([-1.2, 0.0, 0.5, 1.1]), torch.tensor([-1.0, -3.0, -7.5, 0.0])], -1),
        MIXTURE: torch.randn(4, 6, generator=g, dtype=torch.float64),
        CATEGORICAL: torch.randn(4, 256, generator=g, dtype=torch.float64) * 3,
    }
    for kind, p in params.items():
        p = p.double()  # (D, P)
        values = VALUES[:, None, None].expand(256, 4, 1)  # (256, D, 1): value v for every subpixel
        per_subpixel = discrete_log_likelihood(kind, values, p[:, None, :].expand(4, 1, p.shape[-1])[None])  # (256, D)
        per_subpixel = per_subpixel.T  # (D, 256)
        expected = (per_subpixel.exp() * VALUES.double()).sum(-1)  # (D,)
        assert torch.allclose(mean_pixels(kind, p), expected, atol=1e-6), kind
        samples = sample_pixels(kind, p.expand(20000, 4, p.shape[-1]), torch.Generator().manual_seed(8))  # (S, D)
        assert samples.min() >= 0 and samples.max() <= 255 and torch.equal(samples, samples.round())
        # Sample means within 5 standard errors of the exact means.
        se = samples.std(0) / math.sqrt(samples.shape[0])
        assert ((samples.mean(0) - expected).abs() <= 5 * se + 1e-9).all(), kind


def test_dequantisation_bound_holds_and_is_tight_for_a_piecewise_constant_density():
    g = torch.Generator().manual_seed(9)
    d = 6
    x = torch.randint(0, 256, (4, d), generator=g)  # (B, D)
    x_tilde, correction = dequantize(x.double(), torch.Generator().manual_seed(10))
    assert x_tilde.shape == (4, d) and correction.shape == (4,)
    assert ((x_tilde >= x / 256) & (x_tilde < (x + 1) / 256)).all()  # x~ lies in x's cube
    assert torch.allclose(correction, torch.full((4,), -d * math.log(256), dtype=torch.float64), rtol=1e-15)

    # 1) A Gaussian density on x~ and the discrete P(x) = prod_d [Phi((x+1)/256) - Phi(x/256)] it induces:
    #    the exact E_u[log p~] - D log 256 lies below log P(x), and dequantize's Monte Carlo agrees with it.
    mu = (x + 0.5 + 4 * torch.randn(4, d, generator=g)).double() / 256  # (B, D): within a few bins of x
    sigma = torch.tensor([0.002, 0.01, 0.05, 0.2, 0.5, 1.0], dtype=torch.float64)
    xd = x.double()
    log_px_d = torch.log(
        torch.special.ndtr(((xd + 1) / 256 - mu) / sigma) - torch.special.ndtr((xd / 256 - mu) / sigma)
    )
    second_moment = ((xd + 0.5) / 256 - mu) ** 2 + 1 / (12 * 256**2)  # E_u[(x~ - mu)^2]
    expected_log_density_d = -0.5 * math.log(2 * math.pi) - torch.log(sigma) - second_moment / (2 * sigma**2)
    gap_d = log_px_d - (expected_log_density_d - math.log(256))  # (B, D): Jensen's gap, per subpixel
    assert (gap_d >= 0).all()
    assert (gap_d[:, sigma >= 0.2] < 1e-4).all()  # nearly tight where the density hardly varies inside a bin
    bound = expected_log_density_d.sum(-1) - d * math.log(256)  # (B,)
    assert (bound <= log_px_d.sum(-1)).all()
    samples, corr = dequantize(xd.expand(20000, 4, d), torch.Generator().manual_seed(11))  # (S, B, D)
    mc = (-0.5 * math.log(2 * math.pi) - torch.log(sigma) - (samples - mu) ** 2 / (2 * sigma**2)).sum(-1) + corr
    assert torch.allclose(mc.mean(0), bound, atol=5 * float(mc.std(0).max()) / math.sqrt(20000))

    # 2) p~ constant on each cube, p~ = P(x) 256^D there: the bound is an equality, exactly.
    logits = torch.randn(d, 256, generator=g, dtype=torch.float64)
    log_p_discrete = categorical_log_likelihood(x, logits)  # (B,)
    cube = torch.floor(x_tilde.double() * 256).long()  # (B, D): the cube each x~ fell in, = x
    log_p_tilde = categorical_log_likelihood(cube, logits) + d * math.log(256)  # log p~(x~)
    assert torch.allclose(log_p_tilde + correction.double(), log_p_discrete, rtol=1e-12)
