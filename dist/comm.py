"""Collectives and the Gluon trainer of the three backends, with single-process defaults.

In the spirit of detectron2's `comm.py`: plain functions that return what a single process needs
when nothing distributed runs (rank 0 of 1, identity reductions), and the same calls under
Horovod (`horovodrun`) or MXNet's parameter server (`DMLC_ROLE=worker`, kvstore `dist_sync`).
Functions marked COLLECTIVE must be called by every worker, in the same order, or the job hangs.

Backends, one class each, chosen once by `init()`:
    local    `LocalBackend`: one process; the base class, whose collectives are identities.
    horovod  `HorovodBackend`: one process per device; gradients and collectives by Horovod
             (Gloo or NCCL/MPI).
    ps       `PSBackend`: MXNet's parameter server: gradients summed on the servers,
             collectives through kvstore keys of our own.
`auto` picks horovod under horovodrun (HOROVOD_RANK set), ps when DMLC_ROLE=worker, else local;
DEEPLAB_DIST_BACKEND overrides it.

The in-layer collectives (`nd_allgather`, `nd_allreduce_sum`: synchronized BN's statistics) go
through a transport, chosen once by `use_transport`: the backend's own (Horovod), or MPI
directly (`deeplab.dist.mpi`) when the workers were launched under MPI.
"""
import os
import re
import socket
import sys

import mxnet as mx
import numpy as np

from . import wire

__all__ = ["BACKENDS", "init", "backend", "rank", "size", "local_rank", "is_main", "barrier",
           "allreduce_sum", "gather_rows", "broadcast", "exit_after_failure", "shutdown",
           "network_failure", "nd_allreduce_sum", "nd_allgather", "broadcast_parameters",
           "on_main", "context", "contexts", "stall_hint",
           "gluon_trainer", "Group", "group_ranks", "new_group", "TRANSPORTS",
           "use_transport", "transport", "transport_stats"]

BACKENDS = ("local", "horovod", "ps")
TRANSPORTS = ("auto", "horovod", "mpi")

# kvstore keys of our own collectives: above the trainer's parameter indices (0, 1, ...), and
# below 215,000 because MXNet places a small array on server (key * 9973) % num_servers in int32
# arithmetic (kvstore_dist.h), which overflows for larger keys.
_KEY_BASE, _KEY_LIMIT = 1 << 16, 215000


def resolve_backend(backend="auto"):
    """The backend a worker runs: `backend` unless 'auto', then the launcher's environment."""
    if backend == "auto":
        env = os.environ
        backend = env.get("DEEPLAB_DIST_BACKEND") or (
            "horovod" if "HOROVOD_RANK" in env else
            "ps" if env.get("DMLC_ROLE") == "worker" else "local")
    if backend not in BACKENDS:
        raise ValueError("unknown dist.backend %r; valid backends: auto, %s"
                         % (backend, ", ".join(BACKENDS)))
    return backend


class LocalBackend:
    """One process: rank 0 of 1, every collective an identity.

    The base of the other backends, which override what they distribute. Collectives take and
    return what the module-level functions of the same names do (`allreduce_sum` receives a
    float64 numpy array).
    """

    name = "local"

    def rank(self):
        return 0

    def size(self):
        return 1

    def local_rank(self):
        return int(os.environ.get("DEEPLAB_LOCAL_RANK", "0"))

    def barrier(self):
        pass

    def allreduce_sum(self, x, name):
        return x.copy()

    def broadcast(self, obj, root):
        return obj

    def broadcast_parameters(self, params):
        pass

    def nd_allreduce_sum(self, array, name, group=None):
        return array.copy()

    def nd_allgather(self, array, name, group=None):
        return array.copy()

    def new_groups(self, rank_lists):
        """Makes the groups of `rank_lists` (a partition of the workers) usable by collectives;
        returns {ranks tuple: backend handle} (None: all workers, or one alone)."""
        return {tuple(r): None for r in rank_lists}

    def host(self):
        """A name of this worker's machine, the same for the workers of one machine."""
        return socket.gethostname()

    def gluon_trainer(self, params, optimizer, optimizer_params, fp16_compression, num_groups,
                      prefix):
        # One device: nothing to sum (kvstore None). Several: MXNet's 'device' kvstore sums
        # their gradients; the optimizer runs here (update_on_kvstore=False), so its state is
        # in the trainer and can be checkpointed. step(n) divides the sum by n.
        several = len({c for p in params.values() for c in p.list_ctx()}) > 1
        return mx.gluon.Trainer(params, optimizer, optimizer_params,
                                kvstore="device" if several else None,
                                update_on_kvstore=False if several else None), 1

    def exit_after_failure(self, code):
        pass

    def pending_error(self):
        """The error an asynchronous operation left in MXNet's engine, or None (the backend
        failed underneath the operation that raised)."""
        return None

    def shutdown(self):
        pass

    def stall_hint(self):
        return "the process hung or was stopped"


