"""One named pipeline of pipelines.yaml (PipelineConfig, with its checks across sections) and the
file's loader: strict YAML (a key given twice is refused), every problem one ConfigError line that
names the file, the pipeline and the field."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from vae.config.dataset import DatasetConfig
from vae.config.deployment import DeploymentConfig
from vae.config.jobs import DriftConfig, EmbeddingConfig, SampleConfig, ScoreConfig
from vae.config.model import ModelConfig, NetworkSpec
from vae.config.names import Frozen, Name, describe_error, name_problem
from vae.config.search import SEARCHABLE, SearchConfig
from vae.config.training import EvaluationConfig, RegistryConfig, TrainingConfig
from vae.errors import ConfigError

DEFAULT_PIPELINES_FILE = "pipelines.yaml"
MAX_COMBINATIONS = 4096  # of one section's searched candidates checked when pipelines.yaml is read


class PipelineConfig(Frozen):
    """One named pipeline of pipelines.yaml."""

    name: Name
    dataset: DatasetConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig
    deployment: DeploymentConfig = DeploymentConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    score: ScoreConfig | None = None  # 'score/NAME' is deployed only when the section is there
    sample: SampleConfig | None = None  # 'sample/NAME' likewise
    drift: DriftConfig | None = None  # 'drift/NAME' and `vae drift --pipeline NAME` (vae.jobs.drift)
    search: SearchConfig | None = None  # `vae tune NAME` (vae.tune.search)

    @model_validator(mode="after")
    def _likelihood_fits_inputs(self) -> "PipelineConfig":
        if self.model.likelihood == "bernoulli" and self.dataset.binarize == "none":
            raise ValueError(
                "a Bernoulli likelihood needs binary inputs: set dataset.binarize to 'threshold' or 'dynamic', "
                "or use model.likelihood 'gaussian'"
            )
        if self.model.eight_bit:
            what = "dequantize" if self.model.dequantize else f"likelihood '{self.model.likelihood}'"
            if self.dataset.binarize != "none":
                raise ValueError(
                    f"model {what} is a probability of 8-bit pixels: set dataset.binarize to 'none' "
                    f"(got '{self.dataset.binarize}')"
                )
            if self.dataset.max_value not in (None, 255):
                raise ValueError(
                    f"model {what} needs 8-bit pixels 0..255: dataset.max_value must be 255 or unset "
                    f"(got {self.dataset.max_value:g})"
                )
        return self

    @model_validator(mode="after")
    def _draws_fit_the_pipeline(self) -> "PipelineConfig":
        """Every draw a trial can make, laid over this pipeline, passes the pipeline's own checks:
        `prior: vampprior` on a conv pipeline is refused here, not trial by trial.

        A section's rules read only that section's fields (ModelConfig's cross-field checks; the
        pipeline-level ones involve no searchable field), so each section's searched fields are
        checked together, every combination of their candidates (every choice, both ends of a range).
        A space too big for that (over MAX_COMBINATIONS in a section) is left to vae.tune.space.trial_config.
        """
        if self.search is None:
            return self
        body = self.model_dump()
        body["search"] = None
        given = self.search.space.given()
        for section in ("model", "training"):
            names = [name for name in given if SEARCHABLE[name] == section]
            pools = [given[name].candidates for name in names]
            if not names or math.prod(len(pool) for pool in pools) > MAX_COMBINATIONS:
                continue
            for values in itertools.product(*pools):
                draw = dict(zip(names, values))
                laid = {**body[section], **{n: list(v) if isinstance(v, tuple) else v for n, v in draw.items()}}
                try:
                    PipelineConfig.model_validate({**body, section: laid})
                except ValidationError as exc:
                    error = exc.errors()[0]
                    drawn = ", ".join(f"{name}: {value!r}" for name, value in draw.items())
                    raise ValueError(
                        f"search.space: a trial could draw {drawn}, which this pipeline refuses "
                        f"(field '{'.'.join(str(part) for part in error['loc'])}'): "
                        f"{describe_error(error).removeprefix('expected: ')}"
                    ) from None
        return self

    @property
    def experiment(self) -> str:
        return self.registry.experiment or self.registry.model_name


def _parse_pipeline(path: Path, name: str, body: Any) -> PipelineConfig:
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"{path}: pipeline {name!r}: pipeline name: {problem}")
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: pipeline '{name}': expected a mapping of sections, got {body!r}")
    try:
        config = PipelineConfig(name=name, **body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a check across sections
            raise ConfigError(
                f"{path}: pipeline '{name}': {describe_error(first).removeprefix('expected: ')}"
            ) from None
        field = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: pipeline '{name}': field '{field}': {describe_error(first)}") from None
    except TypeError as exc:  # e.g. a section given twice through ** expansion
        raise ConfigError(f"{path}: pipeline '{name}': {exc}") from None
    specs = {
        field: spec
        for field, spec in (("model.encoder", config.model.encoder), ("model.decoder", config.model.decoder))
        if spec is not None
    }
    space = config.search.space if config.search is not None else None
    for field in ("encoder", "decoder"):
        drawn = getattr(space, field, None)
        for i, value in enumerate(drawn.candidates if drawn is not None else ()):
            specs[f"search.space.{field}.choice[{i}]"] = NetworkSpec.model_validate(value)
    if specs:  # users' networks are imported (and so torch) only when a pipeline names some
        from vae.user_code import check_importable

        check_importable(specs, path.resolve().parent, f"{path}: pipeline '{name}'")
    return config


class _DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping names the same key twice (YAML's last-one-wins would silently drop the first)."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *defaults' then overrides is meant to repeat keys
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first
            except TypeError:  # an unhashable key: SafeLoader says so below
                continue
            if seen:
                raise _DuplicateKeyError(
                    problem=f"duplicate key {key!r} (first given on line {first[key]}; expected each key once)",
                    problem_mark=key_node.start_mark,
                )
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def parse_yaml(path: Path, raw: bytes) -> Any:
    """A YAML document from UTF-8 bytes; a problem is one ConfigError line naming the file and line."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8 (expected a UTF-8 text file)"
        ) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        invalid = "" if isinstance(exc, _DuplicateKeyError) else "invalid YAML: "
        raise ConfigError(f"{path}: {where}{invalid}{problem}") from None


def load_pipelines(path: str | Path = DEFAULT_PIPELINES_FILE) -> dict[str, PipelineConfig]:
    """Parse and validate every pipeline of the file; the first problem raises ConfigError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (expected a pipelines.yaml; pass --file)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    document = parse_yaml(path, raw)
    if not isinstance(document, dict) or not isinstance(document.get("pipelines"), dict):
        raise ConfigError(f"{path}: expected a top-level 'pipelines:' mapping of name -> pipeline")
    unknown = sorted(set(document) - {"pipelines"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key '{unknown[0]}' (expected only 'pipelines')")
    return {str(name): _parse_pipeline(path, str(name), body) for name, body in document["pipelines"].items()}


def load_pipeline(name: str, path: str | Path = DEFAULT_PIPELINES_FILE) -> PipelineConfig:
    """One pipeline by name; an unknown name lists the ones that exist."""
    pipelines = load_pipelines(path)
    if name not in pipelines:
        available = ", ".join(sorted(pipelines)) or "(none)"
        raise ConfigError(f"{path}: unknown pipeline '{name}'; available: {available}")
    return pipelines[name]
