"""Score a model on a dataset split: load, prepare inputs, estimate log p(x) locally or across Ray.

Glue between the pure estimators (vae.evaluate.estimators: one IS estimator and one AIS for every model of
the contract, vae.models.latent_model), the stored data (vae.data) and Ray tasks.
Every example draws its noise from its own seeded stream, so splitting the set across workers
gives the same numbers as one process.
"""

from __future__ import annotations

import os
import sys
import time
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae.config import EvaluationConfig
from vae.data.datasets import check_pixels, dataset_problem, load_split, read_manifest
from vae.data.inputs import check_model_inputs, prepare_inputs
from vae.errors import DataError
from vae.evaluate.estimators import LogLikelihoodEstimate, device_memory_budget, estimate_log_likelihood
from vae.models.model import Model, load_checkpoint, model_from_state, read_checkpoint_state


@dataclass(frozen=True)
class EvaluationSummary:
    """What the evaluation stage hands on: held-out NLL ± s.e. (nats), bits/dim, ELBO, gap, ESS."""

    nll: float
    nll_stderr: float
    bits_per_dim: float
    elbo: float
    elbo_gap: float  # log p̂(x) - ELBO ≈ KL(q(z|x) || p(z|x))
    ess: float  # mean effective sample size of the k importance weights
    k: int
    n: int
    split: str
    device: str = "cpu"
    per_example: str | None = None  # Parquet of per-example log p̂(x), ELBO, ESS
    # What bits_per_dim counts: 'binary' pixels, '8bit' subpixels, 'dequantized' (a bound on 8-bit), 'continuous'
    # (a density's nats / (D ln 2): not a discrete bits/dim). vae.evaluate.estimators.BITS_PER_DIM_MEANING says more.
    bits_per_dim_kind: str = "binary"
    active_units: int | None = None  # dimensions with Cov_x(E_q[z_d]) > 0.01 (Burda et al. 2016)
    latent_dim: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Scored:
    """The summary a user reads and the per-example estimate behind it."""

    summary: dict[str, Any]
    estimate: LogLikelihoodEstimate
    labels: np.ndarray | None


def load_inputs(dataset_path: str, split: str, data_dim: int, binarize: str, seed: int) -> tuple[torch.Tensor, Any]:
    """A split as model inputs (N, D); shape mismatches and empty splits are one-line errors."""
    manifest = read_manifest(dataset_path)
    images, labels = load_split(dataset_path, split)
    if images.shape[0] == 0:
        raise DataError(f"{dataset_path}: split '{split}' is empty (expected at least one image)")
    check_pixels(dataset_path, manifest, data_dim)
    # Dynamic binarisation is evaluated on one fixed draw, so NLLs are comparable across runs.
    generator = torch.Generator().manual_seed(seed)
    x = prepare_inputs(torch.from_numpy(np.array(images)), manifest["value_range"][1], binarize, generator=generator)
    return x, labels


def evaluation_device(config: EvaluationConfig) -> torch.device:
    """The GPU when asked for and present, else the CPU."""
    return torch.device("cuda") if config.use_gpu and torch.cuda.is_available() else torch.device("cpu")


PROGRESS_IMAGES = 512  # images per progress step (results do not depend on it: noise is per example)


