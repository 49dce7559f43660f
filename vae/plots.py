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
    axes.set_xlabel("epoch")
    axes.set_ylabel("ELBO (nats per image)")
    axes.set_title("ELBO per epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)
