"""What a training's data and model are refused for before an MLflow run or Ray starts, each with one
line: 8-bit pixels for an 8-bit likelihood, validation rows for what ranks by validation ELBO, users'
networks' output shapes on a dummy batch.
"""

from __future__ import annotations

import math
from typing import Any

from vae.config import PipelineConfig
from vae.data.datasets import DatasetRef, check_eight_bit_pixels, read_manifest
from vae.errors import VAEError
from vae.models.model import check_networks


def check_pixel_range(config: PipelineConfig, dataset: DatasetRef, manifest: dict[str, Any] | None = None) -> None:
    """An 8-bit likelihood needs a dataset of 8-bit pixels: one line before any worker starts.

    The config alone cannot know (digits hold 0..16, `dataset.max_value` may be unset); the manifest can.
    """
    check_eight_bit_pixels(
        f"dataset '{dataset.name}'",
        manifest or read_manifest(dataset.path),
        config.model,
        "use an 8-bit source or a bernoulli/gaussian likelihood",
    )


def check_validation_rows(dataset: DatasetRef, needed_by: str | None, manifest: dict[str, Any] | None = None) -> None:
    """What ranks epochs or trials by validation ELBO (`needed_by`) needs validation rows: without them
    the ELBO is NaN, no epoch improves, and early stopping fires after `patience` epochs whatever."""
    if needed_by and not int((manifest or read_manifest(dataset.path))["rows"].get("validation") or 0):
        raise VAEError(
            f"dataset '{dataset.name}' has no validation rows, and {needed_by} ranks by validation ELBO: "
            "set dataset.validation_fraction above 0"
        )


def check_inputs(config: PipelineConfig, dataset: DatasetRef) -> dict[str, Any]:
    """What the data and the model can be refused for before an MLflow run or Ray starts, each one
    line: 8-bit pixels for an 8-bit likelihood, validation rows for early stopping, users' networks'
    output shapes on a dummy batch. Returns the dataset's manifest."""
    manifest = read_manifest(dataset.path)
    check_pixel_range(config, dataset, manifest)
    needed_by = config.training.early_stopping_patience and "training.early_stopping_patience"
    check_validation_rows(dataset, needed_by, manifest)
    check_networks(config.model, int(math.prod(manifest["shape"])), tuple(manifest["shape"]))
    return manifest