def estimate_on_device(
    model: Model,
    x: torch.Tensor,
    config: EvaluationConfig,
    first_index: int = 0,
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LogLikelihoodEstimate:
    """Estimate on `device`: on a GPU the batch and decoder chunks are sized from its free memory.

    Every model of the contract is estimated by the one IS estimator (vae.evaluate.estimators), from its own
    log-weights, with the same per-example noise streams (block_noise by global index).

    With `progress`, the images go in steps of PROGRESS_IMAGES (identical numbers: an example's
    noise depends only on its index) and progress(done, total) is called after each step.
    """
    device = device or evaluation_device(config)
    budget = device_memory_budget(device, config.max_memory_mb * 2**20)
    model = model.to(device)
    estimate = estimate_log_likelihood
    step = x.shape[0] if progress is None or device.type == "cuda" else PROGRESS_IMAGES
    parts = []
    for start in range(0, x.shape[0], step):
        parts.append(estimate(
            model, x[start : start + step].to(device), config.k,
            batch_size=None if device.type == "cuda" else config.batch_size, max_memory_bytes=budget,
            seed=config.seed, first_index=first_index + start, tf32=config.tf32 and device.type == "cuda",
        ))  # fmt: skip
        if progress is not None:
            progress(min(start + step, x.shape[0]), x.shape[0])
    if len(parts) == 1:
        return parts[0]
    return LogLikelihoodEstimate(
        log_px=torch.cat([p.log_px for p in parts]), elbo=torch.cat([p.elbo for p in parts]),
        ess=torch.cat([p.ess for p in parts]), k=config.k,
    )  # fmt: skip


class ProgressLine:
    """progress(done, total) → 'evaluating: 2048/10000 images, 41 images/s, ETA 3 min' on stderr,
    once the estimate has run for `after` seconds (short evaluations stay quiet)."""

    def __init__(self, after: float = 5.0, stream=None):
        self.started, self.after, self.stream = time.perf_counter(), after, stream or sys.stderr
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.started
        if elapsed < self.after and not self.shown:
            return
        self.shown = True
        rate = done / max(elapsed, 1e-9)
        eta = (total - done) / max(rate, 1e-9)
        when = f"ETA {eta / 60:.0f} min" if eta >= 120 else f"ETA {eta:.0f} s"
        print(f"evaluating: {done}/{total} images, {rate:.0f} images/s, {when if done < total else 'done'}",
              file=self.stream, flush=True)  # fmt: skip


def _estimate_shard(state: dict[str, Any], x: torch.Tensor, config: EvaluationConfig, first_index: int):
    """Runs in a Ray task: rebuild the model, estimate one contiguous shard."""
    estimate = estimate_on_device(model_from_state(state), x, config, first_index)
    return estimate.log_px, estimate.elbo, estimate.ess


def estimate_across_workers(
    model: Model, state: dict[str, Any], x: torch.Tensor, config: EvaluationConfig
) -> LogLikelihoodEstimate:
    """Split x into contiguous shards, one Ray task each (a GPU each when asked), and concatenate in order."""
    import ray

    from vae.cluster import ensure_ray, has_gpu

    ensure_ray(config.workers)
    gpus = 1 if config.use_gpu and has_gpu() else 0
    remote = ray.remote(num_cpus=1, num_gpus=gpus)(_estimate_shard)
    state_ref = ray.put(
        {
            "model": model.state_dict(),
            "model_config": state["model_config"],
            "data_dim": state["data_dim"],
            "image_shape": state.get("image_shape"),
            "code_dirs": state.get("code_dirs", []),  # users' network modules (vae.user_code)
        }
    )
    bounds = np.linspace(0, x.shape[0], config.workers + 1).astype(int)
    futures = [
        remote.remote(state_ref, x[lo:hi], config, int(lo)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo
    ]
    parts = ray.get(futures)
    return LogLikelihoodEstimate(
        log_px=torch.cat([p[0] for p in parts]),
        elbo=torch.cat([p[1] for p in parts]),
        ess=torch.cat([p[2] for p in parts]),
        k=config.k,
    )


def score_checkpoint(
    checkpoint_dir: str | Path,
    dataset_path: str,
    config: EvaluationConfig,
    binarize: str,
    progress: Callable[[int, int], None] | None = None,
) -> Scored:
    """Estimate log p(x) on the configured split with k importance samples per image; what the model
    cannot read in the dataset is one line before the model is built (vae.data.inputs.check_model_inputs)."""
    if config.k < 1:
        raise DataError(f"k = {config.k}: expected k >= 1 importance samples")
    state = read_checkpoint_state(checkpoint_dir)
    check_model_inputs(dataset_path, read_manifest(dataset_path), state, binarize, "evaluate", density=True)
    model = model_from_state(state)
    x, labels = load_inputs(dataset_path, config.split, model.data_dim, binarize, config.seed)
    if config.workers > 1:
        estimate = estimate_across_workers(model, state, x, config)
        device = "ray"
    else:
        device = evaluation_device(config)
        estimate = estimate_on_device(model, x, config, device=device, progress=progress)
    summary = {
        **estimate.summary(model.data_dim, model.bits_per_dim_kind),
        "split": config.split,
        "device": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else str(device),
        "active_units": active_units(model, x),
        "latent_dim": model.latent_dim,
    }
    return Scored(summary=summary, estimate=estimate, labels=labels)


ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def active_units(model: Model, x: torch.Tensor, batch_size: int = 4096) -> int:
    """Latent dimensions the model uses: A_u = #{d : Cov_x(E_q(z|x)[z_d]) > 0.01}.

    Burda, Grosse & Salakhutdinov (2016), Sec. 5.2. x: (N, D) → an int in [0, L]. For a two-level
    model these are the units of the first level z1 (encode() is q(z1|x); latent_dim is L1): the
    level the decoder reads. The top level z2's E_q[z2] would need z1 sampled, so it is not counted.
    """
    model.eval()
    means = torch.cat(
        [
            model.encode(x[i : i + batch_size].to(next(model.parameters()).device))[0].cpu()
            for i in range(0, x.shape[0], batch_size)
        ]
    )  # (N, L)
    if means.shape[0] < 2:
        return 0
    return int((means.double().var(0, unbiased=True) > ACTIVE_UNIT_THRESHOLD).sum())


def write_per_example(scored: Scored, path: str | Path) -> Path:
    """Per-example log p̂(x), ELBO and ESS as Parquet, written to a temporary file then renamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {
        "row": pa.array(np.arange(scored.estimate.n), type=pa.int64()),
        "log_px": pa.array(scored.estimate.log_px.numpy()),
        "elbo": pa.array(scored.estimate.elbo.numpy()),
        "ess": pa.array(scored.estimate.ess.numpy()),
    }
    if scored.labels is not None:
        columns["label"] = pa.array(np.asarray(scored.labels), type=pa.int64())
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(handle)
    try:
        pq.write_table(pa.table(columns), temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def resolve_dataset(name_or_path: str, root: Path | None = None) -> str:
    """A dataset directory: a path holding manifest.json, or the newest version of a named dataset."""
    import json

    from vae.paths import datasets_dir

    candidate = Path(name_or_path)
    if (candidate / "manifest.json").exists():
        found = candidate
    else:
        base = (root or datasets_dir()) / name_or_path
        # Dot-folders are ingest's staging (one a killed ingest left behind is not a version).
        versions = [m for m in sorted(base.glob("*/manifest.json")) if not m.parent.name.startswith(".")]
        if not versions:
            raise DataError(
                f"dataset '{name_or_path}': not found under {base.parent} (run `vae ingest` first, "
                "or pass a dataset directory)"
            )

        def created(manifest: Path) -> tuple[str, float]:
            try:
                stamp = json.loads(manifest.read_text()).get("created_at", "")
            except (OSError, ValueError):
                stamp = ""  # a corrupt manifest: the newest by time may still be it, and says so below
            return str(stamp), manifest.stat().st_mtime

        found = max(versions, key=created).parent
    problem = dataset_problem(found)
    if problem:
        raise DataError(f"{found}: damaged dataset version: {problem} (run `vae ingest` again to rewrite it)")
    return str(found)


def ais_cross_check(
    checkpoint_dir: str | Path,
    dataset_path: str,
    config: EvaluationConfig,
    binarize: str,
    scored: Scored,
    images: int,
    steps: int,
) -> dict[str, float]:
    """AIS (HMC) on the first `images` examples against the IS estimates of the same examples."""
    from vae.evaluate.estimators import annealed_importance_sampling  # any model: VAE or vae.models.families

    model, _ = load_checkpoint(checkpoint_dir)
    x, _ = load_inputs(dataset_path, config.split, model.data_dim, binarize, config.seed)
    n = min(images, x.shape[0])
    ais = annealed_importance_sampling(model, x[:n], steps=steps, seed=config.seed)
    difference = ais.log_px - scored.estimate.log_px[:n]
    return {
        "n": n,
        "steps": steps,
        "ais_log_px": ais.mean_log_px,
        "is_log_px": float(scored.estimate.log_px[:n].mean()),
        "difference": float(difference.mean()),
        "difference_stderr": float(difference.std() / n**0.5) if n > 1 else float("nan"),
        "hmc_acceptance": ais.acceptance,
    }
