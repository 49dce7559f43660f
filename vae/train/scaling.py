"""Ray Train's fixed scaling policy for a Ray of vae's own, asking no autoscaling coordinator
(vae.train.trainer uses it there).

A module of its own, without torch: Ray Train's controller unpickles the policy, and a module that
imported `ray.train.torch` would cost the controller ~1.4 s of CPU before it starts the workers
(issue 26; `tests/integration/test_training.py` checks that the controller never maps libtorch).
"""

from __future__ import annotations

from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy


class FixedResources(FixedScalingPolicy):
    """Ray's fixed scaling policy, asking no autoscaling coordinator for resources nobody can add: no
    coordinator client is made (Ray's cancel at shutdown then does nothing), and no request is sent."""

    def after_controller_start(self, train_run_context) -> None:
        pass

    def _maybe_send_resource_request(self) -> None:
        pass
