"""Waiting for a local service: the one poller that `vae run`'s Prefect server and the test services share."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import pytest

from flows.local_server import free_port, wait_until_answers
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
