"""Checkpoints in `WORKDIR/checkpoints/`: parameters (`iter_N.params`, loadable with
`mx.nd.load`), trainer state (`iter_N.states`) and a metadata file (`iter_N.json`: iteration,
resolved config and the SHA-256 of the two other files).

A checkpoint exists only once its `.json` is on disk, and the `.json` is written last, each file
through a temporary name and an atomic rename: a job killed mid-save leaves the previous
checkpoint intact and never a partial one. Resuming verifies the checksums and falls back to the
newest intact checkpoint, so a truncated or bit-flipped file costs one checkpoint interval, not
the run.
"""
import errno
import glob
import hashlib
import json
import os
import re
import shutil

import numpy as np

from deeplab import dist
from deeplab.errors import CheckpointError, TrainingDiverged
from deeplab.utils import atomic_write

__all__ = ["Checkpointer", "sha256", "assert_finite", "save_params"]


def sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def assert_finite(net, what):
    """COLLECTIVE. Raises TrainingDiverged on every worker if any worker's parameters (running
    statistics included) hold a NaN or an infinity; `what` names the moment, e.g.
    'iteration 40'. Called before parameters are written, so none is ever saved non-finite."""
    bad = [name for name, p in net.collect_params().items()
           if not np.isfinite(p.data().asnumpy()).all()]
    total = dist.allreduce_sum([len(bad)])[0]
    if total:
        raise TrainingDiverged(
            "training diverged: non-finite parameters at %s (%s); nothing was saved, the last "
            "checkpoint is intact; lower train.lr or check the data"
            % (what, ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "") if bad
               else "on another worker"))


def _disk_full(err):
    return (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) \
        or "Write incomplete" in str(err)  # MXNet's FileStream on a full disk


def save_params(net, path):
    """Writes `net`'s parameters to `path` atomically; a full disk is reported as such."""
    _write(path, net.save_parameters)


def _write(path, write):
    try:
        atomic_write(path, write)
    except Exception as err:
        if _disk_full(err):
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
            raise CheckpointError("cannot write %s: the disk is full (%.1f MB free); nothing "
                                  "partial was left, earlier checkpoints are intact"
                                  % (path, free / 2 ** 20)) from err
        raise


class Checkpointer:
    """Decides when to save, and saves on the main worker only (detectron2's pattern: the loop
    calls it on every worker, without rank checks).

    Args:
        workdir: the run's directory.
        every: save after every `every` completed iterations.
        keep: how many of the newest checkpoints to keep (older ones are deleted).
        log: a logging.Logger for fallbacks and saves (optional).
    """

    PATTERN = re.compile(r"iter_(\d+)\.json$")

    def __init__(self, workdir, every=1000, keep=3, log=None):
        self.dir = os.path.join(workdir, "checkpoints")
        self.every = every
        self.keep = max(1, keep)
        self.log = log

    def stem(self, iteration):
        return os.path.join(self.dir, "iter_%07d" % iteration)

    def iterations(self):
        """Iterations of the checkpoints on disk (metadata written), oldest first."""
        found = []
        for path in glob.glob(os.path.join(self.dir, "iter_*.json")):
            m = self.PATTERN.search(path)
            if m:
                found.append(int(m.group(1)))
        return sorted(found)

    def read(self, iteration):
        """Metadata of checkpoint `iteration` with 'params'/'states' paths, after checking that
        its files are whole; raises CheckpointError naming what is wrong."""
        stem = self.stem(iteration)
        try:
            with open(stem + ".json") as f:
                meta = json.load(f)
            meta["iteration"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError("%s.json is unreadable (%s)" % (stem, err)) from None
        meta.update(params=stem + ".params", states=stem + ".states")
        for ext in (".params", ".states"):
            path = stem + ext
            if not os.path.isfile(path):
                raise CheckpointError("%s is missing" % path)
            want = (meta.get("sha256") or {}).get(ext[1:])
            if want is not None and sha256(path) != want:
                raise CheckpointError("%s does not match the checksum recorded when it was "
                                      "saved (truncated or corrupted)" % path)
        return meta

    def latest(self):
        """The newest intact checkpoint's metadata (see `read`), or None if there is none.

        Damaged checkpoints are skipped; their warnings, naming each, are in the metadata's
        'warnings' (and logged if this checkpointer has a logger). If every checkpoint is
        damaged, raises CheckpointError."""
        its = self.iterations()
        problems, warnings = [], []
        for it in reversed(its):
            try:
                meta = self.read(it)
            except CheckpointError as err:
                problems.append(str(err))
                warnings.append("warning: skipping checkpoint %d: %s" % (it, err))
                continue
            if warnings:
                warnings.append("warning: resuming from the older checkpoint %d instead" % it)
            for w in warnings if self.log else ():
                self.log.warning(w)
            meta["warnings"] = warnings
            return meta
        if problems:
            raise CheckpointError("no intact checkpoint in %s: %s" % (self.dir,
                                                                    "; ".join(problems)))
        return None

    def due(self, done, total):
        """Whether to save after `done` iterations (the last one is saved by the loop's end)."""
        return done % self.every == 0 and done < total

    def save(self, iteration, net, trainer, config):
        """COLLECTIVE. Saves checkpoint `iteration` (completed steps) on the main worker, after
        checking on every worker that the parameters are finite."""
        assert_finite(net, "iteration %d" % iteration)
        if not dist.is_main():
            return
        os.makedirs(self.dir, exist_ok=True)
        stem = self.stem(iteration)
        try:
            _write(stem + ".params", net.save_parameters)
            _write(stem + ".states", trainer.save_states)
            meta = {"iteration": iteration, "config": config,
                    "sha256": {"params": sha256(stem + ".params"),
                               "states": sha256(stem + ".states")}}
            _write(stem + ".json", lambda p: _dump_json(meta, p))
        except BaseException:
            if not os.path.exists(stem + ".json"):  # a partial checkpoint: its files go
                for ext in (".params", ".states"):
                    if os.path.exists(stem + ext):
                        os.remove(stem + ext)
            raise
        for old in self.iterations()[:-self.keep]:
            old_stem = self.stem(old)
            for ext in (".json", ".params", ".states"):  # .json first: never a half checkpoint
                if os.path.exists(old_stem + ext):
                    os.remove(old_stem + ext)


def _dump_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
