"""Synchronized BN's in-layer collectives straight over MPI (mpi4py), beside Horovod.

Under `deeplab launch horovod --mpi` Horovod has initialized MPI (with MPI_THREAD_MULTIPLE);
this transport uses the same library for the per-layer statistics, without Horovod's
negotiation cycle: a call costs microseconds instead of about one cycle (1 ms by default).
Gradients stay with Horovod. `deeplab.dist.comm` chooses it (`use_transport`).

MXNet runs custom operators on a pool of threads and two independent BN layers (the two
branches of a residual block) may run their collectives at the same time, in an order that
differs between workers. So a call is matched by its name, not by its order: each worker sends
its array to every other member of the group and receives theirs with point-to-point messages
whose tag is derived from the call's name (messages of one name and one pair of workers arrive
in the order sent: a layer's forward, then its backward, step after step). Sums are computed
in rank order from the gathered arrays, so every worker gets the same bits.

A group is an MPI communicator made once, collectively, on the main thread: a duplicate of
MPI_COMM_WORLD for all workers, MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) for the workers of
one machine ('node'), MPI_Comm_split by consecutive ranks for 'k'.
"""
import os
import threading
import time
import zlib

import numpy as np

__all__ = ["launched_under_mpi", "MpiTransport", "MpiBroadcast"]


def launched_under_mpi(hvd):
    """True if Horovod (`horovod.mxnet`, initialized) runs over MPI and mpi4py is there to
    share it."""
    try:
        if not hvd.mpi_enabled():
            return False
        import mpi4py  # noqa: F401
    except (ImportError, ValueError):
        return False
    return True


def _mpi():
    import mpi4py

    mpi4py.rc.initialize = False  # Horovod initialized MPI and finalizes it
    mpi4py.rc.finalize = False
    from mpi4py import MPI
    return MPI


def _ndarray(data, ctx):
    """An NDArray holding numpy `data` (mx.nd.array takes 40 us for a few kB here, an empty
    array and one copy 14 us: this runs twice per layer and step)."""
    import mxnet as mx

    out = mx.nd.empty(data.shape, ctx=ctx, dtype=data.dtype)
    out._sync_copyfrom(data)
    return out


