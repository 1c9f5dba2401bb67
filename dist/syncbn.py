"""Batch normalization synchronized across worker processes.

Neither Horovod's MXNet binding (horovod issue #2087) nor MXNet (its contrib SyncBatchNorm spans
the devices of one process) synchronizes BN statistics across processes, so it is built here,
along the lines of PyTorch's SyncBatchNorm:

- forward: each worker computes, per channel, its pixel count n_r, mean m_r and variance v_r
  (exact: two passes per row in double precision); one allgather brings every worker's
  (n, m, v); the global mean and biased variance are combined exactly (Chan et al.):
  mean = sum n_r m_r / N, var = sum n_r (v_r + (m_r - mean)^2) / N. A single allreduce of
  sum(x) and sum(x^2) would move less data but loses float32 precision when activations have a
  large mean (we measured 2.8% gradient errors on the first iterations from scratch).
- backward: the gradients with respect to the global mean and variance go through one allreduce
  of 3C numbers, from which each worker derives the gradient of its own (m_r, v_r):
  d m_r = n_r / N (D_mean + 2 (m_r - mean) D_var), d v_r = n_r / N D_var.
- running statistics are updated from the global mean and (biased) variance, identically on
  every worker, by MXNet's own BatchNorm operator run on a two-sample tensor whose batch mean
  and variance are the global ones (mean +- std), so the update rule is exactly BatchNorm's.
- in predict mode (evaluation) the running statistics are used and nothing is communicated;
  with use_global_stats (frozen BN) the layer is plain BatchNorm.
- groups: `configure_sync_bn` makes the layers built afterwards normalise over a group of
  workers (all, the workers of one machine, or k consecutive ranks) instead of all of them;
  a group of one worker communicates nothing.

Two implementations compute the same thing:
- fused (default on the CPU): four C++ operators of dist/csrc/syncbn_ops.cc (moments,
  combination of the workers' moments and its gradient, normalisation), built and loaded by
  `deeplab.dist.fastbn`: one pass over the activations for the moments, one for the
  normalisation, three for their backward.
- composed: MXNet operators only (reductions, depthwise 1x1 convolutions for the affine maps).
  It runs on GPUs; on the CPU it is several times slower and is the fallback, with a warning,
  when the library cannot be built, and the reference the fused one is tested against.

The statistics travel through `comm.nd_allgather` / `comm.nd_allreduce_sum`: Horovod's
collectives, or under an MPI launch straight over MPI (`comm.use_transport`, deeplab.dist.mpi).

The collective is a one-output Python CustomOp without auxiliary states
(`deeplab_sync_bn_moments`); one with auxiliary states fails MXNet 1.9's backward storage-type
inference intermittently. The layer works imperatively and in a hybridized graph; MXNet runs
custom ops on their own threads and Horovod's collectives are asynchronous, so the engine is
not stalled. MXNet's static memory allocation (`hybridize(static_alloc=True)`) does not support
custom ops.
"""
import mxnet as mx
from mxnet.gluon import nn

from . import comm, fastbn

