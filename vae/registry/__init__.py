"""Stage 4, register: MLflow runs and model versions, the champion gate (a pure rule), the
registration stage, the model card and plots, and the served pyfunc (`mlflow models serve`).

May import: vae's root modules, vae.data, vae.models, vae.evaluate.
"""


def __getattr__(name: str):
    """`from vae.registry import set_model`: what the models-from-code file of models registered before
    vae's sub-packages imports (tests/integration/test_old_registered_model.py)."""
    if name == "set_model":
        from mlflow.models import set_model

        return set_model
    raise AttributeError(f"module 'vae.registry' has no attribute {name!r}")
