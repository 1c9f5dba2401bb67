"""Collectives and trainer construction for the three backends, with single-process defaults.

In the spirit of detectron2's `comm.py`: plain functions that return what a single process needs
when nothing distributed runs (rank 0 of 1, identity reductions), and the same calls under
Horovod (`horovodrun`) or MXNet's parameter server (`DMLC_ROLE=worker`, kvstore `dist_sync`).
Functions marked COLLECTIVE must be called by every worker, in the same order, or the job hangs.

Backends:
    local    one process.
    horovod  one process per device; gradients and collectives by Horovod (Gloo or NCCL/MPI).
    ps       MXNet's parameter server: gradients summed on the servers, collectives through
             kvstore keys of our own.
`auto` picks horovod under horovodrun (HOROVOD_RANK set), ps when DMLC_ROLE=worker, else local;
DEEPLAB_DIST_BACKEND overrides it.
"""
import os
import pickle
import sys
import tempfile

import mxnet as mx
import numpy as np

__all__ = ["BACKENDS", "init", "backend", "rank", "size", "local_rank", "is_main", "barrier",
           "allreduce_sum", "broadcast", "exit_after_failure", "nd_allreduce_sum", "nd_allgather",
           "broadcast_parameters", "context",
           "make_trainer", "DistTrainer"]

BACKENDS = ("local", "horovod", "ps")
_state = {"backend": None, "hvd": None, "kv": None, "key": 0}
# kvstore keys of our own collectives: above the trainer's parameter indices (0, 1, ...), and
# below 215,000 because MXNet places a small array on server (key * 9973) % num_servers in int32
# arithmetic (kvstore_dist.h), which overflows for larger keys.
_KEY_BASE, _KEY_LIMIT = 1 << 16, 215000


def resolve_backend(backend="auto", environ=None):
    """The backend a worker runs: `backend` unless 'auto', then the launcher's environment."""
    env = os.environ if environ is None else environ
    if backend == "auto":
        backend = env.get("DEEPLAB_DIST_BACKEND") or (
            "horovod" if "HOROVOD_RANK" in env else
            "ps" if env.get("DMLC_ROLE") == "worker" else "local")
    if backend not in BACKENDS:
        raise ValueError("unknown dist.backend %r; valid backends: auto, %s"
                         % (backend, ", ".join(BACKENDS)))
    return backend


def init(backend="auto"):
    """Starts the backend once per process (later calls with the same backend do nothing)."""
    backend = resolve_backend(backend)
    if _state["backend"] is not None:
        if _state["backend"] != backend:
            raise RuntimeError("dist backend %r already started; cannot switch to %r"
                               % (_state["backend"], backend))
        return
    if backend == "horovod":
        import horovod.mxnet as hvd
        hvd.init()
        _state["hvd"] = hvd
    elif backend == "ps":
        if os.environ.get("DMLC_ROLE") != "worker":
            raise RuntimeError("dist.backend=ps needs DMLC_ROLE=worker and the DMLC_PS_* "
                               "variables; start workers with `deeplab launch ps`")
        kv = mx.kv.create("dist_device_sync" if mx.context.num_gpus() else "dist_sync")
        _state["kv"] = kv
        rank_dir = os.environ.get("DEEPLAB_RANK_DIR")
        if rank_dir:  # `deeplab launch ps` names a lost worker by its rank
            with open(os.path.join(rank_dir, str(os.getpid())), "w") as f:
                f.write(str(kv.rank))
    _state["backend"] = backend


def backend():
    """The running backend's name ('local' before init)."""
    return _state["backend"] or "local"


def rank():
    """This worker's index in [0, size())."""
    if _state["hvd"]:
        return _state["hvd"].rank()
    if _state["kv"]:
        return _state["kv"].rank
    return 0


def size():
    """Number of workers."""
    if _state["hvd"]:
        return _state["hvd"].size()
    if _state["kv"]:
        return _state["kv"].num_workers
    return 1


def local_rank():
    """This worker's index among the workers of its machine (selects its GPU)."""
    if _state["hvd"]:
        return _state["hvd"].local_rank()
    return int(os.environ.get("DEEPLAB_LOCAL_RANK", "0"))


def is_main():
    """True on the worker that owns side effects (checkpoints, logs, results)."""
    return rank() == 0


