"""Checkpoints in `WORKDIR/checkpoints/`: parameters (`.params`, loadable with `mx.nd.load`),
trainer state (`.states`) and a metadata file (`.json`: iteration and resolved config).

A checkpoint exists only once its `.json` is on disk, and the `.json` is written last, each file
through a temporary name and an atomic rename: a job killed mid-save leaves the previous
checkpoint intact and never a partial one that `latest()` would pick up.
"""
import glob
import json
import os
import re

__all__ = ["Checkpointer", "atomic_write"]


def atomic_write(path, write):
    """Calls `write(tmp_path)`, then renames the result onto `path`."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Checkpointer:
    """Saves and finds checkpoints under `workdir/checkpoints` (call `save` on the main worker).

    Args:
        workdir: the run's directory.
        keep: how many of the newest checkpoints to keep (older ones are deleted).
    """

    PATTERN = re.compile(r"iter_(\d+)\.json$")

    def __init__(self, workdir, keep=3):
        self.dir = os.path.join(workdir, "checkpoints")
        self.keep = max(1, keep)

    def _stem(self, iteration):
        return os.path.join(self.dir, "iter_%07d" % iteration)

    def iterations(self):
        """Iterations of the complete checkpoints on disk, oldest first."""
        found = []
        for path in glob.glob(os.path.join(self.dir, "iter_*.json")):
            m = self.PATTERN.search(path)
            if m:
                found.append(int(m.group(1)))
        return sorted(found)

    def latest(self):
        """Metadata dict of the newest complete checkpoint (with 'params'/'states' paths), or None."""
        its = self.iterations()
        if not its:
            return None
        stem = self._stem(its[-1])
        with open(stem + ".json") as f:
            meta = json.load(f)
        meta.update(params=stem + ".params", states=stem + ".states")
        return meta

    def save(self, iteration, net, trainer, config):
        """Writes checkpoint `iteration` (the number of completed training steps)."""
        os.makedirs(self.dir, exist_ok=True)
        stem = self._stem(iteration)
        atomic_write(stem + ".params", net.save_parameters)
        atomic_write(stem + ".states", trainer.save_states)
        meta = {"iteration": iteration, "config": config}
        atomic_write(stem + ".json", lambda p: _dump_json(meta, p))
        for old in self.iterations()[:-self.keep]:
            old_stem = self._stem(old)
            for ext in (".json", ".params", ".states"):  # .json first: never a half checkpoint
                if os.path.exists(old_stem + ext):
                    os.remove(old_stem + ext)


def _dump_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
