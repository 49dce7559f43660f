"""Every TCP port of a local Ray, started as `vae run` starts it, refuses a client without the token.

A child process calls `prepare_local_ray` and `ensure_ray` (what the CLI and the flows call), runs
a task and an actor, and holds a two-worker TorchTrainer fit with vae's `TorchConfig` open (what
`vae.train` fits with), so workers and the workers' process group listen too; the suite's own Ray
is not touched. The ports are what the kernel says the child's process tree (driver, GCS, raylet,
agents, Train controller, workers) listens on, not a list. Each is asked without the token and
then, the reference, with it:
- gRPC: a read-only call of the Ray service behind the port is UNAUTHENTICATED without the token
  and passes with it, so the refusal is the token's doing (the standard gRPC health check answers
  anyone: it says SERVING and nothing else);
- HTTP: GET / is 401/403 without the token and not with it, or the server listens on loopback only
  (Ray's Prometheus metrics servers ask for no token);
- the Train workers' gloo transport (torch.distributed has no token): loopback only, and a stranger
  who connects and writes garbage changes nothing: the group's next all_reduce gives the exact sum.
  No rendezvous store listens at all (a FileStore in a 0700 folder; `vae.train.process_group`).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
import psutil  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import sys, threading, time
from collections.abc import Callable
from pathlib import Path
from vae.cluster import ensure_ray, prepare_local_ray

prepare_local_ray()
ensure_ray(2)
import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from vae.train.process_group import TorchConfig

FOLDER = Path(sys.argv[1])

@ray.remote
def one():
    return 1

@ray.remote
class Holder:
    def one(self):
        return 1

holder = Holder.remote()
assert ray.get([one.remote(), holder.one.remote()]) == [1, 1]

def loop(config):
    import torch, torch.distributed as dist
    import ray.train
    rank = ray.train.get_context().get_world_rank()
    for name in ("ready", "sum"):  # the group is up; then, once released, it still adds right
        total = torch.full((1,), float(rank + 1))
        dist.all_reduce(total)
        (FOLDER / f"{name}-{rank}").write_text(repr(total.item()))
        while name == "ready" and not (FOLDER / "release").exists():
            time.sleep(0.2)

trainer = TorchTrainer(
    loop,
    torch_config=TorchConfig(),
    scaling_config=ScalingConfig(num_workers=2),
    run_config=RunConfig(name="ports", storage_path=str(FOLDER / "storage")),
)
fit = threading.Thread(target=trainer.fit)
fit.start()
while len(list(FOLDER.glob("ready-*"))) < 2:
    time.sleep(0.2)
print("ready", flush=True)
sys.stdin.read()  # until the test closes stdin
(FOLDER / "release").touch()
fit.join()
print("sums", *[(FOLDER / f"sum-{rank}").read_text() for rank in (0, 1)], flush=True)
"""
# One read-only method of each Ray gRPC service that listens on a TCP port; an empty message is valid.
RAY_METHODS = (
    "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",  # GCS
    "/ray.rpc.NodeManagerService/GetSystemConfig",  # raylet
    "/ray.rpc.ObjectManagerService/Pull",  # raylet's object manager (an empty pull does nothing)
    "/ray.rpc.CoreWorkerService/NumPendingTasks",  # driver and workers
    "/ray.rpc.ReporterService/HealthCheck",  # dashboard agent (metrics agent port)
)
WORKER = "ray::RayTrainWorker"
EXPECTED_PROCESSES = {
    "driver",
    "gcs_server",
    "raylet",
    "ray::DashboardAgent",
    "ray::RuntimeEnvAgent",
    "ray::Holder",
    WORKER,
}


class Listener(NamedTuple):
    process: str
    ip: str
    port: int


def _name(process: psutil.Process, root: psutil.Process) -> str:
    """`driver`, a Ray daemon's name (`raylet`, `ray::IDLE`), or a Python daemon's script (`monitor.py`)."""
    if process.pid == root.pid:
        return "driver"
    name = process.name()
    scripts = [Path(arg).name for arg in process.cmdline() if arg.endswith(".py")]
    return scripts[0] if name.startswith("python") and scripts else name


