"""vae: train Variational Autoencoders at scale, evaluate log p(x) by importance sampling, register in MLflow.

The library never imports Prefect; `flows/` orchestrates it. The one exception is the `vae`
command (vae/cli/), which starts flows; see the README's Architecture section.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vae")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
