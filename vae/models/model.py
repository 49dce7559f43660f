"""The standard VAE: q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I), p(x|z) by the likelihood;
build_model for every model of the contract (vae.models.latent_model), and checkpoints.

build_model also builds the stronger families of vae.models.families (VampPrior, gated body, two levels)
when the ModelConfig asks for one, and users' own encoder/decoder (vae.models.networks) when it names them;
a checkpoint's model_config rebuilds the same class.

Shapes: B images, D = prod(image shape) pixels, L latent dimensions, K samples per image.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vae.models import networks
from vae.config import ModelConfig
from vae.errors import ConfigError, VAEError
from vae.models.families import build_family
from vae.models.latent_model import LatentVariableModel, Proposal
from vae.user_code import add_search_paths, one_line
from vae.models.likelihoods import (  # the log densities; imported from here by older code
    LOG_2PI as LOG_2PI,
    bernoulli_log_likelihood as bernoulli_log_likelihood,
    gaussian_log_likelihood as gaussian_log_likelihood,
    pixels,
)
from vae.models.objectives import (
    ELBOTerms,
    diagonal_normal_log_density as diagonal_normal_log_density,
    gaussian_kl,
    log_importance_weights,
    sample_latents,
    standard_normal_log_density as standard_normal_log_density,
)

CHECKPOINT_FILE = "checkpoint.pt"
mlp = networks.mlp  # older code builds its nets from here
image_shape_of = networks.image_shape_of


class VAE(LatentVariableModel):
    """A VAE over flattened images of `data_dim` subpixels (Kingma & Welling, 2014).

    The decoder outputs P values per subpixel (vae.models.likelihoods): 1 for Bernoulli logits and Gaussian
    means; 2, 3K or 256 for the 8-bit likelihoods, laid out (..., D*P) with each subpixel's P values
    together. The 8-bit likelihoods (and dequantisation) read the inputs x = v/255 of
    vae.data.inputs.prepare_inputs back as whole pixel values v = round(255 x).
    """

    def __init__(self, config: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None):
        super().__init__(config, data_dim, image_shape)
        self.latent_dim = self.state_dim = self.noise_dim = config.latent_dim
        self.encoder, self.decoder = networks.build_networks(
            config, data_dim, image_shape, config.latent_dim, self.per_subpixel, body="mlp"
        )
        self._likelihood_parameters()

    pixels = staticmethod(pixels)

    @property
    def _linear_output(self) -> bool:
        return isinstance(self.decoder, nn.Sequential) and isinstance(self.decoder[-1], nn.Linear)

    def project_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        """x W for the decoder's last layer W: (B, D) → (B, H); reusable across samples of z."""
        return x @ self.decoder[-1].weight if self._linear_output else None

    def log_likelihood(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        x_projected: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log p(x|z). x: (B, D), z: (..., B, L) → (..., B); x is broadcast, never copied.

        Dequantised Gaussian: log p~(x~|z) - D log 256 with x~ = (v + u)/256 (Theis et al. 2016,
        Sec. 3.1), whose expectation over u is a lower bound on log P(v|z); `noise` is u (B, D),
        drawn fresh when None (training), fixed by the caller when it must not move (IS, AIS).
        """
        if self.config.likelihood == "bernoulli" and self._linear_output:
            # sum_d x_d l_d with l = W h + b equals h·(W^T x) + b·x: a (..., B, H) dot instead of
            # a (..., B, D) product, so only softplus(l) touches the full decoder output.
            *body, last = self.decoder
            h = nn.Sequential(*body)(z) if body else z  # (..., B, H)
            logits = last(h)  # (..., B, D)
            xw = self.project_inputs(x) if x_projected is None else x_projected  # (B, H)
            x_dot_logits = (h * xw).sum(-1) + x @ last.bias  # (..., B)
            return x_dot_logits - F.softplus(logits).sum(-1)
        return super().log_likelihood(x, z, noise)

    # --- the latent state: z itself, p(z) = N(0, I) -----------------------------------------------

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = log N(z; 0, I). z: (..., L) → (...,)"""
        return standard_normal_log_density(z)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I) on the model's device. → (n, L)"""
        weight = self._parameter()
        return torch.randn((n, self.latent_dim), generator=generator, device=weight.device, dtype=weight.dtype)

    def log_likelihood_state(
        self, x: torch.Tensor, state: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x|z) for the state z. x: (B, D), state: (..., B, L) → (..., B)"""
        return self.log_likelihood(x, state, None, noise)

    # --- importance weights and objectives -----------------------------------------------------------

    def proposal(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> Proposal:
        mean, logvar = self.encode(x)  # (B, L): once per image, never per sample
        x_projected = self.project_inputs(x) if self.config.likelihood == "bernoulli" else None  # (B, H)
        return Proposal(mean, logvar, noise, x_projected)

    def log_weights_given_noise(self, x: torch.Tensor, eps: torch.Tensor, proposal: Proposal) -> torch.Tensor:
        """log w = log p(x|z) + log p(z) - log q(z|x) for z = mean + exp(logvar/2) * eps, p(z) = N(0, I).

        The Gaussian constants cancel, so it depends on z only through eps and z^2:
        log w = log p(x|z) - 1/2 |z|^2 + 1/2 |eps|^2 + 1/2 sum logvar.   eps: (Kc, B, L) → (Kc, B)
        """
        mean, logvar = proposal.mean, proposal.logvar
        z = torch.addcmul(mean, torch.exp(0.5 * logvar), eps)  # (Kc, B, L)
        return (
            self.log_likelihood(x, z, proposal.x_projected, proposal.noise)
            - 0.5 * (z * z).sum(-1)
            + 0.5 * (eps * eps).sum(-1)
            + 0.5 * logvar.sum(-1)
        )

    def log_weight_terms(self, x, eps, proposal) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p(x|z), log p(z), log q(z|x)) at z = mean + exp(logvar/2) eps. eps: (K, B, L) → 3 × (K, B)"""
        z = proposal.mean + torch.exp(0.5 * proposal.logvar) * eps  # (K, B, L)
        log_q = diagonal_normal_log_density(z, proposal.mean, proposal.logvar)
        return self.log_likelihood(x, z, proposal.x_projected, proposal.noise), standard_normal_log_density(z), log_q

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> ELBOTerms:
        """ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), one reparameterised sample, analytic KL.

        Kingma & Welling (2014), Eq. 10 (the SGVB estimator B). x: (B, D) → terms of shape (B,)
        """
        mean, logvar = self.encode(x)  # (B, L), (B, L)
        z = sample_latents(mean, logvar, generator=generator)  # (B, L)
        reconstruction = self.log_likelihood(x, z)  # (B,)
        kl = gaussian_kl(mean, logvar)  # (B,)
        return ELBOTerms(elbo=reconstruction - kl, reconstruction=reconstruction, kl=kl)

    def iwae_bound(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """L_k(x) = log 1/k sum_{i=1..k} w_i, w_i = p(x, z_i) / q(z_i|x), z_i ~ q(z|x) (Burda et al. 2016, Eq. 8).

        x: (B, D) → (B,)
        """
        mean, logvar = self.encode(x)  # (B, L), (B, L)
        z = sample_latents(mean, logvar, k, generator=generator)  # (K, B, L)
        log_w = log_importance_weights(self, x, mean, logvar, z)  # (K, B)
        return torch.logsumexp(log_w, dim=0) - torch.log(torch.tensor(float(k), dtype=log_w.dtype))

    def sample_width(self) -> int:
        """Floats per latent sample in the decoder's widest activation: its output D*P, a wider hidden
        layer or (conv, a user's decoder) a feature map, measured on one latent."""
        widths = [self.data_dim * self.per_subpixel, *self.config.hidden]
        if self.config.architecture == "conv" or self.config.decoder is not None:
            sizes: list[int] = []
            modules = list(self.decoder.modules())
            hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel())) for m in modules]
            try:
                with torch.no_grad():
                    weight = self._parameter()
                    self.decoder(torch.zeros((1, self.latent_dim), device=weight.device, dtype=weight.dtype))
            finally:
                for hook in hooks:
                    hook.remove()
            widths += sizes
        return max(widths)


Model = LatentVariableModel  # what build_model returns: any model of the contract


def build_model(config: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None = None) -> Model:
    """The model `config` names: vae.models.model.VAE, or with a VampPrior, gated body or two levels
    (config.family) the vae.models.families model (vae.models.families.build_family)."""
    if config.family:
        return build_family(config, data_dim, image_shape)
    return VAE(config, data_dim, image_shape)


def check_networks(config: ModelConfig, data_dim: int, image_shape: tuple[int, ...] | None) -> None:
    """Build the model and run its users' networks on a dummy batch of 2: their outputs must be the
    encoder's (2, 2L) and the decoder's (2, D*P); one ConfigError line names the field otherwise."""
    if not config.network_specs:
        return
    model = build_model(config, data_dim, image_shape)
    shape = networks.user_shape(image_shape, data_dim)
    checks = (
        ("model.encoder", config.encoder, model.encoder, (2, data_dim), (2, 2 * model.latent_dim),
         f"the mean and log-variance of latent_dim {model.latent_dim}"),
        ("model.decoder", config.decoder, model.decoder, (2, model.latent_dim), (2, data_dim * model.per_subpixel),
         f"{model.per_subpixel} {config.likelihood} parameter(s) for each of {data_dim} subpixels"),
    )  # fmt: skip
    for field, spec, network, given, expected, meaning in checks:
        if spec is None:
            continue
        try:
            with torch.no_grad():
                out = network(torch.zeros(given))
        except Exception as exc:  # noqa: BLE001 - one line, whatever the user's forward raises
            raise ConfigError(
                f"{field} '{spec.factory}': on a dummy batch of shape {list(given)} (images {list(shape)}) "
                f"it raised {one_line(exc)}"
            ) from None
        got = list(getattr(out, "shape", []))
        if got != list(expected):
            raise ConfigError(
                f"{field} '{spec.factory}': output shape {got} on a batch of shape {list(given)} "
                f"(images {list(shape)}); expected {list(expected)}: {meaning}"
            )


