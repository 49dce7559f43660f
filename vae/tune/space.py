"""A search's space and its draws: the pipeline's `search.space` as Tune's param_space, and the
pipeline one trial's draw makes (its settings validated like pipelines.yaml), for vae.tune.search and
the trials of vae.tune.trials.
"""

from __future__ import annotations

from typing import Any

from vae.config import SEARCHABLE, Distribution, PipelineConfig, SearchSpace
from vae.errors import ConfigError


def _sample(distribution: Distribution):
    from ray import tune

    if distribution.loguniform is not None:
        return tune.loguniform(*distribution.loguniform)
    if distribution.uniform is not None:
        return tune.uniform(*distribution.uniform)
    if distribution.randint is not None:
        low, high = distribution.randint
        return tune.randint(low, high + 1)  # Tune's upper end is exclusive; ours is included
    return tune.choice(list(distribution.choice))


def param_space(space: SearchSpace) -> dict[str, dict[str, Any]]:
    """The search space as Tune's param_space: {section: {field: domain}}, e.g. {"training": {"learning_rate": …}}."""
    sections: dict[str, dict[str, Any]] = {}
    for name, distribution in space.given().items():
        sections.setdefault(SEARCHABLE[name], {})[name] = _sample(distribution)
    return sections


def plain(value: Any) -> Any:
    """A drawn value as plain Python (Tune draws NumPy scalars; lists stay lists)."""
    return value.item() if hasattr(value, "item") else value


def trial_config(base: PipelineConfig, drawn: dict[str, dict[str, Any]]) -> PipelineConfig:
    """The pipeline with one trial's draw, its per-trial workers and epochs, validated like pipelines.yaml."""
    from pydantic import ValidationError

    from vae.config import describe_error

    search = base.search
    body = base.model_dump()
    for section, values in drawn.items():
        body[section].update({name: plain(value) for name, value in values.items()})
    if search is not None:
        # A checkpoint every epoch: a trial stopped early or cut by the time budget can still be the best.
        epochs = search.epochs or base.training.epochs
        body["training"].update(workers=search.workers, epochs=epochs, checkpoint_every=1)
        if search.metric == "validation_iwae":  # every epoch reports L_k at the search's k
            body["training"]["validation_k"] = search.validation_k
    try:
        return PipelineConfig.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "search.space"
        raise ConfigError(
            f"pipeline '{base.name}': trial draw {drawn}: field '{where}': {describe_error(error)}"
        ) from None


def describe_draw(drawn: dict) -> str:
    """A draw in one line: `name=value` for every searched field (floats to 3 significant digits)."""
    values = {name: plain(value) for section in drawn.values() for name, value in section.items()}
    return " ".join(
        f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}" for name, value in values.items()
    )
