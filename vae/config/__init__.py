"""Typed, frozen configs for pipelines.yaml and its loader: the project's one public configuration
namespace. Import from here (`from vae.config import PipelineConfig, load_pipeline`); the modules
behind it are where each part lives:

- names: the name and cron checks, the strict field types (Name, Int, Float), the Frozen base, describe_error
- dataset: DatasetConfig
- model: ModelConfig and NetworkSpec (users' networks by import path)
- training: TrainingConfig, EvaluationConfig, RegistryConfig
- deployment: DeploymentConfig and ScheduleConfig
- jobs: EmbeddingConfig, ScoreConfig, SampleConfig, DriftConfig
- search: SEARCHABLE, Distribution, SearchSpace, SchedulerConfig, SearchConfig
- pipeline: PipelineConfig, the strict YAML loader, load_pipelines and load_pipeline

A pipeline names its dataset, model, training, evaluation and registry settings; every section
rejects unknown keys so a typo fails loudly instead of being silently ignored. Numbers are strict
(no `true` for an integer, no `.inf` or `.nan`), a key given twice is refused, and names that become
paths or registry names (pipeline, dataset, experiment, model) must match NAME_PATTERN.

May import: of vae, only vae.errors, vae.user_code (when a pipeline names users' networks),
vae.models.likelihood_kinds (the likelihood names) and vae.data.urls (redacting a source URL), all
torch-free: importing vae.config imports no torch, Ray, MLflow or Prefect.
"""

from vae.config.dataset import DatasetConfig
from vae.config.deployment import DEPLOYMENT_PARAMETERS, DeploymentConfig, ScheduleConfig
from vae.config.jobs import DriftConfig, EmbeddingConfig, SampleConfig, ScoreConfig
from vae.config.model import IMPORT_PATH, LikelihoodName, ModelConfig, NetworkSpec
from vae.config.names import (
    CRON_HELP,
    NAME_PATTERN,
    Float,
    Frozen,
    Int,
    Name,
    cron_problem,
    describe_error,
    name_problem,
)
from vae.config.pipeline import (
    DEFAULT_PIPELINES_FILE,
    MAX_COMBINATIONS,
    PipelineConfig,
    load_pipeline,
    load_pipelines,
    parse_yaml,
)
from vae.config.search import SEARCHABLE, Distribution, SchedulerConfig, SearchConfig, SearchSpace
from vae.config.training import EvaluationConfig, RegistryConfig, TrainingConfig

__all__ = [
    "CRON_HELP",
    "DEFAULT_PIPELINES_FILE",
    "DEPLOYMENT_PARAMETERS",
    "IMPORT_PATH",
    "MAX_COMBINATIONS",
    "NAME_PATTERN",
    "SEARCHABLE",
    "DatasetConfig",
    "DeploymentConfig",
    "Distribution",
    "DriftConfig",
    "EmbeddingConfig",
    "EvaluationConfig",
    "Float",
    "Frozen",
    "Int",
    "LikelihoodName",
    "ModelConfig",
    "Name",
    "NetworkSpec",
    "PipelineConfig",
    "RegistryConfig",
    "SampleConfig",
    "ScheduleConfig",
    "SchedulerConfig",
    "ScoreConfig",
    "SearchConfig",
    "SearchSpace",
    "TrainingConfig",
    "cron_problem",
    "describe_error",
    "load_pipeline",
    "load_pipelines",
    "name_problem",
    "parse_yaml",
]
