"""One optimisation step of the training objective, eager or replayed from a CUDA graph.

Pure torch, no Ray: the Ray Train worker loop and the benchmarks' plain loop share it, so the
ceiling a benchmark measures is the same code Ray runs. What keeps a GPU busy:
- metric sums live on the device (no host sync per step); they cross to the host once per epoch;
- a non-finite loss is recorded on the device (the first bad step and its value) and raised once
  per epoch, after which the last good checkpoint is still the newest one;
- dynamic binarisation and the reparameterisation noise are drawn on the device;
- on CUDA, forward + backward + Adam (capturable) are captured once in a CUDA graph and replayed,
  which removes the kernel-launch overhead that dominates a small MLP (issue 11: 11x at batch
  100 on an H200). Capture failures fall back to eager, once, with the reason kept.
"""

from __future__ import annotations

import torch
from torch import nn

from vae.data.inputs import prepare_inputs
from vae.models.model import Model
from vae.models.objectives import elbo, iwae_bound

METRICS = ("objective", "elbo", "reconstruction", "kl", "examples")  # order of Stepper.sums
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS/allocator warm-up)


class Objective(nn.Module):
    """Wraps the VAE so DDP sees the whole objective in forward(): x (B, D) → per-example terms.

    Returns (objective to maximise, ELBO, reconstruction, KL), each (B,). The objective is the
    beta-weighted ELBO, recon - beta KL (Higgins et al. 2017; beta ramps up during KL warm-up,
    Bowman et al. 2016), or the IWAE bound L_k (Burda et al. 2016, Eq. 8). A vae.models.families model
    (VampPrior, gated body, two levels) supplies both through its own elbo_terms / iwae_bound
    (vae.models.objectives.elbo and iwae_bound hand over to them); its KL is then the single-sample
    log q - log p where no closed form exists.
    """

    def __init__(self, model: Model, objective: str, iwae_k: int):
        super().__init__()
        self.vae = model
        self.objective = objective
        self.iwae_k = iwae_k

    def forward(self, x: torch.Tensor, beta: torch.Tensor | float = 1.0):
        terms = elbo(self.vae, x)
        if self.objective == "iwae":
            target = iwae_bound(self.vae, x, self.iwae_k)
        else:
            target = terms.reconstruction - beta * terms.kl
        return target, terms.elbo, terms.reconstruction, terms.kl


def make_optimizer(parameters, learning_rate: float, device: torch.device, graphed: bool) -> torch.optim.Adam:
    """Adam: capturable with a device-tensor learning rate for a CUDA graph, fused on CUDA otherwise."""
    if device.type == "cuda" and graphed:
        # The LR is read from device memory on every replay, so the scheduler's fill_ takes effect.
        return torch.optim.Adam(parameters, lr=torch.tensor(learning_rate, device=device), capturable=True)
    if device.type == "cuda":
        return torch.optim.Adam(parameters, lr=learning_rate, fused=True)
    return torch.optim.Adam(parameters, lr=learning_rate)


