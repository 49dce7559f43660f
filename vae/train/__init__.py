"""Stage 2, train: maximise the ELBO with Ray Train (TorchTrainer) across workers: the driver,
the per-worker loop over object-store or Ray Data shards, the optimisation step, checkpoints and resume.

driver.py: `train` on the driver (the TorchTrainer, progress lines, the result); progress.py: how
rank 0's epoch metrics reach the driver; trainer.py: Ray Train's TorchTrainer without a cluster's
services on a Ray of vae's own, and scaling.py its fixed scaling policy; process_group.py:
torch.distributed for the workers with no socket off loopback on one machine; worker.py: the loop
on every worker, and hooks.py the callbacks tests watch it with; sessions.py: what the loop asks of
where it runs (Ray Train, or in-process for a search's one-worker trials); stepper.py: one
optimisation step, eager or a CUDA graph; shards.py: the object-store or Ray Data input and
minibatches; plan.py: the WorkerPlan every worker reads; checkpoints.py: what a checkpoint holds,
restoring one, finding and choosing among them; checks.py: what a run is refused for before it
starts. Only this package imports Ray Train. What Ray Train's controller unpickles (scaling.py,
process_group.py, progress.py, hooks.py, plan.py) never imports torch.

May import: vae's root modules, vae.data, vae.models.
"""
