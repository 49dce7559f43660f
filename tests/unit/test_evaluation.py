"""The log-likelihood estimator's mechanics: chunking, batching, one encoding per image, ESS."""

from __future__ import annotations

import math

import pytest
import torch

from vae.config import ModelConfig
from vae.evaluate.estimators import estimate_log_likelihood
from vae.models.model import build_model


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=3, hidden=(16,)), 10)
    x = torch.bernoulli(torch.full((23, 10), 0.4), generator=torch.Generator().manual_seed(1))
    return model, x


def test_results_do_not_depend_on_chunk_or_batch_sizes(model_and_data):
    model, x = model_and_data
    reference = estimate_log_likelihood(model, x, k=257, seed=4)
    for batch_size, chunk_size in ((1, 1), (5, 13), (23, 257), (7, 100)):
        other = estimate_log_likelihood(model, x, k=257, seed=4, batch_size=batch_size, chunk_size=chunk_size)
        assert torch.allclose(other.log_px, reference.log_px, atol=1e-5, rtol=0)
        assert torch.allclose(other.ess, reference.ess, rtol=1e-4)


def test_a_split_test_set_gives_the_same_numbers_as_one_pass(model_and_data):
    model, x = model_and_data
    whole = estimate_log_likelihood(model, x, k=64, seed=2)
    parts = [estimate_log_likelihood(model, x[s : s + 8], k=64, seed=2, first_index=s) for s in range(0, 23, 8)]
    assert torch.allclose(torch.cat([p.log_px for p in parts]), whole.log_px, atol=1e-6, rtol=0)


def test_each_image_is_encoded_once_never_per_sample(model_and_data):
    model, x = model_and_data
    encoded_rows = []
    original = model.encode

    def counting_encode(batch):
        encoded_rows.append(batch.shape[0])
        return original(batch)

    model.encode = counting_encode
    try:
        estimate_log_likelihood(model, x, k=500, batch_size=10)
    finally:
        del model.encode
    assert sum(encoded_rows) == x.shape[0]


def test_ess_and_elbo_are_consistent_with_the_weights(model_and_data):
    model, x = model_and_data
    estimate = estimate_log_likelihood(model, x, k=300, seed=0)
    assert torch.all(estimate.ess >= 1.0 - 1e-9) and torch.all(estimate.ess <= 300 + 1e-6)
    # Jensen: the mean log-weight (Monte Carlo ELBO) never exceeds log of the mean weight.
    assert torch.all(estimate.elbo <= estimate.log_px + 1e-9)
    summary = estimate.summary(data_dim=10)
    assert summary["bits_per_dim"] == pytest.approx(summary["nll"] / (10 * math.log(2)))


def test_memory_budget_bounds_the_chunk(model_and_data):
    model, x = model_and_data
    tiny = estimate_log_likelihood(model, x, k=200, seed=1, max_memory_bytes=64 * 1024)
    roomy = estimate_log_likelihood(model, x, k=200, seed=1)
    assert torch.allclose(tiny.log_px, roomy.log_px, atol=1e-5, rtol=0)


def test_k_below_one_is_rejected(model_and_data):
    model, x = model_and_data
    with pytest.raises(ValueError, match="k must be >= 1"):
        estimate_log_likelihood(model, x, k=0)
