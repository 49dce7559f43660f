"""Stage 4, registration: the run's record (evaluation, dataset manifest, plots), then the model
through the champion gate, re-scoring the champion on this run's data with this run's settings.

Plain library code over vae.registry.runs and vae.registry.versions (MLflow); flows/register.py calls `register_run`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from vae.evaluate import evaluation
from vae.registry import plots
from vae.registry import runs, versions
from vae.config import PipelineConfig
from vae.data.datasets import load_split, read_manifest
from vae.models.model import VAE, load_checkpoint


TRAVERSAL_STEPS = 9  # images per traversal or interpolation row


@torch.no_grad()
def latent_traversal(model: VAE, means: torch.Tensor, rows: int = 8) -> tuple[torch.Tensor, list[int]]:
    """Decoder means with one latent dimension swept across -3..3 (prior s.d. 1), the others at mu(x_0).

    The `rows` most active dimensions (largest Var_x mu_d(x)) first. means: (N, L) → ((R*S, D), dims)
    """
    order = torch.argsort(means.var(0), descending=True)[:rows].tolist() if means.shape[0] > 1 else [0]
    values = torch.linspace(-3.0, 3.0, TRAVERSAL_STEPS)  # (S,)
    z = means[0].repeat(len(order), TRAVERSAL_STEPS, 1)  # (R, S, L)
    for row, dim in enumerate(order):
        z[row, :, dim] = values
    return model.mean_image(z.reshape(-1, means.shape[1])), order  # (R*S, D)


@torch.no_grad()
def latent_interpolation(model: VAE, means: torch.Tensor, pairs: int = 4) -> torch.Tensor:
    """Decoder means along straight lines between the posterior means of test images 2i and 2i+1.

    means: (N, L) → (P*S, D)
    """
    pairs = max(1, min(pairs, means.shape[0] // 2))
    a, b = means[0 : 2 * pairs : 2], means[1 : 2 * pairs : 2]  # (P, L) each
    if b.shape[0] < a.shape[0]:  # a single test image: interpolate to the prior mean
        b = torch.zeros_like(a)
    t = torch.linspace(0.0, 1.0, TRAVERSAL_STEPS)[None, :, None]  # (1, S, 1)
    z = (1 - t) * a[:, None, :] + t * b[:, None, :]  # (P, S, L)
    return model.mean_image(z.reshape(-1, means.shape[1]))  # (P*S, D)


def _figures(model: VAE, x: torch.Tensor, labels, manifest: dict, history: list[dict], folder: Path) -> list[Path]:
    """Reconstructions, samples, the latent scatter and the ELBO curve as PNGs in `folder`."""
    with torch.no_grad():
        means, _ = model.encode(x)  # (N, L)
        reconstructions = model.mean_image(means[:16])  # (16, D)
        prior = model.sample_prior(64, torch.Generator().manual_seed(0))  # p(z): N(0, I), VampPrior or z2 → z1
        samples = model.mean_image(model.decoder_latent(prior))
    shape = tuple(manifest["shape"][-2:]) if len(manifest["shape"]) >= 2 else (1, model.data_dim)
    figures = plots.plot_image_grids(x[:16].numpy(), reconstructions.numpy(), samples.numpy(), shape, folder)
    figures.append(plots.plot_latent_scatter(means.numpy(), labels, folder / "latent_scatter.png"))
    traversal, dims = latent_traversal(model, means)
    title = f"latent traversal: rows sweep dimensions {dims} of mu(x_0) across -3..3 (most active first)"
    figures.append(plots.plot_grid(traversal.numpy(), shape, TRAVERSAL_STEPS, title, folder / "latent_traversal.png"))
    strip = latent_interpolation(model, means)
    title = "interpolation: decoder means along (1-t) mu(x_a) + t mu(x_b), t = 0..1, one pair per row"
    figures.append(plots.plot_grid(strip.numpy(), shape, TRAVERSAL_STEPS, title, folder / "interpolation.png"))
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
) -> versions.Registration:
    """Log the evaluation summary, manifest and plots to the run, then register through the gate."""
    manifest = read_manifest(dataset["path"])
    split = summary["split"]
    summary = {**summary, "dataset_name": dataset.get("name")}
    runs.log_metrics(
        run_id,
        {f"{split}_{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        uri,
    )
    images, labels = load_split(dataset["path"], split)
    model, state = load_checkpoint(checkpoint_dir)
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
        runs.log_artifacts(run_id, files, uri)

    def evaluate_champion(model_uri: str) -> float:
        """The champion's NLL on this run's dataset version, with this run's evaluation settings."""
        directory, metadata = versions.download_model(model_uri, uri)
        scored = evaluation.score_checkpoint(directory, dataset["path"], config.evaluation, metadata["binarize"])
        return scored.summary["nll"]

    compared = versions.champion_version(config.registry.model_name, uri)  # what the gate will meet
    registration = versions.register_model(
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
    versions.describe_version(
        registration.model_name,
        registration.version,
        card_tags(summary, history, registration, compared, model_epoch=int(state["epoch"])),
        lambda tags: model_card(config, registration, tags, manifest),
        uri,
    )
    runs.end_run(run_id, "FINISHED", uri)
    return registration


def card_tags(
    summary: dict[str, Any],
    history: list[dict],
    registration: versions.Registration,
    compared: str | None,
    model_epoch: int | None = None,
) -> dict[str, str]:
    """What the card states beyond the gate's tags, as version tags too (searchable, and the card's source).

    `model_epoch` is the epoch of the registered checkpoint: under early stopping, the best one, not
    the last epoch trained (tagged `model_epoch` only when they differ).
    """
    last = history[-1] if history else {}
    trained = int(last.get("epoch", len(history)))
    minutes = last.get("training_minutes", sum(h.get("epoch_seconds", 0.0) for h in history) / 60)
    if compared is None or compared == str(registration.version):
        compared_with = "none (first version)" if compared is None else "none (this version was already champion)"
    else:
        nll = registration.previous_champion_nll
        compared_with = f"version {compared}" + (
            f" (test NLL {nll:.3f} nats on this dataset)" if nll is not None else ""
        )
    tags = {
        "dataset_name": str(summary.get("dataset_name") or ""),
        "split": str(summary["split"]),
        "n": str(summary.get("n", "")),
        "elbo": f"{summary['elbo']:.3f}",
        "elbo_gap": f"{summary['elbo_gap']:.3f}",
        "epochs": str(trained),
        "model_epoch": str(model_epoch) if model_epoch is not None and model_epoch != trained else "",
        "training_minutes": f"{minutes:.2f}",
        "evaluation_device": str(summary.get("device", "cpu")),
        "compared_with": compared_with,
    }
    if summary.get("active_units") is not None:
        tags["active_units"] = f"{summary['active_units']} of {summary.get('latent_dim') or '?'}"
    return {key: value for key, value in tags.items() if value}


def _prior_text(model) -> str:
    """The card's words for p(z) and the latent layers."""
    if model.levels == 2:
        return f"two stochastic layers z1 ({model.latent_dim}) and z2 ({model.latent_dim2}), p(z2) = N(0, I)"
    if model.prior == "vampprior":
        return f"a VampPrior p(z) = 1/K sum_k q(z|u_k) over K = {model.pseudo_inputs} learned pseudo-inputs"
    return "p(z) = N(0, I)"


def model_card(
    config: PipelineConfig, registration: versions.Registration, tags: dict[str, str], manifest: dict
) -> str:
    """The version's Markdown description: data, model, training, evaluation, gate, use and limits.

    Every number comes from the version's tags, so the card and the tags cannot disagree.
    """
    model, training, data = config.model, config.training, config.dataset
    objective = "ELBO" if training.objective == "elbo" else f"IWAE bound, k={training.iwae_k} (Burda et al. 2016)"
    body = "mlp" if model.architecture == "mlp" else f"conv, channels {list(model.channels)}"
    if model.network_specs:  # users' own networks, by import path
        own = [
            f"{side} `{spec.factory}`"
            for side, spec in (("encoder", model.encoder), ("decoder", model.decoder))
            if spec
        ]
        body = f"{body}; own {', '.join(own)}"
    hardware = f"{training.workers} Ray Train worker(s), {'GPU (NCCL)' if training.use_gpu else 'CPU (gloo)'}"
    shape = "x".join(str(s) for s in manifest.get("shape", []))
    rows = manifest.get("rows", {})
    lines = [
        f"# {registration.model_name}, version {registration.version}",
        "",
        f"A variational autoencoder (Kingma & Welling 2014): q(z|x) and p(x|z) by neural nets, {_prior_text(model)}.",
        "",
        "| | |",
        "|---|---|",
        f"| dataset | {data.name}@{tags['dataset_version']} (content hash `{tags['dataset_hash']}`) |",
        f"| source | {data.redacted_source} |",
        f"| rows | train {rows.get('train', '?')}, validation {rows.get('validation', '?')}, "
        f"test {rows.get('test', '?')} images of {shape}, inputs binarised: {data.binarize} |",
        f"| model | {body}, hidden {list(model.hidden)}, {'gated' if model.body == 'gated' else model.activation}, "
        f"{model.latent_dim} latent dimensions, "
        f"{model.likelihood} likelihood |",
        f"| objective | {objective}, learning rate {training.learning_rate:g}, batch {training.batch_size} per worker |",
        f"| training | {tags.get('epochs', '?')} epochs in {tags.get('training_minutes', '?')} min"
        + (
            f"; this model is epoch {tags['model_epoch']}'s checkpoint (best validation ELBO)"
            if "model_epoch" in tags
            else ""
        )
        + " |",
        f"| hardware | training: {hardware}; evaluation: {tags.get('evaluation_device', '?')} |",
        f"| test NLL | {tags['test_nll_pm']} nats (± s.e.) at k={tags['k']} importance samples, "
        f"{tags.get('n', '?')} {tags.get('split', 'test')} images |",
        f"| ELBO gap | {tags.get('elbo_gap', '?')} nats (log p̂(x) − ELBO ≈ KL(q(z|x) ‖ p(z|x))) |",
    ]
    if "active_units" in tags:
        lines.append(f"| active units | {tags['active_units']} (Cov_x E_q[z_d] > 0.01, Burda et al. 2016) |")
    lines += [
        f"| champion gate | {tags.get('gate', '?')}; compared with {tags.get('compared_with', '?')}, "
        f"margin {config.registry.promote_margin:g} nats |",
        f"| code | {tags.get('code_version', '?')}, MLflow run `{registration.run_id}` |",
        "",
        "## Intended use",
        "",
        f"Embeddings (`encode`), reconstructions, samples and density scores (log p̂(x)) of images like the "
        f"{data.name} data it was trained on: exploring the data, features for downstream models, and a "
        "baseline anomaly score.",
        "",
        "## Limits",
        "",
        "- log p̂(x) is an importance-sampled estimate: a stochastic lower bound that tightens with k. Compare "
        "scores at the same k and seed.",
        "- A likelihood is no out-of-distribution detector by itself: VAEs can assign higher likelihood to other "
        "datasets than to their own (Nalisnick et al. 2019). Calibrate a threshold on held-out data.",
        f"- Trained on {rows.get('train', '?')} images of one dataset version; other sizes, scales or binarisations "
        "of the pixels are outside what it has seen.",
    ]
    return "\n".join(lines) + "\n"
