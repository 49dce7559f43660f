"""A non-finite loss stops training with a clear error naming epoch and step; nothing registered."""

from __future__ import annotations

import math

import pytest
import torch
from mlflow import MlflowClient

from vae.train import driver
from vae.config import DatasetConfig, ModelConfig, PipelineConfig, RegistryConfig, TrainingConfig
from vae.paths import tracking_uri
from vae.data.ingest import ingest
from vae.errors import TrainingDivergedError
from vae.models.model import CHECKPOINT_FILE, build_model

pytestmark = pytest.mark.integration


def test_non_finite_weights_fail_with_epoch_and_step(ray_session, tmp_path):
    config = PipelineConfig(
        name="diverge",
        dataset=DatasetConfig(name="digits", source="sklearn:digits"),
        model=ModelConfig(latent_dim=2, hidden=(8,)),
        training=TrainingConfig(epochs=3, workers=2),
        registry=RegistryConfig(model_name="vae-diverge"),
    )
    dataset = ingest(config.dataset)
    # A checkpoint after epoch 1 whose weights became NaN: resuming must stop at epoch 2, step 1.
    model = build_model(config.model, 64)
    with torch.no_grad():
        model.decoder[0].weight.fill_(math.nan)
    optimizer = torch.optim.Adam(model.parameters())
    broken = tmp_path / "broken"
    broken.mkdir()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": 1,
            "history": [],
            "model_config": config.model.model_dump(mode="json"),
            "data_dim": 64,
        },
        broken / CHECKPOINT_FILE,
    )

    with pytest.raises(TrainingDivergedError) as error:
        driver.train(config, dataset, resume_from=str(broken), storage_path=tmp_path / "runs", echo=None)
    assert str(error.value) == (
        "training diverged: non-finite loss (nan) at epoch 2, step 1; "
        "the last good checkpoint is kept and nothing was registered"
    )
    assert MlflowClient(tracking_uri()).search_registered_models(filter_string="name = 'vae-diverge'") == []
