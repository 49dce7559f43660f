"""The GPU-shaped paths, pinned on CPU: device-side all-reduce, the stepper against a plain loop,
checkpoints that move between optimiser modes, and block-seeded evaluation noise.

CI has no GPU: these check what can be checked without one (bench/bench_gpu.py measures the rest).
"""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vae.config import EvaluationConfig, ModelConfig
from vae.data.inputs import prepare_inputs
from vae.evaluate.estimators import NOISE_BLOCK, block_noise, estimate_log_likelihood
from vae.models.model import build_model
from vae.models.objectives import elbo
from vae.evaluate.evaluation import estimate_on_device, evaluation_device
from vae.train.stepper import Objective, Stepper, make_optimizer, restore_optimizer
from vae.train.shards import resident_minibatches, streamed_minibatches
from vae.train.worker import all_reduce_sums

CPU = torch.device("cpu")


def _reduce_worker(rank: int, world: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    values = torch.tensor([1.0 + rank, 10.0 * (rank + 1)], dtype=torch.float64)
    reduced = all_reduce_sums(values)
    torch.save(
        {"values": reduced, "device": str(reduced.device), "same": reduced is values},
        os.path.join(results, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def test_all_reduce_sums_reduces_in_place_on_the_tensors_own_device():
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_reduce_worker, args=(2, os.path.join(folder, "init"), folder), nprocs=2, join=True)
        outcomes = [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in (0, 1)]
    for outcome in outcomes:
        assert outcome["values"].tolist() == [1.0 + 2.0, 10.0 + 20.0]
        assert outcome["device"] == "cpu" and outcome["same"]  # no copy to another device
    assert all_reduce_sums(torch.tensor([2.5])).tolist() == [2.5]  # no process group: unchanged


def _model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(latent_dim=3, hidden=(16,)), 12)
    images = torch.randint(0, 256, (40, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return model, images


def test_stepper_matches_a_plain_loop_and_asks_for_no_graph_on_cpu():
    model, images = _model_and_data()
    reference = build_model(ModelConfig(latent_dim=3, hidden=(16,)), 12)
    reference.load_state_dict(model.state_dict())

    optimizer = make_optimizer(model.parameters(), 1e-2, CPU, graphed=True)
    stepper = Stepper(Objective(model, "elbo", 1), optimizer, max_value=255, binarize="dynamic", device=CPU, graph=True)
    assert not stepper.graphed and not stepper.drop_last  # CUDA graphs need CUDA: eager here
    torch.manual_seed(5)
    stepper.start_epoch()
    for start in range(0, 40, 16):  # batches of 16, 16 and 8
        stepper.step(images[start : start + 16], beta=0.5)

    # The same steps written out by hand, with the same noise.
    plain = torch.optim.Adam(reference.parameters(), lr=1e-2)
    torch.manual_seed(5)
    sums = torch.zeros(5, dtype=torch.float64)
    for start in range(0, 40, 16):
        x = prepare_inputs(images[start : start + 16], 255, "dynamic")
        terms = elbo(reference, x)
        target = terms.reconstruction - 0.5 * terms.kl
        plain.zero_grad()
        (-target.mean()).backward()
        plain.step()
        sums += torch.tensor(
            [
                target.sum().item(),
                terms.elbo.sum().item(),
                terms.reconstruction.sum().item(),
                terms.kl.sum().item(),
                x.shape[0],
            ],
            dtype=torch.float64,
        )
    assert torch.allclose(stepper.sums, sums, rtol=1e-6, atol=1e-6)
    assert stepper.sums[4].item() == 40
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(ours, theirs, atol=1e-6)
    assert stepper.first_bad_step() == (0, 0.0)


def test_a_non_finite_loss_is_recorded_by_step_on_the_device():
    model, images = _model_and_data()
    optimizer = make_optimizer(model.parameters(), 1e-3, CPU, graphed=False)
    stepper = Stepper(Objective(model, "elbo", 1), optimizer, max_value=255, binarize="threshold", device=CPU)
    stepper.start_epoch()
    stepper.step(images[:8], beta=1.0)
    with torch.no_grad():
        model.decoder[0].weight.fill_(math.inf)
    stepper.step(images[8:16], beta=1.0)
    stepper.step(images[16:24], beta=1.0)
    step, loss = stepper.first_bad_step()
    assert step == 2 and not math.isfinite(loss)
    stepper.start_epoch()
    assert stepper.first_bad_step() == (0, 0.0)


def test_optimizer_state_moves_between_graph_and_plain_modes():
    model, images = _model_and_data()
    saved = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(images.float()).__getitem__(0).sum().backward()
    saved.step()
    state = saved.state_dict()
    # As a CUDA-graph run saves it: a tensor learning rate, capturable, decayed to 4e-4.
    state["param_groups"][0].update(lr=torch.tensor(4e-4), capturable=True)

    plain = torch.optim.Adam(model.parameters(), lr=1e-3)
    restore_optimizer(plain, state)
    group = plain.param_groups[0]
    assert group["lr"] == pytest.approx(4e-4) and isinstance(group["lr"], float) and not group["capturable"]
    steps = [entry["step"] for entry in plain.state.values()]
    assert steps and all(s.device.type == "cpu" and s.item() == 1 for s in steps)
    model(images.float())[0].sum().backward()
    plain.step()  # the restored optimiser runs


def test_block_noise_depends_only_on_the_example_index():
    whole = block_noise(7, 4, 0, 3 * NOISE_BLOCK, seed=3)  # (K, B, L)
    assert whole.shape == (7, 3 * NOISE_BLOCK, 4)
    for first, count in ((0, 1), (5, 60), (63, 2), (64, 64), (100, 92)):
        assert torch.equal(block_noise(7, 4, first, count, seed=3), whole[:, first : first + count])
    assert not torch.equal(block_noise(7, 4, 0, 8, seed=4), whole[:, :8])


def test_estimates_agree_across_batch_sizes_and_splits_with_block_noise():
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=3, hidden=(16,)), 10)
    x = torch.bernoulli(torch.full((150, 10), 0.4), generator=torch.Generator().manual_seed(1))
    reference = estimate_log_likelihood(model, x, k=50, seed=2, batch_size=None)
    for batch_size in (64, 100, 128, 7):
        other = estimate_log_likelihood(model, x, k=50, seed=2, batch_size=batch_size)
        assert torch.allclose(other.log_px, reference.log_px, atol=1e-5, rtol=0), batch_size  # float32 GEMM order
    parts = [estimate_log_likelihood(model, x[s : s + 70], k=50, seed=2, first_index=s) for s in (0, 70, 140)]
    assert torch.allclose(torch.cat([p.log_px for p in parts]), reference.log_px, atol=1e-5, rtol=0)


def test_use_gpu_without_a_gpu_evaluates_on_cpu_with_the_same_numbers():
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=3, hidden=(16,)), 10)
    x = torch.bernoulli(torch.full((30, 10), 0.4), generator=torch.Generator().manual_seed(1))
    asked = EvaluationConfig(k=20, use_gpu=True, tf32=True)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the fallback is not exercised")
    assert evaluation_device(asked) == CPU
    on_cpu = estimate_on_device(model, x, EvaluationConfig(k=20))
    assert torch.equal(estimate_on_device(model, x, asked).log_px, on_cpu.log_px)


