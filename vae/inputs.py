"""Stored pixels → model inputs: the one transform training, evaluation, embedding and serving share."""

from __future__ import annotations

import torch


def prepare_inputs(
    images,
    max_value: float,
    binarize: str,
    generator=None,
):
    """Stored pixels → model inputs x: scale to [0, 1], then binarise as configured.

    images: (B, D) integer or float tensor → (B, D) float32. 'threshold': x > 1/2;
    'dynamic': x ~ Bernoulli(pixel / max_value), a fresh draw per call; 'none': continuous.
    """
    x = images.to(torch.float32) / float(max_value)  # (B, D) in [0, 1]
    if binarize == "threshold":
        return (x > 0.5).to(torch.float32)
    if binarize == "dynamic":
        return torch.bernoulli(x, generator=generator)
    return x
