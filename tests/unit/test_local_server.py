"""Waiting for a local service: the one poller that `vae run`'s Prefect server and the test services share;
flow runs on a server of `vae run`'s own without heartbeats."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import pytest

from flows.local_server import free_port, wait_until_answers, without_heartbeats
from vae.errors import VAEError


def test_a_server_that_answers_ends_the_wait():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wait_until_answers(f"http://127.0.0.1:{server.server_port}/", "a test server", timeout=10)
    finally:
        server.shutdown()


def test_a_process_that_exits_first_is_one_line_with_its_last_output():
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    process.wait()
    with pytest.raises(VAEError, match=r"^the service exited \(3\): port in use$"):
        wait_until_answers(f"http://127.0.0.1:{free_port()}/", "the service", 10, process, lambda: "port in use")


def test_nothing_listening_times_out_naming_the_service():
    with pytest.raises(VAEError, match=r"^the service did not answer within 1 s$"):
        wait_until_answers(f"http://127.0.0.1:{free_port()}/", "the service", 0.6, interval=0.1)


def _heartbeat_threads() -> int:
    """Threads running Prefect's flow-run heartbeat loop (prefect.flow_engine._send_heartbeats)."""
    arguments = [getattr(thread, "_args", ()) for thread in threading.enumerate()]
    return sum(1 for args in arguments if args and getattr(args[0], "__name__", "") == "heartbeat_loop")


@pytest.mark.integration
def test_flow_runs_on_a_server_of_our_own_send_no_heartbeats(prefect_server):
    """Prefect (180 s by default) starts a heartbeat thread per flow run and joins it at the run's end,
    while it sleeps in one-second steps; `without_heartbeats` (vae run on its own server) starts none."""
    from prefect import flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    @flow
    def heartbeats_seen() -> int:
        return _heartbeat_threads()

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 180}):  # Prefect's default, outside the test harness
        assert heartbeats_seen() == 1
        assert without_heartbeats(heartbeats_seen)() == 0
