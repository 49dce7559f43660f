"""Stored pixels → model inputs: the one transform training, evaluation, embedding and serving share."""

from __future__ import annotations

from pathlib import Path

import torch

from vae.errors import DataError


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


def _channels_first(shape) -> tuple[int, ...]:
    """(H, W) is (1, H, W): how networks that read the image shape see a grayscale image."""
    shape = tuple(int(s) for s in shape)
    return (1, *shape) if len(shape) == 2 else shape


def check_model_inputs(
    dataset_path: str | Path, manifest: dict, state: dict, binarize: str, verb: str, *, density: bool
) -> None:
    """What a model cannot read in a stored dataset, as one DataError line, from the dataset's manifest
    and the checkpoint's model_config, before the model is built or Ray starts: the pixels per image
    (and the image shape, for networks that read it), 8-bit pixels for an 8-bit likelihood, and inputs
    its likelihood is a probability of (`density`: log p(x) is estimated, not only z encoded).

    `state`: a checkpoint's contents (vae.models.model.read_checkpoint_state); `verb`: what the command does
    with the data (evaluate, score, embed), for the hints.
    """
    from vae.config import ModelConfig
    from vae.data.datasets import check_eight_bit_pixels, check_pixels

    model = ModelConfig(**state["model_config"])
    hint = f" ({verb} a dataset of the shape the model was trained on)"
    check_pixels(dataset_path, manifest, int(state["data_dim"]), hint=hint)
    trained_on = state.get("image_shape")
    reads_shape = model.architecture == "conv" or bool(model.network_specs)
    if trained_on and reads_shape and _channels_first(trained_on) != _channels_first(manifest["shape"]):
        shapes = ["x".join(str(s) for s in shape) for shape in (manifest["shape"], trained_on)]
        raise DataError(
            f"{dataset_path}: images are {shapes[0]} but the model's networks read {shapes[1]} images{hint}"
        )
    dataset = f"dataset '{manifest.get('name', Path(dataset_path).parent.name)}' at {dataset_path}"
    check_eight_bit_pixels(dataset, manifest, model, f"{verb} it on a dataset of 8-bit pixels")
    if model.eight_bit and binarize != "none":
        what = "dequantize" if model.dequantize else f"likelihood '{model.likelihood}'"
        raise DataError(
            f"--binarize {binarize}: model {what} reads the 8-bit pixels themselves; expected --binarize none"
        )
    if density and model.likelihood == "bernoulli" and binarize == "none":
        raise DataError(
            "--binarize none: model likelihood 'bernoulli' is a probability of binary pixels; "
            "expected --binarize threshold or dynamic"
        )