__all__ = ["SyncBatchNorm", "configure_sync_bn", "sync_bn_group", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("auto", "fused", "composed")

# Groups by the key that the custom operator receives (its arguments are strings); "" is all
# workers, the default until configure_sync_bn says otherwise.
_groups = {"": None}
_configured = ""


def configure_sync_bn(group="all"):
    """COLLECTIVE. Which workers the SyncBatchNorm layers built from now on normalise over.

    Args:
        group: 'all' (every worker: the global batch), 'node' (the workers of this worker's
            machine) or an int k >= 1 (consecutive ranks in groups of k: 0..k-1, k..2k-1, ...;
            the number of workers must be divisible by k). 1 is per-worker BN computed by
            SyncBatchNorm (no communication).

    Call it on every worker right after `dist.init()` (and `comm.use_transport`) and before
    building the model and its trainer: with Horovod's transport over Gloo, groups of 2 or more
    workers (fewer than all) restart Horovod with their process sets (over Horovod's MPI
    controller they need HOROVOD_DYNAMIC_PROCESS_SETS=1); with the MPI transport they are MPI
    communicators and Horovod is left alone.
    Returns this worker's `comm.Group` (None for 'all').
    Raises ValueError for an unknown spec or a k that does not divide the number of workers.
    """
    global _configured
    if group == "all":
        _configured = ""
        return None
    g = comm.new_group(group)
    key = "%s:%s" % (g.spec, ",".join(map(str, g.ranks)))
    _groups[key] = g
    _configured = key
    return g


def sync_bn_group():
    """The group configured for new layers (`comm.Group`, None for all workers)."""
    return _groups[_configured]


def _alone(group):
    return (group.size if group is not None else comm.size()) == 1


class _Moments(mx.operator.CustomOp):
    """Global (mean, var, N) from every worker's local (n, mean, var).

    Input: local (3, C) = [pixel count, mean, biased variance]; the running mean and variance
    (used in predict mode only). Output (3, C) = [global mean, global biased variance, N].
    """

    def __init__(self, key, group, fused):
        super().__init__()
        self.key, self.group, self.fused = key, _groups[group], fused

    def forward(self, is_train, req, in_data, out_data, aux):
        local, running_mean, running_var = in_data
        if not is_train:
            self.assign(out_data[0], req[0], mx.nd.stack(running_mean, running_var,
                                                         mx.nd.ones_like(running_mean)))
            return
        name = "syncbn.%s.fwd" % self.key
        if self.fused:
            gathered = local if _alone(self.group) else comm.nd_allgather(local, name, self.group)
            if req[0] in ("write", "inplace"):
                mx.nd.deeplab_bn_combine(gathered, out=out_data[0])
            else:
                self.assign(out_data[0], req[0], mx.nd.deeplab_bn_combine(gathered))
            return
        local = local.expand_dims(0)
        gathered = local if _alone(self.group) else comm.nd_allgather(local, name, self.group)
        n, m, v = gathered[:, 0], gathered[:, 1], gathered[:, 2]  # (workers, C) each
        total = n.sum(axis=0)
        mean = (n * m).sum(axis=0) / total
        var = (n * (v + mx.nd.square(m - mean))).sum(axis=0) / total
        self.assign(out_data[0], req[0], mx.nd.stack(mean, var, total))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        # With D = gradients w.r.t. the global mean and var summed over workers (one allreduce):
        # d m_r = n_r / N (D_mean + 2 (m_r - mean) D_var), d v_r = n_r / N D_var, d n_r = 0.
        name = "syncbn.%s.bwd" % self.key
        if self.fused:
            d = out_grad[0] if _alone(self.group) else comm.nd_allreduce_sum(
                out_grad[0], name, self.group)
            if req[0] in ("write", "inplace"):
                mx.nd.deeplab_bn_combine_grad(d, in_data[0], out_data[0], out=in_grad[0])
            else:
                self.assign(in_grad[0], req[0],
                            mx.nd.deeplab_bn_combine_grad(d, in_data[0], out_data[0]))
        else:
            d = out_grad[0][:2]
            if not _alone(self.group):
                d = comm.nd_allreduce_sum(d, name, self.group)
            n_r, m_r = in_data[0][0], in_data[0][1]
            mean, total = out_data[0][0], out_data[0][2]
            w = n_r / total
            d_m = w * (d[0] + 2 * (m_r - mean) * d[1])
            d_v = w * d[1]
            self.assign(in_grad[0], req[0], mx.nd.stack(mx.nd.zeros_like(d_m), d_m, d_v))
        for i in (1, 2):  # the running statistics: no gradient
            if req[i] != "null":
                self.assign(in_grad[i], req[i], mx.nd.zeros_like(in_data[i]))


@mx.operator.register("deeplab_sync_bn_moments")
class _MomentsProp(mx.operator.CustomOpProp):
    def __init__(self, key, group="", fused="0"):
        super().__init__(need_top_grad=True)
        self.key, self.group, self.fused = key, group, fused == "1"

    def list_arguments(self):
        return ["local", "running_mean", "running_var"]

    def list_outputs(self):
        return ["moments"]

    def infer_shape(self, in_shape):
        return in_shape, [in_shape[0]], []

    def create_operator(self, ctx, shapes, dtypes):
        return _Moments(self.key, self.group, self.fused)


class SyncBatchNorm(nn.BatchNorm):
    """Drop-in for `gluon.nn.BatchNorm` (same arguments and parameters, NCHW) whose batch
    statistics are those of the global batch over all workers (or over the configured group).

    With use_global_stats=True (frozen BN) it is exactly BatchNorm on the running statistics.
    Each layer's collectives are named after the layer, so every worker must build the same
    network in the same order (as data-parallel training does anyway).

    Args:
        group: a `comm.Group` (from `comm.new_group`) to normalise over; default: the one
            `configure_sync_bn` set (all workers unless configured).
        implementation: 'fused' (C++ kernels, CPU only; raises at the first call if they cannot
            be built or the input is on a GPU), 'composed' (MXNet operators: any device, the slow
            reference on CPU) or 'auto' (fused on the CPU if the kernels can be built, else
            composed, with a warning when they cannot be built).
        Other arguments: as gluon.nn.BatchNorm.
    """

    def __init__(self, axis=1, group=None, implementation="auto", **kwargs):
        if axis != 1:
            raise ValueError("SyncBatchNorm supports axis=1 (NCHW) only, got axis=%r" % (axis,))
        if implementation not in IMPLEMENTATIONS:
            raise ValueError("SyncBatchNorm implementation %r; valid: %s"
                             % (implementation, ", ".join(IMPLEMENTATIONS)))
        super().__init__(axis=axis, **kwargs)
        if group is None:
            self._group_key = _configured
        else:
            self._group_key = "%s:%s" % (group.spec, ",".join(map(str, group.ranks)))
            _groups[self._group_key] = group
        self._implementation = implementation
        self._fused = None  # decided by the first input's device (the kernels are CPU-only)

    def _resolve(self, ctx):
        if self._fused is not None:
            return
        if self._implementation == "fused" and not (ctx.device_type == "cpu" and fastbn.load()):
            raise RuntimeError("SyncBatchNorm(implementation='fused'): the fused kernels are "
                               "unavailable on %s: %s" % (ctx, fastbn._state["error"] or
                                                          "they run on the CPU only"))
        self._fused = (self._implementation != "composed" and ctx.device_type == "cpu"
                       and fastbn.load())

    @property
    def fused(self):
        """Whether this layer runs the fused C++ kernels (decided at its first call: on the CPU
        when they could be built; the composed operators on GPUs)."""
        if self._fused is None:
            self._resolve(mx.cpu())
        return self._fused

    def infer_shape(self, x, *args):
        """Parameter shapes from the input's channels (for layers built without in_channels:
        symbolic inference cannot see through the custom op)."""
        for p in (self.gamma, self.beta, self.running_mean, self.running_var):
            p.shape = (x.shape[1],)

    def forward(self, x, *args):
        if isinstance(x, mx.nd.NDArray):  # before a hybridized graph is built
            self._resolve(x.context)
            if not self.gamma.shape[0]:
                self.infer_shape(x)  # the graph needs the channels
        return super().forward(x, *args)

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        kw = self._kwargs
        if kw["use_global_stats"]:
            return F.BatchNorm(x, gamma, beta, running_mean, running_var, name="fwd", **kw)
        if self.fused:
            return self._fused_forward(F, x, gamma, beta, running_mean, running_var)
        return self._composed_forward(F, x, gamma, beta, running_mean, running_var)

    def _global_moments(self, F, local, running_mean, running_var):
        """(3, C) [mean, var, N] of the group's batch from this worker's [n, mean, var]."""
        return F.Custom(local, F.BlockGrad(running_mean), F.BlockGrad(running_var),
                        op_type="deeplab_sync_bn_moments", key=self.name, group=self._group_key,
                        fused="1" if self.fused else "0")

    def _update_running_stats(self, F, mean, var, gamma, beta, running_mean, running_var):
        """Running statistics: BatchNorm's own update, fed two samples mean +- std whose batch
        mean and biased variance are the global ones. MXNet's BatchNorm updates them in its
        backward pass, so its output must join the result: this returns it times zero, of shape
        (1,) (its gradients to gamma and beta are exactly zero; `pair` is cut from the
        gradient). In predict mode it updates nothing."""
        std = F.sqrt(var)
        pair = F.stack(mean + std, mean - std).reshape((2, -1, 1, 1))
        updated = F.BatchNorm(F.BlockGrad(pair), gamma, beta, running_mean, running_var,
                              name="stats", **self._kwargs)
        return updated.sum() * 0

    def _fused_forward(self, F, x, gamma, beta, running_mean, running_var):
        kw = self._kwargs
        # A reshape to the same shape takes x out of MKL-DNN's blocked layouts (which the kernels
        # do not read) once; each extension operator would otherwise convert it again, in its
        # forward and in its backward.
        plain = F.reshape(x, (-2,))
        moments = self._global_moments(F, F.deeplab_bn_moments(plain), running_mean, running_var)
        # The statistics' update needs no gradient: split a cut copy (MXNet 1.9 crashes in
        # backward when a split's outputs all end in BlockGrad while its input needs a gradient).
        mean, var, _ = F.split(F.BlockGrad(moments), num_outputs=3, axis=0, squeeze_axis=True)
        joined = self._update_running_stats(F, mean, var, gamma, beta, running_mean, running_var)
        return F.deeplab_bn_normalize(plain, moments, gamma, F.broadcast_add(beta, joined),
                                      eps=kw["eps"], fix_gamma=kw["fix_gamma"])

    def _composed_forward(self, F, x, gamma, beta, running_mean, running_var):
        kw = self._kwargs
        channels = self.gamma.shape[0]

        def affine(data, scale, shift):
            # scale * data + shift per channel, as a depthwise 1x1 convolution when the channels
            # are known (in_channels, or a first imperative call): on CPU, MXNet's broadcast
            # arithmetic (and the reductions in its backward) is several times slower than its
            # convolution kernels.
            if not channels:
                return F.broadcast_add(F.broadcast_mul(data, scale.reshape((1, -1, 1, 1))),
                                       shift.reshape((1, -1, 1, 1)))
            return F.Convolution(data, scale.reshape((-1, 1, 1, 1)), shift, kernel=(1, 1),
                                 num_filter=channels, num_group=channels)

        def channel_mean(data):
            # Reduced over the last axis first: MXNet's fastest reduction on CPU (a reduction
            # over axes (0, 2, 3) is ~2x slower, global average pooling of MKL-DNN's blocked
            # layout ~10x).
            return F.reshape(data, (0, 0, -1)).mean(axis=2).mean(axis=0)

        # Local moments, two-pass. The shift is cut from the gradient: the derivative of the
        # variance with respect to the mean it is centred on is zero, so this is exact.
        local_mean = channel_mean(x)
        shift = F.BlockGrad(local_mean)
        centred = affine(x, F.ones_like(shift), -shift)
        local_var = channel_mean(F.square(centred))
        dims = F.shape_array(x).astype("float32")
        pixels = (F.slice_axis(dims, axis=0, begin=0, end=1) * F.slice_axis(dims, axis=0, begin=2,
                  end=3) * F.slice_axis(dims, axis=0, begin=3, end=4))
        count = F.broadcast_mul(F.ones_like(local_mean), pixels)
        moments = self._global_moments(F, F.stack(count, local_mean, local_var), running_mean,
                                       running_var)
        mean, var, _ = F.split(moments, num_outputs=3, axis=0, squeeze_axis=True)
        inv_std = F.rsqrt(var + kw["eps"])
        # fix_gamma (scale=False): gamma stays an input (all ones) so Gluon sees it used.
        scale = (F.ones_like(gamma) if kw["fix_gamma"] else gamma) * inv_std
        joined = self._update_running_stats(F, mean, var, gamma, beta, running_mean, running_var)
        # y = scale * (x - mean) + beta, from the centred x (better conditioned).
        bias = F.broadcast_add(beta + (shift - mean) * scale, joined)
        return affine(centred, scale, bias)
