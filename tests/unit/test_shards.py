"""Resident shards: every rank's block of rows, and the same number of minibatches on every rank.

DDP all-reduces gradients at every step, so ranks with different step counts would wait for each
other forever; the blocks differ by one row at most, which goes into a rank's last batch.
"""

from __future__ import annotations

import pytest
import torch

from vae.train.shards import rank_rows, resident_minibatches, resident_steps


@pytest.mark.parametrize("rows, world", [(1437, 2), (33, 2), (32, 2), (10, 3), (7, 4), (1, 1), (1000, 7)])
def test_the_ranks_blocks_partition_the_split_and_differ_by_a_row_at_most(rows, world):
    blocks = [range(rows)[rank_rows(rows, rank, world)] for rank in range(world)]
    assert [i for block in blocks for i in block] == list(range(rows))  # contiguous, in order, all of them
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("rows, world, batch", [(33, 2, 16), (65, 2, 16), (64, 2, 16), (50, 3, 8), (1437, 2, 16)])
def test_every_rank_takes_the_same_number_of_batches_and_sees_its_rows(rows, world, batch, drop_last):
    data = torch.arange(rows, dtype=torch.float32)[:, None]  # (N, 1): row i holds i
    steps = resident_steps(rows, world, batch, drop_last)
    seen = []
    for rank in range(world):
        block = data[rank_rows(rows, rank, world)]
        batches = list(resident_minibatches(block, batch, torch.Generator().manual_seed(rank), drop_last, steps))
        assert len(batches) == steps
        assert all(len(b) == batch for b in batches[:-1]) and 1 <= len(batches[-1]) <= batch + 1
        if drop_last:
            assert all(len(b) == batch for b in batches)  # one shape for a CUDA graph
        taken = torch.cat(batches)[:, 0].tolist()
        assert len(set(taken)) == len(taken) and set(taken) <= set(block[:, 0].tolist())
        seen += taken
    if not drop_last:
        assert sorted(seen) == list(range(rows))  # nothing left out in an epoch


def test_without_steps_the_batches_are_the_shards_own():
    data = torch.arange(33, dtype=torch.float32)[:, None]
    sizes = [len(b) for b in resident_minibatches(data, 16, torch.Generator().manual_seed(0), False)]
    assert sizes == [16, 16, 1]
    sizes = [len(b) for b in resident_minibatches(data, 16, torch.Generator().manual_seed(0), True)]
    assert sizes == [16, 16]
