"""The `dataset` section of a pipeline (and of a drift check's `ingest`): where the data comes from,
how it is split and how its pixels are fed to the model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_serializer

from vae.config.names import Float, Frozen, Int, Name
from vae.data.urls import redact_url


class DatasetConfig(Frozen):
    """Where the data comes from and how it is split and fed to the model."""

    name: Name
    # 'sklearn:digits' or 'sklearn:sample-patches' (32x32 RGB patches of sklearn's two photographs); a
    # path to IDX files (a folder with train-/t10k- pairs, or one file), .npz, .npy, .csv, .parquet, a
    # folder of images (subfolders = labels), CIFAR-10/100 binary (the .tar.gz or its folder; official
    # split); or an http(s) URL of a file. Colour is stored channel-major (C, H, W), as the manifest says.
    source: str = Field(min_length=1, description="e.g. 'sklearn:digits', a path or an http(s) URL")
    # Expected content hash (for a single file: its sha256); a mismatch fails before anything is written.
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    # 'official': the source's own test file is the test split (IDX t10k-, .npz x_test); 'random':
    # one seeded permutation of all rows; 'auto': official when the source has a test file.
    split: Literal["auto", "random", "official"] = "auto"
    # Share of the non-test rows held out for validation. Unset: 0.1 for a random split, and as many
    # rows as the official test file for an official one (Fashion-MNIST: 50k / 10k / 10k).
    validation_fraction: Float | None = Field(None, ge=0.0, lt=1.0)
    test_fraction: Float = Field(0.2, gt=0.0, lt=1.0)  # random splits only
    split_seed: Int = 0
    # Pixels are declared to lie in [0, max_value]; unset: 255 for integer pixels, 1.0 for float ones.
    max_value: Float | None = Field(None, gt=0.0)
    # Fixed binarisation of the test split: each pixel ~ Bernoulli(pixel / max_value) drawn once with
    # this seed and stored as 0 or max_value, so test NLLs are comparable across runs and code versions.
    binarize_test_seed: Int | None = None
    # How pixels in [0, 1] become model inputs: 'threshold' (x > 0.5, fixed), 'dynamic'
    # (x ~ Bernoulli(pixel) each epoch; evaluation uses one fixed draw), or 'none' (continuous).
    binarize: Literal["threshold", "dynamic", "none"] = "threshold"

    @field_serializer("source", when_used="json")
    def _redacted(self, source: str) -> str:
        """What is stored or shown (MLflow params, Prefect parameters) never carries a URL's credentials."""
        return redact_url(source)

    @property
    def redacted_source(self) -> str:
        """The source as it may be printed: a URL's userinfo and secret parameters replaced by REDACTED."""
        return redact_url(self.source)
