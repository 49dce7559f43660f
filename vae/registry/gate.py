"""The champion gate's decision, pure: what makes two NLLs comparable (the evaluation protocol and the
kind of data they are a probability of) and the rule that says whether a new version takes `champion`.

No MLflow here: vae.registry.versions reads the versions' tags and moves the aliases; this module only
decides, so the rule is unit-tested alone (tests/unit/test_promotion_rule.py).
"""

from __future__ import annotations

import re


def evaluation_protocol(dataset_version: str, k: int, split: str, seed: int) -> str:
    """What makes two NLLs comparable: the same dataset version, split, number of importance samples
    (a smaller k biases log p̂(x) down, so the NLL up) and binarisation draw of the evaluated split."""
    return f"{dataset_version}.k{int(k)}.{split}.seed{int(seed)}"


def protocol_of(tags: dict[str, str]) -> str:
    """A version's evaluation protocol: its tag, or for versions from before it, the defaults they
    were evaluated with (test split, seed 0) and their own dataset version and k."""
    if tags.get("evaluated_as"):
        return tags["evaluated_as"]
    if "dataset_version" not in tags or "k" not in tags:
        return "?"  # matches no protocol: re-evaluated
    return evaluation_protocol(tags["dataset_version"], int(tags["k"]), "test", 0)


def nll_kind(tags: dict[str, str]) -> str:
    """What a version's NLL is a probability of (vae.models.likelihoods.DATA_KIND: binary, 8bit, dequantized,
    continuous): its `nll_kind` tag, else the kind in its `bits_per_dim` tag's brackets, else binary
    (versions from before colour images)."""
    if tags.get("nll_kind"):
        return tags["nll_kind"]
    found = re.search(r"\((\w+)\)\s*$", tags.get("bits_per_dim", ""))
    return found.group(1) if found else "binary"


def _nll_key(nll: float) -> float:
    """The precision NLLs are compared at: the 6 decimals that tags before full precision kept."""
    return round(float(nll), 6)


def should_promote(candidate_nll: float, champion_nll: float | None, margin: float) -> bool:
    """The gate's rule: a new version takes `champion` iff there is none, or its held-out NLL beats the
    champion's (on the same data, under the same protocol) by more than `margin` nats.

    NLLs are compared rounded to 6 decimals (older versions' tags hold no more), so an identical
    rerun ties and the champion stays; a NaN beats nothing.
    """
    if champion_nll is None:
        return True
    return _nll_key(candidate_nll) < _nll_key(champion_nll) - margin
