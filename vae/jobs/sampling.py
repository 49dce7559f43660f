"""Samples from a registered model's prior: z ~ p(z) (N(0, I), a VampPrior, or z2 → z1 for two levels),
then E[x|z] and x ~ p(x|z), seeded.

Written as a PNG grid of the pixel means or as .npz arrays (`z`, `x_mean` and `x_sample`, on the
inputs' [0, 1] scale, shaped like the images), atomically: the same model, n and seed give the
same file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae.jobs.batch import atomic_output, check_output, job_output, load_model
from vae.errors import DataError

FORMATS = ("png", "npz")


@dataclass(frozen=True)
class SampleResult:
    """What a sampling job wrote."""

    path: str
    format: str
    n: int
    seed: int
    shape: list[int]
    model_uri: str
    model_name: str | None
    model_version: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def sample_prior(model, n: int, seed: int) -> dict[str, np.ndarray]:
    """z ~ p(z) (N, L), the decoder's pixel means E[x|z] (N, D) and a draw x ~ p(x|z) (N, D), on the CPU.

    z is the latent the decoder reads (z1 of a two-level model), drawn through the model's own prior.
    """
    generator = torch.Generator().manual_seed(seed)
    model = model.cpu()
    z = model.decoder_latent(model.sample_prior(n, generator))  # (N, L)
    return {
        "z": z.numpy(),
        "x_mean": model.mean_image(z).clamp(0.0, 1.0).numpy(),  # (N, D)
        "x_sample": model.sample_image(z, generator).numpy(),  # (N, D): binary for Bernoulli
    }


def output_format(out: str | Path) -> str:
    """The format a path's suffix names: .png or .npz."""
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise DataError(f"{out}: expected a .png (image grid) or .npz (arrays) output path")
    return suffix


def tile(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W[, C]) images → one (rows (H+1) - 1, columns (W+1) - 1[, C]) grid with white lines between."""
    n, h, w = images.shape[:3]
    rows = -(-n // columns)
    cells = np.ones((rows * columns, h + 1, w + 1, *images.shape[3:]), dtype=np.float32)
    cells[:n, :h, :w] = images
    grid = cells.reshape(rows, columns, h + 1, w + 1, *images.shape[3:]).swapaxes(1, 2)  # (R, H+1, cols, W+1[, C])
    return grid.reshape(rows * (h + 1), columns * (w + 1), *images.shape[3:])[:-1, :-1]


def write_png(x_mean: np.ndarray, shape: tuple[int, ...], path: str) -> None:
    """The pixel means as a square-ish grid, each image scaled up to at least 32 pixels high."""
    import matplotlib.image

    channels, h, w = (1, *shape) if len(shape) == 2 else shape  # (C, H, W)
    images = x_mean.reshape(-1, channels, h, w).transpose(0, 2, 3, 1)  # (N, H, W, C)
    grid = tile(images if channels > 1 else images[..., 0], math.ceil(math.sqrt(len(images))))
    scale = max(1, -(-32 // h))
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    matplotlib.image.imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png", metadata={"Software": None})


def image_shape(shape: tuple[int, ...] | None, data_dim: int) -> tuple[int, ...]:
    """The registered image shape, or a square for a bare checkpoint (a row of pixels if not square)."""
    if shape and math.prod(shape) == data_dim:
        return tuple(shape)
    side = math.isqrt(data_dim)
    return (side, side) if side * side == data_dim else (1, data_dim)


def sample(model_uri: str, out: str | Path, n: int = 64, seed: int = 0, overwrite: bool = False) -> SampleResult:
    """Resolve `model_uri` (aliases included), draw n seeded samples from the prior, write `out` atomically."""
    from vae.models.model import model_from_state

    fmt = output_format(out)
    check_output(out, overwrite, "an image or .npz file")  # before any download
    resolved = load_model(model_uri)
    model = model_from_state(resolved.state)
    shape = image_shape(resolved.shape, model.data_dim)
    arrays = sample_prior(model, n, seed)
    with atomic_output(out) as temporary:
        if fmt == "png":
            write_png(arrays["x_mean"], shape, temporary)
        else:
            with open(temporary, "wb") as handle:
                np.savez(handle, **{k: v.reshape(n, *shape) if k != "z" else v for k, v in arrays.items()})
    return SampleResult(
        path=str(out),
        format=fmt,
        n=n,
        seed=seed,
        shape=list(shape),
        model_uri=model_uri,
        model_name=resolved.name,
        model_version=resolved.version,
    )


def default_output(model_name: str | None, model_version: str | None, n: int, seed: int, fmt: str) -> Path:
    """Where the scheduled job writes: VAE_HOME/samples/MODEL/MODEL-vVERSION-nN-seedS.FORMAT."""
    from vae.paths import vae_home

    name = model_name or "model"
    return job_output(vae_home() / "samples", name, f"{name}-v{model_version or 'x'}-n{n}-seed{seed}.{fmt}")
