"""The `search` section of a pipeline (`vae tune NAME`): what a search may vary (SEARCHABLE), the
distributions it draws from, ASHA's early stopping and the search's budget and metric."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from vae.config.deployment import ScheduleConfig
from vae.config.model import ModelConfig
from vae.config.names import Float, Frozen, Int, describe_error
from vae.config.training import TrainingConfig


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


class Distribution(Frozen):
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


class SearchSpace(Frozen):
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


class SchedulerConfig(Frozen):
    """Early stopping of weak trials: ASHA (Li et al., 2020) on the metric every epoch, or none ('fifo')."""

    kind: Literal["asha", "fifo"] = "asha"
    grace_period: Int = Field(2, ge=1)  # epochs every trial trains before it may be stopped
    reduction_factor: Float = Field(3.0, gt=1.0)  # 1/reduction_factor of the trials at a rung go on


class SearchConfig(Frozen):
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
