"""Real `vae run`s, signalled and tampered with: Ctrl-C, SIGKILL, a planted pickle, open sockets.

One tiny pipeline, four runs: (1) interrupted by SIGINT to its process group (a terminal's Ctrl-C)
after its first epoch, while its sockets are listed; (2) a rerun that trains to the end and is
killed by SIGKILL of its process group as evaluation starts (a crash); (2b) a rerun that reuses that
training and registers once; (3) a run after pickles were planted under every persisted task result,
killed by SIGKILL of the CLI alone. Then SIGINT and SIGTERM to the process group while busy loops
hold every core.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
import psutil  # noqa: E402
from mlflow import MlflowClient

from vae.paths import checkpoints_dir, tracking_uri, vae_home

pytestmark = pytest.mark.integration

PIPELINES = """\
pipelines:
  hard-digits:
    dataset: {name: digits, source: "sklearn:digits", binarize: threshold}
    model: {latent_dim: 2, hidden: [16]}
    training: {epochs: 6, batch_size: 256, workers: 1}
    evaluation: {k: 50, max_memory_mb: 32}
    registry: {model_name: vae-hard}
"""
REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


class Pwn:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _start(pipelines: Path, *extra: str, pipeline: str = "hard-digits") -> subprocess.Popen:
    # A user's fresh shell: no Ray auth settings inherited from this test process (whose own Ray
    # may have set them), so what is checked is what `vae run` sets up by itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return subprocess.Popen(
        [sys.executable, "-m", "vae", "run", pipeline, "--file", str(pipelines), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for(process: subprocess.Popen, text: str, stream: str = "stdout") -> str:
    seen = []
    for line in getattr(process, stream):
        seen.append(line)
        if text in line:
            return "".join(seen)
    pytest.fail(f"`vae run` ended before printing {text!r}: {''.join(seen)} {process.stderr.read()[-3000:]}")


def _listening(pids: list[int]) -> list[tuple[str, str, int]]:
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            found += [
                (" ".join(process.cmdline())[:400], c.laddr.ip, c.laddr.port)  # whole paths: a venv can be deep
                for c in process.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
        except psutil.Error:
            pass
    return found


def _descendants_once_ray_runs(process: subprocess.Popen, timeout: float) -> list[int]:
    """`process`'s descendants, once the raylet of the Ray it starts is among them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
        with contextlib.suppress(psutil.Error):
            if any("raylet" in psutil.Process(pid).name() for pid in _alive(children)):
                return children
        time.sleep(0.2)
    pytest.fail(f"`vae run` started no Ray within {timeout:.0f} s")


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def _alive_after(pids: list[int], seconds: float) -> list[int]:
    """`pids` still alive once they have all gone or `seconds` have passed, whichever is first."""
    deadline = time.monotonic() + seconds
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(pids)


def _gcs_refuses_without_token(port: int, token: str) -> tuple[str, int]:
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10)
            refused = "accepted"
        except grpc.RpcError as error:
            refused = error.code().name
        nodes = stub.GetAllNodeInfo(
            gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10, metadata=[("authorization", f"Bearer {token}")]
        ).node_info_list
    return refused, len(nodes)


def _plant_pickles(folder: Path, marker: Path) -> list[Path]:
    """A result record in Prefect's format that names the pickle serializer, under every stored key."""
    import base64

    import cloudpickle

    payload = base64.b64encode(cloudpickle.dumps(Pwn(marker))).decode()
    record = json.dumps(
        {
            "metadata": {
                "storage_key": None,
                "expiration": None,
                "serializer": {"type": "pickle", "picklelib": "cloudpickle", "picklelib_version": None},
                "prefect_version": "3.9.1",
                "storage_block_id": None,
            },
            "result": payload,
        }
    )
    planted = [path for path in folder.iterdir() if path.is_file()]
    for path in planted:
        path.write_text(record)
    # Prefect's own reader would run it: the planted record is a real attack, not a malformed file.
    from prefect._internal.result_records import ResultRecord

    ResultRecord.deserialize(planted[0].read_bytes())
    assert marker.exists()
    marker.unlink()
    return planted


