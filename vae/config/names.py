"""What every section of pipelines.yaml shares: the name and cron checks, the strict field types
(Name, Int, Float), the frozen base model that refuses unknown keys, and describe_error, which says
one pydantic error as one line.

Names that become paths or registry names (pipeline, dataset, experiment, model) must match
NAME_PATTERN, so that nothing built from them leaves its root (`inside`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

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


class Frozen(BaseModel):
    """The base of every section: immutable, unknown keys refused, numbers finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
