"""`vae deploy` against a real (temporary) Prefect server: create, no-op, update, refuse.

Each test uses its own pipeline names, so the session's server can be shared.
"""

from __future__ import annotations

import asyncio

import pytest
from prefect import get_client
from prefect.exceptions import ObjectNotFound
from typer.testing import CliRunner

from vae.cli import app

pytestmark = pytest.mark.integration
runner = CliRunner()


def _pipelines(
    name: str,
    schedule: str = "{cron: '0 3 * * 1', timezone: Europe/Berlin}",
    pool: str = "vae-test",
    embed_schedule: str = "{interval_minutes: 90}",
    extra: str = "",
) -> str:
    return f"""\
pipelines:
  {name}:
    dataset: {{name: digits, source: "sklearn:digits"}}
    registry: {{model_name: vae-{name}}}
    deployment:
      work_pool: {pool}
      schedule: {schedule}
      parameters: {{workers: 1}}
    embedding:
      schedule: {embed_schedule}
{extra}"""


def _read(name: str):
    async def read():
        async with get_client() as client:
            try:
                return await client.read_deployment_by_name(name)
            except ObjectNotFound:
                return None

    return asyncio.run(read())


def _deploy(tmp_path, text: str, *args: str):
    path = tmp_path / "pipelines.yaml"
    path.write_text(text)
    return runner.invoke(app, ["deploy", "--file", str(path), *args]), path


def test_dry_run_shows_creates_and_changes_nothing(prefect_server, tmp_path):
    result, _ = _deploy(tmp_path, _pipelines("dry"), "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["create", "pipeline/dry"] and "cron '0 3 * * 1' (Europe/Berlin)" in lines[0]
    assert lines[1].split()[:2] == ["create", "embed/dry"] and "every 90 min" in lines[1]
    assert lines[-1] == "dry run: 2 of 2 deployments would change"
    assert _read("pipeline/dry") is None and _read("embed/dry") is None


def test_deploy_creates_then_is_a_no_op(prefect_server, tmp_path):
    result, path = _deploy(tmp_path, _pipelines("fresh"))
    assert result.exit_code == 0, result.output
    deployment = _read("pipeline/fresh")
    assert deployment.work_pool_name == "vae-test"
    assert deployment.entrypoint == "flows.pipeline:pipeline_flow"
    assert deployment.parameters == {"pipeline": "fresh", "pipelines_file": str(path.resolve()), "workers": 1}
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "0 3 * * 1" and schedule.schedule.timezone == "Europe/Berlin"
    [embed_schedule] = _read("embed/fresh").schedules
    assert embed_schedule.schedule.interval.total_seconds() == 90 * 60

    again, _ = _deploy(tmp_path, _pipelines("fresh"))
    assert again.exit_code == 0
    assert again.output.splitlines()[-1] == "applied: 0 created or updated, 2 unchanged"
    assert _read("pipeline/fresh").id == deployment.id


def test_changed_schedule_is_shown_then_replaces_the_old_one(prefect_server, tmp_path):
    _deploy(tmp_path, _pipelines("moving"))
    shown, _ = _deploy(tmp_path, _pipelines("moving", schedule="{cron: '30 4 * * *'}"), "--dry-run")
    assert shown.exit_code == 0
    assert "update    pipeline/moving" in shown.output and "schedules:" in shown.output
    assert "unchanged embed/moving" in shown.output
    assert _read("pipeline/moving").schedules[0].schedule.cron == "0 3 * * 1"  # the dry run changed nothing

    applied, _ = _deploy(tmp_path, _pipelines("moving", schedule="{cron: '30 4 * * *'}"))
    assert applied.exit_code == 0
    [schedule] = _read("pipeline/moving").schedules
    assert schedule.schedule.cron == "30 4 * * *" and schedule.schedule.timezone == "UTC"


def test_a_bad_entry_anywhere_changes_nothing(prefect_server, tmp_path):
    _deploy(tmp_path, _pipelines("steady"))
    bad_neighbour = """\
  broken:
    dataset: {name: digits, source: "sklearn:digits"}
    registry: {model_name: vae-broken}
    deployment: {schedule: {cron: '61 * * * *'}}
"""
    result, path = _deploy(tmp_path, _pipelines("steady", schedule="{cron: '15 1 * * *'}", extra=bad_neighbour))
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: {path.resolve()}: pipeline 'broken': field 'deployment.schedule': ")
    assert _read("pipeline/steady").schedules[0].schedule.cron == "0 3 * * 1"  # not updated either
    assert _read("pipeline/broken") is None


def test_unknown_deployment_parameter_is_refused(prefect_server, tmp_path):
    text = _pipelines("params").replace("parameters: {workers: 1}", "parameters: {wrokers: 1}")
    result, path = _deploy(tmp_path, text)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: {path}: pipeline 'params': field 'deployment': deployment parameter 'wrokers' is not a pipeline "
        "flow parameter (expected some of: force, gpu, workers)"
    )
    assert _read("pipeline/params") is None
