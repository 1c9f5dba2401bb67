"""Errors that mean "the input is wrong", as opposed to a bug.

The `deeplab` command prints a `UserError` as one line and exits with code 2; any other
exception (a bug) keeps its traceback. Library code raises these and never calls `sys.exit`.
They subclass ValueError so that callers catching bad values keep working.
"""

__all__ = ["UserError", "ConfigError", "DatasetError", "ParamsError", "WorkdirError",
           "CheckpointError", "LaunchError", "RenderError", "ManifestError"]


class UserError(ValueError):
    """Bad input from the user: a config, a file, a directory, a flag."""


class ConfigError(UserError):
    """A config file or `--set` override that does not fit the schema."""


class DatasetError(UserError):
    """A dataset folder, file or sample that is missing or malformed."""


class ParamsError(UserError):
    """A `.params` file that is missing, unreadable or does not fit the network."""


class WorkdirError(UserError):
    """A run directory that cannot be used (locked, foreign, a file, not writable)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from (corrupt, incompatible with the config)."""


class LaunchError(UserError):
    """A launcher invocation that cannot run (bad options, missing environment)."""


class RenderError(UserError):
    """Kubernetes manifests that cannot be rendered from the given flags and config."""


class ManifestError(UserError):
    """A Kubernetes manifest that fails offline validation."""
