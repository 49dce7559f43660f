"""Likelihoods p(x|z) as one table of small classes, their log densities, and bits/dim: pure torch.

LIKELIHOODS maps each name pipelines.yaml accepts (model.likelihood) to a class that knows its
parameter count per subpixel, log-density, mean, sampler and what its bits/dim counts:
  bernoulli             binary pixels, P = 1 logit
  gaussian              continuous pixels, P = 1 mean (std fixed or learned per pixel, held by the model);
                        with dequantize: true a bound on 8-bit pixels (DequantizedGaussian)
  discretized_logistic  8-bit pixels, P = 2
  logistic_mixture      8-bit pixels, P = 3K
  categorical           8-bit pixels, P = 256
Adding one is a class here with its entry in LIKELIHOODS, and its test.

The 8-bit likelihoods:

Pixels x are whole numbers in {0..255} (a float or integer tensor) of shape (..., D), D = C*H*W
subpixels. Parameters live in PixelCNN++'s [-1, 1] scale: pixel value v sits at the bin centre
c(v) = 2v/255 - 1, its bin is [c - 1/255, c + 1/255], and the bins of v = 0 and v = 255 extend
to -inf and +inf, so the 256 probabilities of a subpixel sum to 1 exactly.

Decoder output layout: params (..., D, P), subpixel d (in x's flattening order) with its P
parameters contiguous (a decoder's flat (..., D*P) output reshapes to it); P = param_count(kind, K):
  discretized_logistic  P = 2    [mean, log_scale]
  logistic_mixture      P = 3K   [weight logit_1..K, mean_1..K, log_scale_1..K]
  categorical           P = 256  [logit of v = 0, ..., logit of v = 255]
The mixture has per-subpixel weights and no channel-autoregressive coefficients (PixelCNN++'s
R → G → B coupling): a VAE decoder's subpixels are independent given z.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vae.models.likelihood_kinds import EIGHT_BIT_LIKELIHOODS, LIKELIHOOD_KINDS

LOGISTIC = "discretized_logistic"
MIXTURE = "logistic_mixture"
CATEGORICAL = "categorical"
EIGHT_BIT_KINDS = EIGHT_BIT_LIKELIHOODS
# Where 8-bit likelihoods' scales start: a logistic scale of e^-2 in [-1, 1] units (about 17 pixel
# levels) and, for the dequantised Gaussian, a std of e^-2.5 on [0, 1] (about 21 levels) alike.
INITIAL_LOG_SCALE = -2.0
INITIAL_DEQUANTIZED_LOG_STD = -2.5

LEVELS = 256
HALF_BIN = 1.0 / 255.0  # half a bin's width in the [-1, 1] scale
MIN_LOG_SCALE = -7.0  # as PixelCNN++: keeps 1/s finite; s = e^-7 already puts 97% of the mass in one bin
LOG_256 = math.log(LEVELS)

# What a negative log-likelihood measures, for bits_per_dim: the data a likelihood is a probability of.
DATA_KIND = LIKELIHOOD_KINDS
BITS_PER_DIM_UNIT = {
    "binary": "bits per binary pixel",
    "8bit": "bits per 8-bit subpixel",
    "dequantized": "bits per 8-bit subpixel (upper bound, uniform dequantisation)",
}


def param_count(kind: str, components: int = 1) -> int:
    """Decoder outputs per subpixel: discretized_logistic 2, logistic_mixture 3K, categorical 256 (bernoulli 1)."""
    if kind == MIXTURE:
        if components < 1:
            raise ValueError(f"logistic_mixture needs components >= 1, got {components}")
        return 3 * components
    counts = {LOGISTIC: 2, CATEGORICAL: LEVELS, "bernoulli": 1, "gaussian": 1}
    if kind not in counts:
        raise ValueError(f"unknown likelihood '{kind}' (expected one of {', '.join([*counts, MIXTURE])})")
    return counts[kind]


def bin_centre(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """c(x) = 2x/255 - 1: pixel values {0..255} in the [-1, 1] scale of the parameters. (...) → (...)"""
    return x.to(dtype) * (2.0 / 255.0) - 1.0


def _log_one_minus_exp_neg(t: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """log(1 - e^-t) for t > 0, and log t where t underflows (a scale so wide that 2/(255 s) is below 1e-30)."""
    tiny = t < 1e-30
    safe = torch.where(tiny, torch.ones_like(t), t)  # keeps the unused branch's gradient finite
    return torch.where(tiny, log_t, torch.log(-torch.expm1(-safe)))


def discretized_logistic_log_probs(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x_d) per subpixel for a logistic discretised into 256 bins (Salimans et al. 2017, Eq. 2).

    With sigma(.) the sigmoid, c = 2x/255 - 1, a = (c + 1/255 - m)/s and b = (c - 1/255 - m)/s:
    P(x) = sigma(a) - sigma(b) for 0 < x < 255; P(0) = sigma(a) and P(255) = 1 - sigma(b) take the tails.
    The difference is never formed:
        sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - e^-(a - b)),   a - b = t = (2/255)/s,
    so log P = log sigma(a) + log sigma(-b) + log(1 - e^-t) is a sum of three stable terms, exact in
    the far tails where PixelCNN++ falls back to the mid-bin density times the bin width. That
    fallback survives only where t underflows (s > ~1e28): log(1 - e^-t) becomes log t, and the sum
    becomes log(width / 4s), which is exactly the mid-bin fallback at such a scale.

    x: (..., D) in {0..255}; mean, log_scale broadcast with x → (..., D)
    """
    log_scale = log_scale.clamp(min=MIN_LOG_SCALE)  # (..., D)
    inv_scale = torch.exp(-log_scale)  # (..., D)
    # Edges from whole numbers, (2x - 254)/255 and (2x - 256)/255, so the upper edge of x and the
    # lower edge of x + 1 are the same float and the 256 bins telescope to 1 in float32 too.
    twice = 2.0 * x.to(mean.dtype)  # (..., D)
    upper = ((twice - 254.0) / 255.0 - mean) * inv_scale  # (..., D)  a
    lower = ((twice - 256.0) / 255.0 - mean) * inv_scale  # (..., D)  b
    log_cdf_upper = F.logsigmoid(upper)  # (..., D)  log s(a) = log P(X <= upper edge)
    log_sf_lower = F.logsigmoid(-lower)  # (..., D)  log s(-b) = log P(X > lower edge)
    width = _log_one_minus_exp_neg(2.0 * HALF_BIN * inv_scale, math.log(2.0 * HALF_BIN) - log_scale)  # (..., D)
    middle = log_cdf_upper + log_sf_lower + width  # (..., D)
    return torch.where(x == 0, log_cdf_upper, torch.where(x == LEVELS - 1, log_sf_lower, middle))  # (..., D)


