"""The `model` section of a pipeline: architecture, likelihood, the stronger families (VampPrior,
gated body, two levels) and users' own networks by import path (NetworkSpec)."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from vae.config.names import Float, Frozen, Int
from vae.models.likelihood_kinds import EIGHT_BIT_LIKELIHOODS, LIKELIHOOD_KINDS


LikelihoodName = Literal[tuple(LIKELIHOOD_KINDS)]  # the names of vae.models.likelihoods.LIKELIHOODS
IMPORT_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


class NetworkSpec(Frozen):
    """A user's network: `factory` is `package.module:attr`, called with image_shape=(C, H, W),
    latent_dim=L, params_per_subpixel=P and `args` (vae.models.networks). Written as the string alone when
    there are no args."""

    factory: str
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"factory": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _import_path(self) -> "NetworkSpec":
        if not IMPORT_PATH.fullmatch(self.factory):
            raise ValueError(f"factory '{self.factory}': expected an import path 'package.module:attr'")
        return self


class ModelConfig(Frozen):
    """A VAE: q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I), p(x|z) by `likelihood`.

    `mlp`: fully connected nets of widths `hidden` (Burda et al.: [200, 200], tanh, latent 50).
    `conv`: one stride-2 convolution per entry of `channels` each way (vae.models.conv), for images
    C x H x W of any channel count and size (sides that 2^depth does not divide are padded).
    Likelihoods: `bernoulli` (binary pixels), `gaussian` (continuous; with `dequantize` a bound
    on 8-bit pixels), and for 8-bit pixels `discretized_logistic`, `logistic_mixture` (with
    `components`) and `categorical` (vae.models.likelihoods).

    Stronger families (vae.models.families), on every architecture and likelihood (the VampPrior's
    pseudo-inputs take the image's shape); what is ill-defined is refused in one line:
    - `prior: vampprior`: p(z) = 1/K sum_k q(z|u_k) over K = `pseudo_inputs` learned pseudo-images u_k
      (Tomczak & Welling 2018, Eq. 9; they use K = 500). Default `standard`: p(z) = N(0, I).
    - `body: gated`: every hidden layer a gated linear unit h = (W x + b) * sigmoid(V x + c)
      (GatedDense; Tomczak & Welling use 300 units); `activation` is then unused. Default `mlp`.
    - `levels: 2`: q(z1|x) q(z2|z1), p(z2) = N(0, I) p(z1|z2) p(x|z1) (Burda et al. 2016, two stochastic
      layers): z1 has `latent_dim` dimensions, z2 `latent_dim2`, and the nets between them the widths
      `latent_hidden` (Burda et al.: latent 100 + 50, hidden [200, 200], latent_hidden [100, 100], tanh).
      Its top prior is N(0, I): `prior: vampprior` with `levels: 2` is refused.
      `body: gated` gates dense layers: with `architecture: conv` it is refused.
    Users' own networks: `encoder` and/or `decoder` name a factory `package.module:attr` (vae.models.networks)
    with keyword `args`; a module beside pipelines.yaml is found.
    With all of these at their defaults the model is vae.models.model.VAE, unchanged, and the fields are left
    out of model_dump (checkpoints, MLflow params and cache keys of existing pipelines stay as they were).
    """

    architecture: Literal["mlp", "conv"] = "mlp"
    latent_dim: Int = Field(8, ge=1)
    hidden: tuple[Int, ...] = (128, 128)
    channels: tuple[Int, ...] = Field((32, 64), min_length=1)
    activation: Literal["relu", "tanh"] = "relu"
    likelihood: LikelihoodName = "bernoulli"  # a name of the table vae.models.likelihoods.LIKELIHOODS
    # logistic_mixture only: mixture components per subpixel (PixelCNN++ uses 10 for CIFAR-10).
    components: Int = Field(5, ge=1)
    # Gaussian likelihood only: a fixed observation std, or null to learn one per pixel.
    gaussian_std: Float | None = Field(None, gt=0.0)
    # Gaussian likelihood only: uniform dequantisation of 8-bit pixels, x~ = (x + u)/256, with the
    # -D log 256 of the change of variables in log p(x|z), so its NLL bounds an 8-bit one.
    dequantize: bool = False
    # The stronger families (see above); at these defaults the model is the standard VAE.
    prior: Literal["standard", "vampprior"] = "standard"
    pseudo_inputs: Int = Field(500, ge=1)  # vampprior only: K pseudo-inputs
    body: Literal["mlp", "gated"] = "mlp"
    levels: Int = Field(1, ge=1, le=2)
    latent_dim2: Int | None = Field(None, ge=1)  # levels 2 only: dimensions of the top level z2
    latent_hidden: tuple[Int, ...] = (100, 100)  # levels 2 only: widths of the nets between z1 and z2
    # Users' own networks by import path (vae.models.networks): they replace the built-in ones of that side.
    encoder: NetworkSpec | None = None
    decoder: NetworkSpec | None = None
    FAMILY_FIELDS: ClassVar[tuple[str, ...]] = (
        "prior",
        "pseudo_inputs",
        "body",
        "levels",
        "latent_dim2",
        "latent_hidden",
        "encoder",
        "decoder",
    )

    @model_validator(mode="after")
    def _hidden_positive(self) -> "ModelConfig":
        if any(h < 1 for h in self.hidden):
            raise ValueError("every hidden layer width must be >= 1")
        if any(c < 1 for c in self.channels):
            raise ValueError(f"every conv width in channels must be >= 1, got {list(self.channels)}")
        if self.dequantize and self.likelihood != "gaussian":
            raise ValueError(f"dequantize applies to the gaussian likelihood only, got likelihood '{self.likelihood}'")
        return self

    @model_validator(mode="after")
    def _family_is_built(self) -> "ModelConfig":
        """The family fields name a model vae.models.families builds, or one line says which field does not."""
        defaults = type(self).model_fields
        if self.pseudo_inputs != defaults["pseudo_inputs"].default and self.prior != "vampprior":
            raise ValueError(f"pseudo_inputs applies to prior 'vampprior' only, got prior '{self.prior}'")
        if self.levels == 2 and self.latent_dim2 is None:
            raise ValueError("levels 2 needs latent_dim2, the dimensions of the second latent level (e.g. 50)")
        if self.levels == 1 and self.latent_dim2 is not None:
            raise ValueError(f"latent_dim2 applies to levels 2 only, got levels 1 and latent_dim2 {self.latent_dim2}")
        if self.levels == 1 and self.latent_hidden != defaults["latent_hidden"].default:
            raise ValueError(f"latent_hidden applies to levels 2 only, got levels 1 and {list(self.latent_hidden)}")
        if any(h < 1 for h in self.latent_hidden):
            raise ValueError(f"every latent_hidden width must be >= 1, got {list(self.latent_hidden)}")
        if not self.family:
            return self
        what = next(
            f"{name} {value!r}" if isinstance(value, str) else f"{name} {value}"
            for name, value in (("prior", self.prior), ("body", self.body), ("levels", self.levels))
            if value != defaults[name].default
        )
        if self.prior == "vampprior" and self.levels == 2:
            raise ValueError("prior 'vampprior' with levels 2 is not built (the two-level VAE's top prior is N(0, I))")
        if self.body == "gated" and self.architecture == "conv":
            raise ValueError(f"{what} gates dense layers: architecture 'conv' has none to gate (use body 'mlp')")
        return self

    @model_serializer(mode="wrap")
    def _family_fields_when_used(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave the family fields out at their defaults: a standard VAE's dump (checkpoint model_config,
        MLflow params, Prefect cache keys) is the same as before the families could be chosen."""
        data = handler(self)
        for name in self.FAMILY_FIELDS:
            if getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return data

    @property
    def family(self) -> bool:
        """Whether this is a vae.models.families model (a VampPrior, a gated body or two levels), not vae.models.model.VAE."""
        return self.prior != "standard" or self.body != "mlp" or self.levels != 1

    @property
    def eight_bit(self) -> bool:
        """Whether p(x|z) is a probability of 8-bit pixels: a discretised or categorical likelihood, or dequantised."""
        return self.likelihood in EIGHT_BIT_LIKELIHOODS or self.dequantize

    @property
    def network_specs(self) -> tuple[NetworkSpec, ...]:
        """The users' networks this model imports (encoder, decoder), those given."""
        return tuple(spec for spec in (self.encoder, self.decoder) if spec is not None)
