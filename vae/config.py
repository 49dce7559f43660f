"""Typed, frozen configs for pipelines.yaml, and where local state lives (VAE_HOME).

A pipeline names its dataset, model, training, evaluation and registry settings; every
section rejects unknown keys so a typo fails loudly instead of being silently ignored. Numbers
are strict (no `true` for an integer, no `.inf` or `.nan`), a key given twice is refused, and
names that become paths or registry names (pipeline, dataset, experiment, model) must match
NAME_PATTERN, so that nothing built from them leaves its root (`inside`).
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_serializer,
    model_serializer,
    model_validator,
)

from vae.errors import ConfigError
from vae.models.likelihood_kinds import EIGHT_BIT_LIKELIHOODS, LIKELIHOOD_KINDS
from vae.data.urls import redact_url

DEFAULT_PIPELINES_FILE = "pipelines.yaml"


# Names that become folders (VAE_HOME/datasets/NAME, checkpoints/NAME-…), MLflow experiments and
# registered models: no '/', no '..', nothing a path or a models:/ URI would read differently.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def name_problem(value: object) -> str | None:
    """Why `value` is not a valid pipeline, dataset, experiment or model name; None if it is."""
    if isinstance(value, str) and NAME_PATTERN.match(value) and ".." not in value:
        return None
    return (
        f"expected 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
        f"(no '/' or '..'), got {value!r}"
    )


def _check_name(value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _no_bool(kind: str):
    def check(value: Any) -> Any:
        if isinstance(value, bool):  # YAML's true/false would otherwise read as 1/0
            raise ValueError(f"expected {kind}, got {str(value).lower()} (a boolean)")
        return value

    return BeforeValidator(check)


Name = Annotated[str, AfterValidator(_check_name)]
Int = Annotated[int, _no_bool("an integer")]
Float = Annotated[float, _no_bool("a number")]  # finite: allow_inf_nan=False below

# Cron fields (a sixth, seconds, is allowed as Prefect reads it) and the names they accept.
_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 7),
    ("second", 0, 59),
)
_CRON_NAMES = {
    "month": {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
    "weekday": {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())},
}
CRON_HELP = (
    "expected 5 fields 'minute hour day-of-month month weekday' of numbers, ranges (1-5), lists (1,3), "
    "steps (*/15) or *, e.g. '0 3 * * 1' for Mondays at 03:00"
)


def cron_problem(cron: str) -> str | None:
    """Why `cron` is not a cron expression Prefect can schedule; None if it is."""
    fields = cron.split()
    if len(fields) not in (5, 6):
        return f"cron {cron!r} has {len(fields)} fields ({CRON_HELP})"
    for text, (what, low, high) in zip(fields, _CRON_FIELDS):
        names = _CRON_NAMES.get(what, {})
        for item in text.split(","):
            base, slash, step = item.partition("/")
            bad = bool(slash) and not (step.isdigit() and int(step) >= 1)
            if base != "*" and not bad:
                ends = [names.get(v.lower(), int(v) if v.isdigit() else None) for v in base.split("-")]
                bad = len(ends) > 2 or any(v is None or not low <= v <= high for v in ends) or ends != sorted(ends)
            if bad:
                return f"cron {cron!r}: {what} {item!r} is not a value in {low}-{high} ({CRON_HELP})"
    return None


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DatasetConfig(_Frozen):
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


LikelihoodName = Literal[tuple(LIKELIHOOD_KINDS)]  # the names of vae.models.likelihoods.LIKELIHOODS
IMPORT_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


class NetworkSpec(_Frozen):
    """A user's network: `factory` is `package.module:attr`, called with image_shape=(C, H, W),
    latent_dim=L, params_per_subpixel=P and `args` (vae.models.networks). Written as the string alone when
    there are no args."""

    factory: str
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"factory": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _import_path(self) -> "NetworkSpec":
        if not IMPORT_PATH.fullmatch(self.factory):
            raise ValueError(f"factory '{self.factory}': expected an import path 'package.module:attr'")
        return self


class ModelConfig(_Frozen):
    """A VAE: q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I), p(x|z) by `likelihood`.

    `mlp`: fully connected nets of widths `hidden` (Burda et al.: [200, 200], tanh, latent 50).
    `conv`: one stride-2 convolution per entry of `channels` each way (vae.models.conv), for images
    C x H x W of any channel count and size (sides that 2^depth does not divide are padded).
    Likelihoods: `bernoulli` (binary pixels), `gaussian` (continuous; with `dequantize` a bound
    on 8-bit pixels), and for 8-bit pixels `discretized_logistic`, `logistic_mixture` (with
    `components`) and `categorical` (vae.models.likelihoods).

    Stronger families (vae.models.families), on every architecture and likelihood (the VampPrior's
    pseudo-inputs take the image's shape); what is ill-defined is refused in one line:
    - `prior: vampprior`: p(z) = 1/K sum_k q(z|u_k) over K = `pseudo_inputs` learned pseudo-images u_k
      (Tomczak & Welling 2018, Eq. 9; they use K = 500). Default `standard`: p(z) = N(0, I).
    - `body: gated`: every hidden layer a gated linear unit h = (W x + b) * sigmoid(V x + c)
      (GatedDense; Tomczak & Welling use 300 units); `activation` is then unused. Default `mlp`.
    - `levels: 2`: q(z1|x) q(z2|z1), p(z2) = N(0, I) p(z1|z2) p(x|z1) (Burda et al. 2016, two stochastic
      layers): z1 has `latent_dim` dimensions, z2 `latent_dim2`, and the nets between them the widths
      `latent_hidden` (Burda et al.: latent 100 + 50, hidden [200, 200], latent_hidden [100, 100], tanh).
      Its top prior is N(0, I): `prior: vampprior` with `levels: 2` is refused.
      `body: gated` gates dense layers: with `architecture: conv` it is refused.
    Users' own networks: `encoder` and/or `decoder` name a factory `package.module:attr` (vae.models.networks)
    with keyword `args`; a module beside pipelines.yaml is found.
    With all of these at their defaults the model is vae.models.model.VAE, unchanged, and the fields are left
    out of model_dump (checkpoints, MLflow params and cache keys of existing pipelines stay as they were).
    """

    architecture: Literal["mlp", "conv"] = "mlp"
    latent_dim: Int = Field(8, ge=1)
    hidden: tuple[Int, ...] = (128, 128)
    channels: tuple[Int, ...] = Field((32, 64), min_length=1)
    activation: Literal["relu", "tanh"] = "relu"
    likelihood: LikelihoodName = "bernoulli"  # a name of the table vae.models.likelihoods.LIKELIHOODS
    # logistic_mixture only: mixture components per subpixel (PixelCNN++ uses 10 for CIFAR-10).
    components: Int = Field(5, ge=1)
    # Gaussian likelihood only: a fixed observation std, or null to learn one per pixel.
    gaussian_std: Float | None = Field(None, gt=0.0)
    # Gaussian likelihood only: uniform dequantisation of 8-bit pixels, x~ = (x + u)/256, with the
    # -D log 256 of the change of variables in log p(x|z), so its NLL bounds an 8-bit one.
    dequantize: bool = False
    # The stronger families (see above); at these defaults the model is the standard VAE.
    prior: Literal["standard", "vampprior"] = "standard"
    pseudo_inputs: Int = Field(500, ge=1)  # vampprior only: K pseudo-inputs
    body: Literal["mlp", "gated"] = "mlp"
    levels: Int = Field(1, ge=1, le=2)
    latent_dim2: Int | None = Field(None, ge=1)  # levels 2 only: dimensions of the top level z2
    latent_hidden: tuple[Int, ...] = (100, 100)  # levels 2 only: widths of the nets between z1 and z2
    # Users' own networks by import path (vae.models.networks): they replace the built-in ones of that side.
    encoder: NetworkSpec | None = None
    decoder: NetworkSpec | None = None
    FAMILY_FIELDS: ClassVar[tuple[str, ...]] = (
        "prior",
        "pseudo_inputs",
        "body",
        "levels",
        "latent_dim2",
        "latent_hidden",
        "encoder",
        "decoder",
    )

    @model_validator(mode="after")
    def _hidden_positive(self) -> "ModelConfig":
        if any(h < 1 for h in self.hidden):
            raise ValueError("every hidden layer width must be >= 1")
        if any(c < 1 for c in self.channels):
            raise ValueError(f"every conv width in channels must be >= 1, got {list(self.channels)}")
        if self.dequantize and self.likelihood != "gaussian":
            raise ValueError(f"dequantize applies to the gaussian likelihood only, got likelihood '{self.likelihood}'")
        return self

    @model_validator(mode="after")
    def _family_is_built(self) -> "ModelConfig":
        """The family fields name a model vae.models.families builds, or one line says which field does not."""
        defaults = type(self).model_fields
        if self.pseudo_inputs != defaults["pseudo_inputs"].default and self.prior != "vampprior":
            raise ValueError(f"pseudo_inputs applies to prior 'vampprior' only, got prior '{self.prior}'")
        if self.levels == 2 and self.latent_dim2 is None:
            raise ValueError("levels 2 needs latent_dim2, the dimensions of the second latent level (e.g. 50)")
        if self.levels == 1 and self.latent_dim2 is not None:
            raise ValueError(f"latent_dim2 applies to levels 2 only, got levels 1 and latent_dim2 {self.latent_dim2}")
        if self.levels == 1 and self.latent_hidden != defaults["latent_hidden"].default:
            raise ValueError(f"latent_hidden applies to levels 2 only, got levels 1 and {list(self.latent_hidden)}")
        if any(h < 1 for h in self.latent_hidden):
            raise ValueError(f"every latent_hidden width must be >= 1, got {list(self.latent_hidden)}")
        if not self.family:
            return self
        what = next(
            f"{name} {value!r}" if isinstance(value, str) else f"{name} {value}"
            for name, value in (("prior", self.prior), ("body", self.body), ("levels", self.levels))
            if value != defaults[name].default
        )
        if self.prior == "vampprior" and self.levels == 2:
            raise ValueError("prior 'vampprior' with levels 2 is not built (the two-level VAE's top prior is N(0, I))")
        if self.body == "gated" and self.architecture == "conv":
            raise ValueError(f"{what} gates dense layers: architecture 'conv' has none to gate (use body 'mlp')")
        return self

    @model_serializer(mode="wrap")
    def _family_fields_when_used(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave the family fields out at their defaults: a standard VAE's dump (checkpoint model_config,
        MLflow params, Prefect cache keys) is the same as before the families could be chosen."""
        data = handler(self)
        for name in self.FAMILY_FIELDS:
            if getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return data

    @property
    def family(self) -> bool:
        """Whether this is a vae.models.families model (a VampPrior, a gated body or two levels), not vae.models.model.VAE."""
        return self.prior != "standard" or self.body != "mlp" or self.levels != 1

    @property
    def eight_bit(self) -> bool:
        """Whether p(x|z) is a probability of 8-bit pixels: a discretised or categorical likelihood, or dequantised."""
        return self.likelihood in EIGHT_BIT_LIKELIHOODS or self.dequantize

    @property
    def network_specs(self) -> tuple[NetworkSpec, ...]:
        """The users' networks this model imports (encoder, decoder), those given."""
        return tuple(spec for spec in (self.encoder, self.decoder) if spec is not None)


class TrainingConfig(_Frozen):
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


class EvaluationConfig(_Frozen):
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


class RegistryConfig(_Frozen):
    """MLflow registered-model name and the promotion gate."""

    model_name: Name
    experiment: Name | None = None
    # `champion` moves only if the new NLL is lower than the champion's by more than this (nats).
    promote_margin: Float = Field(0.0, ge=0.0)


class ScheduleConfig(_Frozen):
    """When a deployment runs by itself: a cron expression (in `timezone`) or a fixed interval."""

    cron: str | None = None
    interval_minutes: Float | None = Field(None, gt=0.0)
    timezone: str = "UTC"
    active: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> "ScheduleConfig":
        if (self.cron is None) == (self.interval_minutes is None):
            raise ValueError("a schedule needs exactly one of 'cron' (e.g. '0 3 * * 1') or 'interval_minutes'")
        problem = None if self.cron is None else cron_problem(self.cron)
        if problem:
            raise ValueError(problem)
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(self.timezone)
        except (ValueError, KeyError, OSError):
            raise ValueError(
                f"timezone {self.timezone!r}: expected an IANA name such as 'UTC' or 'Europe/Berlin'"
            ) from None
        return self


DEPLOYMENT_PARAMETERS = {"workers", "gpu", "force"}  # of flows.pipeline.pipeline_flow


class DeploymentConfig(_Frozen):
    """How `vae deploy` turns this pipeline into a Prefect deployment 'pipeline/NAME'."""

    work_pool: str = Field("vae", min_length=1)
    schedule: ScheduleConfig | None = None
    # Parameters of the pipeline flow; only these may be set here (credentials never are).
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _known_parameters(self) -> "DeploymentConfig":
        unknown = sorted(set(self.parameters) - DEPLOYMENT_PARAMETERS)
        if unknown:
            raise ValueError(
                f"deployment parameter '{unknown[0]}' is not a pipeline flow parameter "
                f"(expected some of: {', '.join(sorted(DEPLOYMENT_PARAMETERS))})"
            )
        return self


class EmbeddingConfig(_Frozen):
    """The batch embedding job 'embed/NAME': encode the dataset with a registered model."""

    model_alias: str = Field("champion", min_length=1)
    splits: tuple[Literal["train", "validation", "test"], ...] = ("train", "validation", "test")
    workers: Int = Field(1, ge=1)
    batch_size: Int = Field(4096, ge=1)
    schedule: ScheduleConfig | None = None


class ScoreConfig(_Frozen):
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


class SampleConfig(_Frozen):
    """The job 'sample/NAME' and `vae sample`: seeded samples from the prior of a registered model."""

    model_alias: str = Field("champion", min_length=1)
    n: Int = Field(64, ge=1, le=100_000)
    seed: Int = 0
    format: Literal["png", "npz"] = "png"
    schedule: ScheduleConfig | None = None


class DriftConfig(_Frozen):
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


# What a search may vary, and the pipeline section each belongs to; a new field joins with one line
# here and one in SearchSpace.
SEARCHABLE = {
    "learning_rate": "training",
    "lr_decay": "training",
    "batch_size": "training",
    "objective": "training",
    "iwae_k": "training",
    "beta": "training",
    "kl_warmup_epochs": "training",
    "latent_dim": "model",
    "hidden": "model",
    "architecture": "model",
    "prior": "model",
    "body": "model",
    "encoder": "model",
    "decoder": "model",
}


class Distribution(_Frozen):
    """One hyperparameter's distribution: exactly one of `loguniform: [low, high]`, `uniform: [low, high]`,
    `randint: [low, high]` (both ends included) or `choice: [a, b, ...]`."""

    loguniform: tuple[Float, Float] | None = None
    uniform: tuple[Float, Float] | None = None
    randint: tuple[Int, Int] | None = None
    choice: tuple[Any, ...] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> "Distribution":
        given = [kind for kind in ("loguniform", "uniform", "randint", "choice") if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(
                "expected exactly one of loguniform: [low, high], uniform: [low, high], randint: [low, high] "
                f"or choice: [a, b, ...], got {' and '.join(given) or 'none'}"
            )
        bounds = self.loguniform or self.uniform or self.randint
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"{given[0]}: expected low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform: expected low > 0, got {list(self.loguniform)}")
        return self

    @property
    def candidates(self) -> tuple[Any, ...]:
        """The values that bound what a trial can draw: every choice, or both ends of a range."""
        return self.choice if self.choice is not None else (self.loguniform or self.uniform or self.randint)


class SearchSpace(_Frozen):
    """The distributions of a search; a field left out keeps the pipeline's own value in every trial."""

    learning_rate: Distribution | None = None
    lr_decay: Distribution | None = None
    batch_size: Distribution | None = None
    objective: Distribution | None = None
    iwae_k: Distribution | None = None
    beta: Distribution | None = None
    kl_warmup_epochs: Distribution | None = None
    latent_dim: Distribution | None = None
    hidden: Distribution | None = None
    architecture: Distribution | None = None
    prior: Distribution | None = None  # standard | vampprior (with the pipeline's pseudo_inputs, default 500)
    body: Distribution | None = None  # mlp | gated
    encoder: Distribution | None = None  # choice of users' networks (import paths or {factory, args})
    decoder: Distribution | None = None

    @model_validator(mode="after")
    def _draws_fit_the_schema(self) -> "SearchSpace":
        """Every value a trial may draw passes its section's own checks (ranges, names, integers)."""
        if not self.given():
            raise ValueError(f"expected at least one of: {', '.join(SEARCHABLE)}")
        for name, distribution in self.given().items():
            section = TrainingConfig if SEARCHABLE[name] == "training" else ModelConfig
            if (
                section.model_fields[name].annotation is int
                and distribution.randint is None
                and distribution.choice is None
            ):
                raise ValueError(f"{name}: an integer field: expected randint: [low, high] or choice: [...]")
            for value in distribution.candidates:
                try:
                    section(**{name: value})
                except ValidationError as exc:
                    raise ValueError(
                        f"{name}: {value!r} is not a valid {SEARCHABLE[name]}.{name} ({describe_error(exc.errors()[0])})"
                    ) from None
        return self

    def given(self) -> dict[str, Distribution]:
        return {name: getattr(self, name) for name in SEARCHABLE if getattr(self, name) is not None}


class SchedulerConfig(_Frozen):
    """Early stopping of weak trials: ASHA (Li et al., 2020) on the metric every epoch, or none ('fifo')."""

    kind: Literal["asha", "fifo"] = "asha"
    grace_period: Int = Field(2, ge=1)  # epochs every trial trains before it may be stopped
    reduction_factor: Float = Field(3.0, gt=1.0)  # 1/reduction_factor of the trials at a rung go on


class SearchConfig(_Frozen):
    """`vae tune NAME`: Ray Tune over `space`, each trial this pipeline's own training with one draw."""

    space: SearchSpace
    trials: Int = Field(8, ge=1)
    concurrent: Int = Field(2, ge=1)  # trials training at once
    # Ray Train workers per trial: 1 by default, since trials side by side use small cores better than DDP.
    workers: Int = Field(1, ge=1)
    epochs: Int | None = Field(None, ge=1)  # per trial (ASHA's max_t); unset: training.epochs
    max_minutes: Float | None = Field(None, gt=0.0)  # wall clock of the whole search; unset: no limit
    seed: Int = 0  # of the random draws
    # Reported every epoch, maximised: ASHA's stopping and the best trial. 'validation_iwae' is the
    # IWAE bound L_k at `validation_k` (k >= 2) importance samples, fair across objectives: ranked by
    # the ELBO, IWAE-trained trials lose to ELBO-trained ones whose log-likelihood is worse.
    metric: Literal["validation_elbo", "validation_iwae"] = "validation_elbo"
    validation_k: Int = Field(10, ge=2)  # with metric 'validation_iwae'
    mode: Literal["max"] = "max"
    scheduler: SchedulerConfig = SchedulerConfig()
    schedule: ScheduleConfig | None = None  # when the Prefect deployment 'tune/NAME' runs by itself


MAX_COMBINATIONS = 4096  # of one section's searched candidates checked when pipelines.yaml is read


class PipelineConfig(_Frozen):
    """One named pipeline of pipelines.yaml."""

    name: Name
    dataset: DatasetConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig
    deployment: DeploymentConfig = DeploymentConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    score: ScoreConfig | None = None  # 'score/NAME' is deployed only when the section is there
    sample: SampleConfig | None = None  # 'sample/NAME' likewise
    drift: DriftConfig | None = None  # 'drift/NAME' and `vae drift --pipeline NAME` (vae.jobs.drift)
    search: SearchConfig | None = None  # `vae tune NAME` (vae.tune.search)

    @model_validator(mode="after")
    def _likelihood_fits_inputs(self) -> "PipelineConfig":
        if self.model.likelihood == "bernoulli" and self.dataset.binarize == "none":
            raise ValueError(
                "a Bernoulli likelihood needs binary inputs: set dataset.binarize to 'threshold' or 'dynamic', "
                "or use model.likelihood 'gaussian'"
            )
        if self.model.eight_bit:
            what = "dequantize" if self.model.dequantize else f"likelihood '{self.model.likelihood}'"
            if self.dataset.binarize != "none":
                raise ValueError(
                    f"model {what} is a probability of 8-bit pixels: set dataset.binarize to 'none' "
                    f"(got '{self.dataset.binarize}')"
                )
            if self.dataset.max_value not in (None, 255):
                raise ValueError(
                    f"model {what} needs 8-bit pixels 0..255: dataset.max_value must be 255 or unset "
                    f"(got {self.dataset.max_value:g})"
                )
        return self

    @model_validator(mode="after")
    def _draws_fit_the_pipeline(self) -> "PipelineConfig":
        """Every draw a trial can make, laid over this pipeline, passes the pipeline's own checks:
        `prior: vampprior` on a conv pipeline is refused here, not trial by trial.

        A section's rules read only that section's fields (ModelConfig's cross-field checks; the
        pipeline-level ones involve no searchable field), so each section's searched fields are
        checked together, every combination of their candidates (every choice, both ends of a range).
        A space too big for that (over MAX_COMBINATIONS in a section) is left to vae.tune.search.trial_config.
        """
        if self.search is None:
            return self
        body = self.model_dump()
        body["search"] = None
        given = self.search.space.given()
        for section in ("model", "training"):
            names = [name for name in given if SEARCHABLE[name] == section]
            pools = [given[name].candidates for name in names]
            if not names or math.prod(len(pool) for pool in pools) > MAX_COMBINATIONS:
                continue
            for values in itertools.product(*pools):
                draw = dict(zip(names, values))
                laid = {**body[section], **{n: list(v) if isinstance(v, tuple) else v for n, v in draw.items()}}
                try:
                    PipelineConfig.model_validate({**body, section: laid})
                except ValidationError as exc:
                    error = exc.errors()[0]
                    drawn = ", ".join(f"{name}: {value!r}" for name, value in draw.items())
                    raise ValueError(
                        f"search.space: a trial could draw {drawn}, which this pipeline refuses "
                        f"(field '{'.'.join(str(part) for part in error['loc'])}'): "
                        f"{describe_error(error).removeprefix('expected: ')}"
                    ) from None
        return self

    @property
    def experiment(self) -> str:
        return self.registry.experiment or self.registry.model_name


def describe_error(error: dict[str, Any]) -> str:
    """One pydantic error as 'expected …, got …'."""
    if error["type"] == "extra_forbidden":
        return "unknown field (check the spelling; unknown keys are rejected)"
    if error["type"] == "missing":
        return "required field is missing"
    message = error["msg"]
    message = message[0].lower() + message[1:]
    if message.startswith("value error, "):
        return message[len("value error, ") :]
    return f"expected: {message}, got {error['input']!r}"


def _parse_pipeline(path: Path, name: str, body: Any) -> PipelineConfig:
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"{path}: pipeline {name!r}: pipeline name: {problem}")
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: pipeline '{name}': expected a mapping of sections, got {body!r}")
    try:
        config = PipelineConfig(name=name, **body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a check across sections
            raise ConfigError(
                f"{path}: pipeline '{name}': {describe_error(first).removeprefix('expected: ')}"
            ) from None
        field = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: pipeline '{name}': field '{field}': {describe_error(first)}") from None
    except TypeError as exc:  # e.g. a section given twice through ** expansion
        raise ConfigError(f"{path}: pipeline '{name}': {exc}") from None
    specs = {
        field: spec
        for field, spec in (("model.encoder", config.model.encoder), ("model.decoder", config.model.decoder))
        if spec is not None
    }
    space = config.search.space if config.search is not None else None
    for field in ("encoder", "decoder"):
        drawn = getattr(space, field, None)
        for i, value in enumerate(drawn.candidates if drawn is not None else ()):
            specs[f"search.space.{field}.choice[{i}]"] = NetworkSpec.model_validate(value)
    if specs:  # users' networks are imported (and so torch) only when a pipeline names some
        from vae.user_code import check_importable

        check_importable(specs, path.resolve().parent, f"{path}: pipeline '{name}'")
    return config


class _DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping names the same key twice (YAML's last-one-wins would silently drop the first)."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *defaults' then overrides is meant to repeat keys
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first
            except TypeError:  # an unhashable key: SafeLoader says so below
                continue
            if seen:
                raise _DuplicateKeyError(
                    problem=f"duplicate key {key!r} (first given on line {first[key]}; expected each key once)",
                    problem_mark=key_node.start_mark,
                )
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def parse_yaml(path: Path, raw: bytes) -> Any:
    """A YAML document from UTF-8 bytes; a problem is one ConfigError line naming the file and line."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8 (expected a UTF-8 text file)"
        ) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        invalid = "" if isinstance(exc, _DuplicateKeyError) else "invalid YAML: "
        raise ConfigError(f"{path}: {where}{invalid}{problem}") from None


def load_pipelines(path: str | Path = DEFAULT_PIPELINES_FILE) -> dict[str, PipelineConfig]:
    """Parse and validate every pipeline of the file; the first problem raises ConfigError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (expected a pipelines.yaml; pass --file)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    document = parse_yaml(path, raw)
    if not isinstance(document, dict) or not isinstance(document.get("pipelines"), dict):
        raise ConfigError(f"{path}: expected a top-level 'pipelines:' mapping of name -> pipeline")
    unknown = sorted(set(document) - {"pipelines"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key '{unknown[0]}' (expected only 'pipelines')")
    return {str(name): _parse_pipeline(path, str(name), body) for name, body in document["pipelines"].items()}


def load_pipeline(name: str, path: str | Path = DEFAULT_PIPELINES_FILE) -> PipelineConfig:
    """One pipeline by name; an unknown name lists the ones that exist."""
    pipelines = load_pipelines(path)
    if name not in pipelines:
        available = ", ".join(sorted(pipelines)) or "(none)"
        raise ConfigError(f"{path}: unknown pipeline '{name}'; available: {available}")
    return pipelines[name]
