"""The run directory: what may be in it, who may write to it, and whether a run may continue.

Everything here is checked before a run writes anything, so a refused run leaves the directory
exactly as it was.
"""
import fcntl
import os
import shutil
import socket

from deeplab.errors import CheckpointError, ParamsError, WorkdirError

__all__ = ["RUN_FILES", "is_run_file", "check_workdir", "WorkdirLock", "lock_if_run",
           "replace_run", "RESUMABLE_KEYS", "check_resume", "check_resumable", "ARCHITECTURE_KEYS",
           "resolve_checkpoint"]

# What a run writes at the top of its directory; anything else means the directory is not a
# run's (a typo in --workdir pointing at a dataset or a home directory).
RUN_FILES = {"config.yaml", "train.log", "checkpoints", "final.params", "results.json",
             "run.json", ".lock", "metrics.jsonl", "tb", "best.params", "best.json",
             "curves.png", "confusion.png"}


def is_run_file(name):
    """Whether a name at the top of a directory is a run's: one of RUN_FILES, or the temporary
    file of one that a killed process left (deeplab.utils.atomic_write's `.NAME.XXXX.tmp`)."""
    if name in RUN_FILES:
        return True
    return name.startswith(".") and name.endswith(".tmp") and \
        name[1:-len(".tmp")].rsplit(".", 1)[0] in RUN_FILES


def _saved(path):
    """What in run directory `path` shows a run that already trained."""
    out = []
    ckpt = os.path.join(path, "checkpoints")
    if os.path.isdir(ckpt) and any(n.endswith(".json") for n in os.listdir(ckpt)):
        out.append("checkpoints/")
    if os.path.exists(os.path.join(path, "final.params")):
        out.append("final.params")
    return out


def _foreign(path):
    """The entries of directory `path` that a run does not write, listed for a message (the
    first five), or '' if there is none."""
    foreign = sorted(n for n in os.listdir(path) if not is_run_file(n))
    return ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")


def check_workdir(path, resume):
    """Raises WorkdirError if `path` cannot hold this run (read-only checks, nothing written).

    Refused: a file; a directory of files that are not a run's; without `resume`, a run that
    already saved checkpoints or final parameters; a directory that cannot be written.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError("--workdir %s is a file, not a directory" % path)
    if os.path.isdir(path):
        foreign = _foreign(path)
        if foreign:
            raise WorkdirError("--workdir %s holds files that are not a training run's (%s); "
                               "choose an empty or new directory" % (path, foreign))
        if not os.access(path, os.W_OK | os.X_OK):
            raise WorkdirError("--workdir %s is not writable by this user" % path)
        done = _saved(path)
        if done and not resume:
            raise WorkdirError("%s already holds a run (%s); pass --resume to continue it or "
                               "choose another --workdir" % (path, ", ".join(done)))
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise WorkdirError("cannot create --workdir %s: %s is not a writable directory"
                           % (path, parent))


class WorkdirLock:
    """An exclusive lock on a run directory (`DIR/.lock`), held by the main worker for the whole
    run, so that a second run on the same directory is refused instead of mixing files.

    The lock is the kernel's (flock): it goes with the process, so a killed run never leaves a
    stale lock behind. The file names the holder for the error message.
    """

    def __init__(self, workdir, flag="--workdir"):
        self.path = os.path.join(workdir, ".lock")
        self.flag = flag  # the option to change, named in the error
        self._fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkdirError("%s is in use by another run (%s); wait for it to end or choose "
                               "another %s" % (os.path.dirname(self.path), holder, self.flag)) \
                from None
        os.ftruncate(fd, 0)
        os.write(fd, ("pid %d on %s" % (os.getpid(), socket.gethostname())).encode())
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def lock_if_run(directory, flag="--out"):
    """The acquired WorkdirLock of `directory` if it is a run's (it holds DIR/.lock), else None.

    For commands that write into a run directory from outside the run (`deeplab eval --out
    DIR/results.json`): refused with WorkdirError while the run is going, like a second run;
    a directory that is not a run's gets no lock file.
    """
    if not os.path.isfile(os.path.join(directory, ".lock")):
        return None
    return WorkdirLock(directory, flag).acquire()


# What marks a run as the demo's (scripts/demo.sh trains configs/tiny_synthetic.yaml): the
# data.name its config.yaml records. A run on synthetic data is regenerated in a minute; any
# other run may be days of training.
DEMO_DATA = "synthetic"


def _not_a_demo(path):
    """Why run directory `path` is not one replace_run may delete (a message), or None: it holds
    nothing of a run's but the lock, or a run whose config.yaml records data.name synthetic."""
    import yaml

    if all(n == ".lock" or (n.startswith(".") and n.endswith(".tmp")) for n in os.listdir(path)):
        return None
    try:
        with open(os.path.join(path, "config.yaml")) as f:
            data = (yaml.safe_load(f) or {}).get("data") or {}
        name = data.get("name") if isinstance(data, dict) else None
    except FileNotFoundError:
        return "%s holds a training run without its config.yaml" % path
    except (OSError, yaml.YAMLError, AttributeError):
        name = None
    if name == DEMO_DATA:
        return None
    return "%s holds a training run on %s, not a demo's (data.name %s)" % (
        path, "data.name %s (its config.yaml)" % name if name else
        "data its config.yaml does not name", DEMO_DATA)


