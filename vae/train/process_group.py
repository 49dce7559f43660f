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

This module never imports torch: Ray Train's controller unpickles the config and runs the backend, and
a controller that imported torch (through `ray.train.torch`) would spend ~1.4 s of CPU on it before it
starts the workers (issue 26). What runs on the workers imports Ray's torch helpers there, when called.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig

RENDEZVOUS_FILE = "store"
RENDEZVOUS_PREFIX = "vae-rendezvous-"


@dataclass
class TorchConfig(BackendConfig):
    """Ray Train's `TorchConfig` (the same fields; `TorchTrainer` fills in `backend`) with the one-machine
    process group of this module's docstring."""

    backend: str | None = None
    init_method: str = "env"
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return _OneMachineBackend

    @property
    def train_func_context(self):  # read where the trainer is made (the driver, which has torch)
        from ray.train.torch.config import TorchConfigContextManager

        return TorchConfigContextManager

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "init_method": self.init_method, "timeout_s": self.timeout_s}


class _OneMachineBackend(Backend):
    share_cuda_visible_devices: bool = True  # as Ray's: GPU workers on a node see each other's devices

    def __init__(self) -> None:
        self._rendezvous: str | None = None

    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        size = len(worker_group)
        if size > 1 and len(set(worker_group.execute(_node_id))) > 1:
            from ray.train.torch.config import _TorchBackend  # several machines: Ray Train's env:// store

            _TorchBackend().on_start(worker_group, backend_config)
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
        """As Ray's `_TorchBackend.on_shutdown` (the workers leave the process group, with its timeout),
        then the rendezvous directory is removed."""
        from ray._private.ray_constants import env_integer
        from ray.exceptions import GetTimeoutError
        from ray.train.constants import (
            DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
        )

        try:
            leaving = worker_group.execute_async(_shutdown_torch, destroy_process_group=len(worker_group) > 1)
            timeout = env_integer(
                TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
            )
            try:
                ray.get(leaving, timeout=timeout)
            except GetTimeoutError:
                logging.getLogger(__name__).warning(f"Torch process group shutdown timed out after {timeout} seconds")
        finally:
            if self._rendezvous is not None:
                # Every worker shares the node: whichever is still alive (one may have died) removes it.
                removals = worker_group.execute_async(shutil.rmtree, self._rendezvous, ignore_errors=True)
                ray.wait(removals, num_returns=len(removals), timeout=10)
                self._rendezvous = None


# Ray's torch helpers, run on the workers (which have torch); wrapped so that the controller, which
# sends them, never imports ray.train.torch to name them.
def _set_torch_distributed_env_vars() -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars as set_env_vars

    set_env_vars()


def _setup_torch_process_group(**arguments) -> None:
    from ray.train.torch.config import _setup_torch_process_group as setup

    setup(**arguments)


def _shutdown_torch(destroy_process_group: bool = False) -> None:
    from ray.train.torch.config import _shutdown_torch as shutdown

    shutdown(destroy_process_group=destroy_process_group)


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _make_rendezvous() -> str:
    """A new directory only this user can enter (mkdtemp: mode 0700) for the FileStore, named after the
    Train run (`vae-rendezvous-<run>-…`): one left behind says whose it was, and a run's own can be told
    from another run's on the same machine."""
    import ray.train

    run = re.sub(r"[^A-Za-z0-9_.-]+", "_", ray.train.get_context().get_experiment_name())
    return tempfile.mkdtemp(prefix=f"{RENDEZVOUS_PREFIX}{run}-")


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
