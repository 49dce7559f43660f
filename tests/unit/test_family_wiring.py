"""The VAE families chosen from pipelines.yaml: config, build_model, checkpoints, training steps,
evaluation and serving, each against an exact answer or an independent computation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vae.config import EvaluationConfig, ModelConfig, load_pipelines
from vae.errors import ConfigError
from vae.evaluate.estimators import annealed_importance_sampling, block_noise, estimate_log_likelihood
from vae.evaluate.evaluation import active_units, estimate_on_device
from vae.models.families import OneLevelVAE, TwoLevelVAE
from vae.evaluate.estimators import estimate_log_likelihood as estimate_family_log_likelihood
from vae.models.model import CHECKPOINT_FILE, VAE, build_model, load_checkpoint
from vae.models.likelihoods import bernoulli_log_likelihood
from vae.models.objectives import elbo, gaussian_kl, iwae_bound
from vae.train.stepper import Objective, Stepper, make_optimizer

D = 12
CPU = torch.device("cpu")
FAMILIES = {
    "vampprior": ModelConfig(latent_dim=3, hidden=(16,), prior="vampprior", pseudo_inputs=5),
    "gated": ModelConfig(latent_dim=3, hidden=(16,), body="gated"),
    "gated-vampprior": ModelConfig(latent_dim=3, hidden=(16, 16), body="gated", prior="vampprior", pseudo_inputs=5),
    "two-level": ModelConfig(
        latent_dim=3, hidden=(16,), levels=2, latent_dim2=2, latent_hidden=(8,), activation="tanh"
    ),
}
# (class, {parameter: shape}) that each config must build: encoder D → hidden → 2L, decoder L → hidden → D.
EXPECTED = {
    "vampprior": (
        OneLevelVAE,
        {
            "encoder.0.weight": (16, D), "encoder.0.bias": (16,), "encoder.2.weight": (6, 16), "encoder.2.bias": (6,),
            "decoder.0.weight": (16, 3), "decoder.0.bias": (16,), "decoder.2.weight": (D, 16), "decoder.2.bias": (D,),
            "pseudo_input_params": (5, D),
        },
    ),
    "gated": (
        OneLevelVAE,
        {
            "encoder.0.linear.weight": (16, D), "encoder.0.linear.bias": (16,),
            "encoder.0.gate.weight": (16, D), "encoder.0.gate.bias": (16,),
            "encoder.1.weight": (6, 16), "encoder.1.bias": (6,),
            "decoder.0.linear.weight": (16, 3), "decoder.0.linear.bias": (16,),
            "decoder.0.gate.weight": (16, 3), "decoder.0.gate.bias": (16,),
            "decoder.1.weight": (D, 16), "decoder.1.bias": (D,),
        },
    ),
    "two-level": (
        TwoLevelVAE,
        {
            "encoder.0.weight": (16, D), "encoder.0.bias": (16,), "encoder.2.weight": (6, 16), "encoder.2.bias": (6,),
            "encoder_z2.0.weight": (8, 3), "encoder_z2.0.bias": (8,), "encoder_z2.2.weight": (4, 8),
            "encoder_z2.2.bias": (4,),
            "prior_z1.0.weight": (8, 2), "prior_z1.0.bias": (8,), "prior_z1.2.weight": (6, 8), "prior_z1.2.bias": (6,),
            "decoder.0.weight": (16, 3), "decoder.0.bias": (16,), "decoder.2.weight": (D, 16), "decoder.2.bias": (D,),
        },
    ),
}  # fmt: skip


def binary_data(n: int = 64, seed: int = 1) -> torch.Tensor:
    """Pixels ~ Bernoulli(p_d), p_d from 0.05 to 0.95: a model can learn them, so the loss must fall. (N, D)"""
    probabilities = torch.linspace(0.05, 0.95, D).expand(n, D)
    return torch.bernoulli(probabilities, generator=torch.Generator().manual_seed(seed))


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(FAMILIES[name], D)


# --- config --------------------------------------------------------------------------------------

PIPELINE = """\
pipelines:
  fam:
    dataset: {name: digits, source: "sklearn:digits"}
    model: MODEL
    registry: {model_name: vae-fam}
