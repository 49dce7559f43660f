"""Stage 4, registration: the run's record (evaluation, dataset manifest, plots), then the model
through the champion gate, re-scoring the champion on this run's data with this run's settings.

Plain library code over vae.registry (MLflow); flows/register.py calls `register_run`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from vae import evaluation, plots, registry
from vae.config import PipelineConfig
from vae.datasets import load_split, read_manifest
from vae.model import VAE, load_checkpoint


def _figures(model: VAE, x: torch.Tensor, labels, manifest: dict, history: list[dict], folder: Path) -> list[Path]:
    """Reconstructions, samples, the latent scatter and the ELBO curve as PNGs in `folder`."""
    with torch.no_grad():
        means, _ = model.encode(x)  # (N, L)
        reconstructions = model.mean_image(means[:16])  # (16, D)
        samples = model.mean_image(torch.randn((64, model.latent_dim), generator=torch.Generator().manual_seed(0)))
    shape = tuple(manifest["shape"][-2:]) if len(manifest["shape"]) >= 2 else (1, model.data_dim)
    figures = plots.plot_image_grids(x[:16].numpy(), reconstructions.numpy(), samples.numpy(), shape, folder)
    figures.append(plots.plot_latent_scatter(means.numpy(), labels, folder / "latent_scatter.png"))
    if history:
        figures.append(plots.plot_elbo_curve(history, folder / "elbo_curve.png"))
    return figures


def register_run(
    config: PipelineConfig,
    run_id: str,
    checkpoint_dir: str,
    summary: dict[str, Any],
    dataset: dict[str, str],
    history: list[dict[str, float]],
    uri: str | None = None,
) -> registry.Registration:
    """Log the evaluation summary, manifest and plots to the run, then register through the gate."""
    manifest = read_manifest(dataset["path"])
    split = summary["split"]
    registry.log_metrics(
        run_id,
        {f"{split}_{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        uri,
    )
    images, labels = load_split(dataset["path"], split)
    model, _ = load_checkpoint(checkpoint_dir)
    x, _ = evaluation.load_inputs(
        dataset["path"], split, model.data_dim, config.dataset.binarize, config.evaluation.seed
    )
    with tempfile.TemporaryDirectory() as staging:
        staged = Path(staging)
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (staged / "evaluation.json").write_text(json.dumps(summary, indent=2))
        files = [(staged / "manifest.json", "dataset"), (staged / "evaluation.json", "evaluation")]
        if summary.get("per_example") and Path(summary["per_example"]).exists():
            files.append((summary["per_example"], "evaluation"))
        files += [(figure, "plots") for figure in _figures(model, x, labels, manifest, history, staged)]
        registry.log_artifacts(run_id, files, uri)

    def evaluate_champion(model_uri: str) -> float:
        """The champion's NLL on this run's dataset version, with this run's evaluation settings."""
        directory, metadata = registry.download_model(model_uri, uri)
        scored = evaluation.score_checkpoint(directory, dataset["path"], config.evaluation, metadata["binarize"])
        return scored.summary["nll"]

    registration = registry.register_model(
        config,
        run_id,
        checkpoint_dir,
        summary,
        dataset,
        manifest,
        images[:4],
        uri=uri,
        evaluate_champion=evaluate_champion,
    )
    registry.end_run(run_id, "FINISHED", uri)
    return registration
