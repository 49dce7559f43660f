"""Cache keys of the stages whose results Prefect persists: same inputs → the same result.

Training: same data content, model and training settings and worker layout. Evaluation: the same
checkpoint evaluated with the same settings on the same data.
"""

import hashlib
import json

from vae.config import PipelineConfig


def _digest(prefix: str, identity: dict) -> str:
    return prefix + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def training_key(context, parameters: dict) -> str:
    """Same data content, same settings, same worker layout → the same training result."""
    settings: PipelineConfig = parameters["settings"]
    identity = {
        "pipeline": settings.name,
        "content_hash": parameters["dataset"].content_hash,
        "model": settings.model.model_dump(mode="json"),
        "training": settings.training.model_dump(mode="json"),
        "binarize": settings.dataset.binarize,
        "workers": parameters.get("workers"),
        "gpu": parameters.get("gpu"),
        "run_id": parameters.get("run_id"),
    }
    return _digest("train-", identity)


def evaluation_key(context, parameters: dict) -> str:
    """A checkpoint evaluated with the same settings on the same data gives the same numbers."""
    settings: PipelineConfig = parameters["settings"]
    identity = {
        "checkpoint": parameters["checkpoint"],
        "dataset": parameters["dataset_path"],
        "evaluation": settings.evaluation.model_dump(mode="json"),
        "binarize": settings.dataset.binarize,
    }
    return _digest("evaluate-", identity)
