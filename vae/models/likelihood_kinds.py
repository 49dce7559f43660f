"""The names of the likelihoods (vae.models.likelihoods.LIKELIHOODS) and what each is a probability of.

Torch-free, so reading pipelines.yaml (vae.config) does not import torch; vae.models.likelihoods checks at
import that its table has exactly these names and kinds.
"""

# name → the data its NLL is a probability of: 'binary', '8bit' or 'continuous' (bits/dim's meaning)
LIKELIHOOD_KINDS = {
    "bernoulli": "binary",
    "gaussian": "continuous",
    "discretized_logistic": "8bit",
    "logistic_mixture": "8bit",
    "categorical": "8bit",
}
EIGHT_BIT_LIKELIHOODS = tuple(name for name, kind in LIKELIHOOD_KINDS.items() if kind == "8bit")