class HorovodBackend(LocalBackend):
    """One process per device under horovodrun; collectives and gradients through Horovod.

    Horovod matches the calls of the workers by name and caches its negotiation per name, so
    per-step calls use stable names; `broadcast`, rare and of varying size, counts its calls.
    """

    name = "horovod"

    def __init__(self):
        import horovod.mxnet as hvd
        hvd.init()
        self.hvd = hvd
        # Kept: after `shutdown` Horovod answers none of them (the run's record and the
        # watchdog still ask).
        self._rank, self._size, self._local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        self._broadcasts = 0
        self._over_mpi = None  # dist.mpi.MpiBroadcast, False, or None until first asked
        self._process_sets = {}  # ranks tuple -> hvd.ProcessSet, in registration order

    def rank(self):
        return self._rank

    def size(self):
        return self._size

    def local_rank(self):
        return self._local_rank

    def barrier(self):
        self.allreduce_sum(np.zeros(1), "barrier")

    def allreduce_sum(self, x, name):
        if name is None:  # the same on every worker, as the shapes of one call must be
            name = "x".join(str(d) for d in x.shape) or "scalar"
        out = self.hvd.allreduce(mx.nd.array(x, dtype=np.float64), average=False,
                                 name="comm.allreduce.%s" % name)
        return out.asnumpy().reshape(x.shape)

    def _mpi_broadcast(self):
        """dist.mpi.MpiBroadcast when Horovod runs over MPI (see there why), else None."""
        if self._over_mpi is None:
            from . import mpi

            self._over_mpi = mpi.MpiBroadcast() if mpi.launched_under_mpi(self.hvd) else False
        return self._over_mpi or None

    def broadcast(self, obj, root):
        over_mpi = self._mpi_broadcast()
        if over_mpi is not None:
            mine = self.rank() == root
            data = over_mpi.data(wire.encode(obj) if mine else b"", root)
            return obj if mine else wire.decode(data)
        # Not hvd.broadcast_object: it unpickles what it receives. The same two broadcasts
        # (length, then bytes), carrying data only (deeplab.dist.wire).
        self._broadcasts += 1
        name = "comm.broadcast.%d" % self._broadcasts
        mine = self.rank() == root
        payload = wire.encode(obj) if mine else b""
        size = mx.nd.array([len(payload)], dtype=np.int64)
        size = self.hvd.broadcast(size, root_rank=root, name=name + ".sz")
        n = int(size.asnumpy()[0])
        data = (mx.nd.array(np.frombuffer(payload, np.uint8), dtype=np.uint8) if mine
                else mx.nd.zeros((n,), dtype=np.uint8))
        data = self.hvd.broadcast(data, root_rank=root, name=name + ".t")
        if mine:  # the root must see its broadcast through: returning, finishing and shutting
            data.wait_to_read()  # Horovod down would leave the others waiting for the bytes
            return obj
        return wire.decode(data.asnumpy().tobytes())

    def broadcast_parameters(self, params):
        over_mpi = self._mpi_broadcast()
        if over_mpi is not None:
            over_mpi.parameters(params)
        else:
            self.hvd.broadcast_parameters(params, root_rank=0)

    def nd_allreduce_sum(self, array, name, group=None):
        if group is None or group.handle is None:
            return self.hvd.allreduce(array, average=False, name=name)
        return self.hvd.allreduce(array, average=False, name=name, process_set=group.handle)

    def nd_allgather(self, array, name, group=None):
        if group is None or group.handle is None:
            return self.hvd.allgather(array, name=name)
        return self.hvd.allgather(array, name=name, process_set=group.handle)

    def new_groups(self, rank_lists):
        """Horovod process sets for the groups (all workers use the global one; a worker alone
        needs none).

        Horovod registers process sets when it starts, unless started with
        HOROVOD_DYNAMIC_PROCESS_SETS=1 (then `add_process_set` works at any time, but every
        cycle of its background thread pays for one more negotiation). Without it, Horovod over
        Gloo is shut down and started again with every process set asked for so far (in-flight
        collectives would be lost: hence `new_group`'s rule, before any model or trainer); over
        MPI it cannot restart (MPI is finalized), so the launcher must set
        HOROVOD_DYNAMIC_PROCESS_SETS=1.
        """
        hvd = self.hvd
        handles, added = {}, []
        for ranks in map(tuple, rank_lists):
            if len(ranks) in (1, self.size()):
                handles[ranks] = None
                continue
            if ranks not in self._process_sets:
                self._process_sets[ranks] = hvd.ProcessSet(list(ranks))
                added.append(ranks)
            handles[ranks] = self._process_sets[ranks]
        if not added:
            return handles
        if os.environ.get("HOROVOD_DYNAMIC_PROCESS_SETS", "0") not in ("", "0"):
            for ranks in added:  # the same sets in the same order on every worker
                hvd.add_process_set(self._process_sets[ranks])
        elif hvd.gloo_enabled():
            hvd.shutdown()
            hvd.init(process_sets=list(self._process_sets.values()))
        else:
            for ranks in added:
                del self._process_sets[ranks]
            raise RuntimeError("worker groups under Horovod over MPI need "
                               "HOROVOD_DYNAMIC_PROCESS_SETS=1 in the workers' environment "
                               "(Horovod over Gloo, `deeplab launch horovod`'s default, does not)")
        return handles

    def exit_after_failure(self, code):
        from deeplab.errors import EXIT_NETWORK

        if code == EXIT_NETWORK:
            # The failed collective's error stays in MXNet's engine, which would print it again
            # as a traceback at exit (MXNotifyShutdown), and Horovod's shutdown talks to the
            # peers that are cut off: the one line said it all.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def shutdown(self):
        """Horovod's shutdown now rather than at exit (its atexit hook; a second call does
        nothing): a last negotiation cycle with every peer, which waits for good for a peer that
        is stopped, and run now, the stall watchdog covers it. Called only once every worker is
        done with the backend (the end of the command, or the stop after its checkpoint); never
        after a failure, where a peer may be cut off (exit_after_failure)."""
        self.hvd.shutdown()

    def pending_error(self):
        # MXNet's engine keeps the exceptions of failed asynchronous operations until a
        # WaitForAll rethrows the first and forgets them all (threaded_engine.cc), so this also
        # spares the traceback MXNotifyShutdown would print at exit. The watchdog covers a hang.
        try:
            mx.nd.waitall()
        except Exception as err:  # noqa: B902 - whatever the engine kept is the answer
            return err
        return None

    def host(self):
        # horovodrun names each worker's host in HOROVOD_HOSTNAME; Horovod's local ranks follow it
        return os.environ.get("HOROVOD_HOSTNAME") or socket.gethostname()

    def gluon_trainer(self, params, optimizer, optimizer_params, fp16_compression, num_groups,
                      prefix):
        hvd = self.hvd
        compression = hvd.Compression.fp16 if fp16_compression else hvd.Compression.none
        trainer = hvd.DistributedTrainer(params, optimizer, optimizer_params,
                                         compression=compression, num_groups=num_groups,
                                         prefix=prefix)
        # DistributedTrainer averages over workers; DistTrainer's rule is a sum divided by n.
        return trainer, self.size()

    def stall_hint(self):
        return "a worker stopped, hung or lost its network"