def context():
    """The device this worker computes on: GPU `local_rank()` if MXNet sees GPUs, else CPU."""
    return mx.gpu(local_rank()) if mx.context.num_gpus() > 0 else mx.cpu()


def _next_key():
    _state["key"] += 1
    if _state["backend"] == "ps" and _KEY_BASE + _state["key"] >= _KEY_LIMIT:
        raise RuntimeError("out of kvstore keys for collectives (%d used)" % _state["key"])
    return _state["key"]


def _kv_sum(arr):
    """Sum over parameter-server workers of a float64 NDArray, through a key reused for every
    call of the same size (a fresh key per call would cost an init barrier each time and run
    out of keys after ~150,000 steps): in dist_sync a server without an optimizer replaces a
    key's value with each round's sum of the pushes.
    """
    kv, size_keys = _state["kv"], _state.setdefault("sum_keys", {})
    key = size_keys.get(arr.size)
    if key is None:
        key = size_keys[arr.size] = _KEY_BASE + _next_key()
        kv.init(key, mx.nd.zeros_like(arr))
    kv.push(key, arr)
    out = mx.nd.zeros_like(arr)
    kv.pull(key, out=out)
    return out


def exit_after_failure(code):
    """Ends a failing worker at once under the parameter server; returns otherwise.

    ps-lite's orderly shutdown (run when the process exits) waits for every node, so a worker
    that failed would hang there, and the job with it, instead of exiting.
    """
    if _state["kv"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def nd_allreduce_sum(array, name):
    """COLLECTIVE. Sum of an NDArray over workers, asynchronous (a new NDArray).

    `name` must be the same on every worker for the same call (Horovod matches calls by name).
    Supported under local and horovod; the parameter server has no worker-to-worker path fast
    enough to run inside a layer.
    """
    if _state["hvd"]:
        return _state["hvd"].allreduce(array, average=False, name=name)
    if _state["kv"]:
        raise RuntimeError("synchronized BN needs dist.backend=horovod; under the parameter "
                           "server each worker keeps its own BN statistics")
    return array.copy()


def nd_allgather(array, name):
    """COLLECTIVE. The workers' NDArrays concatenated along axis 0 in rank order (asynchronous).

    Same contract as `nd_allreduce_sum`.
    """
    if _state["hvd"]:
        return _state["hvd"].allgather(array, name=name)
    if _state["kv"]:
        raise RuntimeError("synchronized BN needs dist.backend=horovod; under the parameter "
                           "server each worker keeps its own BN statistics")
    return array.copy()


def allreduce_sum(x):
    """COLLECTIVE. Element-wise sum of a numpy array over workers (a new float64 array)."""
    x = np.asarray(x, dtype=np.float64)
    if _state["hvd"]:
        out = _state["hvd"].allreduce(mx.nd.array(x, dtype=np.float64), average=False,
                                      name="comm.allreduce.%d" % _next_key())
        return out.asnumpy().reshape(x.shape)
    if _state["kv"]:
        return _kv_sum(mx.nd.array(x.reshape(-1), dtype=np.float64)).asnumpy().reshape(x.shape)
    return x.copy()


def barrier():
    """COLLECTIVE. Returns once every worker has called it."""
    if _state["hvd"]:
        allreduce_sum(np.zeros(1))
    elif _state["kv"]:
        _state["kv"]._barrier()


def broadcast(obj, root=0):
    """COLLECTIVE. Returns worker `root`'s picklable `obj` on every worker."""
    if _state["hvd"]:
        return _state["hvd"].broadcast_object(obj, root_rank=root,
                                              name="comm.broadcast.%d" % _next_key())
    if _state["kv"]:
        if root != 0:
            raise ValueError("the parameter server broadcasts from worker 0 only")
        payload = pickle.dumps(obj) if rank() == 0 else b""
        n = int(allreduce_sum(np.array([len(payload)]))[0])
        # Bytes travel as float32 bit patterns through kvstore init (worker 0's value is kept)
        # and pull, which copy and never compute, so every bit arrives as sent.
        if rank() == 0:
            arr = mx.nd.array(np.frombuffer(payload + b"\0" * (-n % 4), np.float32))
        else:
            arr = mx.nd.zeros(((n + 3) // 4,), dtype=np.float32)
        key = _KEY_BASE + _next_key()
        _state["kv"].init(key, arr)
        _state["kv"].pull(key, out=arr)
        return pickle.loads(arr.asnumpy().tobytes()[:n])
    return obj


def broadcast_parameters(params):
    """COLLECTIVE. Every worker's parameters become worker 0's (shapes must be known)."""
    if _state["hvd"]:
        _state["hvd"].broadcast_parameters(params, root_rank=0)
    elif _state["kv"]:
        kv = _state["kv"]
        items = sorted(params.items())
        keys = [_KEY_BASE + _next_key() for _ in items]
        arrays = [p.data() for _, p in items]
        kv.init(keys, arrays)  # the servers keep worker 0's values
        kv.pull(keys, out=arrays)
        for (_, p), a in zip(items, arrays):
            p.set_data(a)


class DistTrainer:
    """A Gluon trainer for the running backend, with one normalisation rule for all of them:
    `step(n)` applies (sum over workers of the local gradients) / n.

    Under Horovod the DistributedTrainer averages over workers, so n is divided by the world
    size; the parameter server and a single process sum, so n is used as is.
    """

    def __init__(self, trainer, divide_by):
        self.trainer, self._divide_by = trainer, divide_by

    def step(self, n):
        self.trainer.step(n / self._divide_by)

    def allreduce_grads(self):
        """COLLECTIVE. The first half of `step`: sums the gradients over workers (benchmarks time
        it apart from the update)."""
        self.trainer.allreduce_grads()

    def update(self, n):
        """The second half of `step`, after `allreduce_grads`: the optimizer update with the
        summed gradients divided by n."""
        self.trainer.update(n / self._divide_by)

    def set_learning_rate(self, lr):
        self.trainer.set_learning_rate(lr)

    @property
    def learning_rate(self):
        return self.trainer.learning_rate

    def save_states(self, path):
        """Writes the optimizer state (call on the main worker)."""
        self.trainer.save_states(path)

    def load_states(self, path):
        """COLLECTIVE. Worker 0 reads `path`; every worker receives its content."""
        data = None
        if is_main():
            with open(path, "rb") as f:
                data = f.read()
        data = broadcast(data)
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "trainer.states")
            with open(local, "wb") as f:
                f.write(data)
            self.trainer.load_states(local)


def make_trainer(params, optimizer, optimizer_params, fp16_compression=False, num_groups=0,
                 prefix=None):
    """COLLECTIVE. The backend's trainer, wrapped in DistTrainer.

    Args:
        params: the network's ParameterDict, fully initialized and the same on every worker
            (`broadcast_parameters` first, as `deeplab.build_model` does).
        optimizer, optimizer_params: as for gluon.Trainer.
        fp16_compression: Horovod only: allreduce gradients in float16.
        num_groups: Horovod only: fuse gradients into this many grouped allreduces (0: off).
        prefix: Horovod only: names this trainer's allreduces (needed when one process runs
            several trainers, e.g. a benchmark comparing networks).
    """
    b = backend()
    if b == "horovod":
        hvd = _state["hvd"]
        compression = hvd.Compression.fp16 if fp16_compression else hvd.Compression.none
        trainer = hvd.DistributedTrainer(params, optimizer, optimizer_params,
                                         compression=compression, num_groups=num_groups,
                                         prefix=prefix)
        return DistTrainer(trainer, size())
    if b == "ps":
        # update_on_kvstore=False: the optimizer runs on the workers, so its state is in the
        # trainer and can be checkpointed.
        trainer = mx.gluon.Trainer(params, optimizer, optimizer_params, kvstore=_state["kv"],
                                   update_on_kvstore=False)
        # Gluon initializes the kvstore keys of the parameters (an init and a pull per key)
        # lazily, inside the first step(), where they overlapped the first gradient push-pull on
        # the same keys: on worker 0 the first update then went wrong in about one run in three
        # (measured: 3 of 8 runs; 0 of 10 with this). Initialize now and let it complete.
        trainer._init_kvstore()
        trainer._init_params()
        mx.nd.waitall()
        _state["kv"]._barrier()
        return DistTrainer(trainer, 1)
    return DistTrainer(mx.gluon.Trainer(params, optimizer, optimizer_params, kvstore=None), 1)

