"""The one exception type users see: a single line naming the file, field or value and what was expected."""


class VAEError(Exception):
    """Bad input or a failed stage, explained in one line; the CLI prints it and exits nonzero."""


class ConfigError(VAEError):
    """pipelines.yaml is missing, malformed, or names a pipeline that does not exist."""


class DataError(VAEError):
    """A dataset source or a stored dataset is unreadable or invalid."""


class TrainingDivergedError(VAEError):
    """The training loss became non-finite; nothing is registered."""


class RegistryError(VAEError):
    """A model URI or alias could not be resolved, or the registry refused a write."""


class StorageError(VAEError):
    """Local state (VAE_HOME, a download folder) cannot be written: read-only, full or not permitted."""