def discretized_logistic_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x|params) = sum_d log P(x_d), P of discretized_logistic_log_probs.

    x: (..., D) in {0..255}; mean, log_scale: (..., D) → (...,)
    """
    return discretized_logistic_log_probs(x, mean, log_scale).sum(-1)


def logistic_mixture_log_likelihood(
    x: torch.Tensor, logits: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x) = sum_d log sum_k pi_dk P_k(x_d), pi_d = softmax(logits_d) (Salimans et al. 2017, Eq. 2).

    Per-subpixel mixture weights, no channel coupling. x: (..., D); logits, means, log_scales: (..., D, K) → (...,)
    """
    log_probs = discretized_logistic_log_probs(x.unsqueeze(-1), means, log_scales)  # (..., D, K)
    log_weights = F.log_softmax(logits, dim=-1)  # (..., D, K)
    return torch.logsumexp(log_weights + log_probs, dim=-1).sum(-1)  # (...,)


def categorical_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x) = sum_d (l_{d, x_d} - logsumexp_v l_{d, v}), a 256-way softmax per subpixel.

    x: (..., D) in {0..255}, broadcast against logits: (..., D, 256) → (...,)
    """
    shape = torch.broadcast_shapes(x.shape, logits.shape[:-1])  # (..., D)
    index = x.long().expand(shape).unsqueeze(-1)  # (..., D, 1), a view
    chosen = logits.expand(*shape, logits.shape[-1]).gather(-1, index).squeeze(-1)  # (..., D)
    return (chosen - torch.logsumexp(logits, dim=-1)).sum(-1)  # (...,)


def split_params(kind: str, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The parameters of the layout above. params: (..., D, P) → logistic (mean, log_scale) each (..., D);
    mixture (logits, means, log_scales) each (..., D, K); categorical (logits (..., D, 256),)."""
    if kind == LOGISTIC:
        return params[..., 0], params[..., 1]  # (..., D), (..., D)
    if kind == MIXTURE:
        if params.shape[-1] % 3:
            raise ValueError(f"logistic_mixture needs 3K parameters per subpixel, got {params.shape[-1]}")
        return tuple(params.chunk(3, dim=-1))  # 3 x (..., D, K)
    if kind == CATEGORICAL:
        return (params,)  # (..., D, 256)
    raise ValueError(f"unknown 8-bit likelihood '{kind}' (expected one of {', '.join(EIGHT_BIT_KINDS)})")


