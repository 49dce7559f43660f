"""The champion gate's rule (vae.registry.gate.should_promote), on its own: no MLflow, no race."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from vae.registry import gate
from vae.registry.gate import evaluation_protocol, nll_kind, protocol_of, should_promote


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


def test_the_gate_module_imports_no_mlflow():
    tree = ast.parse(Path(gate.__file__).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert [name for name in imported if name.split(".")[0] == "mlflow"] == []


def test_the_protocol_of_a_version_tagged_before_evaluated_as():
    assert evaluation_protocol("v2", 100, "validation", 3) == "v2.k100.validation.seed3"
    assert protocol_of({"evaluated_as": "v2.k100.validation.seed3"}) == "v2.k100.validation.seed3"
    assert protocol_of({"dataset_version": "v1", "k": "50"}) == "v1.k50.test.seed0"  # the old defaults
    assert protocol_of({"test_nll": "80.1"}) == "?"  # matches no protocol: re-evaluated


def test_the_nll_kind_of_a_version():
    assert nll_kind({"nll_kind": "8bit", "bits_per_dim": "7.0 (binary)"}) == "8bit"
    assert nll_kind({"bits_per_dim": "6.9830 (dequantized)"}) == "dequantized"
    assert nll_kind({}) == "binary"
