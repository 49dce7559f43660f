"""How rank 0's epoch metrics reach the driver during a Ray Train fit: `open_channel` on the driver,
`put` on rank 0, `get` in the driver's progress thread (vae.train.driver), `close` after the fit.

On a Ray of vae's own (one machine, `vae.cluster.is_own_ray`) the channel is a file: rank 0 appends a
JSON line per epoch, the driver reads the lines as they come. On a cluster ($RAY_ADDRESS) rank 0 may run
on another machine, so the channel is Ray's `Queue`, an actor: a process of its own, ~1 s of CPU to
start beside the workers on 2 cores, which a fit on one machine does without (issue 26).

Without torch at import, as the rest of the loop's config: Ray Train's controller unpickles it
(vae.train.scaling says why that matters).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

POLL_SECONDS = 0.05  # how often the driver looks for a new line: an epoch's line is printed this late at most


@dataclass
class FileChannel:
    """A JSON line per epoch, appended by rank 0 (on this machine) to `path`, a file only this user can read."""

    path: str
    _reader: TextIO | None = field(default=None, repr=False)
    _partial: str = field(default="", repr=False)  # the start of a line rank 0 is still writing

    def put(self, metrics: dict[str, float]) -> None:
        # One write of one line to a file opened for appending: a reader sees it whole or not yet.
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")

    def get(self, timeout: float) -> dict[str, float] | None:
        """The next epoch's metrics, or None if none came within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        if self._reader is None:
            self._reader = open(self.path, encoding="utf-8")  # kept open until close()
        while True:
            self._partial += self._reader.readline()  # "" at the end of what is written so far
            if self._partial.endswith("\n"):
                line, self._partial = self._partial, ""
                return json.loads(line)
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_SECONDS)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}  # a worker gets the path, not what the driver has read

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class QueueChannel:
    """Ray's `Queue` actor, for a fit whose rank 0 may run on another machine."""

    def __init__(self) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})

    def put(self, metrics: dict[str, float]) -> None:
        self.queue.put(metrics)

    def get(self, timeout: float) -> dict[str, float] | None:
        from ray.util.queue import Empty

        try:
            return self.queue.get(timeout=timeout)
        except Empty:
            return None

    def close(self) -> None:
        import ray

        ray.kill(self.queue.actor)


Channel = FileChannel | QueueChannel


def open_channel(one_machine: bool) -> Channel:
    """A file when every worker runs on this machine (a Ray of vae's own), else Ray's queue actor."""
    if not one_machine:
        return QueueChannel()
    descriptor, path = tempfile.mkstemp(prefix="vae-progress-", suffix=".jsonl")  # mode 0600
    os.close(descriptor)
    return FileChannel(path)