class MpiTransport:
    """The in-layer collectives of `deeplab.dist.comm` (nd_allgather, nd_allreduce_sum) over
    MPI point-to-point messages. Construct it on every worker, on the main thread, after
    Horovod's init."""

    name = "mpi"

    def __init__(self):
        MPI = self.MPI = _mpi()
        if not MPI.Is_initialized() or MPI.Is_finalized():
            raise RuntimeError("dist.sync_bn_transport mpi: MPI is not initialized (the workers "
                               "must be launched under MPI: deeplab launch horovod --mpi)")
        if MPI.Query_thread() != MPI.THREAD_MULTIPLE:
            raise RuntimeError("dist.sync_bn_transport mpi needs MPI_THREAD_MULTIPLE (custom "
                               "operators call MPI from several threads); MPI gave level %d: "
                               "unset HOROVOD_MPI_THREADS_DISABLE" % MPI.Query_thread())
        self.world = MPI.COMM_WORLD.Dup()
        self._tag_ub = self.world.Get_attr(MPI.TAG_UB)
        self._tags = {}  # tag -> name
        self._lock = threading.Lock()
        # calls made and seconds spent in them (posting, waiting for the peers, copying): what
        # bench reports as synchronized BN's time in its collectives (stats)
        self._stats = [0, 0.0]
        spin = os.environ.get("DEEPLAB_MPI_SPIN_US")
        self._spin = float(spin) * 1e-6 if spin else None

    def group(self, spec, partition):
        """COLLECTIVE. (ranks, communicator) of this worker's group for `spec` ('all', 'node'
        or k); `partition` is comm.group_ranks' list for 'all' and k (None for 'node', which
        MPI finds: the workers sharing this machine's memory)."""
        MPI, world = self.MPI, self.world
        me = world.Get_rank()
        if spec == "all":
            return list(range(world.Get_size())), world
        if spec == "node":
            sub = world.Split_type(MPI.COMM_TYPE_SHARED, key=me)
        else:
            color = next(i for i, ranks in enumerate(partition) if me in ranks)
            sub = world.Split(color, key=me)
        ranks = np.zeros(sub.Get_size(), dtype=np.int64)
        sub.Allgather(np.array([me], dtype=np.int64), ranks)
        return [int(r) for r in ranks], sub

    def _tag(self, name):
        tag = zlib.crc32(name.encode("utf-8")) % (self._tag_ub + 1)
        with self._lock:
            other = self._tags.setdefault(tag, name)
        if other != name:
            raise RuntimeError("MPI transport: collectives %r and %r map to the same message "
                               "tag %d; rename one of the layers" % (other, name, tag))
        return tag

    def _exchange(self, data, name, comm):
        """Every member's `data` (a numpy array, the same shape on all), stacked in the
        group's rank order."""
        t0 = time.perf_counter()
        n, me = comm.Get_size(), comm.Get_rank()
        tag = self._tag(name)
        out = np.empty((n,) + data.shape, dtype=data.dtype)
        out[me] = data
        reqs = [comm.Irecv(out[p], source=p, tag=tag) for p in range(n) if p != me]
        reqs += [comm.Isend(data, dest=p, tag=tag) for p in range(n) if p != me]
        self._wait(reqs)
        spent = time.perf_counter() - t0
        with self._lock:
            self._stats[0] += 1
            self._stats[1] += spent
        return out

    def _wait(self, reqs):
        """MPI's Waitall (it polls MPICH's progress engine, yielding the core every 1000 polls),
        or with DEEPLAB_MPI_SPIN_US=N: polls for N microseconds, then sleeps between polls, so
        that a rank waiting long for a slower peer leaves the cores to that peer's threads
        (an experiment: benchmarks/RESULTS.md measures both)."""
        if self._spin is None:
            self.MPI.Request.Waitall(reqs)
            return
        testall, deadline = self.MPI.Request.Testall, time.perf_counter() + self._spin
        while not testall(reqs):
            if time.perf_counter() > deadline:
                time.sleep(5e-5)

    def stats(self):
        """(calls, seconds in them) since the start: each call's time from posting its messages
        to the last peer's arrival, i.e. mostly waiting for the slowest member."""
        with self._lock:
            return tuple(self._stats)

    def _comm(self, group):
        return self.world if group is None or group.handle is None else group.handle

    def nd_allgather(self, array, name, group=None):
        data = array.asnumpy()
        out = self._exchange(data, name, self._comm(group))
        return _ndarray(out.reshape((-1,) + data.shape[1:]), array.context)

    def nd_allreduce_sum(self, array, name, group=None):
        out = self._exchange(array.asnumpy(), name, self._comm(group))
        total = out[0].copy()
        for part in out[1:]:  # rank order: the same bits on every worker
            total += part
        return _ndarray(total, array.context)


class MpiBroadcast:
    """Rank 0's parameters and root's data to every worker straight over MPI, for a job whose
    Horovod runs over MPI.

    Why not Horovod's broadcast there: over Horovod's MPI controller a worker crashed, rarely,
    inside Horovod's EnqueueTensorBroadcast (a string copy from an unmapped address, from MXNet's
    engine thread) during broadcast_parameters at start-up and on --resume; never under Gloo.
    These broadcasts are few and outside the step, so MPI's own Bcast, called here on the
    caller's thread, costs nothing that matters and leaves Horovod the gradients only.
    """

    def __init__(self):
        MPI = _mpi()
        self.world = MPI.COMM_WORLD.Dup()

    def parameters(self, params):
        """COLLECTIVE. Every worker's `params` (a Gluon ParameterDict or {name: Parameter},
        shapes known) become rank 0's, in name order."""
        import mxnet as mx

        for name in sorted(params.keys()):
            p = params[name]
            data = p.data() if isinstance(p, mx.gluon.Parameter) else p
            value = np.ascontiguousarray(data.asnumpy())
            self.world.Bcast(value, root=0)
            if isinstance(p, mx.gluon.Parameter):
                p.set_data(_ndarray(value, data.context))
            else:
                data[:] = value

    def data(self, payload, root):
        """COLLECTIVE. `payload` (bytes) of worker `root`, on every worker."""
        size = np.array([len(payload) if self.world.Get_rank() == root else 0], dtype=np.int64)
        self.world.Bcast(size, root=root)
        buf = np.frombuffer(payload, np.uint8).copy() if self.world.Get_rank() == root \
            else np.empty(int(size[0]), dtype=np.uint8)
        self.world.Bcast(buf, root=root)
        return buf.tobytes()