"""


@pytest.mark.parametrize("name", FAMILIES)
def test_family_configs_round_trip_through_their_dump_and_yaml(name, tmp_path):
    config = FAMILIES[name]
    dumped = config.model_dump(mode="json")
    assert ModelConfig(**dumped) == config
    assert config.family
    path = tmp_path / "pipelines.yaml"
    path.write_text(PIPELINE.replace("MODEL", json.dumps(dumped)))
    assert load_pipelines(path)["fam"].model == config


def test_a_default_model_dumps_exactly_the_fields_it_had_before_the_families():
    """Checkpoints, MLflow params and Prefect cache keys of existing pipelines do not change."""
    assert list(ModelConfig().model_dump(mode="json")) == [
        "architecture", "latent_dim", "hidden", "channels", "activation", "likelihood", "components",
        "gaussian_std", "dequantize",
    ]  # fmt: skip
    assert not ModelConfig().family
    dumped = ModelConfig(prior="vampprior", pseudo_inputs=500).model_dump(mode="json")
    assert dumped["prior"] == "vampprior" and "pseudo_inputs" not in dumped  # only what differs from defaults
    assert ModelConfig(**dumped).pseudo_inputs == 500


@pytest.mark.parametrize(
    "model",
    [
        "{prior: vampprior, architecture: conv, channels: [4]}",
        "{levels: 2, latent_dim2: 2, architecture: conv, channels: [4]}",
        "{prior: vampprior, likelihood: categorical}",
        "{levels: 2, latent_dim2: 2, likelihood: logistic_mixture, components: 2}",
        "{body: gated, likelihood: gaussian, dequantize: true}",
    ],
)
def test_every_family_is_built_on_conv_and_8bit_likelihoods(tmp_path, model):
    """What the families were once refused (conv, 8-bit likelihoods, dequantisation) now validates."""
    path = tmp_path / "pipelines.yaml"
    text = PIPELINE.replace("MODEL", model)
    if "likelihood: categorical" in model or "logistic_mixture" in model or "dequantize" in model:
        text = text.replace('source: "sklearn:digits"', 'source: "sklearn:digits", binarize: none')
    path.write_text(text)
    assert load_pipelines(path)["fam"].model.family


@pytest.mark.parametrize(
    ("model", "field", "message"),
    [
        ("{pseudo_inputs: 50}", "model", "pseudo_inputs applies to prior 'vampprior' only, got prior 'standard'"),
        ("{prior: vamp}", "model.prior", "expected: input should be 'standard' or 'vampprior', got 'vamp'"),
        ("{body: resnet}", "model.body", "expected: input should be 'mlp' or 'gated', got 'resnet'"),
        ("{levels: 3, latent_dim2: 2}", "model.levels", "expected: input should be less than or equal to 2, got 3"),
        ("{levels: 2}", "model", "levels 2 needs latent_dim2, the dimensions of the second latent level (e.g. 50)"),
        ("{latent_dim2: 4}", "model", "latent_dim2 applies to levels 2 only, got levels 1 and latent_dim2 4"),
        ("{latent_hidden: [50]}", "model", "latent_hidden applies to levels 2 only, got levels 1 and [50]"),
        ("{body: gated, architecture: conv}", "model",
         "body 'gated' gates dense layers: architecture 'conv' has none to gate (use body 'mlp')"),
        ("{prior: vampprior, levels: 2, latent_dim2: 2}", "model",
         "prior 'vampprior' with levels 2 is not built (the two-level VAE's top prior is N(0, I))"),
    ],
)  # fmt: skip
def test_a_family_that_is_not_built_is_refused_in_one_line_naming_the_field(tmp_path, model, field, message):
    path = tmp_path / "pipelines.yaml"
    path.write_text(PIPELINE.replace("MODEL", model))
    with pytest.raises(ConfigError) as error:
        load_pipelines(path)
    assert str(error.value) == f"{path}: pipeline 'fam': field '{field}': {message}"


# --- build_model and checkpoints ------------------------------------------------------------------


@pytest.mark.parametrize("name", EXPECTED)
def test_build_model_builds_the_family_with_the_configured_shapes(name):
    model = build(name)
    cls, shapes = EXPECTED[name]
    assert type(model) is cls and model.config == FAMILIES[name]
    assert {key: tuple(p.shape) for key, p in model.named_parameters()} == shapes
    assert model.latent_dim == 3 and model.data_dim == D and model.bits_per_dim_kind == "binary"


def test_the_configured_prior_and_pseudo_input_count_reach_the_model():
    vamp = build("gated-vampprior")
    assert vamp.prior == "vamp" and vamp.pseudo_inputs.shape == (5, D)
    assert isinstance(vamp.encoder[0], torch.nn.Module) and type(vamp.encoder[0]).__name__ == "GatedDense"
    assert build("gated").prior == "standard" and build("two-level").latent_dims == (3, 2)


def save(model, config: ModelConfig, folder: Path) -> Path:
    """A checkpoint as vae.train.checkpoints writes it (model, model_config dump, data_dim, image_shape)."""
    folder.mkdir()
    state = {"model": model.state_dict(), "model_config": config.model_dump(mode="json"), "data_dim": D}
    torch.save({**state, "image_shape": [D]}, folder / CHECKPOINT_FILE)
    return folder


@pytest.mark.parametrize("name", FAMILIES)
def test_a_checkpoint_rebuilds_the_family_with_identical_log_weights(name, tmp_path):
    model = build(name)
    with torch.no_grad():  # move every weight off its initial value, so a fresh build would differ
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    loaded, state = load_checkpoint(save(model, FAMILIES[name], tmp_path / "ckpt"))
    assert type(loaded) is type(model) and loaded.config == FAMILIES[name] and not loaded.training
    x = binary_data(10)
    noise = torch.randn((7, 10, model.noise_dim), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded.log_weights(x, 7, noise=noise), model.log_weights(x, 7, noise=noise))
        assert not torch.equal(build(name, seed=0).log_weights(x, 7, noise=noise), model.log_weights(x, 7, noise=noise))


# --- training --------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
@pytest.mark.parametrize("name", FAMILIES)
def test_the_objective_is_the_familys_own_and_30_stepper_steps_lower_the_loss(name, objective):
    model = build(name)
    x = binary_data()
    wrapped = Objective(model, objective, 3)
    # The Objective's numbers are the family's own elbo_terms / iwae_bound, draw for draw.
    torch.manual_seed(11)
    target, elbo_value, reconstruction, kl = wrapped(x, 0.5)
    torch.manual_seed(11)
    terms = model.elbo_terms(x)
    expected = model.iwae_bound(x, 3) if objective == "iwae" else terms.reconstruction - 0.5 * terms.kl
    for ours, theirs in ((target, expected), (elbo_value, terms.elbo), (reconstruction, terms.reconstruction)):
        assert torch.equal(ours, theirs)
    assert torch.equal(kl, terms.kl)

    torch.manual_seed(12)
    optimizer = make_optimizer(model.parameters(), 1e-2, CPU, graphed=False)
    stepper = Stepper(wrapped, optimizer, max_value=1.0, binarize="threshold", device=CPU, graph=True)
    losses = []
    for _ in range(30):
        stepper.start_epoch()
        stepper.step(x, 1.0)
        losses.append(-float(stepper.sums[0] / stepper.sums[4]))
    assert stepper.first_bad_step() == (0, 0.0) and not stepper.graphed  # eager on the CPU
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, (first, last)  # nats per image: ~8.3 (D log 2) at init, ~6 after 30 steps


def test_the_validation_elbo_of_vae_training_is_the_familys_own():
    """vae.train.worker validates with vae.models.objectives.elbo: for a family that is the family's elbo_terms."""
    model, x = build("vampprior"), binary_data(8)
    ours = elbo(model, x, torch.Generator().manual_seed(4))
    theirs = model.elbo_terms(x, torch.Generator().manual_seed(4))
    assert torch.equal(ours.elbo, theirs.elbo) and torch.equal(ours.kl, theirs.kl)
    ours_k = iwae_bound(model, x, 5, torch.Generator().manual_seed(6))
    assert torch.equal(ours_k, model.iwae_bound(x, 5, torch.Generator().manual_seed(6)))


