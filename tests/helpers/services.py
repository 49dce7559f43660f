"""Real services on loopback for tests: PostgreSQL from Debian's packages, `mlflow server` and
`mlflow models serve`."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.local_server import free_port, wait_until_answers
from vae.errors import VAEError


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields a SQLAlchemy URL of database `mlflow`."""
    bin_dir = postgres_bin()
    assert bin_dir is not None, "PostgreSQL server binaries not found (apt-get install postgresql)"
    # Directly under /tmp: the `postgres` user cannot enter pytest's root-only temporary folders.
    data = Path(tempfile.mkdtemp(prefix="vae-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        _as_postgres(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-l",
                str(data / "log"),
                "-o",
                f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                str(bin_dir / "psql") if (bin_dir / "psql").exists() else "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-c",
                "CREATE DATABASE mlflow",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), capture_output=True
        )
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def mlflow_server(backend_uri: str, workdir: Path, timeout: float = 180) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 over `backend_uri`; yields its http URL."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(workdir / "mlflow-server.log", "w")
    process = subprocess.Popen(
        [
            str(bin_dir / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            str(workdir / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        logged = workdir / "mlflow-server.log"
        wait_until_answers(f"{url}/health", "mlflow server", timeout, process, lambda: logged.read_text()[-2000:], 0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@contextmanager
def mlflow_serve(model: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Iterator[str]:
    """`mlflow models serve -m MODEL --env-manager local` on 127.0.0.1 (with `env`, default this process's,
    and the venv's bin first on PATH: the local env manager execs uvicorn from it); yields its URL once
    /ping answers (a test failure with the server's last output if it does not in 120 s); stops it."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    process = subprocess.Popen(
        [f"{bin_dir}/mlflow", "models", "serve", "-m", model, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_answers(f"{url}/ping", "mlflow models serve", 120, process, lambda: process.stderr.read()[-3000:], 0.5)  # fmt: skip
        except VAEError as error:
            pytest.fail(str(error))
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
