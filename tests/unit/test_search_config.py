"""The `search:` section: validated like every other section, and turned into Tune's param space."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vae.config import load_pipeline, load_pipelines
from vae.errors import ConfigError

BASE = """
pipelines:
  p:
    dataset: {name: digits, source: "sklearn:digits"}
    model: {latent_dim: 4, hidden: [32]}
    training: {epochs: 7, workers: 2}
    registry: {model_name: vae-p}
    search:
"""


def _write(tmp_path: Path, search: str) -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(BASE + textwrap.indent(textwrap.dedent(search), " " * 6))
    return path


def _error(tmp_path: Path, search: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_pipeline("p", _write(tmp_path, search))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_full_search_section_loads(tmp_path):
    search = load_pipeline("p", _write(tmp_path, """
        trials: 3
        epochs: 2
        scheduler: {kind: asha, grace_period: 1, reduction_factor: 2}
        space:
          learning_rate: {loguniform: [0.001, 0.01]}
          batch_size: {choice: [32, 64]}
          latent_dim: {randint: [2, 6]}
          hidden: {choice: [[32], [64, 64]]}
          objective: {choice: [elbo, iwae]}
    """)).search  # fmt: skip
    assert (search.trials, search.epochs, search.concurrent, search.workers) == (3, 2, 2, 1)
    assert search.scheduler.reduction_factor == 2.0 and search.metric == "validation_elbo" and search.mode == "max"
    assert search.space.hidden.choice == ([32], [64, 64])
    assert set(search.space.given()) == {"learning_rate", "batch_size", "latent_dim", "hidden", "objective"}


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("space: {learning_rat: {uniform: [0.1, 0.2]}}", "field 'search.space.learning_rat': unknown field"),
        ("space: {learning_rate: {uniform: [0.2, 0.1]}}", "uniform: expected low < high, got [0.2, 0.1]"),
        ("space: {learning_rate: {loguniform: [0, 0.1]}}", "loguniform: expected low > 0"),
        ("space: {learning_rate: {uniform: [0.1, 0.2], loguniform: [0.1, 0.2]}}", "exactly one of"),
        ("space: {learning_rate: {choice: []}}", "field 'search.space.learning_rate.choice'"),
        ("space: {batch_size: {uniform: [16, 64]}}", "batch_size: an integer field: expected randint"),
        ("space: {batch_size: {randint: [0, 64]}}", "batch_size: 0 is not a valid training.batch_size"),
        ("space: {objective: {choice: [elbo, iwea]}}", "objective: 'iwea' is not a valid training.objective"),
        ("space: {hidden: {choice: [[32], [0]]}}", "hidden: [0] is not a valid model.hidden"),
        ("space: {}", "expected at least one of: learning_rate"),
        ("trials: 0\nspace: {latent_dim: {randint: [2, 4]}}", "field 'search.trials'"),
        ("space: {latent_dim: {randint: [2, 4]}}\nscheduler: {kind: hyperband}", "field 'search.scheduler.kind'"),
        ("space: {latent_dim: {randint: [2, 4]}}\nmetric: train_elbo", "field 'search.metric'"),
        ("space: {latent_dim: {randint: [2, 4]}}\nmax_minutes: .nan", "field 'search.max_minutes'"),
        ("space: {latent_dim: {randint: [2, true]}}", "a boolean"),
    ],
)
def test_a_bad_search_section_is_one_line_naming_the_field(tmp_path, search, expected):
    message = _error(tmp_path, search)
    assert expected in message and "pipeline 'p'" in message


def test_the_project_pipelines_have_valid_search_sections():
    pipelines = load_pipelines(Path(__file__).resolve().parents[2] / "pipelines.yaml")
    assert pipelines["digits"].search is not None and pipelines["digits"].search.trials == 8
    assert pipelines["fashion-mnist"].search is not None


def test_param_space_maps_each_distribution_to_tune_and_draws_stay_in_range(tmp_path):
    from ray import tune
    from ray.tune.search.variant_generator import generate_variants

    from vae.tune.space import param_space, trial_config

    config = load_pipeline("p", _write(tmp_path, """
        epochs: 3
        space:
          learning_rate: {loguniform: [0.001, 0.01]}
          lr_decay: {uniform: [0.9, 1.0]}
          latent_dim: {randint: [2, 3]}
          hidden: {choice: [[32], [64, 64]]}
    """))  # fmt: skip
    space = param_space(config.search.space)
    assert set(space) == {"training", "model"}
    training, model = space["training"], space["model"]
    assert isinstance(training["learning_rate"], tune.search.sample.Float)
    assert (training["learning_rate"].lower, training["learning_rate"].upper) == (0.001, 0.01)
    assert isinstance(training["learning_rate"].get_sampler(), tune.search.sample.Float._LogUniform)
    assert (training["lr_decay"].lower, training["lr_decay"].upper) == (0.9, 1.0)
    assert (model["latent_dim"].lower, model["latent_dim"].upper) == (2, 4)  # Tune's upper end is exclusive
    assert model["hidden"].categories == [[32], [64, 64]]

    seen = set()
    for _ in range(40):
        _, drawn = next(generate_variants(space))
        trial = trial_config(config, drawn)
        assert 0.001 <= trial.training.learning_rate <= 0.01 and 0.9 <= trial.training.lr_decay <= 1.0
        assert trial.model.hidden in ((32,), (64, 64))
        # Per-trial workers and epochs come from the search; everything else from the pipeline.
        assert (trial.training.workers, trial.training.epochs, trial.model.activation) == (1, 3, "relu")
        seen.add(trial.model.latent_dim)
    assert seen == {2, 3}  # randint's upper end is included


def test_a_draw_the_pipeline_refuses_is_one_line(tmp_path):
    from vae.tune.space import trial_config

    config = load_pipeline("p", _write(tmp_path, "space: {latent_dim: {randint: [2, 4]}}"))
    with pytest.raises(ConfigError) as caught:
        trial_config(config, {"model": {"latent_dim": 0}})
    assert "field 'model.latent_dim'" in str(caught.value) and "\n" not in str(caught.value)


def test_a_search_draws_model_families(tmp_path):
    """prior and body are searchable; each draw builds that family."""
    from vae.models.families import LatentFamily
    from vae.models.model import VAE, build_model
    from vae.tune.space import trial_config

    config = load_pipeline("p", _write(tmp_path, """
        space:
          prior: {choice: [standard, vampprior]}
          body: {choice: [mlp, gated]}
    """))  # fmt: skip
    assert set(config.search.space.given()) == {"prior", "body"}
    plain = trial_config(config, {"model": {"prior": "standard", "body": "mlp"}})
    vamp = trial_config(config, {"model": {"prior": "vampprior", "body": "gated"}})
    assert (vamp.model.prior, vamp.model.pseudo_inputs, vamp.model.body) == ("vampprior", 500, "gated")
    assert type(build_model(plain.model, 64)) is VAE
    assert isinstance(build_model(vamp.model, 64), LatentFamily)
    assert "prior: 'vamp' is not a valid model.prior" in _error(tmp_path, "space: {prior: {choice: [standard, vamp]}}")


def test_draws_the_pipeline_refuses_are_one_line_when_the_file_is_read(tmp_path):
    """Values laid over this pipeline, with every combination of the other searched model fields:
    before, each was only checked against the section's defaults and failed trial by trial."""
    conv = BASE.replace("model: {latent_dim: 4, hidden: [32]}", "model: {latent_dim: 4, architecture: conv}")
    path = tmp_path / "pipelines.yaml"
    path.write_text(conv + "      space: {body: {choice: [mlp, gated]}}\n")
    with pytest.raises(ConfigError) as caught:
        load_pipeline("p", path)
    assert str(caught.value) == (
        f"{path}: pipeline 'p': search.space: a trial could draw body: 'gated', which this pipeline refuses "
        "(field 'model'): body 'gated' gates dense layers: architecture 'conv' has none to gate (use body 'mlp')"
    )
    # Searching the architecture too: gated is refused only beside conv, which a trial can still draw.
    path.write_text(conv + "      space: {body: {choice: [gated]}, architecture: {choice: [mlp, conv]}}\n")
    with pytest.raises(ConfigError, match=r"could draw architecture: 'conv', body: 'gated'|could draw body"):
        load_pipeline("p", path)
    path.write_text(conv + "      space: {body: {choice: [gated, mlp]}, architecture: {choice: [mlp]}}\n")
    assert load_pipeline("p", path).search.space.body.choice == ("gated", "mlp")  # conv is never drawn
    # The VampPrior on conv, refused once, is built now.
    path.write_text(conv + "      space: {prior: {choice: [standard, vampprior]}}\n")
    assert load_pipeline("p", path).search.space.prior.choice == ("standard", "vampprior")