def replace_run(path):
    """Deletes the demo's run directory `path` so that a new demo can start there
    (scripts/demo.sh DIR).

    Refused, with nothing deleted: a file, a directory holding anything a run does not write
    (`deeplab train`'s rule), a run still going (its lock is held), and a run that is not a
    demo's (its config.yaml's data.name is not DEMO_DATA: `demo.sh runs/r50-p2` must not delete
    a real training run). A missing `path` is fine.
    """
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        raise WorkdirError("%s is not a directory; not replacing it with a run" % path)
    foreign = _foreign(path)
    if foreign:
        raise WorkdirError("%s holds files that are not a training run's (%s); not deleting it: "
                           "choose an empty or new directory" % (path, foreign))
    with WorkdirLock(path):  # a run still writing there is refused, naming it
        why = _not_a_demo(path)
        if why:
            raise WorkdirError("%s; not deleting it: the demo replaces only an earlier demo's "
                               "run, choose an empty or new directory" % why)
        shutil.rmtree(path)


def check_resumable(path, state, required):
    """With `required` (`--resume`), raises WorkdirError if `state`, the checkpoint found in
    run directory `path`, is None: a mistyped or empty --workdir must not silently train from
    iteration 0 (`--resume-if-exists`, for schedulers that restart jobs, allows it)."""
    if state is not None or not required:
        return
    probe = lock_if_run(path, "--workdir") if os.path.isdir(path) else None
    if probe:  # not held: no run going there (which would be the news, not the checkpoints)
        probe.release()
    if not os.path.isdir(path):
        raise WorkdirError("--resume: %s does not exist; nothing to resume (use "
                           "--resume-if-exists to start a new run when there is none)" % path)
    raise WorkdirError("--resume: %s holds no checkpoint (no checkpoints/iter_*.json); nothing "
                       "to resume (use --resume-if-exists to start a new run when there is "
                       "none)" % path)