def restore_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load Adam's state saved by any device/mode into this optimizer, keeping this one's mode.

    A checkpoint from a CUDA-graph run (capturable, tensor LR) resumes on CPU and the reverse.
    """
    own = [
        {key: group.get(key) for key in ("lr", "capturable", "fused", "foreach")} for group in optimizer.param_groups
    ]
    optimizer.load_state_dict(state)
    for group, settings in zip(optimizer.param_groups, own):
        learning_rate = float(group["lr"])
        if isinstance(settings["lr"], torch.Tensor):
            group["lr"] = settings["lr"].fill_(learning_rate)
        else:
            group["lr"] = learning_rate
        group.update(capturable=settings["capturable"], fused=settings["fused"], foreach=settings["foreach"])
        for parameter in group["params"]:
            step = optimizer.state.get(parameter, {}).get("step")
            if isinstance(step, torch.Tensor):
                on_device = settings["capturable"] or settings["fused"]
                optimizer.state[parameter]["step"] = step.to(parameter.device if on_device else "cpu", torch.float32)


class Stepper:
    """Runs optimisation steps on minibatches of stored pixels (B, D) already on the device.

    `sums` (len(METRICS),) float64 on the device accumulates the epoch's metric sums; call
    `start_epoch()` before an epoch and `first_bad_step()` (one host sync) after it.
    """

    def __init__(
        self,
        objective: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        max_value: float,
        binarize: str,
        device: torch.device,
        graph: bool = False,
        precision: str = "fp32",
    ):
        self.objective, self.optimizer = objective, optimizer
        self.max_value, self.binarize, self.device = float(max_value), binarize, device
        self.sums = torch.zeros(len(METRICS), dtype=torch.float64, device=device)
        self.steps = torch.zeros((), dtype=torch.long, device=device)  # steps this epoch
        self.bad_step = torch.zeros((), dtype=torch.long, device=device)  # first non-finite step, 0 if none
        self.bad_loss = torch.zeros((), dtype=torch.float32, device=device)
        self.beta = torch.ones((), dtype=torch.float32, device=device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        # Graphs need CUDA and static shapes/settings; bf16 autocast is kept eager (its cast cache).
        self.graphed = graph and device.type == "cuda" and precision == "fp32"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_error: str | None = None
        self.static_images: torch.Tensor | None = None
        self._eager_calls = 0

    def start_epoch(self) -> None:
        for tensor in (self.sums, self.steps, self.bad_step, self.bad_loss):
            tensor.zero_()  # in place: a captured graph keeps pointing at these buffers

    def _body(self, images: torch.Tensor) -> None:
        """Forward, backward, Adam and the metric sums, with no host sync. images: (B, D)"""
        x = prepare_inputs(images, self.max_value, self.binarize)  # (B, D) float32, noise on the device
        with self.autocast:
            target, elbo_terms, reconstruction, kl = self.objective(x, self.beta)  # each (B,)
        loss = -target.float().mean()
        self.steps += 1
        first = (self.bad_step == 0) & ~torch.isfinite(loss)
        self.bad_step.copy_(torch.where(first, self.steps, self.bad_step))
        self.bad_loss.copy_(torch.where(first, loss.detach(), self.bad_loss))
        loss.backward()
        self.optimizer.step()
        batch = torch.stack(
            [
                target.detach().double().sum(),
                elbo_terms.detach().double().sum(),
                reconstruction.detach().double().sum(),
                kl.detach().double().sum(),
                torch.ones((), dtype=torch.float64, device=x.device).mul(x.shape[0]),
            ]
        )  # (5,)
        self.sums += batch

    def _eager(self, images: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._body(images)

    def step(self, images: torch.Tensor, beta: float) -> None:
        """One optimisation step on a minibatch of stored pixels (B, D) on the device."""
        self.beta.fill_(beta)
        if not self.graphed or self.graph_error is not None:
            self._eager(images)
            return
        if self.graph is None and self._eager_calls < GRAPH_WARMUP_STEPS:
            self._eager_calls += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._eager(images)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return
        if self.graph is None:
            self._capture(images)
            if self.graph is None:  # capture failed: this batch runs eagerly, and so do the rest
                self._eager(images)
                return
        if images.shape != self.static_images.shape:
            raise ValueError(
                f"a CUDA-graph step needs batches of {tuple(self.static_images.shape)}, got {tuple(images.shape)}"
            )
        self.static_images.copy_(images)
        self.graph.replay()

    def _capture(self, images: torch.Tensor) -> None:
        self.static_images = images.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            self.optimizer.zero_grad(set_to_none=True)  # backward in the graph allocates static grads
            with torch.cuda.graph(graph):
                self._body(self.static_images)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly
            self.graph_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            torch.cuda.synchronize(self.device)
            return
        self.graph = graph

    def first_bad_step(self) -> tuple[int, float]:
        """(first non-finite step of the epoch or 0, its loss): the epoch's one host sync."""
        step, loss = torch.stack([self.bad_step.double(), self.bad_loss.double()]).tolist()
        return int(step), loss

    @property
    def drop_last(self) -> bool:
        """Graph replays need equal batches: a graphed epoch skips its last partial batch."""
        return self.graphed and self.graph_error is None