# --- evaluation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_the_evaluation_stage_estimates_a_family_with_its_own_log_weights(name):
    model, x = build(name), binary_data(150)
    config = EvaluationConfig(k=40, batch_size=32, max_memory_mb=1, seed=5)
    staged = estimate_on_device(model, x, config, first_index=70, device=CPU)
    direct = estimate_family_log_likelihood(model, x, 40, batch_size=32, max_memory_bytes=2**20, seed=5, first_index=70)
    for field in ("log_px", "elbo", "ess"):
        assert torch.equal(getattr(staged, field), getattr(direct, field))
    # ...and both are log 1/k sum_i w_i with example n's noise from its own block, computed in one go.
    with torch.no_grad():
        log_w = model.log_weights(x, 40, noise=block_noise(40, model.noise_dim, 70, 150, 5)).double()  # (K, N)
    torch.testing.assert_close(staged.log_px, torch.logsumexp(log_w, 0) - math.log(40), rtol=0, atol=1e-9)
    torch.testing.assert_close(staged.elbo, log_w.mean(0), rtol=0, atol=1e-9)
    # A split run gives the same numbers (to float32 matmul rounding): the noise follows the example index.
    halves = [estimate_on_device(model, x[a:b], config, 70 + a, CPU) for a, b in ((0, 77), (77, 150))]
    torch.testing.assert_close(torch.cat([h.log_px for h in halves]), staged.log_px, rtol=0, atol=1e-5)
    summary = staged.summary(model.data_dim, model.bits_per_dim_kind)
    assert summary["nll"] == -float(staged.log_px.mean()) and summary["bits_per_dim_kind"] == "binary"
    assert summary["bits_per_dim"] == pytest.approx(summary["nll"] / (D * math.log(2)), rel=1e-12)


