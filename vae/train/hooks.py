"""Callbacks into the worker loop, for tests and tools (`RowAudit`: which rows each rank saw).

Without torch at import: hooks travel in the loop's config, which Ray Train's controller unpickles
too (vae.train.scaling says why that matters).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class WorkerHooks:
    """Callbacks into the worker loop, for tests and tools; the default does nothing."""

    def epoch_started(self, epoch: int, rank: int) -> None: ...

    def batch(self, epoch: int, rank: int, images: torch.Tensor) -> None: ...

    def epoch_finished(self, epoch: int, rank: int) -> None: ...


class RowAudit(WorkerHooks):
    """Records epochs started (rank 0) and, for the run's first epoch, a hash of every row each rank saw."""

    def __init__(self, directory: str):
        self.directory, self.first_epoch, self.seen = directory, None, []

    def epoch_started(self, epoch: int, rank: int) -> None:
        self.first_epoch = self.first_epoch or epoch
        if rank == 0:
            with open(os.path.join(self.directory, "epochs_started.txt"), "a") as handle:
                handle.write(f"{epoch}\n")

    def batch(self, epoch: int, rank: int, images: torch.Tensor) -> None:
        if epoch == self.first_epoch:
            self.seen.extend(hashlib.sha1(row.cpu().numpy().tobytes()).hexdigest() for row in images)

    def epoch_finished(self, epoch: int, rank: int) -> None:
        if epoch == self.first_epoch:
            with open(os.path.join(self.directory, f"rows-rank{rank}.json"), "w") as handle:
                json.dump(self.seen, handle)
