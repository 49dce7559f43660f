"""The validation IWAE bound L_k (training.validation_k, search.metric 'validation_iwae'), and the
search's time budget across `--resume` (vae.tune.trials.SearchBudget).

L_k = log 1/k sum_i p(x, z_i)/q(z_i|x) rises to log p(x) as k grows (Burda et al. 2016, Eq. 8) and
is at least the ELBO in expectation. With a one-dimensional latent, log p(x) = log ∫ p(x|z) p(z) dz
is a quadrature: the epoch's validation sums are checked against it. No Ray is started.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from vae.config import DatasetConfig, ModelConfig, PipelineConfig, RegistryConfig, TrainingConfig
from vae.models.model import build_model
from vae.models.objectives import standard_normal_log_density
from vae.train.driver import format_epoch
from vae.train.plan import WorkerPlan
from vae.train.worker import _epoch_metrics, _validate
from vae.tune.search import _best_trial
from vae.tune.space import trial_config
from vae.tune.trials import TRIAL_FILE

D = 6


def _plan(validation_k: int) -> WorkerPlan:
    return WorkerPlan(
        model=ModelConfig(latent_dim=1, hidden=[8]),
        training=TrainingConfig(validation_k=validation_k, seed=3),
        data_dim=D,
        image_shape=(1, 2, 3),
        max_value=1.0,
        binarize="threshold",
        train_rows=0,
        resident=True,
        staging_dir="unused",
    )


def _log_marginal(model, x: torch.Tensor) -> torch.Tensor:
    """log p(x) by the trapezoid-free Riemann sum on a fine grid over z in [-10, 10] (1-D latent)."""
    grid = torch.linspace(-10.0, 10.0, 20001, dtype=torch.float64)
    step = float(grid[1] - grid[0])
    z = grid.to(torch.float32).view(-1, 1, 1).expand(-1, x.shape[0], 1)  # (G, B, 1)
    joint = model.log_likelihood(x, z).double() + standard_normal_log_density(z).double()  # (G, B)
    return torch.logsumexp(joint, dim=0) + math.log(step)  # (B,)


@torch.no_grad()
def test_validation_iwae_approaches_the_exact_log_marginal_and_bounds_it_from_below():
    torch.manual_seed(0)
    plan = _plan(validation_k=4000)
    model = build_model(plan.model, D, plan.image_shape).eval()
    model.encoder[-1].bias[0] += 1.0  # q(z|x)'s mean off by one: the ELBO's gap KL(q || p(z|x)) is ~0.5 nats
    images = torch.randint(0, 2, (64, D)).float()
    batches = [images[:40], images[40:]]
    torch.manual_seed(1)  # the ELBO's noise: the epoch's seed, in training
    sums = _validate(plan, model, batches, torch.device("cpu"))
    elbo_mean, count, iwae_mean = float(sums[0] / sums[1]), int(sums[1]), float(sums[2] / sums[1])
    exact = float(_log_marginal(model, images).mean())
    assert count == 64
    assert abs(iwae_mean - exact) < 0.03, (iwae_mean, exact)  # L_4000 ≈ log p(x)
    assert elbo_mean < exact - 0.2, (elbo_mean, exact)
    # k = 1: no bound beyond the ELBO is computed, and the ELBO is the same number (L_k has its own noise).
    torch.manual_seed(1)
    one = _validate(_plan(validation_k=1), model, batches, torch.device("cpu"))
    assert float(one[2]) == 0.0 and float(one[0]) == pytest.approx(float(sums[0]))


def test_epoch_metrics_report_validation_iwae_only_when_asked():
    worker = SimpleNamespace(
        stepper=SimpleNamespace(sums=torch.tensor([-10.0, -11.0, -9.0, 2.0, 2.0], dtype=torch.float64), graph=None),
        scheduler=SimpleNamespace(get_last_lr=lambda: [1e-3]),
    )
    validation = torch.tensor([-24.0, 4.0, -20.0], dtype=torch.float64)
    metrics = _epoch_metrics(worker, validation, 3, 1, [1.0, 2.0], validation_k=5)
    assert metrics["validation_elbo"] == -6.0 and metrics["validation_iwae"] == -5.0
    assert "val IWAE    -5.000" in format_epoch(metrics, 10)
    plain = _epoch_metrics(worker, validation, 3, 1, [1.0, 2.0], validation_k=1)
    assert "validation_iwae" not in plain and "IWAE" not in format_epoch(plain, 10)


def _pipeline(**search) -> PipelineConfig:
    return PipelineConfig(
        name="p",
        dataset=DatasetConfig(name="digits", source="sklearn:digits"),
        registry=RegistryConfig(model_name="vae-p"),
        search={"space": {"learning_rate": {"loguniform": [0.001, 0.01]}}, **search},
    )


def test_validation_k_is_left_out_of_dumps_at_one_and_a_search_sets_it():
    # At 1 the dump is the one from before the field (checkpoints, MLflow params, Prefect cache keys).
    assert "validation_k" not in TrainingConfig().model_dump(mode="json")
    assert TrainingConfig(validation_k=5).model_dump(mode="json")["validation_k"] == 5
    elbo_search = _pipeline()
    assert trial_config(elbo_search, {"training": {"learning_rate": 0.002}}).training.validation_k == 1
    iwae_search = _pipeline(metric="validation_iwae", validation_k=7)
    assert trial_config(iwae_search, {"training": {"learning_rate": 0.002}}).training.validation_k == 7
    with pytest.raises(ValueError, match="validation_k"):
        _pipeline(metric="validation_iwae", validation_k=1)


def test_the_best_trial_is_the_best_by_the_search_metric(tmp_path):
    """An IWAE-trained trial has the looser ELBO and the tighter L_k: the metric decides which wins."""
    results = []
    for trial_id, elbo, iwae in (("elbo-trained", -100.0, -98.0), ("iwae-trained", -101.0, -97.0)):
        folder = tmp_path / "checkpoints" / trial_id
        folder.mkdir(parents=True)
        (folder / TRIAL_FILE).write_text(f'{{"checkpoint": "{folder}", "epochs": 2, "history": []}}')
        metrics = {"trial_id": trial_id, "epoch": 2, "validation_elbo": elbo, "validation_iwae": iwae}
        results.append(SimpleNamespace(metrics=metrics, error=None, config={"training": {}}))
    assert _best_trial(results, tmp_path, "p", "validation_elbo")[0] == "elbo-trained"
    assert _best_trial(results, tmp_path, "p", "validation_iwae")[0] == "iwae-trained"


def test_the_search_budget_counts_across_a_resume_and_says_when_it_ran_out(tmp_path, monkeypatch):
    """Tune pickles the stopper with the experiment and a restored search runs on the restored one:
    the seconds used carry over, the time away does not count, and the file tells `search` whether
    the budget (not Ctrl-C) ended it."""
    import pickle

    from vae.tune import trials

    clock = [100.0]
    monkeypatch.setattr(trials.time, "monotonic", lambda: clock[0])
    budget = trials.SearchBudget(str(tmp_path), seconds=60.0)
    assert budget.stop_all() is False  # the first check starts the clock
    clock[0] += 40.0
    assert budget.stop_all() is False and not trials.budget_used_up(tmp_path)
    restored = pickle.loads(pickle.dumps(budget))  # interrupted, then `--resume`
    clock[0] += 3600.0  # away for an hour
    assert restored.stop_all() is False and restored.used == 40.0
    clock[0] += 25.0
    assert restored.stop_all() is True and trials.budget_used_up(tmp_path)