def test_active_units_of_a_family_count_the_dimensions_of_its_first_level():
    model, x = build("two-level"), binary_data(200)
    with torch.no_grad():
        means = model.encode(x)[0].double()  # (N, L1)
    assert active_units(model, x, batch_size=64) == int((means.var(0) > 0.01).sum())
    assert means.shape[1] == 3


# --- serving ---------------------------------------------------------------------------------------


def test_the_served_family_model_encodes_reconstructs_decodes_and_scores(tmp_path):
    from vae.registry.serving import VAEModel

    model = build("two-level")
    folder = save(model, FAMILIES["two-level"], tmp_path / "ckpt")
    (tmp_path / "meta.json").write_text(json.dumps({"shape": [3, 4], "max_value": 1.0, "binarize": "threshold"}))
    context = SimpleNamespace(
        artifacts={"checkpoint": str(folder / CHECKPOINT_FILE), "metadata": str(tmp_path / "meta.json")}
    )
    served = VAEModel()
    served.load_context(context)
    x = binary_data(6)
    with torch.no_grad():
        mean, logvar = model.encode(x)
        assert torch.equal(torch.from_numpy(served.predict(None, x.numpy())["z_mean"]), mean)
        means = served.predict(None, x.numpy(), {"method": "reconstruct"})["x_mean"]
        assert torch.equal(torch.from_numpy(means).reshape(6, D), model.mean_image(mean))
        z1 = torch.randn((4, 3), generator=torch.Generator().manual_seed(2))
        decoded = served.predict(None, z1.numpy(), {"method": "decode"})["x_mean"]
        assert decoded.shape == (4, 3, 4) and torch.equal(torch.from_numpy(decoded).reshape(4, D), model.mean_image(z1))
    scored = served.predict(None, x.numpy(), {"method": "score", "k": 30, "seed": 2})
    direct = estimate_family_log_likelihood(model, x, 30, batch_size=128, seed=2)
    assert torch.equal(torch.from_numpy(scored["log_px"]), direct.log_px)
    assert torch.equal(torch.from_numpy(scored["elbo"]), direct.elbo)


# --- the standard VAE is unchanged -----------------------------------------------------------------