def _listeners(root: psutil.Process) -> set[Listener]:
    found = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            name = _name(process, root)
            connections = process.net_connections(kind="tcp")
        except psutil.Error:  # a worker that exited meanwhile
            continue
        found |= {Listener(name, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return found


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def _host(ip: str) -> str:
    """Where a client reaches a socket bound to IP: a wildcard is reached on loopback."""
    address = ipaddress.ip_address(ip)
    if address.is_unspecified:
        return "127.0.0.1"
    address = getattr(address, "ipv4_mapped", None) or address
    return f"[{address}]" if address.version == 6 else str(address)


def _http_status(host: str, port: int, token: str | None) -> int | None:
    """GET / over HTTP/1.1; None when the server does not speak it (a gRPC server hangs up)."""
    connection = http.client.HTTPConnection(host.strip("[]"), port, timeout=5)
    try:
        connection.request("GET", "/", headers={"Authorization": f"Bearer {token}"} if token else {})
        return connection.getresponse().status
    except (http.client.HTTPException, OSError):
        return None
    finally:
        connection.close()


def _grpc_code(host: str, port: int, method: str, token: str | None, timeout: float = 5) -> grpc.StatusCode:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            channel.unary_unary(method)(b"", timeout=timeout, metadata=metadata)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()


def _probe(listener: Listener, token: str) -> tuple[bool, str]:
    """(refused, what was seen) for one listening socket."""
    host, port = _host(listener.ip), listener.port
    if _is_transport(listener):
        loopback = _is_loopback(listener.ip)
        return loopback, f"{TRANSPORT}{'; loopback only' if loopback else ' on ' + listener.ip}"
    without = _http_status(host, port, None)
    if without is not None:
        with_token = _http_status(host, port, token)
        seen = f"HTTP GET / {without} without the token, {with_token} with it"
        if without in (401, 403) and with_token not in (401, 403):
            return True, seen
        return _is_loopback(listener.ip), seen + ("; loopback only" if _is_loopback(listener.ip) else "")
    codes = {method: _grpc_code(host, port, method, None) for method in RAY_METHODS}
    served = [method for method, code in codes.items() if code != grpc.StatusCode.UNIMPLEMENTED]
    if not served or any(codes[method] == grpc.StatusCode.UNAVAILABLE for method in served):
        return False, f"neither HTTP nor a known Ray gRPC service: {codes}"
    with_token = {method: _grpc_code(host, port, method, token) for method in served}
    seen = "; ".join(
        f"gRPC {method} {codes[method].name} without the token, {with_token[method].name} with it" for method in served
    )
    refused = all(codes[method] == grpc.StatusCode.UNAUTHENTICATED for method in served)
    return refused and grpc.StatusCode.UNAUTHENTICATED not in with_token.values(), seen


TRANSPORT = "not gRPC: the workers' torch.distributed transport (gloo; no token)"


def _is_transport(listener: Listener) -> bool:
    """A Train worker's socket that does not speak gRPC (its Ray core worker does): gloo's pair listener."""
    if listener.process != WORKER:
        return False
    code = _grpc_code(_host(listener.ip), listener.port, RAY_METHODS[3], None, timeout=2)
    return code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED)


def _settled(root: psutil.Process, seconds: float = 3.0, deadline_s: float = 60.0) -> set[Listener]:
    """The listening sockets once none has appeared or gone for SECONDS (agents and metrics bind late)."""
    deadline = time.monotonic() + deadline_s
    found, since = _listeners(root), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _listeners(root)
        if now != found:
            found, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds and EXPECTED_PROCESSES <= {entry.process for entry in found}:
            return found
    return found


class LocalRay(NamedTuple):
    listeners: set[Listener]
    mode: str | None
    token: str | None
    root: psutil.Process
    release: Callable[[], str]  # ends the fit; returns the child's last line


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """The child's listening sockets, the token its Ray was started with, and the fit's release."""
    # A user's fresh shell: no Ray settings inherited from this test process, so what is checked is
    # what the project sets up by itself.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_AUTH", "RAY_ENABLE_"))}
    env.pop("RAY_ADDRESS", None)
    folder = tmp_path_factory.mktemp("ports")
    stderr = (folder / "child.err").open("w+")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(folder)],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )
    root = psutil.Process(child.pid)
    tree: list[psutil.Process] = []

    def release() -> str:
        child.stdin.close()
        return child.stdout.read().strip()

    try:
        watchdog = threading.Timer(180, os.killpg, (child.pid, signal.SIGKILL))  # a hung start ends stdout
        watchdog.start()
        ready = any(line.strip() == "ready" for line in child.stdout)
        watchdog.cancel()
        if not ready:
            stderr.seek(0)
            pytest.fail(f"the local Ray did not start: {stderr.read()[-3000:]}")
        listeners = _settled(root)
        tree = root.children(recursive=True)
        gcs = next(process for process in tree if process.name() == "gcs_server")
        environ = gcs.environ()  # what the project gave the Ray it started
        yield LocalRay(listeners, environ.get("RAY_AUTH_MODE"), environ.get("RAY_AUTH_TOKEN"), root, release)
    finally:
        if not child.stdin.closed:
            child.stdin.close()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        _, alive = psutil.wait_procs(tree, timeout=15)
        for process in alive:  # what Ray leaves behind is ended here, so later tests start clean
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        stderr.close()


