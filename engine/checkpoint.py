"""Checkpoints in `WORKDIR/checkpoints/`: parameters (`iter_N.params`, loadable with
`mx.nd.load`), trainer state (`iter_N.states`) and a metadata file (`iter_N.json`: iteration,
resolved config and the SHA-256 of the two other files).

A checkpoint exists only once its `.json` is on disk, and the `.json` is written last, each file
through a temporary name and an atomic rename: a job killed mid-save leaves the previous
checkpoint intact and never a partial one. Resuming verifies the checksums and falls back to the
newest intact checkpoint, so a truncated or bit-flipped file costs one checkpoint interval, not
the run.
"""
import glob
import hashlib
import json
import os
import re

import numpy as np

from deeplab import dist
from deeplab.errors import CheckpointError, TrainingDiverged
from deeplab.utils import IncompleteWrite, atomic_write, check_written, fsync

__all__ = ["Checkpointer", "sha256", "assert_finite", "save_params", "save_ndarrays",
           "verify_ndarrays"]


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


def save_params(net, path):
    """Writes `net`'s parameters to `path` atomically and verified, in the format of Gluon's
    `save_parameters` (`load_parameters` reads it); a full disk is reported as such.

    Gluon's `save_parameters` is `nd.save` of {structured name: parameter._reduce()}; it is done
    here so that the file can be checked against the very arrays meant to be written.
    """
    # pylint: disable=protected-access - the names and values save_parameters itself writes
    arrays = {name: p._reduce() for name, p in net._collect_params_with_prefix().items()}
    save_ndarrays(path, arrays)


def save_ndarrays(path, arrays):
    """`mx.nd.save(path, arrays)`, verified before it is renamed into place.

    MXNet 1.9.1's file stream does not always report a short write: on a disk that filled up
    just before the end, `nd.save` returned normally and left a prefix of the file (issue 19).
    So the temporary file is flushed to disk (a refused write-back raises here), read back and
    compared bit for bit with `arrays` (`check_written`: cut short on a full disk, it is the
    full-disk error); only a file that matches is renamed onto `path`.
    """
    import mxnet as mx

    def write(tmp):
        mx.nd.save(tmp, arrays)
        fsync(tmp)
        check_written(tmp, lambda path: verify_ndarrays(path, arrays))

    atomic_write(path, write)


def verify_ndarrays(path, arrays):
    """Raises IncompleteWrite unless `path` holds exactly `arrays` (names, shapes, dtypes, bits)."""
    import mxnet as mx

    try:
        loaded = mx.nd.load(path)
    except mx.MXNetError as err:
        raise IncompleteWrite("%s is unreadable after writing (%s bytes on disk): %s"
                              % (path, os.path.getsize(path), str(err).splitlines()[0])) from None
    if isinstance(arrays, dict) != isinstance(loaded, dict) or len(loaded) != len(arrays) or \
            (isinstance(arrays, dict) and set(loaded) != set(arrays)):
        raise IncompleteWrite("%s does not hold the arrays written" % path)
    pairs = ((loaded[k], arrays[k]) for k in arrays) if isinstance(arrays, dict) \
        else zip(loaded, arrays)
    for got, want in pairs:
        got, want = got.asnumpy(), want.asnumpy()
        if got.shape != want.shape or got.dtype != want.dtype or \
                got.tobytes() != want.tobytes():
            raise IncompleteWrite("%s differs from the arrays written" % path)


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
        checking on every worker that the parameters are finite; a save that fails (a full
        disk) raises its CheckpointError on every worker."""
        assert_finite(net, "iteration %d" % iteration)
        dist.on_main(lambda: self._save(iteration, net, trainer, config))

    def _save(self, iteration, net, trainer, config):
        os.makedirs(self.dir, exist_ok=True)
        stem = self.stem(iteration)
        try:
            save_params(net, stem + ".params")
            atomic_write(stem + ".states", trainer.save_states)
            meta = {"iteration": iteration, "config": config,
                    "sha256": {"params": sha256(stem + ".params"),
                               "states": sha256(stem + ".states")}}
            atomic_write(stem + ".json", lambda f: f.write(json.dumps(meta, indent=1).encode()),
                         fileobj=True)
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
