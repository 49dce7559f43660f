"""The job sections of a pipeline, each a Prefect deployment and a `vae` command: `embedding`
(embed/NAME), `score` (score/NAME), `sample` (sample/NAME) and `drift` (drift/NAME)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vae.config.dataset import DatasetConfig
from vae.config.deployment import ScheduleConfig
from vae.config.names import Float, Frozen, Int, Name


class EmbeddingConfig(Frozen):
    """The batch embedding job 'embed/NAME': encode the dataset with a registered model."""

    model_alias: str = Field("champion", min_length=1)
    splits: tuple[Literal["train", "validation", "test"], ...] = ("train", "validation", "test")
    workers: Int = Field(1, ge=1)
    batch_size: Int = Field(4096, ge=1)
    schedule: ScheduleConfig | None = None


class ScoreConfig(Frozen):
    """The batch scoring job 'score/NAME' and `vae score`: per-example log p̂(x) with a registered model."""

    model_alias: str = Field("champion", min_length=1)
    splits: tuple[Literal["train", "validation", "test"], ...] = Field(("test",), min_length=1)
    k: Int = Field(5000, ge=1)  # importance samples per image, as in `vae evaluate`
    seed: Int = 0  # row n of a split draws the noise of example n: equal to `vae evaluate`'s values
    workers: Int = Field(1, ge=1)  # Ray Data scoring actors
    batch_size: Int = Field(256, ge=1)  # images per actor call
    max_memory_mb: Int = Field(256, ge=1)
    use_gpu: bool | None = None  # None: GPU actors when the cluster has GPUs
    schedule: ScheduleConfig | None = None


class SampleConfig(Frozen):
    """The job 'sample/NAME' and `vae sample`: seeded samples from the prior of a registered model."""

    model_alias: str = Field("champion", min_length=1)
    n: Int = Field(64, ge=1, le=100_000)
    seed: Int = 0
    format: Literal["png", "npz"] = "png"
    schedule: ScheduleConfig | None = None


class DriftConfig(Frozen):
    """The drift check 'drift/NAME' and `vae drift`: the model scores a reference split of the pipeline's
    own dataset and the new data with one protocol (k, seed), then tests whether the new data is typical
    (vae.jobs.drift: a typicality test and a two-sample KS test on log p̂(x), each at false_alarm_rate / 2).

    The new data is exactly one of `dataset`, a stored dataset (a name, whose newest version is read
    on every run, or a directory; ':SPLIT' reads one split, default all), or `ingest`, a source that
    the flow ingests first on every run (unchanged content is not rewritten).
    """

    dataset: str | None = Field(None, min_length=1)
    ingest: DatasetConfig | None = None
    model_alias: str = Field("champion", min_length=1)
    reference_split: Literal["train", "validation", "test"] = "test"  # of the pipeline's own dataset
    k: Int = Field(1000, ge=1)  # importance samples per image, both datasets alike
    seed: Int = 0  # row n of either set draws the noise of example n, as `vae score`
    # The verdict's false-alarm rate: the chance that data like the reference is called drift (the
    # typicality test and the KS test each get half, Bonferroni). Per-row OOD flags: their own rate.
    false_alarm_rate: Float = Field(0.01, gt=0.0, lt=0.5)
    row_false_alarm_rate: Float = Field(0.01, gt=0.0, lt=0.5)
    bootstrap: Int = Field(2000, ge=100, le=1_000_000)  # null draws of the typicality statistic
    workers: Int = Field(1, ge=1)  # Ray Data scoring actors
    batch_size: Int = Field(256, ge=1)  # images per actor call
    max_memory_mb: Int = Field(256, ge=1)
    use_gpu: bool | None = None  # None: GPU actors when the cluster has GPUs
    experiment: Name | None = None  # MLflow experiment of the checks; unset: MODEL_NAME-drift
    schedule: ScheduleConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "DriftConfig":
        if (self.dataset is None) == (self.ingest is None):
            raise ValueError(
                "the new data needs exactly one of 'dataset' (a stored dataset NAME[:SPLIT]) or 'ingest' "
                "(a dataset section to ingest on every run)"
            )
        return self
