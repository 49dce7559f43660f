"""Training data for the Ray Train workers, and each worker's train and validation shards (`Shards`),
cut into shuffled minibatches.

Two ways in, chosen once on the driver by the plan's `resident` (a worker's shard fits its device's
budget, `training.device_data_mb`):
- resident: the driver puts both splits into Ray's object store once (`put_splits`, a few MB to a
  few hundred); each worker takes its contiguous block of rows from it (zero-copy on its node) and
  holds it on its device for the whole run. No Ray Data pipeline is started: its split coordinators
  are two processes per fit (a search: per trial), ~1.5 s of CPU each on a small machine.
- streamed: Ray Datasets over the Parquet splits (`ray_dataset`), split across workers by Ray Train
  and read every epoch.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from vae.train.plan import WorkerPlan

MATERIALIZE_BELOW_BYTES = 256 * 2**20
CHUNK_BATCHES = 32  # minibatches per Ray Data batch when streaming (see streamed_minibatches)
# Validation rows per forward pass on a GPU with the shard resident: on an H200 the 100 eager passes of
# batch 100 over Fashion-MNIST's 10k validation rows were most of the 0.1 s an epoch spent outside its steps.
GPU_VALIDATION_ROWS = 2048


SPLITS = ("train", "validation")


def load_splits(dataset_path: str) -> dict[str, np.ndarray]:
    """The train and validation images (N, D), as stored: {split: array}."""
    from vae.data.datasets import load_split

    return {split: load_split(dataset_path, split)[0] for split in SPLITS}


def put_splits(dataset_path: str) -> dict:
    """The train and validation images (N, D), as stored, in Ray's object store: {split: ObjectRef}."""
    import ray

    return {split: ray.put(images) for split, images in load_splits(dataset_path).items()}


def rank_rows(rows: int, rank: int, world: int) -> slice:
    """Rank's contiguous block of a split's rows: the first `rows % world` ranks take one row more."""
    size, extra = divmod(rows, world)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


def resident_steps(rows: int, world: int, batch_size: int, drop_last: bool) -> int:
    """Minibatches per epoch on every rank alike (DDP's collectives need the same count everywhere):
    those of the smallest shard, `rows // world` rows; a rank with one row more puts it in its last batch."""
    smallest = rows // world
    return smallest // batch_size if drop_last else math.ceil(smallest / batch_size)


def resident_minibatches(
    data: torch.Tensor, batch_size: int, generator: torch.Generator, drop_last: bool, steps: int | None = None
):
    """Shuffled minibatches (B, D) of a shard held on the device: the permutation is drawn there too.

    Without `steps`: every full batch and, unless `drop_last`, the short last one. With `steps`
    (`resident_steps`): exactly that many; the last takes the rows the others left (all of them
    unless `drop_last`), so a shard one row longer than the smallest has one batch of B + 1.
    """
    rows = data.shape[0]
    order = torch.randperm(rows, generator=generator, device=data.device)  # (N,)
    if steps is None:
        steps = rows // batch_size if drop_last else math.ceil(rows / batch_size)
    end = min(rows, steps * batch_size) if drop_last else rows
    for step in range(steps):
        stop = end if step == steps - 1 else (step + 1) * batch_size
        yield data[order[step * batch_size : stop]]  # (B, D)


def streamed_minibatches(shard, batch_size: int, seed: int, device: torch.device, drop_last: bool = False):
    """A worker's shard streamed from Ray Data as shuffled minibatches (B, D).

    Ray Data converts CHUNK_BATCHES minibatches at a time (one Arrow → tensor conversion instead
    of one per minibatch); each chunk is permuted and cut here. With the block order randomised
    every epoch (see `ray_dataset`), that is a local shuffle at least as strong as a shuffle buffer.
    Every chunk but the last is full, so ranks with equal rows take equal numbers of steps. With
    `drop_last` (a CUDA-graph step replays one batch shape) the shard's final short batch is skipped.
    """
    generator = torch.Generator().manual_seed(seed)
    for chunk in shard.iter_torch_batches(batch_size=batch_size * CHUNK_BATCHES):
        images = chunk["image"]  # (C, D), C = batch_size * CHUNK_BATCHES except at the end
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0], batch_size):
            if drop_last and start + batch_size > images.shape[0]:
                break  # only the last chunk can end short
            yield images[order[start : start + batch_size]].to(device, non_blocking=True)  # (B, D)


def _resident_shard(split, rank: int, world: int, device: torch.device) -> torch.Tensor:
    """Rank's block of a split (in the object store, or an array in this process) as stored pixels (N, D) on its device."""
    if not isinstance(split, np.ndarray):
        import ray

        split = ray.get(split)  # (N, D), read-only: a view of the object store on this node
    return torch.from_numpy(np.array(split[rank_rows(split.shape[0], rank, world)])).to(device)


class Shards:
    """A worker's train and validation rows: held on the device (from the object store) or streamed from Ray Data."""

    def __init__(self, plan: WorkerPlan, session, splits: dict | None):
        rank, world, device = session.rank, session.world, session.device
        self.plan, self.device, self.world = plan, device, world
        batch = plan.training.batch_size
        if plan.resident:
            self.train = _resident_shard(splits["train"], rank, world, device)
            self.validation = _resident_shard(splits["validation"], rank, world, device)
            self.steps_per_epoch = max(1, resident_steps(plan.train_rows, world, batch, drop_last=False))
        else:
            self.train = session.dataset_shard("train")
            self.validation = session.dataset_shard("validation")
            self.steps_per_epoch = max(1, plan.train_rows // (batch * world))

    def train_batches(self, seed: int, drop_last: bool):
        batch = self.plan.training.batch_size
        if self.plan.resident:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            steps = resident_steps(self.plan.train_rows, self.world, batch, drop_last)
            return resident_minibatches(self.train, batch, generator, drop_last, steps)
        return streamed_minibatches(self.train, batch, seed, self.device, drop_last)

    def validation_batches(self):
        """The validation rows in batches of the training batch size, or of GPU_VALIDATION_ROWS on a GPU."""
        batch = self.plan.training.batch_size
        if self.plan.resident:
            if self.device.type == "cuda":
                batch = max(batch, GPU_VALIDATION_ROWS)
            return (self.validation[i : i + batch] for i in range(0, self.validation.shape[0], batch))
        return (b["image"] for b in self.validation.iter_torch_batches(batch_size=batch, device=self.device))


def ray_dataset(path: str, shuffle: bool = False):
    """A Ray Dataset over one Parquet split (streamed shards); small splits are read once, in memory, not per epoch.

    A split under one Ray Data block (DataContext.target_max_block_size, 128 MiB) is read here with
    pyarrow (its row groups' uncompressed bytes decide) and put into the object store as that one block (`ray.data.from_arrow`): the same single
    block `read_parquet(...).materialize()` makes of it, so the same shards, but without starting
    Ray Data's read tasks (measured on 2 busy cores: 17.4 s for digits' train split, against 0.02 s;
    bench/bench_fixed_costs.py). Splits up to MATERIALIZE_BELOW_BYTES are read once by Ray Data;
    bigger ones stream from Parquet every epoch.
    """
    import ray.data

    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    in_memory = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    if in_memory < (ray.data.DataContext.get_current().target_max_block_size or 0):
        dataset = ray.data.from_arrow(pq.read_table(path))
    else:
        dataset = ray.data.read_parquet(path)
        if os.path.getsize(path) < MATERIALIZE_BELOW_BYTES:
            dataset = dataset.materialize()  # read once into the object store, not every epoch
    return dataset.randomize_block_order() if shuffle else dataset  # a new block order every epoch (of several)
