"""How a batch job's row ranges become Ray Data blocks and actors (vae.jobs.batch)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vae.jobs.batch import BLOCKS_PER_ACTOR, plan_blocks, read_rows, row_ranges


@pytest.mark.parametrize("ranges", [1, 2, 3, 19, 64, 70_000])
@pytest.mark.parametrize("workers", [1, 2, 8])
def test_no_actor_is_left_without_a_block_and_blocks_stay_few(ranges, workers):
    actors, blocks = plan_blocks(ranges, workers)
    assert actors == min(workers, ranges)  # as many actors as asked for, unless fewer ranges than that
    assert actors <= blocks <= ranges  # a block for each actor, no block without a range
    assert blocks == min(ranges, actors * BLOCKS_PER_ACTOR)


def test_ranges_cover_every_row_once_and_read_back_across_row_groups(tmp_path):
    counts = {"train": 23, "test": 7}
    paths, images = {}, {}
    for split, n in counts.items():
        images[split] = np.arange(n * 4, dtype=np.uint8).reshape(n, 4) + (100 if split == "test" else 0)  # (n, 4)
        column = pa.FixedSizeListArray.from_arrays(pa.array(images[split].ravel()), 4)
        path = str(tmp_path / f"{split}.parquet")
        pq.write_table(pa.table({"image": column, "label": pa.array(range(n))}), path, row_group_size=3)
        paths[path] = split
    work = row_ranges(paths, {"rows": counts}, 5)
    assert work.num_rows == sum(math.ceil(n / 5) for n in counts.values())
    for split, n in counts.items():
        mine = [row for row in work.to_pylist() if row["split"] == split]
        assert [row["first"] for row in mine] == list(range(0, n, 5))
        got = np.concatenate(
            [np.stack(read_rows(r["path"], r["first"], r["count"]).column("image").to_pylist()) for r in mine]
        )
        np.testing.assert_array_equal(got, images[split])  # every row once, in order, across groups of 3
