"""Collectives and trainer construction, with single-process defaults.

In the spirit of detectron2's `comm.py`: plain functions that return what a single process needs
when nothing distributed is running (rank 0, world size 1, identity reductions). Functions marked
COLLECTIVE must be called by every worker, in the same order, or the job deadlocks.
"""
import mxnet as mx
import numpy as np

__all__ = ["BACKENDS", "init", "rank", "size", "local_rank", "is_main", "barrier",
           "allreduce_sum", "broadcast", "context", "make_trainer"]

BACKENDS = ("local",)
_state = {"backend": None}


def init(backend="local"):
    """Starts the backend (idempotent). `local`: one process, no communication."""
    if backend not in BACKENDS:
        raise ValueError("unknown dist.backend %r; valid backends: %s"
                         % (backend, ", ".join(BACKENDS)))
    _state["backend"] = backend


def rank():
    """This worker's index in [0, size())."""
    return 0


def size():
    """Number of workers."""
    return 1


def local_rank():
    """This worker's index among the workers of its machine (selects its GPU)."""
    return 0


def is_main():
    """True on the worker that owns side effects (checkpoints, logs, results)."""
    return rank() == 0


def barrier():
    """COLLECTIVE. Returns once every worker has called it."""


def allreduce_sum(x):
    """COLLECTIVE. Element-wise sum of a numpy array over workers (a new array)."""
    return np.array(x, copy=True)


def broadcast(obj, root=0):
    """COLLECTIVE. Returns worker `root`'s picklable `obj` on every worker."""
    return obj


def context():
    """The device this worker computes on: GPU `local_rank()` if MXNet sees GPUs, else CPU."""
    return mx.gpu(local_rank()) if mx.context.num_gpus() > 0 else mx.cpu()


def make_trainer(params, optimizer, optimizer_params):
    """A Gluon trainer whose `step(n)` applies the gradient of (summed loss over all workers) / n.

    Gradients are averaged over nothing here (one worker): `step(n)` rescales by 1/n.
    """
    return mx.gluon.Trainer(params, optimizer, optimizer_params, kvstore=None)
