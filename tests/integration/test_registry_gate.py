"""The promotion gate on a real sqlite MLflow registry: `champion` moves only to a better NLL."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from tests.helpers.prefect_records import recorded_task_runs
from tests.helpers.registry_helpers import gate_config, register, save_checkpoint
from vae.registry import gate, runs, versions
from vae.paths import tracking_uri
from vae.data.ingest import ingest
from vae.data.datasets import load_split
from vae.models.model import build_model

pytestmark = pytest.mark.integration


def _alias(name: str, alias: str) -> str:
    return str(MlflowClient(tracking_uri()).get_model_version_by_alias(name, alias).version)


def test_champion_moves_only_when_nll_beats_it_by_the_margin(tmp_path):
    config = gate_config("vae-gate", margin=0.5)
    first = register(config, 30.0, seed=0, workdir=tmp_path)
    assert (first.version, first.champion, _alias("vae-gate", "champion")) == (1, True, "1")
    worse = register(config, 31.0, seed=1, workdir=tmp_path)
    assert (worse.champion, _alias("vae-gate", "champion"), _alias("vae-gate", "challenger")) == (False, "1", "2")
    within_margin = register(config, 29.8, seed=2, workdir=tmp_path)  # better, not by the 0.5-nat margin
    assert (within_margin.champion, _alias("vae-gate", "champion")) == (False, "1")
    better = register(config, 29.0, seed=3, workdir=tmp_path)
    assert (better.champion, _alias("vae-gate", "champion"), better.previous_champion_nll) == (True, "4", 30.0)
    version = MlflowClient(tracking_uri()).get_model_version("vae-gate", "4")
    assert version.tags["test_nll_pm"] == "29.000 ± 0.100" and version.tags["gate"] == "promoted"

    # The champion's pyfunc carries seed 3's weights, loaded with weights_only=True.
    import mlflow.pyfunc

    images, _ = load_split(ingest(config.dataset).path, "test")
    out = mlflow.pyfunc.load_model("models:/vae-gate@champion").predict(images[:3].astype(np.float32))
    torch.manual_seed(3)
    reference = build_model(config.model, 64).eval()
    x = (torch.from_numpy(images[:3].astype(np.float32)) / 16.0 > 0.5).float()
    with torch.no_grad():
        mean, _ = reference.encode(x)
    np.testing.assert_allclose(out["z_mean"], mean.numpy(), rtol=1e-5, atol=1e-6)


def test_champion_on_another_dataset_version_is_re_evaluated_on_the_new_one(tmp_path):
    config = gate_config("vae-redata")
    old = ingest(config.dataset).to_dict()
    register(config, 30.0, seed=0, workdir=tmp_path, dataset=old)
    new = {**old, "version": "newdata00000", "content_hash": "f" * 64}
    seen = []

    def champion_scores(nll):
        def evaluate(model_uri: str) -> float:
            seen.append(model_uri)
            return nll

        return evaluate

    # On the new data the champion scores 28.0: the challenger's 29.0 does not beat it.
    kept = register(config, 29.0, seed=1, workdir=tmp_path, dataset=new, evaluate_champion=champion_scores(28.0))
    assert (kept.champion, kept.previous_champion_nll, seen) == (False, 28.0, ["models:/vae-redata/1"])
    # The re-evaluation is cached on the champion's version as a tag; no second evaluation.
    tags = MlflowClient(tracking_uri()).get_model_version("vae-redata", "1").tags
    assert tags["test_nll_on.newdata00000.k10.test.seed0"] == "28.0"
    moved = register(config, 27.0, seed=2, workdir=tmp_path, dataset=new, evaluate_champion=champion_scores(99.0))
    assert (moved.champion, moved.previous_champion_nll, len(seen)) == (True, 28.0, 1)


def test_a_champion_scored_with_another_k_or_split_is_re_evaluated_before_comparing(tmp_path):
    """log p̂(x) at small k is biased low (NLL high): a champion scored at k = 10 against a challenger
    at k = 5000 would be an unfair race. Before, its own tag was used whenever the dataset matched."""
    config = gate_config("vae-protocol")
    dataset = ingest(config.dataset).to_dict()
    register(config, 30.0, seed=0, workdir=tmp_path, dataset=dataset)  # k = 10 on test, seed 0
    seen = []

    def evaluate(model_uri: str) -> float:
        seen.append(model_uri)
        return 28.5  # the champion at k = 5000

    kept = register(config, 29.0, seed=1, workdir=tmp_path, dataset=dataset, evaluate_champion=evaluate, k=5000)
    assert (kept.champion, kept.previous_champion_nll, seen) == (False, 28.5, ["models:/vae-protocol/1"])
    tags = MlflowClient(tracking_uri()).get_model_version("vae-protocol", "1").tags
    assert tags["evaluated_as"] == f"{dataset['version']}.k10.test.seed0"
    assert tags[f"test_nll_on.{dataset['version']}.k5000.test.seed0"] == "28.5"
    other_split = register(
        config, 29.5, seed=2, workdir=tmp_path, dataset=dataset, evaluate_champion=evaluate, split="validation"
    )
    assert (other_split.champion, other_split.previous_champion_nll, len(seen)) == (False, 28.5, 2)
    same = register(config, 29.9, seed=3, workdir=tmp_path, dataset=dataset, evaluate_champion=evaluate)
    assert (same.champion, same.previous_champion_nll, len(seen)) == (True, 30.0, 2)  # same protocol: its own tag


def test_nlls_of_different_kinds_are_not_compared(tmp_path):
    """A dequantised Gaussian's NLL bounds an 8-bit NLL; a discretised likelihood's is exact: the gate
    never compares the two, whatever the numbers, and says why on the version and in the result."""
    config = gate_config("vae-kinds")
    first = register(config, 30.0, seed=0, workdir=tmp_path, kind="dequantized")
    exact = register(config, 20.0, seed=1, workdir=tmp_path, kind="8bit")  # far "better", not comparable
    assert (first.champion, exact.champion, _alias("vae-kinds", "champion")) == (True, False, "1")
    assert exact.previous_champion_nll is None
    assert "version 2 is not compared with champion version 1" in exact.gate and "8bit" in exact.gate
    tags = MlflowClient(tracking_uri()).get_model_version("vae-kinds", "2").tags
    assert (tags["gate"], tags["nll_kind"], tags["bits_per_dim"].endswith("(8bit)")) == (exact.gate, "8bit", True)
    same_kind = register(config, 29.0, seed=2, workdir=tmp_path, kind="dequantized")
    assert (same_kind.champion, same_kind.previous_champion_nll) == (True, 30.0)


def test_nll_kind_of_versions_tagged_before_the_kind_tag():
    assert gate.nll_kind({"bits_per_dim": "6.9830 (dequantized)"}) == "dequantized"
    assert gate.nll_kind({"nll_kind": "8bit", "bits_per_dim": "7.0 (binary)"}) == "8bit"
    assert gate.nll_kind({"test_nll": "80.1"}) == "binary"


def _register_in_process(name: str, nll: float, seed: int, workdir: str, uri: str, start) -> None:
    start.wait()
    register(gate_config(name), nll, seed, workdir=Path(workdir), uri=uri)


def _race(name: str, uri: str, workdir: Path) -> None:
    """Two processes register at the same moment; both get versions and the better is champion."""
    ingest(gate_config(name).dataset)  # both processes find the dataset ready...
    MlflowClient(uri).search_experiments()  # ...and the store's schema created (that is not race-safe)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [
        context.Process(target=_register_in_process, args=(name, nll, seed, str(workdir), uri, start))
        for nll, seed in ((25.0, 1), (24.0, 2))
    ]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=240)
        assert worker.exitcode == 0
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not the process-wide registry URI
    deadline = time.time() + 30  # a loaded server may still be committing the second version
    while len(found := client.search_model_versions(f"name = '{name}'")) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert sorted(float(v.tags["test_nll"]) for v in found) == [24.0, 25.0]
    champion = client.get_model_version_by_alias(name, "champion")
    assert float(champion.tags["test_nll"]) == 24.0


def test_two_concurrent_registrations_on_sqlite(tmp_path):
    _race("vae-race", tracking_uri(), tmp_path)


def test_two_concurrent_registrations_on_an_mlflow_server_with_postgresql(tmp_path):
    from tests.helpers.services import mlflow_server, postgres

    with postgres() as database, mlflow_server(database, tmp_path) as server:
        _race("vae-race-pg", server, tmp_path)
        # The sequential gate holds on the server too: a worse model does not take the alias.
        worse = register(gate_config("vae-race-pg"), 26.0, seed=3, workdir=tmp_path, uri=server)
        assert worse.champion is False
        assert MlflowClient(server, server).get_model_version_by_alias("vae-race-pg", "challenger").version == str(
            worse.version
        )


def test_unknown_model_uri_is_one_line():
    from vae.errors import RegistryError

    with pytest.raises(RegistryError, match=r"^model 'models:/no-such-model@champion': "):
        versions.download_model("models:/no-such-model@champion")


def test_an_identical_rerun_keeps_the_champion(tmp_path):
    # 23.4761236 was tagged "23.476124": the unrounded NLL beat its own rounded tag and took the alias.
    config = gate_config("vae-tie")
    first = register(config, 23.4761236, seed=0, workdir=tmp_path)
    again = register(config, 23.4761236, seed=0, workdir=tmp_path)
    assert (first.champion, again.champion, _alias("vae-tie", "champion")) == (True, False, "1")
    assert again.previous_champion_nll == 23.4761236
    assert float(MlflowClient(tracking_uri()).get_model_version("vae-tie", "1").tags["test_nll"]) == 23.4761236


def test_a_worse_model_written_over_the_gate_is_overruled(tmp_path):
    """The race played out in order: the gate of version 3 (NLL 29) writes `champion`; a concurrent
    gate's stale write of version 2 (NLL 31, decided before 3 existed) lands over it; the read-back
    after the write sees it and puts 3 back."""
    import threading

    config = gate_config("vae-late")
    for nll, seed in ((30.0, 0), (31.0, 1), (31.5, 2)):  # versions 1 (champion), 2, 3
        register(config, nll, seed=seed, workdir=tmp_path)
    client = MlflowClient(tracking_uri())
    protocol = client.get_model_version("vae-late", "1").tags["evaluated_as"]
    overwritten = threading.Event()

    def stale_gate() -> None:
        deadline = time.monotonic() + 60
        while _alias("vae-late", "champion") != "3" and time.monotonic() < deadline:
            time.sleep(0.01)
        client.set_registered_model_alias("vae-late", "champion", "2")
        overwritten.set()

    writer = threading.Thread(target=stale_gate)
    writer.start()
    promoted = versions.promote_if_better(client, "vae-late", 3, 29.0, protocol, 0.0, settle_seconds=2.0)
    writer.join()
    assert overwritten.is_set()
    assert promoted == (True, 30.0)
    assert _alias("vae-late", "champion") == "3"


def test_challenger_names_the_newest_version_even_when_an_older_one_registers_again(tmp_path):
    from vae.data.datasets import read_manifest

    config = gate_config("vae-newest")
    dataset = ingest(config.dataset).to_dict()
    first = register(config, 30.0, seed=0, workdir=tmp_path, dataset=dataset)
    register(config, 31.0, seed=1, workdir=tmp_path, dataset=dataset)
    assert _alias("vae-newest", "challenger") == "2"
    # A rerun of the first run's flow (crashed after registering) registers version 1 again.
    images, _ = load_split(dataset["path"], "test")
    evaluation = {"nll": 30.0, "nll_stderr": 0.1, "k": 10, "split": "test", "bits_per_dim_kind": "binary"}
    again = versions.register_model(
        config, first.run_id, str(tmp_path / "ckpt-0"), evaluation, dataset, read_manifest(dataset["path"]), images[:2]
    )
    assert (again.version, again.champion) == (1, True)
    assert (_alias("vae-newest", "challenger"), _alias("vae-newest", "champion")) == ("2", "1")


def test_a_refused_model_name_is_not_retried_and_logs_nothing(prefect_server, tmp_path):
    from flows.register import register_task

    config = gate_config("vae-refused")
    bad = config.model_copy(update={"registry": config.registry.model_copy(update={"model_name": "bad/name"})})
    dataset = ingest(config.dataset).to_dict()
    run_id = runs.start_run(config, dataset)
    checkpoint = save_checkpoint(tmp_path / "ckpt", config.model, 64, 0)
    evaluation = {"nll": 30.0, "nll_stderr": 0.1, "k": 10, "split": "test", "n": 2}
    state = register_task(bad, run_id, checkpoint, evaluation, dataset, [], return_state=True)
    assert state.is_failed()
    assert str(state.result(raise_on_failure=False)).startswith("registry.model_name 'bad/name': ")

    (recorded,) = recorded_task_runs(1, task_run_id=state.state_details.task_run_id)
    assert recorded.run_count == 1  # no retries of a permanent error
    experiment = MlflowClient(tracking_uri()).get_run(run_id).info.experiment_id
    assert MlflowClient(tracking_uri()).search_logged_models([experiment]) == []  # no model logged