def test_interrupt_rerun_planted_pickle_and_sigkill(tmp_path):
    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text(PIPELINES)
    client = MlflowClient(tracking_uri())

    # (1) Ctrl-C after the first epoch.
    process = _start(pipelines, "--force")
    _wait_for(process, "epoch   1/6")
    children = [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
    listening = _listening(children)
    exposed = [entry for entry in listening if entry[1] not in LOOPBACK]
    # A local Ray runs in its one-machine mode (vae.cluster): every server binds loopback, and it
    # has a random token besides (the GCS refuses a client without it; test_ports.py checks each port).
    # The one exception is torch's own: the Train worker's TCPStore (gloo's rendezvous) listens on
    # every interface with no way to bind it to loopback (README, "Ports a run opens").
    assert all("RayTrainWorker" in entry[0] for entry in exposed), listening
    assert [entry for entry in listening if "prefect" in entry[0] and entry[1] not in LOOPBACK] == []
    gcs = next(pid for pid in children if "gcs_server" in " ".join(psutil.Process(pid).cmdline()))
    environ = psutil.Process(gcs).environ()  # what `vae run` gave the Ray it started
    assert environ.get("RAY_AUTH_MODE") == "token"
    gcs_port = next(port for command, _, port in listening if "gcs_server" in command)
    assert _gcs_refuses_without_token(gcs_port, environ["RAY_AUTH_TOKEN"]) == ("UNAUTHENTICATED", 1)

    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    code = process.wait(timeout=60)
    elapsed = time.monotonic() - started
    stderr = process.stderr.read()
    assert code == 130, stderr
    assert elapsed < 30
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len([line for line in lines if line.startswith("interrupted: ")]) == 1 and "Traceback" not in stderr, stderr
    time.sleep(1)
    assert _alive(children) == []  # Ray and the Prefect server are gone
    experiment = client.get_experiment_by_name("vae-hard")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.status for run in runs] == ["KILLED"]
    assert runs[0].info.run_id in lines[-1]
    staging = checkpoints_dir() / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []

    # (2) The rerun trains to the end and is killed (SIGKILL to its process group, as a machine's crash
    # would) as evaluation starts: the training task's result is persisted, nothing is registered.
    process = _start(pipelines)
    seen = _wait_for(process, "evaluating log p(x)")
    children = [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert "epoch   6/6" in seen, seen
    assert client.search_model_versions("name = 'vae-hard'") == []
    trained = sorted(checkpoints_dir().glob("hard-digits-*"))
    assert trained
    _alive_after(children, 20)

    # (2b) The next run reuses that training (no epoch trained again, no new run folder), registers exactly
    # once, and leaves nothing of its own running: once the result is printed `vae run` kills its Ray's
    # processes itself and exits (vae.cli.interrupts.exit_at_once), without Ray's shutdown.
    process = _start(pipelines)
    seen = _wait_for(process, "reusing the finished training")
    children = _descendants_once_ray_runs(process, timeout=60)  # Ray starts beside the flow, maybe after this line
    out, err = process.communicate(timeout=300)
    out = seen + out
    assert process.returncode == 0, out + err
    assert _alive_after(children, 5) == []
    assert "champion" in out and "epoch   1/6" not in out, out
    assert sorted(checkpoints_dir().glob("hard-digits-*")) == trained
    versions = client.search_model_versions("name = 'vae-hard'")
    assert len(versions) == 1
    runs = client.search_runs([experiment.experiment_id])
    assert [(run.info.run_id, run.info.status) for run in runs] == [(versions[0].run_id, "FINISHED")]

    # (3) Pickles planted under every persisted result; the next run must not load them.
    marker = tmp_path / "PWNED"
    planted = _plant_pickles(vae_home() / "prefect-results", marker)
    assert len(planted) >= 4  # ingest, start-mlflow-run, train, estimate-log-likelihood
    process = _start(pipelines)
    refused = _wait_for(process, "not a plain JSON result record", stream="stderr")  # the first record read
    assert not marker.exists()
    children = [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
    server = [pid for pid in children if "prefect.server.api.server" in " ".join(psutil.Process(pid).cmdline())]
    assert len(server) == 1
    os.kill(process.pid, signal.SIGKILL)  # the CLI alone, as an OOM killer would
    process.wait(timeout=30)
    assert _alive_after(server, 15) == []  # no orphan Prefect server
    assert not marker.exists()
    assert "not a plain JSON result record" in refused
    for pid in _alive_after(children, 20):  # what Ray leaves behind is ended here, so later tests start clean
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_under_cpu_load_is_exit_130_one_line_and_a_killed_run(tmp_path, signum):
    """A terminal's Ctrl-C or a scheduler's SIGTERM to the process group, with two busy loops holding
    the cores, so that every step of the interrupt handler is slow. What ends the process is the
    handler, whatever else happens meanwhile: Ray's driver ends a process with exit code 1 the moment
    its raylet goes away (seen as exit 1 here under load), and Ray's C++ failure-signal handler took
    SIGTERM (exit -6, no line, the run left RUNNING)."""
    name = f"load-{signum.name.lower()}"
    pipelines = tmp_path / "pipelines.yaml"
    # 60 epochs: the signal lands while the workers train, however fast the first epochs go.
    pipelines.write_text(
        PIPELINES.replace("hard-digits", name).replace("vae-hard", f"vae-{name}").replace("epochs: 6,", "epochs: 60,")
    )
    process = _start(pipelines, "--force", pipeline=name)
    hogs: list[subprocess.Popen] = []
    try:
        _wait_for(process, "epoch   1/60")
        children = [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
        # The loops start once the run trains (the handler is what must be slow, not the run's start,
        # which took a minute under them) and spin for a second before the signal.
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
        time.sleep(1)
        os.killpg(process.pid, signum)
        code = process.wait(timeout=120)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        if process.poll() is None:  # a failed wait: nothing of this run outlives the test
            os.killpg(process.pid, signal.SIGKILL)
    stderr = process.stderr.read()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 130, stderr
    assert [line for line in lines if line.startswith("interrupted: ")] == lines[-1:], stderr
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr, stderr
    runs = MlflowClient(tracking_uri()).search_runs(
        [MlflowClient(tracking_uri()).get_experiment_by_name(f"vae-{name}").experiment_id]
    )
    assert [run.info.status for run in runs] == ["KILLED"]
    assert lines[-1] == (
        f"interrupted: pipeline '{name}' stopped (MLflow run {runs[0].info.run_id} marked KILLED); "
        f"`vae run {name}` resumes"
    )
    assert _alive_after(children, 15) == []  # the raylet and GCS are killed by the kernel as the CLI exits
    staging = checkpoints_dir() / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []
