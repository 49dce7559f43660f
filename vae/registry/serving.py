"""The registered model as MLflow serves it: the whole VAE behind one pyfunc, a method per request.

`params={"method": ...}` picks what a request does (default `encode`, as before):
- `encode`      images (N, D), (N, *image shape) or, for colour (C, H, W), (N, H, W, C) too
                → {'z_mean': (N, L), 'z_logvar': (N, L)}
- `reconstruct` images → {'x_mean': (N, *image shape)}: E[x | z = mean of q(z|x)], on the data's scale
- `decode`      latents (N, L) → {'x_mean': (N, *image shape)}: E[x | z], on the data's scale
- `score`       images → {'log_px': (N,), 'elbo': (N,)}: log p̂(x) by importance sampling with
                `k` samples (Burda et al. 2016, Eq. 8) and the Monte Carlo ELBO, in nats, on the
                device the server has; row n uses the noise of example n with `seed`, as `vae evaluate`.
Images are raw pixel values on the dataset's scale [0, max_value], prepared exactly as in
training; (N, D) rows are channel-major, as stored. 8-bit likelihoods take whole pixel values 0..255.
A vae.models.families model (VampPrior, gated body, two levels) serves all four: encode gives q(z|x) (for
two levels q(z1|x), L = L1), decode reads the decoder's latent (z1), and score uses the family's own
importance weights p(x, s) / q(s|x) over its full latent state (vae.evaluate.estimators, one estimator for all).
A bad request is one short message with a 4xx status: the array is never echoed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vae.registry.pyfunc import PythonModel, RequestError

if TYPE_CHECKING:
    import torch

METHODS = ("encode", "reconstruct", "decode", "score")
MAX_K = 5000


class VAEModel(PythonModel):
    """A trained VAE served whole: encode, reconstruct, decode and score (see the module docstring)."""

    def load_context(self, context):
        import torch

        from vae.models.model import model_from_state, read_checkpoint_state

        state = read_checkpoint_state(Path(context.artifacts["checkpoint"]).parent)
        meta = json.loads(Path(context.artifacts["metadata"]).read_text())
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model_from_state(state).to(self.device)
        self.data_dim = int(state["data_dim"])
        self.shape = tuple(int(s) for s in meta.get("shape") or (self.data_dim,))
        self.max_value = float(meta["max_value"])
        self.binarize = meta["binarize"]

    def _images(self, model_input, density: bool = False) -> torch.Tensor:
        """(N, D) or (N, *shape) raw pixels → model inputs (N, D) on the device.

        Models trained on thresholded pixels see thresholded requests. Dynamic binarisation is a
        training-time augmentation: encoding takes the pixel intensities as they are (as always),
        while a density (`score`) needs binary pixels, thresholded as the stored test split is.
        """
        import torch

        from vae.data.inputs import prepare_inputs

        array = self._array(model_input)
        colour = len(self.shape) == 3  # stored (C, H, W)
        if (
            colour
            and array.ndim == 4
            and array.shape[1:] != self.shape
            and array.shape[1:] == self.shape[1:] + self.shape[:1]
        ):
            array = array.transpose(0, 3, 1, 2)  # (N, H, W, C) → (N, C, H, W)
        if (
            array.ndim < 2
            or math.prod(array.shape[1:]) != self.data_dim
            or (colour and array.ndim > 2 and array.shape[1:] != self.shape)
        ):
            shape = ", ".join(str(s) for s in self.shape)
            channels_last = f" or (N, {', '.join(str(s) for s in self.shape[1:] + self.shape[:1])})" if colour else ""
            raise RequestError(
                f"input of shape {list(array.shape)}: expected images of {self.data_dim} pixels "
                f"each, shaped (N, {self.data_dim}) or (N, {shape}){channels_last}"
            )
        if (self.model.eight_bit or self.model.dequantized) and not (
            (array == np.round(array)).all() and ((array >= 0) & (array <= self.max_value)).all()
        ):
            raise RequestError(
                f"input pixels: expected whole numbers in [0, {self.max_value:g}] for an 8-bit likelihood"
            )
        binarize = "threshold" if self.binarize == "threshold" or (density and self.binarize == "dynamic") else "none"
        pixels = torch.from_numpy(np.ascontiguousarray(array).reshape(array.shape[0], self.data_dim)).to(self.device)
        return prepare_inputs(pixels, self.max_value, binarize)  # (N, D)

    @staticmethod
    def _array(model_input) -> np.ndarray:
        raw = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
        try:
            array = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError):
            raise RequestError("input is not a rectangular array of numbers") from None
        if not np.isfinite(array).all():
            raise RequestError("input has NaN or infinite values: expected finite numbers")
        return array

    def _pixels(self, means) -> np.ndarray:
        """Pixel means in [0, 1] → the data's scale, shaped like the images: (N, *shape)."""
        return (means * self.max_value).reshape(means.shape[0], *self.shape).cpu().numpy()

    def predict(self, context, model_input: np.ndarray, params=None):  # np.ndarray: MLflow infers no schema
        import torch

        from vae.evaluate.estimators import estimate_log_likelihood

        params = params or {}
        method = params.get("method", "encode")
        if method not in METHODS:
            raise RequestError(f"params.method {method!r}: expected one of {', '.join(METHODS)}")
        with torch.no_grad():
            if method == "decode":
                z = torch.from_numpy(self._array(model_input)).to(self.device)
                if z.ndim != 2 or z.shape[1] != self.model.latent_dim:
                    raise RequestError(
                        f"input of shape {list(z.shape)}: expected latents shaped (N, {self.model.latent_dim})"
                    )
                return {"x_mean": self._pixels(self.model.mean_image(z))}
            x = self._images(model_input, density=method == "score")  # (N, D)
            if method == "encode":
                mean, logvar = self.model.encode(x)  # (N, L), (N, L)
                return {"z_mean": mean.cpu().numpy(), "z_logvar": logvar.cpu().numpy()}
            if method == "reconstruct":
                mean, _ = self.model.encode(x)  # (N, L)
                return {"x_mean": self._pixels(self.model.mean_image(mean))}
        k, seed = int(params.get("k", 1000)), int(params.get("seed", 0))
        if not 1 <= k <= MAX_K:
            raise RequestError(f"params.k {k}: expected 1 <= k <= {MAX_K} importance samples per image")
        estimate = estimate_log_likelihood(self.model, x, k, batch_size=None if x.is_cuda else 128, seed=seed)
        return {"log_px": estimate.log_px.numpy(), "elbo": estimate.elbo.numpy()}
