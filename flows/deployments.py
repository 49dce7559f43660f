"""`vae deploy`: pipelines.yaml → Prefect deployments 'pipeline/NAME' and 'embed/NAME' (and 'score/NAME',
'sample/NAME', 'drift/NAME', 'tune/NAME' for pipelines with a score, sample, drift or search section).

The whole file is validated and every schedule built before the first write, so a bad entry
changes nothing. Each deployment is upserted (Prefect replaces its schedules wholesale), runs
on the pipeline's process work pool, and starts in the directory `vae deploy` ran in, so the
worker finds the same pipelines file and local state.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from prefect import get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import get_current_settings
from prefect.utilities.callables import parameter_schema

from flows.drift import drift_flow
from flows.embed import embed_flow
from flows.pipeline import pipeline_flow
from flows.sample import sample_flow
from flows.score import score_flow
from flows.tune import tune_flow
from vae import config
from vae.errors import ConfigError, VAEError

SCHEDULE_SLUG = "pipelines-yaml"
ENTRYPOINTS = {
    "pipeline": ("flows.pipeline:pipeline_flow", pipeline_flow),
    "embed": ("flows.embed:embed_flow", embed_flow),
    "score": ("flows.score:score_flow", score_flow),
    "sample": ("flows.sample:sample_flow", sample_flow),
    "drift": ("flows.drift:drift_flow", drift_flow),
    "tune": ("flows.tune:tune_flow", tune_flow),
}


@dataclass
class Change:
    """One deployment: what pipelines.yaml wants, and how that differs from the server."""

    name: str  # 'FLOW/DEPLOYMENT'
    action: str  # create | update | unchanged
    spec: dict[str, Any]
    differences: list[str] = field(default_factory=list)
    schedule: config.ScheduleConfig | None = None

    def describe(self) -> str:
        when = _describe_schedule(self.schedule)
        line = f"{self.action:9} {self.name:32} pool={self.spec['work_pool_name']:10} schedule={when}"
        return line + "".join(f"\n            {difference}" for difference in self.differences)


def _describe_schedule(schedule: config.ScheduleConfig | None) -> str:
    if schedule is None:
        return "none"
    what = (
        f"cron '{schedule.cron}' ({schedule.timezone})" if schedule.cron else f"every {schedule.interval_minutes:g} min"
    )
    return what if schedule.active else f"{what}, paused"


def _prefect_schedule(pipeline: str, section: str, schedule: config.ScheduleConfig | None, path: Path):
    """The schedule as Prefect's object; a cron Prefect cannot parse fails here, before any write."""
    if schedule is None:
        return None
    try:
        if schedule.cron:
            return CronSchedule(cron=schedule.cron, timezone=schedule.timezone)
        # A fixed anchor (midnight, 2000-01-01, in the schedule's zone): runs land on the same
        # times whenever `vae deploy` runs, and a redeploy of the same file changes nothing.
        anchor = datetime(2000, 1, 1, tzinfo=ZoneInfo(schedule.timezone))
        return IntervalSchedule(
            interval=timedelta(minutes=schedule.interval_minutes), anchor_date=anchor, timezone=schedule.timezone
        )
    except ValueError as exc:
        reason = str(exc).splitlines()[-1].strip()
        raise ConfigError(f"{path}: pipeline '{pipeline}': field '{section}.schedule': {reason}") from None


