"""The ingestion flow on a real Prefect test server: cached on the source's content, retried on downloads."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from tests.helpers.ingest_helpers import Route, loopback_server, write_idx_folder
from tests.helpers.prefect_records import recorded_task_runs

from flows.ingest import ingest_flow
from vae.config import load_pipeline
from vae.data.datasets import read_manifest

pytestmark = pytest.mark.integration

RNG = np.random.default_rng(11)
IMAGES = RNG.integers(0, 256, size=(30, 5, 5), dtype=np.uint8)
LABELS = RNG.integers(0, 3, size=30).astype(np.uint8)


def _pipelines(tmp_path, source: str):
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        f"pipelines:\n  tiny:\n    dataset: {{name: tiny-{tmp_path.name}, source: '{source}'}}\n"
        "    registry: {model_name: vae-tiny}\n"
    )
    return str(path)


def _task_states(flow_state, expected: int = 1) -> list[str]:
    runs = recorded_task_runs(expected, flow_run_id=flow_state.state_details.flow_run_id)
    return [run.state.name for run in runs]


def test_an_unchanged_source_skips_ingestion_through_the_task_cache(prefect_server, tmp_path):
    folder = write_idx_folder(tmp_path / "src", (IMAGES, LABELS), None)
    pipelines = _pipelines(tmp_path, str(folder))
    first = ingest_flow(load_pipeline("tiny", pipelines), return_state=True)
    second = ingest_flow(load_pipeline("tiny", pipelines), return_state=True)
    assert (_task_states(first), _task_states(second)) == (["Completed"], ["Cached"])
    assert second.result() == first.result()
    write_idx_folder(folder, (IMAGES[::-1].copy(), LABELS[::-1].copy()), None)  # new content
    third = ingest_flow(load_pipeline("tiny", pipelines), return_state=True)
    assert _task_states(third) == ["Completed"]
    assert third.result().version != first.result().version
    assert read_manifest(first.result().path)["content_hash"] == first.result().content_hash  # still there
    shutil.rmtree(third.result().path)  # a cached reference to a deleted version is not trusted
    fourth = ingest_flow(load_pipeline("tiny", pipelines), return_state=True)
    assert _task_states(fourth, expected=2) == ["Cached", "Completed"]
    assert fourth.result() == third.result() and read_manifest(third.result().path)["rows"]["train"] == 22


def test_a_server_error_is_retried_and_a_404_is_not(prefect_server, tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, images=IMAGES, labels=LABELS)
    with loopback_server() as server:
        server.routes["/flaky.npz"] = flaky = Route(buffer.getvalue(), fail_first=1)
        server.routes["/gone.npz"] = gone = Route(status=404)
        state = ingest_flow(load_pipeline("tiny", _pipelines(tmp_path, f"{server.url}/flaky.npz")), return_state=True)
        assert state.is_completed() and flaky.requests == 2  # 503, then the file after a retry
        assert read_manifest(state.result().path)["rows"]["test"] == 6
        failed = ingest_flow(load_pipeline("tiny", _pipelines(tmp_path, f"{server.url}/gone.npz")), return_state=True)
        assert failed.is_failed() and gone.requests == 1
