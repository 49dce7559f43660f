"""The `training`, `evaluation` and `registry` sections of a pipeline: Ray Train and the optimiser,
the importance-sampled evaluation, the registered model and its promotion gate."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from vae.config.names import Float, Frozen, Int, Name


class TrainingConfig(Frozen):
    """Ray Train settings and the optimiser; the objective is the ELBO."""

    epochs: Int = Field(20, ge=1)
    # Examples per optimiser step on EACH worker: n workers step on n * batch_size examples at once.
    batch_size: Int = Field(64, ge=1)
    learning_rate: Float = Field(1e-3, gt=0.0)
    workers: Int = Field(2, ge=1)
    cpus_per_worker: Int = Field(1, ge=1)
    use_gpu: bool = False
    # GPU workers only: capture forward + backward + Adam of the MLP in one CUDA graph (falls back to
    # eager when capture fails or the step cannot be captured), and hold the worker's shard on the GPU
    # when it fits this many MiB (else it streams from Ray Data).
    cuda_graph: bool = True
    device_data_mb: Int = Field(2048, ge=0)
    seed: Int = 0
    max_failures: Int = Field(0, ge=0)
    checkpoints_to_keep: Int = Field(2, ge=1)
    checkpoint_every: Int = Field(1, ge=1)  # epochs between checkpoints (the last epoch always has one)
    # 'elbo' (Kingma & Welling) or 'iwae' with iwae_k samples (Burda et al.); beta scales the KL of
    # the ELBO, ramped linearly from 0 over kl_warmup_epochs. Under 'iwae' both are unused (the bound
    # log 1/k sum p(x,z_i)/q(z_i|x) has no separate KL term); a search may still draw them beside it.
    objective: Literal["elbo", "iwae"] = "elbo"
    iwae_k: Int = Field(5, ge=1)
    beta: Float = Field(1.0, gt=0.0)
    kl_warmup_epochs: Int = Field(0, ge=0)
    lr_decay: Float = Field(1.0, gt=0.0, le=1.0)  # ExponentialLR gamma per epoch
    # Stop after this many epochs without a better validation ELBO; the best checkpoint is the result.
    early_stopping_patience: Int | None = Field(None, ge=1)
    # Above 1, every epoch also reports validation_iwae: the IWAE bound L_k with this many importance
    # samples over the validation rows (Burda et al. 2016, Eq. 8), the bound that ranks models trained
    # by different objectives alike (an IWAE-trained model has a looser ELBO and a tighter L_k).
    validation_k: Int = Field(1, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on GPU workers
    # A wall-clock budget for training: stop after the epoch that crosses it (null: run all epochs).
    max_minutes: Float | None = Field(None, gt=0.0)

    @model_serializer(mode="wrap")
    def _validation_k_when_used(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave validation_k out at 1: it changes no weights, and a dump without it (checkpoint, MLflow
        params, Prefect cache keys) is the same as before it could be set."""
        data = handler(self)
        if self.validation_k == 1:
            data.pop("validation_k", None)
        return data


class EvaluationConfig(Frozen):
    """Importance-sampled log p(x) on a held-out split."""

    k: Int = Field(5000, ge=1)
    split: Literal["test", "validation"] = "test"
    batch_size: Int = Field(128, ge=1)
    max_memory_mb: Int = Field(256, ge=1)
    seed: Int = 0
    # >1 splits the split across Ray tasks; per-example noise streams make the result identical.
    workers: Int = Field(1, ge=1)
    # Estimate on a GPU when the machine has one (noise drawn on the device, chunks sized from its
    # free memory); tf32 lets float32 matmuls use TF32 there: faster, and it changes the numbers.
    use_gpu: bool = False
    tf32: bool = False


class RegistryConfig(Frozen):
    """MLflow registered-model name and the promotion gate."""

    model_name: Name
    experiment: Name | None = None
    # `champion` moves only if the new NLL is lower than the champion's by more than this (nats).
    promote_margin: Float = Field(0.0, ge=0.0)
