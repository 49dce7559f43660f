"""The options of a Ray that vae starts on one machine (vae.cluster.local_ray_options)."""

from __future__ import annotations

import os

from vae.cluster import LOCAL_TRAIN_ENVIRONMENT, local_ray_options


def test_local_ray_options_set_ray_trains_settings_unless_the_user_did(monkeypatch):
    for name in LOCAL_TRAIN_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")  # the user's own choice

    options = local_ray_options(num_cpus=6)

    assert options == {
        "_node_ip_address": "127.0.0.1",
        "num_cpus": 6,
        "_system_config": {"prestart_worker_first_driver": False},
    }
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    options["_system_config"]["prestart_worker_first_driver"] = True  # a caller's copy, not the module's
    assert local_ray_options(num_cpus=1)["_system_config"] == {"prestart_worker_first_driver": False}
