"""The `deployment` section of a pipeline and the `schedule` that it and every job section may give:
how `vae deploy` makes Prefect deployments, and when they run by themselves."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from vae.config.names import Float, Frozen, cron_problem


class ScheduleConfig(Frozen):
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


class DeploymentConfig(Frozen):
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
