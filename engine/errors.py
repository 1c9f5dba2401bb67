"""Errors that mean "the input is wrong", as opposed to a bug.

The `deeplab` command prints a `UserError` as one line and exits with code 2; any other
exception (a bug) keeps its traceback. Library code raises these and never calls `sys.exit`.
They subclass ValueError so that callers catching bad values keep working.
"""

__all__ = ["UserError", "ConfigError", "DatasetError", "ParamsError", "WorkdirError",
           "CheckpointError", "WriteError", "LaunchError", "RenderError", "ManifestError",
           "JobStopped", "TrainingDiverged", "Preempted", "Interrupted", "NetworkLost",
           "EXIT_USER_ERROR", "EXIT_DIVERGED", "EXIT_STALLED", "EXIT_NETWORK", "EXIT_PREEMPTED",
           "EXIT_INTERRUPTED", "EXIT_CHECK_FAILED"]


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


class WriteError(CheckpointError):
    """A file (checkpoint, parameters, report) that could not be written whole: a full disk.
    Nothing partial is left and the file it was to replace is untouched."""


class LaunchError(UserError):
    """A launcher invocation that cannot run (bad options, missing environment)."""


class RenderError(UserError):
    """Kubernetes manifests that cannot be rendered from the given flags and config."""


class ManifestError(UserError):
    """A Kubernetes manifest that fails offline validation."""


class JobStopped(Exception):
    """Training stopped early for a reason that is not a bug; the CLI prints the message and
    exits with `exit_code`."""

    exit_code = 1


class TrainingDiverged(JobStopped):
    """A non-finite loss or parameters: stopped before anything non-finite was saved."""

    exit_code = 3


class NetworkLost(JobStopped):
    """A connection between workers failed (Gloo's read or write error, a peer that closed its
    connection): the network, or the peer at the other end. The last checkpoint is intact."""

    exit_code = 5


class Preempted(JobStopped):
    """SIGTERM: a checkpoint was saved and the run can continue with --resume."""

    exit_code = 143


class Interrupted(Preempted):
    """SIGINT (Ctrl-C): a checkpoint was saved and the run can continue with --resume."""

    exit_code = 130


# Exit codes of a worker, as the launchers report them.
EXIT_USER_ERROR = 2
EXIT_DIVERGED = TrainingDiverged.exit_code
EXIT_STALLED = 4
# A consequence, like a collective error: a peer that died first is the cause to report.
EXIT_NETWORK = NetworkLost.exit_code
EXIT_PREEMPTED = Preempted.exit_code
EXIT_INTERRUPTED = Interrupted.exit_code
# `deeplab doctor`: a check failed (the machine or config is not fit for the run; not a bug).
EXIT_CHECK_FAILED = 6
