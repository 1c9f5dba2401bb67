"""The optimizer state of a Gluon trainer as a data-only file, read without unpickling.

MXNet's `Trainer.save_states` pickles the updater's states and the optimizer object, and
`load_states` unpickles them: a planted `.states` file runs code on resume. This format holds
only arrays and plain values: one NDArray file (`mx.nd.save`, a dict of named arrays) with

    META_KEY        uint8 array: JSON (FORMAT, the optimizer's class, its plain attributes:
                    hyper-parameters, num_update, the per-index update counts of each device,
                    and the layout of each parameter's state)
    "<i>" / "<i>.<j>..."   the state arrays of parameter index i (nested tuples by position)

Arrays are saved from and loaded onto the CPU; the caller moves them to its devices. Files
written by MXNet's pickle (the format before this one) are refused, unless the one resuming
sets TRUST_PICKLE_ENV=1 for a run of their own (loading one runs whatever it holds).
"""
import json
import os

import mxnet as mx
import numpy as np

from deeplab.errors import CheckpointError

__all__ = ["FORMAT", "META_KEY", "TRUST_PICKLE_ENV", "dumps", "save", "is_pickle", "loads",
           "apply_optimizer"]

FORMAT = "deeplab-trainer-states/1"
META_KEY = "__meta__"
TRUST_PICKLE_ENV = "DEEPLAB_TRUST_PICKLED_STATES"
_PLAIN = (type(None), bool, int, float, str)
# Optimizer attributes saved besides its plain ones (dicts of plain keys and values).
_DICTS = ("lr_mult", "wd_mult", "idx2name")


def _layout(state, name, arrays):
    """The JSON description of one parameter's state; its arrays go into `arrays`."""
    if state is None:
        return None
    if isinstance(state, mx.nd.NDArray):
        arrays[name] = state.as_in_context(mx.cpu())
        return name
    if isinstance(state, (list, tuple)):
        return {type(state).__name__: [_layout(s, "%s.%d" % (name, j), arrays)
                                       for j, s in enumerate(state)]}
    raise TypeError("optimizer state of type %s cannot be saved as arrays"
                    % type(state).__name__)


def _pairs(d):
    return [[k, v] for k, v in d.items() if isinstance(k, _PLAIN) and isinstance(v, _PLAIN)]


def _describe(optimizer):
    if getattr(optimizer, "lr_scheduler", None) is not None:
        raise TypeError("an optimizer with an lr_scheduler cannot be saved as data (the "
                        "schedule is code); set the learning rate per step instead")
    attrs = {k: v for k, v in vars(optimizer).items()
             if not k.startswith("_") and isinstance(v, _PLAIN)}
    counts = getattr(optimizer, "_all_index_update_counts", {})
    current = next((dev for dev, c in counts.items()
                    if c is getattr(optimizer, "_index_update_count", None)), None)
    return {"class": type(optimizer).__name__, "attrs": attrs,
            "dicts": {k: _pairs(getattr(optimizer, k)) for k in _DICTS
                      if isinstance(getattr(optimizer, k, None), dict)},
            "update_counts": [[dev, _pairs(c)] for dev, c in counts.items()],
            "current_device": current}


def save(path, optimizer, states):
    """Writes `optimizer` (an mx.optimizer.Optimizer) and `states` ({parameter index: state},
    a state being None, an NDArray or nested tuples/lists of them) to `path`."""
    arrays = {}
    layout = [[int(i), _layout(s, str(int(i)), arrays)] for i, s in states.items()]
    meta = {"format": FORMAT, "optimizer": _describe(optimizer), "states": layout}
    text = json.dumps(meta, sort_keys=True).encode("utf-8")
    arrays[META_KEY] = mx.nd.array(np.frombuffer(text, np.uint8), dtype=np.uint8)
    mx.nd.save(path, arrays)
    # MXNet's writer can leave a file cut short without an error (a disk full within its last
    # buffer): read it back before the caller renames it into place; cut short by a full disk,
    # it is the documented full-disk error (check_written), as for the parameters.
    from deeplab.checkpoint import verify_ndarrays
    from deeplab.utils import check_written, fsync

    fsync(path)
    check_written(path, lambda p: verify_ndarrays(p, arrays))


def dumps(optimizer, states):
    """`save`'s file content as bytes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trainer.states")
        save(path, optimizer, states)
        with open(path, "rb") as f:
            return f.read()


def is_pickle(data):
    """Whether `data` starts like a pickle (protocol 2 and later begin with the PROTO opcode)."""
    return data[:1] == b"\x80"


def loads(data, name="states file"):
    """(optimizer description, {index: state with CPU arrays}) from a file's bytes `data`.

    Raises CheckpointError naming `name` if `data` is a pickle or not this format."""
    if is_pickle(data):
        raise CheckpointError(
            "%s is a pickled optimizer state (the format before %s): loading it could run code "
            "planted in it, so it is refused; if the run is your own, resume once with %s=1 "
            "(see docs/faults.md)" % (name, FORMAT, TRUST_PICKLE_ENV))
    try:
        arrays = mx.nd.load_frombuffer(bytes(data))
        meta = json.loads(arrays.pop(META_KEY).asnumpy().tobytes().decode("utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError("format %r, expected %r" % (meta.get("format"), FORMAT))
        states = {int(i): _build(node, arrays) for i, node in meta["states"]}
        return meta["optimizer"], states
    except (mx.base.MXNetError, AttributeError, KeyError, TypeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError("%s is not a trainer state file of format %s (%s)"
                              % (name, FORMAT, reason)) from None


def _build(node, arrays):
    if node is None:
        return None
    if isinstance(node, str):
        return arrays[node]
    if isinstance(node, dict) and len(node) == 1:
        kind, items = next(iter(node.items()))
        if kind in ("tuple", "list") and isinstance(items, list):
            built = [_build(n, arrays) for n in items]
            return tuple(built) if kind == "tuple" else built
    raise ValueError("unexpected state layout %r" % (node,))


def apply_optimizer(optimizer, desc, name="states file"):
    """Gives `optimizer` the saved attributes `desc` (from `loads`), as MXNet's unpickled
    optimizer had them: its plain attributes (learning rate, momentum, num_update, ...), the
    multiplier dicts and the per-device update counts. Attributes the running optimizer lacks
    are ignored; a different optimizer class is a CheckpointError."""
    if desc.get("class") != type(optimizer).__name__:
        raise CheckpointError("%s holds the state of optimizer %s, but the trainer uses %s"
                              % (name, desc.get("class"), type(optimizer).__name__))
    for k, v in desc.get("attrs", {}).items():
        if not k.startswith("_") and isinstance(v, _PLAIN) and isinstance(
                getattr(optimizer, k, None), _PLAIN):
            setattr(optimizer, k, v)
    for k, pairs in desc.get("dicts", {}).items():
        if k in _DICTS and isinstance(getattr(optimizer, k, None), dict):
            setattr(optimizer, k, {a: b for a, b in pairs})
    # JSON keeps the keys' types (device ids and parameter indices are ints)
    counts = {dev: {i: int(n) for i, n in pairs} for dev, pairs in desc.get("update_counts", [])}
    if hasattr(optimizer, "_all_index_update_counts"):
        optimizer._all_index_update_counts = counts
        current = desc.get("current_device")
        optimizer._index_update_count = counts.setdefault(current, {}) \
            if current is not None else {}
