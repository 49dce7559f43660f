"""The drift statistics (vae.jobs.drift_statistics, vae.jobs.drift.decide) against exact or independent answers:
closed-form Gaussian entropies and quantiles, scipy.stats (a test dependency only), brute-force pair
counts; and the drift section's and `vae drift`'s one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from typer.testing import CliRunner

from vae.jobs import drift_statistics as stats
from vae.config import DriftConfig, load_pipeline
from vae.jobs.drift import decide, parse_spec
from vae.errors import ConfigError, DataError

runner = CliRunner()


def gaussian_nll(x: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """-log N(x; 0, σ² I_d) per row, exactly. x: (N, d) → (N,)"""
    d = x.shape[1]
    return 0.5 * (x**2).sum(1) / sigma**2 + d * math.log(sigma) + 0.5 * d * math.log(2 * math.pi)


def gaussian_entropy(d: int, sigma: float = 1.0) -> float:
    """H[N(0, σ² I_d)] = d/2 log(2πe σ²) nats; Var(-log p(x)) = d/2 (half a χ²_d)."""
    return 0.5 * d * math.log(2 * math.pi * math.e * sigma**2)


def test_entropy_estimate_and_typicality_statistic_on_gaussian_samples_with_known_entropy():
    d, m = 10, 200_000
    rng = np.random.default_rng(0)
    nll = gaussian_nll(rng.normal(size=(m, d)))
    entropy = stats.entropy_estimate(nll)
    assert entropy == pytest.approx(gaussian_entropy(d), abs=4 * math.sqrt(d / 2 / m))  # 4 standard errors
    batch = gaussian_nll(rng.normal(size=(50, d)))
    assert stats.typicality_statistic(batch, gaussian_entropy(d)) == pytest.approx(
        abs(batch.mean() - gaussian_entropy(d)), rel=1e-12
    )


def test_bootstrap_threshold_is_the_normal_quantile_of_both_sampling_errors():
    """Under H0, mean(new) - Ĥ ~ N(0, σ²(1/n + 1/m)) with σ² = d/2: ε_α = z_{1-α/2} σ sqrt(1/n + 1/m)."""
    d, m, n, alpha = 20, 4000, 400, 0.01
    nll_ref = gaussian_nll(np.random.default_rng(1).normal(size=(m, d)))
    null = stats.bootstrap_typicality(nll_ref, n, draws=20_000, seed=0)
    expected = scipy.stats.norm.ppf(1 - alpha / 2) * math.sqrt(d / 2 * (1 / n + 1 / m))
    assert stats.typicality_threshold(null, alpha) == pytest.approx(expected, rel=0.08)
    # Nalisnick et al.'s Ĥ-held-fixed bootstrap would give z σ sqrt(1/n) instead: 5% lower here, 29% at n = m.
    assert stats.typicality_threshold(null, alpha) > scipy.stats.norm.ppf(1 - alpha / 2) * math.sqrt(d / 2 / n)


def test_typicality_test_false_alarms_at_about_the_rate_asked_for_a_reference_the_size_of_the_batch():
    d, m, n, alpha, trials = 6, 200, 200, 0.05, 300
    rng = np.random.default_rng(2)
    flagged = 0
    for trial in range(trials):
        nll_ref, nll_new = gaussian_nll(rng.normal(size=(m, d))), gaussian_nll(rng.normal(size=(n, d)))
        null = stats.bootstrap_typicality(nll_ref, n, draws=400, seed=trial)
        flagged += stats.typicality_statistic(nll_new, stats.entropy_estimate(nll_ref)) > stats.typicality_threshold(
            null, alpha
        )
    # Binomial(300, 0.05): mean 15, s.d. 3.8; the fixed-Ĥ bootstrap would flag ~17% (51) here.
    assert 3 <= flagged <= 30


def test_a_higher_likelihood_batch_is_drift_though_no_row_passes_the_likelihood_threshold():
    """Nalisnick et al. (2019a)'s trap: samples of N(0, 0.3² I) are MORE likely under N(0, I) than its own
    samples. A -log p(x) threshold passes every row; the typicality test flags the batch."""
    d = 30
    rng = np.random.default_rng(3)
    nll_ref = gaussian_nll(rng.normal(size=(2000, d)))
    nll_simple = gaussian_nll(0.3 * rng.normal(size=(300, d)))  # evaluated under the N(0, I) model
    decision = decide(nll_ref, nll_simple, DriftConfig(dataset="new"))
    assert nll_simple.mean() < decision["entropy"] and decision["new_more_likely"]
    assert decision["new_raw_flagged_fraction"] == 0.0
    assert decision["drift"] and decision["typicality_statistic"] > decision["typicality_threshold"]
    assert "MORE likely" in decision["reasons"][0]
    # Per row: |nll - Ĥ| ranks the simple rows as OOD; raw nll ranks them as the most in-distribution.
    entropy = decision["entropy"]
    assert stats.auroc(stats.ood_scores(nll_ref, entropy, "raw"), stats.ood_scores(nll_simple, entropy, "raw")) < 0.01
    assert stats.auroc(*(stats.ood_scores(x, entropy, "typicality") for x in (nll_ref, nll_simple))) > 0.9


def test_null_batch_is_no_drift_and_alpha_is_split_between_the_two_tests():
    rng = np.random.default_rng(4)
    nll_ref, nll_new = gaussian_nll(rng.normal(size=(1000, 8))), gaussian_nll(rng.normal(size=(300, 8)))
    decision = decide(nll_ref, nll_new, DriftConfig(dataset="new", false_alarm_rate=0.02))
    assert not decision["drift"] and decision["reasons"] == []
    assert decision["typicality_alpha"] == decision["ks_alpha"] == 0.01
    assert decision["ks_p_value"] == pytest.approx(scipy.stats.ks_2samp(nll_ref, nll_new, method="exact").pvalue)
    shifted = gaussian_nll(rng.normal(0.5, 1.0, size=(300, 8)))
    assert decide(nll_ref, shifted, DriftConfig(dataset="new"))["drift"]


@pytest.mark.parametrize(
    ("m", "n", "shift"),
    [
        (1, 1, 0.0),
        (3, 5, 0.0),
        (40, 40, 0.3),
        (50, 80, 0.0),
        (144, 359, 0.1),
        (359, 144, 0.2),
        (60, 40, 3.0),
        (700, 1000, 0.05),
    ],
)
def test_ks_statistic_and_exact_p_value_equal_scipy(m, n, shift):
    rng = np.random.default_rng(m * 1000 + n)
    a, b = rng.normal(size=m), rng.normal(shift, size=n)
    statistic, p, method = stats.ks_two_sample(a, b, method="exact")
    reference = scipy.stats.ks_2samp(a, b, method="exact")
    assert method == "exact"
    assert statistic == pytest.approx(reference.statistic, abs=1e-12)
    assert p == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-300)  # p = 5e-20 at (60, 40, 3.0): no cancellation


def test_ks_statistic_with_ties_equals_scipy_and_the_asymptotic_p_value_is_kolmogorovs():
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 6, size=300).astype(float), rng.integers(0, 7, size=500).astype(float)
    statistic, p, method = stats.ks_two_sample(a, b, method="asymptotic")
    assert statistic == pytest.approx(scipy.stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert p == pytest.approx(scipy.stats.kstwobign.sf(math.sqrt(300 * 500 / 800) * statistic), rel=1e-9)
    assert stats.ks_two_sample(np.arange(2000.0), np.arange(30000.0))[2] == "asymptotic"  # too many cells for exact


@pytest.mark.parametrize("x", [0.0, 0.05, 0.3, 0.6, 1.0, 1.17, 1.19, 1.6, 2.5, 4.0])
def test_kolmogorov_survival_function_equals_scipy(x):
    assert stats.kolmogorov_sf(x) == pytest.approx(scipy.stats.kstwobign.sf(x), rel=1e-10, abs=1e-300)


def test_auroc_equals_a_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(6)
    scores_in, scores_out = rng.integers(0, 10, size=137), rng.integers(2, 12, size=91)  # many ties
    pairs = (scores_out[None, :] > scores_in[:, None]) + 0.5 * (scores_out[None, :] == scores_in[:, None])
    assert stats.auroc(scores_in, scores_out) == pytest.approx(pairs.mean(), abs=1e-12)
    assert stats.auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and stats.auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="rows of both kinds"):
        stats.auroc([], [1.0])


def test_ood_scores_bits_per_dim_and_bootstrap_p_value_by_their_definitions():
    nll = np.array([1.0, 5.0, 9.0])
    np.testing.assert_array_equal(stats.ood_scores(nll, 4.0, "raw"), nll)
    np.testing.assert_array_equal(stats.ood_scores(nll, 4.0, "typicality"), [3.0, 1.0, 5.0])
    with pytest.raises(ValueError, match="expected one of typicality, raw"):
        stats.ood_scores(nll, 4.0, "ratio")
    np.testing.assert_allclose(stats.bits_per_dim(nll, 64), nll / (64 * math.log(2)))
    assert stats.bootstrap_p_value(np.array([0.1, 0.2, 0.3, 0.4]), 0.25) == 3 / 5


def test_dataset_specs_name_a_split_or_none():
    assert parse_spec("digits", "--dataset") == ("digits", None)
    assert parse_spec("digits:validation", "--dataset") == ("digits", ("validation",))
    with pytest.raises(DataError, match=r"^--reference 'digits:tset': split 'tset': expected NAME\[:SPLIT\]"):
        parse_spec("digits:tset", "--reference")


def _pipeline(tmp_path, drift: str):
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        "pipelines:\n  watched:\n    dataset: {name: digits, source: 'sklearn:digits'}\n"
        f"    registry: {{model_name: vae-watched}}\n    drift: {drift}\n"
    )
    return path


def test_the_drift_section_parses_and_bad_values_are_one_line(tmp_path):
    settings = load_pipeline(
        "watched", _pipeline(tmp_path, "{dataset: incoming, k: 50, schedule: {cron: '0 4 * * *'}}")
    )
    assert settings.drift.dataset == "incoming" and settings.drift.k == 50 and settings.drift.false_alarm_rate == 0.01
    ingest = load_pipeline("watched", _pipeline(tmp_path, "{ingest: {name: incoming, source: new.npz, max_value: 16}}"))
    assert ingest.drift.ingest.max_value == 16 and ingest.drift.dataset is None
    for drift, message in [
        ("{k: 5}", "the new data needs exactly one of 'dataset'"),
        ("{dataset: x, ingest: {name: x, source: y}}", "the new data needs exactly one of 'dataset'"),
        (
            "{dataset: x, false_alarm_rate: 0.7}",
            "field 'drift.false_alarm_rate': expected: input should be less than 0.5",
        ),
        ("{dataset: x, ingest_: 1}", "field 'drift.ingest_': unknown field"),
    ]:
        with pytest.raises(ConfigError) as error:
            load_pipeline("watched", _pipeline(tmp_path, drift))
        assert message in str(error.value) and "\n" not in str(error.value)


def test_vae_drift_usage_errors_are_one_line_before_any_work(tmp_path):
    from vae.cli import app

    missing = runner.invoke(app, ["drift", "models:/nope@champion", "--dataset", "x"])
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == [
        "error: --reference: missing (expected NAME[:SPLIT], or --pipeline NAME with a drift: section)"
    ]
    bad = runner.invoke(app, ["drift", "models:/nope@champion", "-r", "a", "-d", "b", "--false-alarm-rate", "0.9"])
    assert bad.exit_code == 1 and bad.output.strip().splitlines() == ["error: --false-alarm-rate 0.9: expected < 0.5"]
    plain = _pipeline(tmp_path, "{dataset: incoming}").read_text().replace("    drift: {dataset: incoming}\n", "")
    (tmp_path / "plain.yaml").write_text(plain)
    none = runner.invoke(app, ["drift", "m", "--pipeline", "watched", "--file", str(tmp_path / "plain.yaml")])
    assert none.exit_code == 1 and "pipeline 'watched' has no drift: section" in none.output


def test_comparisons_that_mean_nothing_are_refused_in_one_line():
    """A split stored binarised once against grey pixels, and the reference's own rows as the new data."""
    from vae.config import DatasetConfig
    from vae.data.datasets import read_manifest
    from vae.jobs.drift import check_sides, resolve_side
    from vae.data.ingest import ingest

    path = ingest(DatasetConfig(name="digits-bin", source="sklearn:digits", binarize_test_seed=0)).path
    reference = resolve_side(f"{path}:test", "reference", "--reference", ("test",))
    assert reference.binarized and reference.splits == ("test",)
    assert reference.rows == read_manifest(path)["rows"]["test"]
    with pytest.raises(DataError, match=r"stored binarised once \(binarize_test_seed\) and .*:validation is not"):
        check_sides(reference, resolve_side(f"{path}:validation", "new", "--dataset", None))
    with pytest.raises(DataError, match=r"^--dataset '.*': split 'test' is stored binarised \(seed 0\) and train, "):
        resolve_side(path, "new", "--dataset", None)  # every split: binarised and grey mixed
    with pytest.raises(DataError, match=r"the same rows as the reference \(split test of "):
        check_sides(reference, resolve_side(f"{path}:test", "new", "--dataset", None))
