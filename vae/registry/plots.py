"""Plots logged as run artifacts (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot_elbo_curve(history: list[dict[str, float]], path: str | Path) -> Path:
    """Train and validation ELBO per epoch, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(h["epoch"]) for h in history]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.plot(epochs, [h["train_elbo"] for h in history], marker="o", label="train ELBO")
    axes.plot(epochs, [h["validation_elbo"] for h in history], marker="s", label="validation ELBO")
    iwae = [(int(h["epoch"]), h["validation_iwae"]) for h in history if "validation_iwae" in h]
    if iwae:  # only the epochs that had training.validation_k > 1 (a resume may have changed it)
        axes.plot(*zip(*iwae), marker="^", label="validation IWAE bound L_k")
    axes.set_xlabel("epoch")
    axes.set_ylabel("ELBO (nats per image)")
    axes.set_title("ELBO per epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def _grid(images, shape: tuple[int, ...], columns: int):
    """Tile (N, C*H*W) images in [0, 1] into one (rows*H, columns*W) array, or (..., 3) for colour.

    shape is (H, W) or (C, H, W); images are flattened channel-major, and C = D / (H*W) either way, so
    colour images tiled with their (H, W) alone come out in colour too. One channel is grayscale, three RGB.
    """
    import numpy as np

    h, w = shape[-2:]
    n = images.shape[0]
    channels = images[0].size // (h * w)
    if channels not in (1, 3) or channels * h * w != images[0].size:
        raise ValueError(f"images of {images[0].size} values are not 1 or 3 channels of {h}x{w}")
    rows = -(-n // columns)
    canvas = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, channels))
    for i in range(n):
        r, c = divmod(i, columns)
        image = np.clip(np.asarray(images[i], dtype=np.float64), 0.0, 1.0).reshape(channels, h, w)  # (C, H, W)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image.transpose(1, 2, 0)  # (H, W, C)
    return canvas[..., 0] if channels == 1 else canvas


def plot_image_grids(originals, reconstructions, samples, shape: tuple[int, ...], directory: str | Path) -> list[Path]:
    """Reconstruction grid (originals above their reconstructions) and a grid of prior samples, in colour
    for 3-channel images. Images (N, D) on the inputs' [0, 1] scale; shape (H, W) or (C, H, W)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    columns = min(16, originals.shape[0])
    pairs = np.concatenate([originals[:columns], reconstructions[:columns]])
    for name, images, title in (
        ("reconstructions.png", pairs, "test images (top) and reconstructions E[x|z=mu(x)] (bottom)"),
        ("samples.png", samples, "samples: decoder mean at z ~ N(0, I)"),
    ):
        figure, axes = plt.subplots(
            figsize=(8, 8 * (2 if name == "reconstructions.png" else 4) / columns + 0.6), dpi=100
        )
        axes.imshow(_grid(images, shape, columns), cmap="gray", vmin=0, vmax=1)  # cmap: grayscale only
        axes.set_axis_off()
        axes.set_title(title, fontsize=9)
        figure.tight_layout()
        path = Path(directory) / name
        figure.savefig(path)
        plt.close(figure)
        paths.append(path)
    return paths


def plot_latent_scatter(means, labels, path: str | Path) -> Path:
    """q(z|x) means in 2-D (the first two principal components when L > 2), coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    points = np.asarray(means, dtype=np.float64)
    axis_names = ("z1", "z2")
    if points.shape[1] > 2:
        centred = points - points.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        points, axis_names = centred @ vt[:2].T, ("PC1 of mu(x)", "PC2 of mu(x)")
    elif points.shape[1] == 1:
        points = np.concatenate([points, np.zeros_like(points)], axis=1)
    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    scatter = axes.scatter(
        points[:, 0], points[:, 1], c=labels if labels is not None else None, cmap="tab10", s=6, alpha=0.8
    )
    if labels is not None:
        figure.colorbar(scatter, ax=axes, label="label")
    axes.set_xlabel(axis_names[0])
    axes.set_ylabel(axis_names[1])
    axes.set_title("latent means of test images")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def plot_grid(images, shape: tuple[int, ...], columns: int, title: str, path: str | Path) -> Path:
    """One grid of images (N, D) on the inputs' [0, 1] scale, `columns` per row, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-images.shape[0] // columns)
    figure, axes = plt.subplots(figsize=(8, 8 * rows / columns + 0.6), dpi=100)
    axes.imshow(_grid(images, shape, columns), cmap="gray", vmin=0, vmax=1)  # cmap: grayscale only
    axes.set_axis_off()
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)