# Keys a resumed run may change: they do not alter what is computed (where weights and data are
# read from (the checkpoint replaces the starting weights),
# how often to log or save, loader processes, the world size through dist.backend, timeouts,
# evaluation). Every other key changes the model, the data, the batch, the schedule, the seed
# or the BN mode, so the resumed run would not continue the checkpoint's run.
RESUMABLE_KEYS = {"model.params", "model.backbone_params", "data.root", "data.num_workers",
                  "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
                  "train.hybridize", "train.umask",
                  "train.eval_every", "eval.max_images",
                  "dist.backend", "dist.num_groups", "dist.stall_timeout",
                  "eval.output_stride", "eval.scales", "eval.flip"}


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def check_resume(saved_cfg, cfg, iteration, allow_change=False):
    """Raises CheckpointError if the run configured by `cfg` cannot continue a checkpoint saved
    at `iteration` with `saved_cfg`.

    Always refused: train.iterations below the checkpoint's. Refused unless `allow_change`:
    any other difference outside RESUMABLE_KEYS. Returns the list of differences allowed.
    """
    if cfg["train"]["iterations"] < iteration:
        raise CheckpointError(
            "train.iterations is %d but the checkpoint to resume is at iteration %d; a run "
            "cannot continue backwards (set train.iterations >= %d)"
            % (cfg["train"]["iterations"], iteration, iteration))
    old, new = _flat(saved_cfg or {}), _flat(cfg)
    changed = ["%s: %r -> %r" % (k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and k not in RESUMABLE_KEYS]
    if changed and not allow_change:
        raise CheckpointError(
            "the config differs from the checkpoint's in keys that change the training (%s); "
            "resume with the original settings, or pass --allow-config-change to continue "
            "anyway" % "; ".join(changed))
    return changed


# Model keys that change the parameters' names or shapes: a checkpoint trained with other values
# cannot be loaded (output_stride, multi_grid, dropout only change how they are used).
ARCHITECTURE_KEYS = ("name", "head", "num_classes", "head_channels")


def _network(model):
    return "%s (head %s, %s classes, head_channels %s)" % tuple(
        model.get(k) for k in ARCHITECTURE_KEYS)


def _recorded_model(path):
    """The model section recorded beside checkpoint file `path` by the run that wrote it
    (checkpoints/iter_N.json, or the run's config.yaml), as (model dict, where), or None."""
    import json

    import yaml

    stem, _ = os.path.splitext(path)
    folder = os.path.dirname(os.path.abspath(path))
    candidates = [(stem + ".json", "json")]
    if os.path.basename(folder) == "checkpoints":
        candidates.append((os.path.join(os.path.dirname(folder), "config.yaml"), "yaml"))
    else:
        candidates.append((os.path.join(folder, "config.yaml"), "yaml"))
    for where, kind in candidates:
        try:
            with open(where) as f:
                data = json.load(f).get("config") if kind == "json" else yaml.safe_load(f)
            model = data["model"]
        except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
            continue
        if isinstance(model, dict) and all(k in model for k in ARCHITECTURE_KEYS):
            return model, where
    return None


def resolve_checkpoint(path, cfg):
    """The `.params` file that `--checkpoint path` names for a network configured by `cfg`.

    A run directory gives its final.params. Raised as ParamsError, in one line: a missing
    path; a run directory without final.params (naming the files it holds); a trainer state
    (`.states`); a file whose run recorded another network than `cfg`'s (naming both).
    """
    if os.path.isdir(path):
        final = os.path.join(path, "final.params")
        if os.path.isfile(final):
            path = final
        else:
            found = sorted(n for n in os.listdir(path) if n.endswith(".params"))
            ckpt = os.path.join(path, "checkpoints")
            if os.path.isdir(ckpt):
                found += sorted(os.path.join("checkpoints", n) for n in os.listdir(ckpt)
                                if n.endswith(".params"))
            raise ParamsError(
                "--checkpoint %s is a directory without final.params (the run has not "
                "finished?); %s" % (path, "give one of its parameter files: %s"
                                    % ", ".join(os.path.join(path, n) for n in found[-5:])
                                    if found else "it holds no .params file"))
    if not os.path.exists(path):
        raise ParamsError("params file %s does not exist" % path)
    if path.endswith(".states"):
        params = path[:-len(".states")] + ".params"
        raise ParamsError("--checkpoint %s is a trainer state (optimizer momentum, for "
                          "--resume), not network parameters; expected a .params file%s"
                          % (path, " such as %s" % params if os.path.isfile(params) else ""))
    recorded = _recorded_model(path)
    if recorded:
        model, where = recorded
        if any(model.get(k) != cfg["model"][k] for k in ARCHITECTURE_KEYS):
            raise ParamsError(
                "--checkpoint %s is a checkpoint of another network: %s (recorded in %s), but "
                "the config builds %s; use the run's config or a checkpoint of this network"
                % (path, _network(model), where, _network(cfg["model"])))
    return path