def discrete_log_likelihood(kind: str, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """log p(x|params) for an 8-bit likelihood named by kind. x: (..., D) in {0..255}; params: (..., D, P) → (...,)"""
    if kind == LOGISTIC:
        return discretized_logistic_log_likelihood(x, *split_params(kind, params))
    if kind == MIXTURE:
        return logistic_mixture_log_likelihood(x, *split_params(kind, params))
    return categorical_log_likelihood(x, *split_params(kind, params))


def _logistic_mean(mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """E[x] = sum_{v=1..255} P(x >= v) = sum_v s(-(e_v - m)/s), e_v = 2v/255 - 1 - 1/255. (..., D) → (..., D)"""
    inv_scale = torch.exp(-log_scale.clamp(min=MIN_LOG_SCALE))  # (..., D)
    total = torch.zeros_like(mean)  # (..., D)
    for v in range(1, LEVELS):  # one (..., D) tensor at a time: memory stays that of the parameters
        edge = (2.0 * v - 256.0) / 255.0  # lower edge of bin v
        total = total + torch.sigmoid((mean - edge) * inv_scale)
    return total


def mean_pixels(kind: str, params: torch.Tensor) -> torch.Tensor:
    """E[x|params] in the pixel scale [0, 255], exact (for plots of reconstructions). params: (..., D, P) → (..., D)"""
    if kind == LOGISTIC:
        return _logistic_mean(*split_params(kind, params))  # (..., D)
    if kind == MIXTURE:
        logits, means, log_scales = split_params(kind, params)  # (..., D, K) each
        return (torch.softmax(logits, -1) * _logistic_mean(means, log_scales)).sum(-1)  # (..., D)
    (logits,) = split_params(kind, params)  # (..., D, 256)
    values = torch.arange(LEVELS, dtype=logits.dtype, device=logits.device)  # (256,)
    return torch.softmax(logits, -1) @ values  # (..., D)


def _uniform(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def sample_pixels(kind: str, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x ~ p(x|params) in {0..255} as floats. params: (..., D, P) → (..., D)

    Logistic: y = m + s (log u - log(1 - u)) by the inverse CDF, then x = clamp(round(127.5 (y + 1)), 0, 255),
    which is the bin that holds y (the edge bins take the tails). Components and categories by Gumbel-max.
    """
    if kind == CATEGORICAL:
        (logits,) = split_params(kind, params)  # (..., D, 256)
        gumbel = -torch.log(-torch.log(_uniform(logits.shape, logits, generator).clamp_min(1e-20)))  # (..., D, 256)
        return (logits + gumbel).argmax(-1).to(logits.dtype)  # (..., D)
    if kind == MIXTURE:
        logits, means, log_scales = split_params(kind, params)  # (..., D, K) each
        gumbel = -torch.log(-torch.log(_uniform(logits.shape, logits, generator).clamp_min(1e-20)))  # (..., D, K)
        pick = (logits + gumbel).argmax(-1, keepdim=True)  # (..., D, 1)
        mean, log_scale = means.gather(-1, pick).squeeze(-1), log_scales.gather(-1, pick).squeeze(-1)  # (..., D)
    else:
        mean, log_scale = split_params(kind, params)  # (..., D)
    u = _uniform(mean.shape, mean, generator).clamp(1e-7, 1.0 - 1e-7)  # (..., D)
    y = mean + torch.exp(log_scale.clamp(min=MIN_LOG_SCALE)) * (torch.log(u) - torch.log1p(-u))  # (..., D)
    return torch.round(127.5 * (y + 1.0)).clamp(0, LEVELS - 1)  # (..., D)


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x~ = (x + u)/256, u ~ U[0, 1)^D, and the term -D log 256 that makes a density on x~ a bound on P(x).

    For any density p~ on R^D, P(x) = int_{[0,1)^D} p~((x + u)/256) 256^-D du is a discrete
    (sub-)distribution on {0..255}^D, and by Jensen
        log P(x) >= E_u[log p~(x~)] - D log 256        (Theis, van den Oord & Bethge 2016, Sec. 3.1)
    so add the returned correction to log p~(x~) (or to an IS estimate of it, itself a bound in
    expectation) before bits_per_dim(..., kind="dequantized"). x: (..., D) → x~ (..., D) float, correction (...,)
    """
    x = x.to(torch.get_default_dtype()) if not x.is_floating_point() else x
    u = _uniform(x.shape, x, generator)  # (..., D) in [0, 1)
    correction = torch.full(x.shape[:-1], -x.shape[-1] * LOG_256, dtype=x.dtype, device=x.device)  # (...,)
    return (x + u) / LEVELS, correction


def bits_per_dim(nll_nats, data_dim: int, kind: str):
    """NLL / (D ln 2): bits per binary pixel (kind 'binary') or per 8-bit subpixel ('8bit', 'dequantized').

    '8bit': the NLL of a discrete distribution over {0..255}^D (a discretised or categorical likelihood);
    'dequantized': -(E[log p~(x~)] - D log 256) from `dequantize`, an upper bound on an 8-bit NLL.
    A continuous density's NLL ('continuous') is not a probability of the data and is refused.
    Likelihood names (DATA_KIND) are accepted too. nll_nats: a float or a tensor of any shape.
    """
    kind = DATA_KIND.get(kind, kind)
    if kind == "continuous":
        raise ValueError(
            "bits/dim of a continuous density is not comparable with anything (expected an 8-bit likelihood, "
            "or uniform dequantisation with the -D log 256 term accounted for: kind='dequantized')"
        )
    if kind not in BITS_PER_DIM_UNIT:
        raise ValueError(f"unknown bits/dim kind '{kind}' (expected one of {', '.join(BITS_PER_DIM_UNIT)})")
    if data_dim < 1:
        raise ValueError(f"data_dim must be >= 1, got {data_dim}")
    return nll_nats / (data_dim * math.log(2.0))


# --- Bernoulli and Gaussian log densities ---------------------------------------------------------

LOG_2PI = math.log(2.0 * math.pi)


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = sum_d x_d l_d - softplus(l_d), the stable form of x log s(l) + (1-x) log(1-s(l)).

    x: (..., D) in {0, 1}; logits: (..., D) → (...,)
    """
    return (x * logits - F.softplus(logits)).sum(-1)


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag exp(2 log_std)) = -sum_d [ (x_d-m_d)^2 / 2s_d^2 + log s_d + log(2pi)/2 ].

    x, mean: (..., D); log_std broadcasts to (..., D) → (...,)
    """
    return -(0.5 * ((x - mean) * torch.exp(-log_std)) ** 2 + log_std + 0.5 * LOG_2PI).sum(-1)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Inputs x = v/255 back to whole pixel values v in {0..255}. (B, D) → (B, D)

    Inputs that are not v/255 (a dataset whose max_value is not 255, or binarised) are refused in one line.
    """
    from vae.errors import VAEError  # plain exceptions module; kept local so this file stays torch-only

    scaled = x * 255.0  # (B, D)
    v = torch.round(scaled).clamp(0, 255)  # (B, D)
    if not torch.compiler.is_compiling() and bool(((scaled - v).abs() > 1e-3).any()):
        raise VAEError(
            "8-bit likelihood: inputs are not pixel values v/255 with v in 0..255 "
            "(expected a dataset of 8-bit pixels, value_range [0, 255], and dataset.binarize 'none')"
        )
    return v


# --- the table ----------------------------------------------------------------------------------


class Likelihood:
    """p(x|z) from the decoder's output `out` (..., D*P), each subpixel's P values contiguous.

    Inputs x are on the model's [0, 1] scale (8-bit kinds read them back as v = 255 x). `log_std`
    is the model's per-pixel Gaussian std (D,), unused by the others; `noise` is the dequantisation
    u (B, D) when there is one.
    """

    name = ""
    data_kind = ""  # what NLL / (D ln 2) counts: 'binary', '8bit' or 'continuous'
    eight_bit = False  # reads x as 8-bit pixels v/255
    dequantized = False
    initial_log_scale: float | None = None  # where the logistics' log-scales start (the last k of P)

    def __init__(self, components: int = 1):
        self.components = components

    @property
    def params_per_subpixel(self) -> int:
        return 1

    @property
    def bits_per_dim_kind(self) -> str:
        return "dequantized" if self.dequantized else self.data_kind

    def initial_log_std(self) -> float:
        """Where a learned per-pixel Gaussian log-std starts (its value for a fixed std of 1)."""
        return 0.0

    def split(self, out: torch.Tensor) -> torch.Tensor:
        """(..., D*P) → (..., D, P)"""
        p = self.params_per_subpixel
        return out.reshape(*out.shape[:-1], out.shape[-1] // p, p)

    def log_prob(self, x, out, log_std, noise=None) -> torch.Tensor:  # (B, D), (..., B, D*P) → (..., B)
        raise NotImplementedError

    def mean(self, out, log_std) -> torch.Tensor:  # E[x|z] on the inputs' [0, 1] scale, (..., D)
        raise NotImplementedError

    def sample(self, out, log_std, generator=None) -> torch.Tensor:  # x ~ p(x|z), (..., D)
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Binary pixels: out are logits l, log p(x|z) = sum_d x_d l_d - softplus(l_d)."""

    name, data_kind = "bernoulli", "binary"

    def log_prob(self, x, out, log_std, noise=None):
        return bernoulli_log_likelihood(x, out)

    def mean(self, out, log_std):
        return torch.sigmoid(out)

    def sample(self, out, log_std, generator=None):
        u = torch.rand(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        return (u < torch.sigmoid(out)).to(out.dtype)


class Gaussian(Likelihood):
    """Continuous pixels: out are means, log p(x|z) = log N(x; out, diag exp(2 log_std))."""

    name, data_kind = "gaussian", "continuous"

    def log_prob(self, x, out, log_std, noise=None):
        return gaussian_log_likelihood(x, out, log_std)

    def mean(self, out, log_std):
        return out

    def sample(self, out, log_std, generator=None):
        eps = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        return out + torch.exp(log_std) * eps  # (..., D)


class DequantizedGaussian(Gaussian):
    """A Gaussian density on x~ = (v + u)/256, u ~ U[0, 1)^D, minus D log 256: its expectation over u
    is a lower bound on log P(v|z) of 8-bit pixels (Theis et al. 2016, Sec. 3.1; see `dequantize`)."""

    data_kind, eight_bit, dequantized = "8bit", True, True

    def initial_log_std(self) -> float:
        return INITIAL_DEQUANTIZED_LOG_STD

    def log_prob(self, x, out, log_std, noise=None):
        v = pixels(x)  # (B, D)
        u = torch.rand(x.shape, dtype=x.dtype, device=x.device) if noise is None else noise  # (B, D)
        x_tilde = (v + u) / LEVELS  # (B, D) in [0, 1)
        return gaussian_log_likelihood(x_tilde, out, log_std) - x.shape[-1] * LOG_256

    def mean(self, out, log_std):
        return (LEVELS * out - 0.5) / 255.0

    def sample(self, out, log_std, generator=None):
        x = super().sample(out, log_std, generator)  # x~ falls in the bin of v = floor(256 x~)
        return torch.floor(LEVELS * x).clamp(0, 255) / 255.0


class _EightBit(Likelihood):
    """A probability over 256 levels per subpixel, from params (..., D, P) in this module's layout."""

    data_kind, eight_bit = "8bit", True

    @property
    def params_per_subpixel(self) -> int:
        return param_count(self.name, self.components)

    def log_prob(self, x, out, log_std, noise=None):
        return discrete_log_likelihood(self.name, pixels(x), self.split(out))

    def mean(self, out, log_std):
        return mean_pixels(self.name, self.split(out)) / 255.0

    def sample(self, out, log_std, generator=None):
        return sample_pixels(self.name, self.split(out), generator) / 255.0


class DiscretizedLogistic(_EightBit):
    name, initial_log_scale = LOGISTIC, INITIAL_LOG_SCALE


class LogisticMixture(_EightBit):
    name, initial_log_scale = MIXTURE, INITIAL_LOG_SCALE


class Categorical(_EightBit):
    name = CATEGORICAL


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (Bernoulli, Gaussian, DiscretizedLogistic, LogisticMixture, Categorical)
}
assert {name: cls.data_kind for name, cls in LIKELIHOODS.items()} == LIKELIHOOD_KINDS, "vae.models.likelihood_kinds"


def make_likelihood(name: str, *, components: int = 1, dequantize: bool = False) -> Likelihood:
    """The table's likelihood `name` (with dequantize, the Gaussian's DequantizedGaussian)."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood '{name}' (expected one of {', '.join(LIKELIHOODS)})")
    cls = DequantizedGaussian if dequantize and name == Gaussian.name else LIKELIHOODS[name]
    return cls(components)