def test_ray_processes_of_every_kind_are_found_listening(local_ray):
    assert EXPECTED_PROCESSES <= {entry.process for entry in local_ray.listeners}, sorted(local_ray.listeners)
    assert local_ray.mode == "token" and local_ray.token and len(local_ray.token) >= 32


def test_every_port_refuses_a_client_without_the_token(local_ray):
    checked = _alive_results(local_ray)
    table = "\n".join(f"{e.process} {e.ip}:{e.port}: {seen}" for e, (_, seen) in checked.items())
    assert EXPECTED_PROCESSES <= {entry.process for entry in checked}, table
    assert [entry for entry, (refused, _) in checked.items() if not refused] == [], table


def test_a_local_run_listens_on_loopback_only(local_ray):
    listeners = local_ray.listeners
    assert listeners and [entry for entry in listeners if not _is_loopback(entry.ip)] == [], sorted(listeners)


def test_a_stranger_on_the_process_groups_transport_changes_nothing(local_ray):
    """torch.distributed has no token: its sockets stay on loopback (above), and what a stranger writes
    to them is not read as the group's data. Ray Train's own TorchConfig would also listen with a
    TCPStore on every interface (the loopback test above fails then)."""
    transport = [entry for entry in sorted(local_ray.listeners) if _is_transport(entry)]
    assert {entry.process for entry in transport} == {WORKER} and len(transport) >= 2, sorted(local_ray.listeners)
    for entry in transport:
        with socket.create_connection((_host(entry.ip).strip("[]"), entry.port), timeout=5) as stranger:
            stranger.sendall(bytes(range(256)) + (0).to_bytes(8, "little") * 16)  # junk, then zero sequence numbers
            time.sleep(0.2)
    # The workers' next all_reduce of 1 (rank 0) and 2 (rank 1), after the stranger wrote: 3 on both.
    assert local_ray.release() == "sums 3.0 3.0"


def _alive_results(local_ray: LocalRay) -> dict[Listener, tuple[bool, str]]:
    """`_probe` of each listener that is still there after probing (an idle worker may exit meanwhile)."""
    results = {entry: _probe(entry, local_ray.token) for entry in sorted(local_ray.listeners, key=lambda e: e.port)}
    current = _listeners(local_ray.root)
    return {entry: result for entry, result in results.items() if entry in current}