class PSBackend(LocalBackend):
    """A worker of MXNet's parameter server (`dist_sync`, or `dist_device_sync` with GPUs).

    Gradients are summed on the servers by the trainer's kvstore; our collectives use kvstore
    keys of their own from `_KEY_BASE` up, taken in call order (the same on every worker).
    """

    name = "ps"

    def __init__(self):
        if os.environ.get("DMLC_ROLE") != "worker":
            raise RuntimeError("dist.backend=ps needs DMLC_ROLE=worker and the DMLC_PS_* "
                               "variables; start workers with `deeplab launch ps`")
        self.kv = mx.kv.create("dist_device_sync" if mx.context.num_gpus() else "dist_sync")
        # Kept: the watchdog asks for them after `shutdown` freed the kvstore.
        self._rank, self._size = self.kv.rank, self.kv.num_workers
        self._keys = 0
        self._sum_keys = {}  # array size -> key
        rank_dir = os.environ.get("DEEPLAB_RANK_DIR")
        if rank_dir:  # `deeplab launch ps` names a lost worker by its rank
            with open(os.path.join(rank_dir, str(os.getpid())), "w") as f:
                f.write(str(self.kv.rank))

    def rank(self):
        return self._rank

    def size(self):
        return self._size

    def _new_key(self):
        self._keys += 1
        if _KEY_BASE + self._keys >= _KEY_LIMIT:
            raise RuntimeError("out of kvstore keys for collectives (%d used)" % self._keys)
        return _KEY_BASE + self._keys

    def barrier(self):
        self.kv._barrier()

    def allreduce_sum(self, x, name):
        """Through a key reused for every call of the same size (`name` is not needed): a fresh
        key per call would cost an init barrier each time and run out of keys after ~150,000
        steps. In dist_sync a server without an optimizer replaces a key's value with each
        round's sum of the pushes.
        """
        arr = mx.nd.array(x.reshape(-1), dtype=np.float64)
        key = self._sum_keys.get(arr.size)
        if key is None:
            key = self._sum_keys[arr.size] = self._new_key()
            self.kv.init(key, mx.nd.zeros_like(arr))
        self.kv.push(key, arr)
        out = mx.nd.zeros_like(arr)
        self.kv.pull(key, out=out)
        return out.asnumpy().reshape(x.shape)

    def broadcast(self, obj, root):
        if root != 0:
            raise ValueError("the parameter server broadcasts from worker 0 only")
        payload = wire.encode(obj) if self.rank() == 0 else b""
        n = int(self.allreduce_sum(np.array([len(payload)], dtype=np.float64), None)[0])
        # Bytes travel as float32 bit patterns through kvstore init (worker 0's value is kept)
        # and pull, which copy and never compute, so every bit arrives as sent.
        if self.rank() == 0:
            arr = mx.nd.array(np.frombuffer(payload + b"\0" * (-n % 4), np.float32))
        else:
            arr = mx.nd.zeros(((n + 3) // 4,), dtype=np.float32)
        key = self._new_key()
        self.kv.init(key, arr)
        self.kv.pull(key, out=arr)
        return obj if self.rank() == 0 else wire.decode(arr.asnumpy().tobytes()[:n])

    def broadcast_parameters(self, params):
        items = sorted(params.items())
        keys = [self._new_key() for _ in items]
        arrays = [p.data() for _, p in items]
        self.kv.init(keys, arrays)  # the servers keep worker 0's values
        self.kv.pull(keys, out=arrays)
        for (_, p), a in zip(items, arrays):
            p.set_data(a)

    def nd_allreduce_sum(self, array, name, group=None):
        raise RuntimeError(_NO_SYNC_BN)

    def nd_allgather(self, array, name, group=None):
        raise RuntimeError(_NO_SYNC_BN)

    def gluon_trainer(self, params, optimizer, optimizer_params, fp16_compression, num_groups,
                      prefix):
        # update_on_kvstore=False: the optimizer runs on the workers, so its state is in the
        # trainer and can be checkpointed.
        trainer = mx.gluon.Trainer(params, optimizer, optimizer_params, kvstore=self.kv,
                                   update_on_kvstore=False)
        # Gluon initializes the kvstore keys of the parameters (an init and a pull per key)
        # lazily, inside the first step(), where they overlapped the first gradient push-pull on
        # the same keys: on worker 0 the first update then went wrong in about one run in three
        # (measured: 3 of 8 runs; 0 of 10 with this). Initialize now and let it complete.
        trainer._init_kvstore()
        trainer._init_params()
        mx.nd.waitall()
        self.kv._barrier()
        return trainer, 1  # the servers sum; step(n) divides by n

    def shutdown(self):
        """ps-lite's orderly end, now rather than when the interpreter frees the kvstore at
        exit: a barrier of every node (then worker 0 stops the servers), which blocks for good
        when a node (the scheduler, say) is stopped or gone. Run now, the stall watchdog covers
        it; during the interpreter's own shutdown no Python thread runs any more."""
        from mxnet.base import _LIB, check_call

        mx.nd.waitall()
        # The KVStore object frees its handle when collected: NULL then, which C++ deletes as
        # nothing.
        handle, self.kv.handle = self.kv.handle, None
        check_call(_LIB.MXKVStoreFree(handle))

    def exit_after_failure(self, code):
        # ps-lite's orderly shutdown (run when the process exits) waits for every node, so a
        # worker that failed would hang there, and the job with it, instead of exiting.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def stall_hint(self):
        return "a worker stopped, hung or lost its network"


_NO_SYNC_BN = ("synchronized BN needs dist.backend=horovod; under the parameter server each "
               "worker keeps its own BN statistics")
_BACKEND_CLASSES = {"local": LocalBackend, "horovod": HorovodBackend, "ps": PSBackend}
_backend = LocalBackend()  # what every function below asks; replaced once by init()
_started = False
_transport = None  # the in-layer collectives' transport when not the backend (use_transport)


def init(backend="auto"):
    """Starts the backend once per process (later calls with the same backend do nothing)."""
    global _backend, _started
    name = resolve_backend(backend)
    if _started:
        if _backend.name != name:
            raise RuntimeError("dist backend %r already started; cannot switch to %r"
                               % (_backend.name, name))
        return
    _backend = _BACKEND_CLASSES[name]()
    _started = True


def backend():
    """The running backend's name ('local' before init)."""
    return _backend.name


def rank():
    """This worker's index in [0, size())."""
    return _backend.rank()


def size():
    """Number of workers."""
    return _backend.size()


def local_rank():
    """This worker's index among the workers of its machine (selects its GPU)."""
    return _backend.local_rank()


def is_main():
    """True on the worker that owns side effects (checkpoints, logs, results)."""
    return rank() == 0


def context():
    """The device this worker computes on (the first of `contexts()`)."""
    return contexts(1)[0]


def contexts(count=1):
    """The `count` devices this worker computes on. With GPUs: all the process sees when that
    is exactly `count` (it was given its own, e.g. by `runtime.pin_visible_devices` or a pod's one
    GPU), else GPUs local_rank() * count, ... (one process per node drives all of them with
    local rank 0). Without: the CPU, as device ids 0 .. count - 1 (logical devices sharing
    it: what tests and development run on)."""
    gpus = mx.context.num_gpus()
    if gpus > 0:
        first = 0 if gpus == count else local_rank() * count
        return [mx.gpu(first + i) for i in range(count)]
    return [mx.cpu(i) for i in range(count)]


def stall_hint():
    """What a stall of this worker may mean, for the watchdog's message."""
    return _backend.stall_hint()


def exit_after_failure(code):
    """Ends a failing worker at once under the parameter server (whose shutdown would wait for
    every node, the failed one included); returns otherwise."""
    _backend.exit_after_failure(code)


def shutdown():
    """COLLECTIVE. Ends the backend's connections in order once the work is done (the parameter
    server's finalisation, a barrier of every node; Horovod's last negotiation cycle), so that
    the caller can watch it for a stall; nothing else may use the backend after, but rank(),
    size() and local_rank() still answer."""
    _backend.shutdown()


# Gloo's transport errors (gloo/transport/tcp/pair.cc), as Horovod passes them up: the peer is
# "[ADDRESS]:PORT".
_GLOO_NETWORK = re.compile(
    r"(?P<what>(?:Read|Write) error|Connection closed by peer|Connect timeout|"
    r"Timed out waiting \d+ms for \w+ operation to complete|Socket \w+ error)"
    r"(?: (?P<peer>\[[^\]]+\]:\d+))?(?:: (?P<why>[A-Za-z][^\n\"\]\[]*))?")


def network_failure(exc):
    """The NetworkLost error a failed connection between workers means, or None.

    Horovod over Gloo raises a lost connection (the network failing or slowed past TCP's
    retries, or the peer gone) as a long error naming Gloo's transport error deep inside; this
    finds it in `exc` and its causes and says it in one line, naming the peer (Gloo knows its
    address and port, not its rank).
    """
    lost = _network_failure_in(exc)
    if lost is None and _HOROVOD_SHUT_DOWN in _chain_text(exc):
        # Horovod's background loop met the transport error itself (in its negotiation), logged
        # it, and shut down: the operation that raised here only says "Horovod has been shut
        # down". The error that shut it down waits in MXNet's engine, on the operation that
        # was running at the time; the backend takes it from there.
        cause = _backend.pending_error()
        if cause is not None:
            lost = _network_failure_in(cause)
    return lost


_HOROVOD_SHUT_DOWN = "Horovod has been shut down"


def _chain_text(exc):
    texts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(texts)


def _network_failure_in(exc):
    from deeplab.errors import NetworkLost

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # MXNet re-parses the C++ message "Read error [ADDR]:PORT: why" as a traceback:
        # 'File "Read error [ADDR]", line PORT' then 'MXNetError: why'. Put it back together.
        text = re.sub(r'File "([^"]*)", line (\d+)\s*\n\s*\w*Error: ', r"\1:\2: ", str(exc))
        match = _GLOO_NETWORK.search(text)
        if match:
            peer = match.group("peer")
            return NetworkLost(
                "lost the network connection to %s (Gloo: %s): the network between the "
                "workers failed, or that worker died; the last checkpoint is intact, continue "
                "with --resume" % ("the worker at " + peer.replace("[", "").replace("]", "")
                                   if peer else "another worker", match.group(0).strip()))
        exc = exc.__cause__ or exc.__context__
    return None


def use_transport(choice="auto"):
    """COLLECTIVE. Chooses the transport of the in-layer collectives (`nd_allgather`,
    `nd_allreduce_sum`, and the groups `new_group` makes for them) once, after `init()` and
    before `new_group`; returns its name (`transport()`).

    Args:
        choice: 'mpi' (straight over MPI: needs Horovod running over MPI, i.e. workers
            launched under mpirun, and mpi4py), 'horovod' (Horovod's collectives, with its
            negotiation) or 'auto' (mpi when Horovod runs over MPI and mpi4py imports, else
            the backend's own).
    Raises ValueError for an unknown choice or 'mpi' where MPI does not run.
    """
    global _transport
    if choice not in TRANSPORTS:
        raise ValueError("unknown transport %r; valid: %s" % (choice, ", ".join(TRANSPORTS)))
    if _transport is not None:
        return _transport.name
    from . import mpi

    under_mpi = _backend.name == "horovod" and mpi.launched_under_mpi(_backend.hvd)
    if choice == "mpi" and not under_mpi:
        raise ValueError("mpi needs workers launched under MPI (deeplab launch horovod --mpi) "
                         "with mpi4py installed; this worker runs backend %s%s" % (
                             _backend.name, " over Gloo" if _backend.name == "horovod" else ""))
    if choice == "mpi" or (choice == "auto" and under_mpi):
        _transport = mpi.MpiTransport()
    return transport()


def transport():
    """The name of the in-layer collectives' transport: 'mpi', or the backend's name."""
    return _transport.name if _transport is not None else _backend.name


def transport_stats():
    """(calls, seconds spent in them) of the in-layer collectives since the start, from a
    transport that runs them synchronously (MPI); None for the backend's own (Horovod's calls
    return before their result is there, so their time lands elsewhere)."""
    return _transport.stats() if _transport is not None else None


def nd_allreduce_sum(array, name, group=None):
    """COLLECTIVE. Sum of an NDArray over workers, asynchronous (a new NDArray).

    `name` must be the same on every worker for the same call (Horovod matches calls by name).
    Supported under local and horovod; the parameter server has no worker-to-worker path fast
    enough to run inside a layer.

    Args:
        group: a `Group` from `new_group`: sum over its workers only (COLLECTIVE for them).
            Default: all workers.
    """
    return (_transport or _backend).nd_allreduce_sum(array, name, group)


def nd_allgather(array, name, group=None):
    """COLLECTIVE. The workers' NDArrays concatenated along axis 0 in rank order (asynchronous).

    Same contract as `nd_allreduce_sum`; with `group`, its workers' arrays in rank order.
    """
    return (_transport or _backend).nd_allgather(array, name, group)


class Group:
    """The workers one collective runs among: `ranks` (sorted global ranks, this worker's
    included), `size`, `rank` (this worker's index in `ranks`) and `spec`, what `new_group` was
    asked for. `handle` is the backend's object for it (None: all workers, or this one alone,
    which needs no communication)."""

    def __init__(self, spec, ranks, handle=None):
        self.spec, self.ranks, self.handle = spec, tuple(ranks), handle
        self.size = len(self.ranks)
        self.rank = self.ranks.index(rank())

    def __repr__(self):
        return "Group(%r, ranks=%s)" % (self.spec, list(self.ranks))


def group_ranks(spec, world, hosts=None):
    """The partition of ranks 0..world-1 that `spec` describes, as a list of rank lists.

    Args:
        spec: 'all' (one group), 'node' (the ranks of one host, by `hosts`), or an int k (or
            its string) >= 1: consecutive ranks in groups of k; world must be divisible by k.
        hosts: the host of each rank (for 'node').
    """
    if spec == "all":
        return [list(range(world))]
    if spec == "node":
        if hosts is None or len(hosts) != world:
            raise ValueError("group 'node' needs the host of each of the %d workers" % world)
        by_host = {}
        for r, h in enumerate(hosts):
            by_host.setdefault(h, []).append(r)
        return sorted(by_host.values())
    try:
        if isinstance(spec, bool) or isinstance(spec, float):
            raise ValueError
        k = int(spec)
    except (TypeError, ValueError):
        raise ValueError("group %r: expected 'all', 'node' or a number of workers k >= 1"
                         % (spec,)) from None
    if k < 1 or world % k:
        raise ValueError("group of %d workers: the %d workers cannot be split into groups of %d "
                         "(k must be >= 1 and divide the number of workers)" % (k, world, k))
    return [list(range(i, i + k)) for i in range(0, world, k)]


def new_group(spec="all"):
    """COLLECTIVE. This worker's group in the partition `spec` describes (see `group_ranks`),
    ready for `nd_allreduce_sum` / `nd_allgather` with `group=`.

    Under Horovod over Gloo, a partition with groups of 2 or more workers (other than all)
    restarts Horovod with process sets for them (see `HorovodBackend.new_groups`): call it right
    after `init()`, before any model, trainer or other collective exists. With the MPI
    transport (`use_transport`) the group is an MPI communicator and Horovod is left alone.
    """
    world = size()
    if _transport is not None:
        ranks, handle = _transport.group(spec, None if spec == "node" else
                                         group_ranks(spec, world))
        return Group(spec, ranks, handle if len(ranks) > 1 else None)
    hosts = None
    if spec == "node":
        hosts = _gather_strings(_backend.host())
    partition = group_ranks(spec, world, hosts)
    handles = _backend.new_groups(partition)
    mine = next(r for r in partition if rank() in r)
    return Group(spec, mine, handles[tuple(mine)])


def gather_rows(row, name=None):
    """COLLECTIVE. Every worker's numpy array (the same shape on all), stacked in rank order:
    a float64 array of shape (size(),) + row's shape on every worker. One allreduce in which
    each worker fills its own row, so it works on every backend (the parameter server has no
    allgather)."""
    row = np.asarray(row, dtype=np.float64)
    out = np.zeros((size(),) + row.shape)
    out[rank()] = row
    return allreduce_sum(out, name=name)


def _gather_strings(text, max_bytes=256):
    """COLLECTIVE. Every worker's short string, in rank order."""
    data = text.encode("utf-8")
    if len(data) > max_bytes:
        raise ValueError("%r is longer than %d bytes" % (text, max_bytes))
    row = np.zeros(max_bytes + 1)
    row[0] = len(data)
    row[1:1 + len(data)] = np.frombuffer(data, np.uint8)
    rows = gather_rows(row, name="comm.gather_strings")
    return [bytes(row[1:1 + int(row[0])].astype(np.uint8)).decode("utf-8") for row in rows]


def allreduce_sum(x, name=None):
    """COLLECTIVE. Element-wise sum of a numpy array over workers (a new float64 array).

    Args:
        name: the call's name, the same on every worker: give a call made every step a stable
            name (e.g. "step") so that Horovod reuses its negotiation instead of repeating it.
            Without one the call is named after the array's shape. Two calls must not run at
            once under the same name.
    """
    return _backend.allreduce_sum(np.asarray(x, dtype=np.float64), name)


def barrier():
    """COLLECTIVE. Returns once every worker has called it."""
    _backend.barrier()


def broadcast(obj, root=0):
    """COLLECTIVE. Returns worker `root`'s `obj` on every worker: plain data (None, bool, int,
    float, str, bytes, lists, tuples, dicts, UserErrors), sent without pickle (see `wire`)."""
    return _backend.broadcast(obj, root)


def broadcast_parameters(params):
    """COLLECTIVE. Every worker's parameters become worker 0's (shapes must be known)."""
    _backend.broadcast_parameters(params)


def on_main(fn, share=False):
    """COLLECTIVE. Runs `fn()` on the main worker only; a UserError it raises is raised on every
    worker (instead of leaving the others waiting in their next collective).

    Returns:
        fn's result on the main worker; on the others the same result if `share` (plain
        data, see `broadcast`), else None.
    """
    from deeplab.errors import UserError

    result, error = None, None
    if is_main():
        try:
            result = fn()
        except UserError as err:
            error = err
    # Whether it failed travels in an allreduce (a kvstore key reused under the parameter
    # server); only a failure's message is broadcast (a new key there, whose first use waits
    # for the scheduler: a checkpoint must not).
    if allreduce_sum(np.array([float(error is not None)]))[0]:
        raise broadcast(error)
    return broadcast(result) if share else result


def gluon_trainer(params, optimizer, optimizer_params, fp16_compression=False, num_groups=0,
                  prefix=None):
    """COLLECTIVE. (trainer, divide_by): the running backend's Gluon trainer for `params`, and
    what `deeplab.dist.trainer.DistTrainer` divides n by so that its `step(n)` applies (sum
    over workers of the gradients) / n: the world size under Horovod, whose trainer averages
    over workers; 1 where the gradients are summed. Arguments: as for `trainer.make_trainer`,
    which wraps it (the trainer and its state file live in deeplab.dist.trainer)."""
    return _backend.gluon_trainer(params, optimizer, optimizer_params, fp16_compression,
                                  num_groups, prefix)
