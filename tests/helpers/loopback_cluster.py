"""Cluster mode on loopback, with the commands and environments of compose.yaml.

`docker compose config` (or docker-compose v1) validates compose.yaml and interpolates it with
loopback addresses, free ports and fresh credentials; each service's `command` and
`environment` are then run here as local processes, exactly as the containers would run them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flows.local_server import wait_until_answers

REPO = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (v1), whichever this machine has."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


def compose_config(variables: dict[str, str]) -> dict:
    """compose.yaml validated and interpolated with `variables` (nothing else from our environment)."""
    command = compose_command()
    assert command is not None, (
        "neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)"
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"), **variables}
    result = subprocess.run(
        [*command, "-f", str(REPO / "compose.yaml"), "--profile", "tools", "config"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise AssertionError(f"compose config failed: {result.stderr.strip()}")
    return yaml.safe_load(result.stdout)


def free_ports(n: int) -> list[int]:
    """Distinct free TCP ports between Ray's worker port range and Linux's ephemeral range."""
    ports: set[int] = set()
    while len(ports) < n:
        port = secrets.randbelow(12000) + 20000  # above Ray's worker ports (10002-19999), below 32768
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.add(port)
    return sorted(ports)


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    wait_until_answers(url, url, timeout, process, lambda: log.read_text()[-3000:] if log else "", 0.5)


@dataclass
class Services:
    """Processes started from compose services, stopped (with their process groups) in reverse order."""

    workdir: Path
    config: dict
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def environment(self, service: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "MLFLOW_", "RAY_")) and k not in ("VAE_HOME", "VAE_OWN_RAY")
        }  # what the compose file gives a service, not this test process's own (its local Ray's included)
        env.update({k: str(v) for k, v in (self.config["services"][service].get("environment") or {}).items()})
        env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
        env.update(extra or {})
        return env

    def start(self, service: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        spec = self.config["services"][service]
        cwd = Path(spec.get("working_dir") or REPO)
        cwd.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"{service}.log", "w")
        process = subprocess.Popen(
            [str(part) for part in spec["command"]],
            cwd=cwd,
            env=self.environment(service, extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[service] = process
        return process

    def log(self, service: str) -> str:
        path = self.workdir / f"{service}.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM to every service's process group at once, one shared grace period, then SIGKILL:
        stopping them one after another cost up to 15 s each (a Ray node or a Prefect worker that
        drains before it exits)."""
        _stop_groups([process for process in self.processes.values() if process.poll() is None])
        kill_matching(str(self.workdir))  # Ray daemons and workers leave the groups they started in


def _stop_groups(processes: list[subprocess.Popen], grace: float = 15) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in processes:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + (grace if sig == signal.SIGTERM else 10)
        while time.time() < deadline and any(process.poll() is None for process in processes):
            time.sleep(0.1)
        processes = [process for process in processes if process.poll() is None]
        if not processes:
            return


def kill_matching(text: str, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL, every process (and its descendants) whose command line contains `text`."""

    def matching() -> set[int]:
        table = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    table[int(entry.name)] = (stat[0], int(stat[1]), command)
                except (OSError, ValueError, IndexError):
                    pass
        pids = {pid for pid, (_, _, command) in table.items() if text in command} - {os.getpid()}
        while True:
            children = {pid for pid, (_, parent, _) in table.items() if parent in pids} - pids - {os.getpid()}
            if not children:
                break
            pids |= children
        return {pid for pid in pids if table[pid][0] != "Z"}

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        pids = matching()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while matching() and time.time() < deadline:
            time.sleep(0.2)
        if not matching():
            return