# Produced by the code before the families were wired in (commit c910b1b), from the calls below.
BEFORE = {
    "elbo": -177.2037811279297,
    "iwae": -177.03756713867188,
    "log_px": -175.71156990822035,
    "is_elbo": -177.48695784568787,
    "ess": 1753.2301112810933,
    "sum_objective": -843.2974796295166,
    "sum_elbo": -852.2966275215149,
    "sum_reconstruction": -849.20183801651,
    "sum_kl": 3.0947879552841187,
    "examples": 100.0,
    "params": -3.5905834541190416,
}


def test_the_default_config_builds_the_standard_vae_with_the_same_numbers_as_before():
    config = ModelConfig(latent_dim=3, hidden=(16,))
    torch.manual_seed(0)
    model = build_model(config, D)
    torch.manual_seed(0)
    direct = VAE(config, D)
    assert type(model) is VAE  # the standard VAE, with its own analytic-KL elbo_terms
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), direct.state_dict().values()))
    x = torch.bernoulli(torch.linspace(0.1, 0.9, D).expand(20, D), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    terms = elbo(model, x)
    bound = iwae_bound(model, x, 4)
    # The ELBO is still Kingma & Welling's estimator B, written out here from the encoder and decoder.
    torch.manual_seed(5)
    mean, logvar = direct.encode(x)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape)
    by_hand = bernoulli_log_likelihood(x, direct.decode(z)) - gaussian_kl(mean, logvar)
    torch.testing.assert_close(terms.elbo, by_hand, rtol=1e-6, atol=1e-5)
    estimate = estimate_log_likelihood(model, x, 100, seed=3)
    staged = estimate_on_device(model, x, EvaluationConfig(k=100, seed=3), device=CPU)
    assert torch.equal(staged.log_px, estimate.log_px)
    torch.manual_seed(7)
    optimizer = make_optimizer(model.parameters(), 1e-2, CPU, False)
    stepper = Stepper(Objective(model, "iwae", 3), optimizer, max_value=1.0, binarize="threshold", device=CPU)
    stepper.start_epoch()
    for _ in range(5):
        stepper.step(x, 1.0)
    now = {
        "elbo": terms.elbo.sum().item(),
        "iwae": bound.sum().item(),
        "log_px": estimate.log_px.sum().item(),
        "is_elbo": estimate.elbo.sum().item(),
        "ess": estimate.ess.sum().item(),
        **dict(zip(["sum_objective", "sum_elbo", "sum_reconstruction", "sum_kl", "examples"], stepper.sums.tolist())),
        "params": sum(p.double().sum().item() for p in model.parameters()),
    }
    # Exact on the machine that made BEFORE; other CPUs' float32 kernels may round differently.
    assert now == pytest.approx(BEFORE, rel=1e-5)


def test_the_one_ais_gives_the_standard_vae_the_numbers_of_the_ais_it_replaced():
    """vae.evaluate.estimators.annealed_importance_sampling now runs on the model's sample_prior / log_prior /
    log_likelihood_state; for the standard VAE (dequantised too) it draws and accepts exactly as before."""
    torch.manual_seed(0)
    binary = build_model(ModelConfig(latent_dim=3, hidden=(16,)), D)
    dequantized = build_model(ModelConfig(latent_dim=2, hidden=(8,), likelihood="gaussian", dequantize=True), D)
    x_binary = torch.bernoulli(torch.full((10, D), 0.4), generator=torch.Generator().manual_seed(1))
    x_pixels = torch.randint(0, 256, (10, D), generator=torch.Generator().manual_seed(1)).float() / 255
    got = [
        annealed_importance_sampling(model, x, steps=50, chains=8, seed=3)
        for model, x in ((binary, x_binary), (dequantized, x_pixels))
    ]
    # From vae.evaluate.estimators.annealed_importance_sampling before the change (commit c910b1b), same calls.
    assert [a.log_px.sum().item() for a in got] == pytest.approx([-84.87865480968239, -2498.6983480419103], rel=1e-6)
    assert [a.acceptance for a in got] == pytest.approx([0.9964999999999997, 0.8699999999999999], abs=1e-9)
