"""Ray Train's TorchTrainer, without the cluster services that a Ray of vae's own has no use for.

A `TorchTrainer.fit()` in Ray 2.60 starts, besides its controller and workers, three services that
serve a shared or autoscaling cluster. Each is an actor, so a process of its own (~1.5 s of CPU to
start and import; issue 26, BENCHMARKS.md):

- an autoscaling coordinator, asked for the workers' resources before the worker group starts
  (the controller waits up to 5 s for its answer). A Ray that this process started on one machine
  has no autoscaler: its resources are fixed when it starts.
- a placement-group cleaner, which removes the worker group's placement group if the controller
  dies without doing so. Ray itself removes a placement group whose creator died (the controller
  makes it without `lifetime="detached"`), and a Ray of vae's own ends with the command.
- a dataset manager, started even for a fit with no Ray Datasets (resident shards, the default
  for data that fits the device: vae.train.shards).

On a Ray that vae started (`vae.cluster.is_own_ray`) this trainer leaves those three out. On a
cluster ($RAY_ADDRESS) it is Ray's own TorchTrainer, unchanged. It hooks into two private methods
of Ray's trainer (`_create_default_callbacks`, `_initialize_and_run_controller`); should a Ray
upgrade change them, `tests/integration/test_training.py` counts the actors a fit starts.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer as RayTorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy

from vae.cluster import is_own_ray
from vae.train.scaling import FixedResources


class TorchTrainer(RayTorchTrainer):
    """`ray.train.torch.TorchTrainer`; on a Ray of vae's own, without the services of the module docstring."""

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if not is_own_ray():
            return callbacks
        unused = (PlacementGroupCleanerCallback,) + (() if self.datasets else (DatasetsCallback,))
        return [callback for callback in callbacks if not isinstance(callback, unused)]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        if is_own_ray() and type(controller_init_kwargs.get("scaling_policy")) is FixedScalingPolicy:
            controller_init_kwargs["scaling_policy"] = FixedResources(self.scaling_config)
        return super()._initialize_and_run_controller(**controller_init_kwargs)
