"""Task runs as the Prefect server records them, read once the records have caught up with the flow."""

from __future__ import annotations

import time
from uuid import UUID


def recorded_task_runs(
    expected: int, *, flow_run_id: UUID | None = None, task_run_id: UUID | None = None, wait_s: float = 30.0
):
    """The `expected` task runs of a flow run (or the one task run), oldest first, once the server has recorded
    their ends.

    Prefect 3 reports a task run's states as events, which the server records asynchronously: read right after the
    flow returns, a task run can still be Pending, or missing. Read until there are `expected` task runs, each in a
    final state, or until ``wait_s`` has passed; then return the last read, so a missing run or a state that never
    ends still fails the caller's assertion.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterId

    if (flow_run_id is None) == (task_run_id is None):
        raise ValueError("give exactly one of flow_run_id and task_run_id")
    filters = (
        {"flow_run_filter": FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))}
        if flow_run_id is not None
        else {"task_run_filter": TaskRunFilter(id=TaskRunFilterId(any_=[task_run_id]))}
    )
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            runs = sorted(client.read_task_runs(**filters), key=lambda run: run.created)
            ended = all(run.state is not None and run.state.is_final() for run in runs)
            if (len(runs) == expected and ended) or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)
