"""torch.distributed for the Ray Train workers, without a listening socket off loopback on one machine.

Ray Train's own `TorchConfig` starts every worker group, one worker or many, with an `env://`
rendezvous: a `TCPStore` on worker 0 that listens on every interface with no token, for as long
as the fit runs, and gloo's transport bound to whatever address the host name resolves to. On
one machine neither has to leave the host, so `TorchConfig` here sets the process group up as:

- one worker: no process group at all. DDP is not used (`prepare_model` wraps a model only for
  a world of two or more), and nothing collective is called; no store, no transport socket.
- two or more workers on one node: a `file://` rendezvous (torch's `FileStore`) in a fresh
  directory of mode 0700 made by worker 0, removed when the group shuts down, and gloo's and
  NCCL's sockets on the loopback interface (`GLOO_SOCKET_IFNAME`/`NCCL_SOCKET_IFNAME`, unless
  the user set them).
- workers on several nodes: Ray Train's own setup (`env://`, the store on worker 0's node).
  That store and gloo's transport accept anyone who reaches them; the README's port table says
  which ports a cluster's firewall must keep to the cluster.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import ray
from ray.train.torch import TorchConfig as RayTorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

RENDEZVOUS_FILE = "store"


@dataclass
class TorchConfig(RayTorchConfig):
    """Ray Train's `TorchConfig` with the one-machine process group of this module's docstring."""

    @property
    def backend_cls(self):
        return _OneMachineBackend


class _OneMachineBackend(_TorchBackend):
    def __init__(self) -> None:
        self._rendezvous: str | None = None

    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        size = len(worker_group)
        if size > 1 and len(set(worker_group.execute(_node_id))) > 1:
            super().on_start(worker_group, backend_config)  # several machines: Ray Train's env:// store
            return
        worker_group.execute(_set_torch_distributed_env_vars)  # RANK, LOCAL_RANK, ... as Ray Train sets them
        if size == 1:
            return
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        self._rendezvous = worker_group.execute_single(0, _make_rendezvous)
        worker_group.execute(_loopback_transport)
        ray.get(
            [
                worker_group.execute_single_async(
                    rank,
                    _setup_torch_process_group,
                    backend=backend,
                    world_rank=rank,
                    world_size=size,
                    init_method=f"file://{self._rendezvous}/{RENDEZVOUS_FILE}",
                    timeout_s=backend_config.timeout_s,
                )
                for rank in range(size)
            ]
        )

    def on_shutdown(self, worker_group, backend_config) -> None:
        try:
            super().on_shutdown(worker_group, backend_config)
        finally:
            if self._rendezvous is not None:
                # Every worker shares the node: whichever is still alive (one may have died) removes it.
                removals = worker_group.execute_async(shutil.rmtree, self._rendezvous, ignore_errors=True)
                ray.wait(removals, num_returns=len(removals), timeout=10)
                self._rendezvous = None


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _make_rendezvous() -> str:
    """A new directory only this user can enter (mkdtemp: mode 0700) for the FileStore."""
    return tempfile.mkdtemp(prefix="vae-rendezvous-")


def loopback_interface() -> str | None:
    """The name of the network interface that carries 127.0.0.1 (`lo` on Linux, `lo0` on macOS)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(address.address == "127.0.0.1" for address in addresses):
            return name
    return None


def _loopback_transport() -> None:
    """gloo and NCCL open their sockets on the loopback interface (a user's own choice wins)."""
    name = loopback_interface()
    if name:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", name)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", name)
