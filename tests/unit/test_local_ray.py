"""The options of a Ray that vae starts on one machine (vae.cluster.local_ray_options)."""

from __future__ import annotations

import os

from vae.cluster import LOCAL_TRAIN_ENVIRONMENT, OWN_RAY, is_own_ray, local_ray_options


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


def test_a_ray_is_vaes_own_once_vae_starts_it_and_never_with_ray_address(monkeypatch):
    monkeypatch.delenv(OWN_RAY, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not is_own_ray()  # a process (or a cluster's worker) that never started a local Ray

    local_ray_options(num_cpus=2)  # what the CLI, the flows and the tests call before ray.init
    assert os.environ[OWN_RAY] == "1" and is_own_ray()  # the raylet and its workers inherit it

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # connected to a cluster: Ray Train's own services
    assert not is_own_ray()
