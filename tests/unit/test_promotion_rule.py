"""The champion gate's rule (vae.registry.store.should_promote), on its own: no MLflow, no race."""

from __future__ import annotations

import math

import pytest

from vae.registry.store import should_promote


def test_the_first_version_becomes_champion():
    assert should_promote(80.0, None, margin=0.0) is True
    assert should_promote(80.0, None, margin=5.0) is True


@pytest.mark.parametrize(
    "candidate, champion, margin, expected",
    [
        (24.0, 25.0, 0.0, True),  # better
        (26.0, 25.0, 0.0, False),  # worse
        (25.0, 25.0, 0.0, False),  # a tie keeps the champion
        (29.4, 30.0, 0.5, True),  # better by more than the margin
        (29.5, 30.0, 0.5, False),  # better by exactly the margin is not enough
        (29.9, 30.0, 0.5, False),  # better, but within the margin
    ],
)
def test_champion_moves_only_when_beaten_by_more_than_the_margin(candidate, champion, margin, expected):
    assert should_promote(candidate, champion, margin) is expected


def test_nlls_are_compared_at_six_decimals():
    # Tags before full precision held 6 decimals: an identical rerun (23.4761236) against its own
    # rounded tag (23.476124) ties and keeps the champion, though 23.4761236 < 23.476124.
    assert should_promote(23.4761236, 23.476124, margin=0.0) is False
    assert should_promote(23.4761236, 23.4761236, margin=0.0) is False
    # One unit in the sixth decimal is a difference.
    assert should_promote(23.476123, 23.476124, margin=0.0) is True


def test_a_nan_nll_beats_nothing():
    assert should_promote(math.nan, 25.0, margin=0.0) is False
