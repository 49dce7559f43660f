"""`vae run` opens a new sqlite MLflow store in a thread while the flow starts
(vae.registry.runs.prepare_store_in_background): a client made meanwhile, in any thread, waits for it
instead of creating the same tables beside it, and then finds the store whole."""

from __future__ import annotations

import threading
import time

from mlflow import MlflowClient

from vae.registry import runs


def test_a_client_made_while_the_store_is_prepared_waits_for_it(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    order: list[str] = []

    class SlowFirstConnection(MlflowClient):  # the real client; its preparation takes a visible while
        def search_experiments(self, *args, **kwargs):
            found = super().search_experiments(*args, **kwargs)
            time.sleep(0.5)
            order.append("prepared")
            return found

    # Patched for the whole test: the preparing thread looks the class up when it runs, which may be after
    # prepare_store_in_background returns. The clients below call no search_experiments, so only it sleeps.
    monkeypatch.setattr(runs, "MlflowClient", SlowFirstConnection)
    runs.prepare_store_in_background(uri)
    failures: list[BaseException] = []

    def use() -> None:
        try:
            runs.client(uri).create_experiment(f"exp-{threading.get_ident()}")
            order.append("client")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    users = [threading.Thread(target=use) for _ in range(2)]
    [user.start() for user in users]
    [user.join(timeout=120) for user in users]
    assert failures == [] and order == ["prepared", "client", "client"]
    names = sorted(e.name for e in runs.client(uri).search_experiments())
    assert len(names) == 3 and names[0] == "Default"  # the two new ones and MLflow's own
