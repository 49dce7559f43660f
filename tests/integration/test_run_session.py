"""`vae run`'s interrupt state, passed explicitly: the flow tags the MLflow runs it opens with the run's
session token; the interrupt handler marks that session's unfinished runs KILLED, and a training that
fails from the interrupt marks FAILED only a run still RUNNING (real sqlite MLflow)."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from vae.paths import tracking_uri
from vae.registry import runs

pytestmark = pytest.mark.integration


def _run(client: MlflowClient, experiment_id: str, session: str | None) -> str:
    tags = {runs.SESSION_TAG: session} if session else {}
    return client.create_run(experiment_id, tags=tags).info.run_id


def test_the_handler_finds_its_sessions_unfinished_runs_and_a_killed_run_stays_killed():
    client = MlflowClient(tracking_uri())
    experiment_id = client.create_experiment(f"session-{time.time_ns()}")
    mine, finished, failed = (_run(client, experiment_id, "s-mine") for _ in range(3))
    other, untagged = _run(client, experiment_id, "s-other"), _run(client, experiment_id, None)
    client.set_terminated(finished, "FINISHED")
    assert runs.fail_if_running(failed) is True  # a training failed from the interrupt, before the handler
    assert sorted(runs.runs_of_session("s-mine")) == sorted([mine, failed])  # not finished, other, untagged
    assert [runs.kill_if_running(r, failed_within=30) for r in (mine, failed)] == [True, True]
    assert runs.fail_if_running(mine) is False  # a training that fails after the handler: KILLED stays
    statuses = {r: client.get_run(r).info.status for r in (mine, failed, finished, other, untagged)}
    assert statuses == {mine: "KILLED", failed: "KILLED", finished: "FINISHED", other: "RUNNING", untagged: "RUNNING"}
    assert runs.runs_of_session("s-none") == []


def test_a_rerun_claims_the_run_an_interrupt_killed_and_leaves_a_finished_one():
    client = MlflowClient(tracking_uri())
    experiment_id = client.create_experiment(f"claim-{time.time_ns()}")
    killed, finished = _run(client, experiment_id, "s-before"), _run(client, experiment_id, "s-before")
    client.set_terminated(killed, "KILLED")
    client.set_terminated(finished, "FINISHED")
    for run_id in (killed, finished):
        runs.claim_run(run_id, "s-rerun")
    assert runs.runs_of_session("s-rerun") == [killed]  # RUNNING again, under the rerun's token
    assert client.get_run(finished).info.status == "FINISHED"
    assert runs.fail_if_running(killed) is True  # a real failure of the continued training is FAILED
    assert client.get_run(killed).info.status == "FAILED"