def model_from_state(state: dict[str, Any]) -> Model:
    """The model a checkpoint's contents describe (model_config, data_dim, image_shape, weights), in eval mode.

    model_config decides the class (build_model), so a family checkpoint rebuilds its family; a model
    with users' networks finds their modules in the checkpoint's `code_dirs` (or on sys.path)."""
    add_search_paths(state.get("code_dirs", ()))
    model = build_model(ModelConfig(**state["model_config"]), int(state["data_dim"]), state.get("image_shape"))
    model.load_state_dict(state["model"])
    return model.eval()


def read_checkpoint_state(checkpoint_dir: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """The contents of a training checkpoint directory, loaded to the CPU (weights_only: no code runs).

    `mmap` maps the tensors instead of reading them (for the epoch and history alone). A file that
    weights_only refuses (a planted pickle naming code) or cannot read is one line, nothing loaded."""
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise VAEError(f"{path}: checkpoint not found (expected a training checkpoint directory)") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VAEError(
            f"{path}: not a checkpoint this project wrote (only tensors and plain values are loaded; {reason})"
        ) from None


def load_checkpoint(checkpoint_dir: str | Path) -> tuple[Model, dict[str, Any]]:
    """Rebuild the model (VAE or family, as its model_config says) from a training checkpoint directory."""
    state = read_checkpoint_state(checkpoint_dir)
    return model_from_state(state), state
