"""Register small untrained models on the real test MLflow store, without a training run."""

from __future__ import annotations

from pathlib import Path

import torch

from vae.registry import runs, versions
from vae.config import DatasetConfig, ModelConfig, PipelineConfig, RegistryConfig
from vae.data.ingest import ingest
from vae.data.datasets import load_split, read_manifest
from vae.models.model import CHECKPOINT_FILE, build_model


def gate_config(model_name: str, margin: float = 0.0) -> PipelineConfig:
    return PipelineConfig(
        name=model_name,
        dataset=DatasetConfig(name="digits", source="sklearn:digits", validation_fraction=0.1),
        model=ModelConfig(latent_dim=2, hidden=(8,)),
        registry=RegistryConfig(model_name=model_name, promote_margin=margin),
    )


def save_checkpoint(directory: Path, model_config: ModelConfig, data_dim: int, seed: int) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model(model_config, data_dim)
    torch.save(
        {
            "model": model.state_dict(),
            "epoch": 1,
            "history": [],
            "model_config": model_config.model_dump(mode="json"),
            "data_dim": data_dim,
        },
        directory / CHECKPOINT_FILE,
    )
    return str(directory)


def register(
    config: PipelineConfig,
    nll: float,
    seed: int,
    workdir: Path,
    dataset: dict | None = None,
    evaluate_champion=None,
    uri: str | None = None,
    kind: str = "binary",
    k: int = 10,
    split: str = "test",
) -> versions.Registration:
    dataset = dataset or ingest(config.dataset).to_dict()
    manifest = read_manifest(dataset["path"])
    images, _ = load_split(dataset["path"], "test")
    run_id = runs.start_run(config, dataset, uri)
    checkpoint = save_checkpoint(workdir / f"ckpt-{seed}", config.model, 64, seed)
    evaluation = {"nll": nll, "nll_stderr": 0.1, "k": k, "split": split, "bits_per_dim_kind": kind}
    return versions.register_model(
        config,
        run_id,
        checkpoint,
        evaluation,
        dataset,
        manifest,
        images[:2],
        uri=uri,
        evaluate_champion=evaluate_champion,
    )


def registered_model(name: str, seed: int, workdir: Path) -> tuple[PipelineConfig, dict, versions.Registration]:
    """A gate_config model registered as the first (champion) version of `name` on the digits data."""
    config = gate_config(name)
    dataset = ingest(config.dataset).to_dict()
    return config, dataset, register(config, 30.0, seed=seed, workdir=workdir, dataset=dataset)