def desired(pipelines_file: str | Path, only: list[str] | None = None) -> list[Change]:
    """Every deployment the file declares; raises ConfigError on the first bad entry."""
    path = Path(pipelines_file).resolve()
    pipelines = config.load_pipelines(path)
    unknown = sorted(set(only or []) - set(pipelines))
    if unknown:
        raise ConfigError(f"{path}: unknown pipeline '{unknown[0]}'; available: {', '.join(sorted(pipelines))}")
    workdir = str(Path.cwd().resolve())
    changes = []
    for name, settings in sorted(pipelines.items()):
        if only and name not in only:
            continue
        jobs = {
            "pipeline": (
                settings.deployment.schedule,
                "deployment",
                {"pipeline": name, "pipelines_file": str(path), **settings.deployment.parameters},
            ),
            "embed": (settings.embedding.schedule, "embedding", {"pipeline": name, "pipelines_file": str(path)}),
        }
        for section in ("score", "sample", "drift"):  # deployed only when the pipeline has the section
            if getattr(settings, section) is not None:
                jobs[section] = (
                    getattr(settings, section).schedule,
                    section,
                    {"pipeline": name, "pipelines_file": str(path)},
                )
        if settings.search is not None:  # 'tune/NAME': `vae tune`, optionally on search.schedule
            jobs["tune"] = (settings.search.schedule, "search", {"pipeline": name, "pipelines_file": str(path)})
        for flow_name, (schedule, section, parameters) in jobs.items():
            entrypoint, flow = ENTRYPOINTS[flow_name]
            prefect_schedule = _prefect_schedule(name, section, schedule, path)
            spec = {
                "name": name,
                "flow_name": flow.name,
                "entrypoint": entrypoint,
                "work_pool_name": settings.deployment.work_pool,
                "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": workdir}}],
                "parameters": parameters,
                "parameter_openapi_schema": parameter_schema(flow).model_dump_for_openapi(),
                "tags": sorted({"vae", *settings.deployment.tags}),
                "schedules": []
                if prefect_schedule is None
                else [DeploymentScheduleCreate(schedule=prefect_schedule, slug=SCHEDULE_SLUG, active=schedule.active)],
                "description": f"{flow.description or flow.name} ({name}, from {path.name})",
            }
            changes.append(Change(name=f"{flow.name}/{name}", action="create", spec=spec, schedule=schedule))
    return changes


def _schedule_key(schedules) -> list[tuple]:
    return sorted((s.schedule.model_dump_json(exclude_none=True), bool(s.active)) for s in schedules)


def _differences(current, spec: dict[str, Any]) -> list[str]:
    found = []
    for key, now in (
        ("entrypoint", current.entrypoint),
        ("work_pool_name", current.work_pool_name),
        ("parameters", current.parameters),
        ("pull_steps", current.pull_steps),
        ("tags", sorted(current.tags)),
    ):
        if now != spec[key]:
            found.append(f"{key}: {now!r} → {spec[key]!r}")
    if _schedule_key(current.schedules) != _schedule_key(spec["schedules"]):
        before = ", ".join(s.schedule.model_dump_json(exclude_none=True) for s in current.schedules) or "none"
        after = ", ".join(s.schedule.model_dump_json(exclude_none=True) for s in spec["schedules"]) or "none"
        found.append(f"schedules: {before} → {after}")
    return found


def api_url() -> str | None:
    return get_current_settings().api.url


def _api_error(exc: Exception) -> VAEError:
    url = api_url()
    if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code == 401:
        return VAEError(
            f"Prefect API {url}: 401 Unauthorized (set PREFECT_API_AUTH_STRING to the server's "
            "PREFECT_SERVER_API_AUTH_STRING)"
        )
    return VAEError(f"Prefect API {url}: {str(exc).splitlines()[0]}")


async def _plan(changes: list[Change]) -> list[Change]:
    async with get_client() as client:
        for change in changes:
            try:
                current = await client.read_deployment_by_name(change.name)
            except ObjectNotFound:
                continue
            change.differences = _differences(current, change.spec)
            change.action = "update" if change.differences else "unchanged"
    return changes


def plan(pipelines_file: str | Path, only: list[str] | None = None) -> list[Change]:
    """Validate the whole file, then compare each deployment with the server's (all 'create' offline)."""
    changes = desired(pipelines_file, only)
    if api_url() is None:  # no server to compare with: everything would be created
        return changes
    try:
        return asyncio.run(_plan(changes))
    except (PrefectHTTPStatusError, httpx.HTTPError, OSError, RuntimeError) as exc:
        raise _api_error(exc) from None


async def _apply(changes: list[Change]) -> None:
    async with get_client() as client:
        for pool in sorted({c.spec["work_pool_name"] for c in changes}):
            try:
                await client.read_work_pool(pool)
            except ObjectNotFound:
                await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        for change in changes:
            if change.action == "unchanged":
                continue
            spec = dict(change.spec)
            flow_id = await client.create_flow_from_name(spec.pop("flow_name"))
            await client.create_deployment(flow_id=flow_id, enforce_parameter_schema=True, paused=False, **spec)


def apply(changes: list[Change]) -> None:
    """Create missing process work pools, then upsert every changed deployment."""
    if api_url() is None:
        raise VAEError(
            "PREFECT_API_URL is not set: `vae deploy` needs a Prefect server "
            "(`prefect server start`, then export PREFECT_API_URL=http://127.0.0.1:4200/api)"
        )
    try:
        asyncio.run(_apply(changes))
    except (PrefectHTTPStatusError, httpx.HTTPError, OSError, RuntimeError) as exc:
        raise _api_error(exc) from None
