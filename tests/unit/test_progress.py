"""The progress channel on one machine (vae.train.progress.FileChannel): rank 0's epochs reach the driver
whole and in order, a line half-written is not read until it is whole, and a worker's copy is a fresh
writer of the same file."""

from __future__ import annotations

import math
import os
import pickle
import stat
import time

from vae.train.progress import FileChannel, open_channel


def test_epochs_arrive_whole_in_order_and_a_partial_line_waits(tmp_path):
    channel = open_channel(one_machine=True)
    try:
        assert isinstance(channel, FileChannel)
        assert stat.S_IMODE(os.stat(channel.path).st_mode) == 0o600
        worker = pickle.loads(pickle.dumps(channel))  # what Ray gives rank 0
        assert worker.path == channel.path
        started = time.monotonic()
        assert channel.get(timeout=0.2) is None and time.monotonic() - started >= 0.2
        worker.put({"epoch": 1, "train_elbo": -20.5})
        worker.put({"epoch": 2, "train_elbo": float("nan")})
        with open(channel.path, "a") as handle:  # a third line, caught mid-write
            handle.write('{"epoch": 3, "train_')
        assert channel.get(timeout=1) == {"epoch": 1, "train_elbo": -20.5}
        second = channel.get(timeout=1)
        assert second["epoch"] == 2 and math.isnan(second["train_elbo"])
        assert channel.get(timeout=0.1) is None
        with open(channel.path, "a") as handle:
            handle.write('elbo": -19.0}\n')
        assert channel.get(timeout=1) == {"epoch": 3, "train_elbo": -19.0}
    finally:
        channel.close()
    assert not os.path.exists(channel.path)