def test_progress_steps_give_the_same_numbers_and_report_every_step():
    import io

    from vae.evaluate.evaluation import PROGRESS_IMAGES, ProgressLine

    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=3, hidden=(16,)), 10)
    n = 2 * PROGRESS_IMAGES + 10
    x = torch.bernoulli(torch.full((n, 10), 0.4), generator=torch.Generator().manual_seed(1))
    config = EvaluationConfig(k=8)
    calls: list[tuple[int, int]] = []
    stepped = estimate_on_device(model, x, config, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(PROGRESS_IMAGES, n), (2 * PROGRESS_IMAGES, n), (n, n)]
    assert torch.allclose(stepped.log_px, estimate_on_device(model, x, config).log_px, atol=1e-5, rtol=0)
    stream = io.StringIO()
    line = ProgressLine(after=0.0, stream=stream)
    line(PROGRESS_IMAGES, n)
    assert stream.getvalue().startswith(f"evaluating: {PROGRESS_IMAGES}/{n} images, ") and "ETA" in stream.getvalue()


class _Chunks:
    """What streamed_minibatches reads from a Ray Data shard: iter_torch_batches(batch_size) → {"image": (C, D)}."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def iter_torch_batches(self, batch_size: int):
        for start in range(0, self.rows.shape[0], batch_size):
            yield {"image": self.rows[start : start + batch_size]}


@pytest.mark.parametrize("drop_last", [False, True])
def test_streamed_and_resident_batches_agree_on_the_short_last_batch(drop_last):
    """A CUDA-graph step replays one batch shape: with drop_last neither path yields a short batch
    (the streamed one did, and the graphed step refused it at the end of epoch 1)."""
    rows = torch.arange(1030 * 3, dtype=torch.float32).reshape(1030, 3)  # 1030 = 10 batches of 100 + 30
    streamed = list(streamed_minibatches(_Chunks(rows), 100, seed=0, device=CPU, drop_last=drop_last))
    resident = list(resident_minibatches(rows, 100, torch.Generator().manual_seed(0), drop_last))
    for batches in (streamed, resident):
        assert [b.shape[0] for b in batches] == [100] * 10 + ([] if drop_last else [30])
    seen = torch.cat(streamed)[:, 0].sort().values
    if drop_last:  # what is dropped is at most one batch's worth, and the rest is each row once
        assert seen.unique().numel() == 1000
    else:
        assert torch.equal(seen, rows[:, 0])
