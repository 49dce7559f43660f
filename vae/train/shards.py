"""Training data through Ray Data: the Ray Datasets over a dataset's Parquet splits (`ray_dataset`,
on the driver) and, on each Ray Train worker, its train and validation shards (`Shards`), held on
the worker's device (read once) or streamed every epoch, cut into shuffled minibatches.
"""

from __future__ import annotations

import os

import torch

from vae.train.plan import WorkerPlan

MATERIALIZE_BELOW_BYTES = 256 * 2**20
CHUNK_BATCHES = 32  # minibatches per Ray Data batch when streaming (see streamed_minibatches)
# Validation rows per forward pass on a GPU with the shard resident: on an H200 the 100 eager passes of
# batch 100 over Fashion-MNIST's 10k validation rows were most of the 0.1 s an epoch spent outside its steps.
GPU_VALIDATION_ROWS = 2048


def _load_shard(shard, device: torch.device) -> torch.Tensor:
    """A worker's whole shard as stored pixels (N, D) on its device, read once from Ray Data."""
    parts = [batch["image"] for batch in shard.iter_torch_batches(batch_size=8192, device=device)]
    return torch.cat(parts) if parts else torch.empty((0, 0), device=device)


def resident_minibatches(data: torch.Tensor, batch_size: int, generator: torch.Generator, drop_last: bool):
    """Shuffled minibatches (B, D) of a shard held on the device: the permutation is drawn there too."""
    order = torch.randperm(data.shape[0], generator=generator, device=data.device)  # (N,)
    end = data.shape[0] - data.shape[0] % batch_size if drop_last else data.shape[0]
    for start in range(0, end, batch_size):
        yield data[order[start : start + batch_size]]  # (B, D)


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


class Shards:
    """A worker's train and validation rows: held on the device (read once) or streamed from Ray Data."""

    def __init__(self, plan: WorkerPlan, device: torch.device, world: int):
        import ray.train

        self.plan, self.device = plan, device
        self.train, self.validation = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("validation")
        batch = plan.training.batch_size
        if plan.resident:
            self.train, self.validation = _load_shard(self.train, device), _load_shard(self.validation, device)
            self.steps_per_epoch = max(1, self.train.shape[0] // batch)
        else:
            self.steps_per_epoch = max(1, plan.train_rows // (batch * world))

    def train_batches(self, seed: int, drop_last: bool):
        batch = self.plan.training.batch_size
        if self.plan.resident:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            return resident_minibatches(self.train, batch, generator, drop_last)
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
    """A Ray Dataset over one Parquet split; small splits are read once, in memory, not per epoch.

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
