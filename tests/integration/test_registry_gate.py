"""The champion gate on a real sqlite MLflow registry: `champion` moves only to a better NLL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from vae import registry
from vae.config import DatasetConfig, ModelConfig, PipelineConfig, RegistryConfig, tracking_uri
from vae.data import ingest, load_split, read_manifest
from vae.model import CHECKPOINT_FILE, build_model

pytestmark = pytest.mark.integration


def _checkpoint(directory, model_config: ModelConfig, data_dim: int, seed: int) -> str:
    torch.manual_seed(seed)
    model = build_model(model_config, data_dim)
    torch.save({"model": model.state_dict(), "epoch": 1, "history": [],
                "model_config": model_config.model_dump(mode="json"), "data_dim": data_dim},
               directory / CHECKPOINT_FILE)
    return str(directory)


def test_champion_moves_only_when_nll_beats_it_by_the_margin(tmp_path):
    config = PipelineConfig(
        name="gate",
        dataset=DatasetConfig(name="digits", source="sklearn:digits"),
        model=ModelConfig(latent_dim=2, hidden=(8,)),
        registry=RegistryConfig(model_name="vae-gate", promote_margin=0.5),
    )
    dataset = ingest(config.dataset).to_dict()
    manifest = read_manifest(dataset["path"])
    images, _ = load_split(dataset["path"], "test")
    client = MlflowClient(tracking_uri())

    def register(nll: float, seed: int):
        run_id = registry.start_run(config, dataset)
        checkpoint = _checkpoint(tmp_path, config.model, 64, seed)
        evaluation = {"nll": nll, "nll_stderr": 0.1, "k": 10, "split": "test"}
        return registry.register_model(config, run_id, checkpoint, evaluation, dataset, manifest, images[:2])

    def champion() -> str:
        return str(client.get_model_version_by_alias("vae-gate", "champion").version)

    first = register(30.0, seed=0)
    assert (first.version, first.champion, champion()) == (1, True, "1")
    worse = register(31.0, seed=1)
    assert (worse.champion, champion()) == (False, "1")
    within_margin = register(29.8, seed=2)  # better, but not by the 0.5-nat margin
    assert (within_margin.champion, champion()) == (False, "1")
    better = register(29.0, seed=3)
    assert (better.champion, champion(), better.previous_champion_nll) == (True, "4", 30.0)
    assert str(client.get_model_version_by_alias("vae-gate", "challenger").version) == "4"

    # The champion's pyfunc is the one registered last with a better NLL: its weights are seed 3's.
    import mlflow.pyfunc

    out = mlflow.pyfunc.load_model("models:/vae-gate@champion").predict(images[:3].astype(np.float32))
    torch.manual_seed(3)
    reference = build_model(config.model, 64).eval()
    x = (torch.from_numpy(images[:3].astype(np.float32)) / 16.0 > 0.5).float()
    with torch.no_grad():
        mean, _ = reference.encode(x)
    np.testing.assert_allclose(out["z_mean"], mean.numpy(), rtol=1e-5, atol=1e-6)


def test_unknown_model_uri_is_one_line():
    from vae.errors import RegistryError

    with pytest.raises(RegistryError, match=r"^model 'models:/no-such-model@champion': "):
        registry.load_encoder("models:/no-such-model@champion")
