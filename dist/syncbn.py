"""Batch normalization synchronized across worker processes.

Neither Horovod's MXNet binding (horovod issue #2087) nor MXNet (its contrib SyncBatchNorm spans
the devices of one process) synchronizes BN statistics across processes, so it is built here:

- forward: per channel, the sums of x - K and (x - K)^2 and the pixel count go through one
  allreduce; mean and variance follow. K is the running mean, the same on every worker, which
  keeps E[(x-K)^2] - E[x-K]^2 free of cancellation when activations have a large mean.
- backward: autograd differentiates through the normalisation; the gradients with respect to the
  two sums go through one allreduce (the adjoint of a sum over workers is a sum over workers).
- running statistics are updated from the global mean and (biased) variance, identically on
  every worker, as MXNet's BatchNorm does with its batch statistics.
- in predict mode (evaluation) and with use_global_stats (frozen BN) the running statistics are
  used and nothing is communicated.

The collective is a CustomOp (`deeplab_sync_bn_moments`), so the layer works imperatively and
inside a hybridized graph alike; MXNet runs custom ops on their own threads and Horovod's
allreduce is asynchronous, so the graph does not stall the engine while waiting.
"""
import mxnet as mx
from mxnet.gluon import nn

from . import comm

__all__ = ["SyncBatchNorm"]


class _Moments(mx.operator.CustomOp):
    """Global (mean, var, count) from local shifted sums; running statistics updated in training.

    Inputs: sums (3, C) = [sum(x - K), sum((x - K)^2), pixel count], shift K (C,).
    Outputs: mean (C,), biased var (C,), global count (C,). Aux: running mean and variance.
    """

    def __init__(self, key, momentum):
        super().__init__()
        self.key, self.momentum = key, momentum

    def forward(self, is_train, req, in_data, out_data, aux):
        sums, shift = in_data
        running_mean, running_var = aux
        if not is_train:
            self.assign(out_data[0], req[0], running_mean)
            self.assign(out_data[1], req[1], running_var)
            self.assign(out_data[2], req[2], mx.nd.zeros_like(running_mean))
            return
        total = comm.nd_allreduce_sum(sums, "syncbn.%s.fwd" % self.key)
        n = total[2]
        shifted_mean = total[0] / n
        var = mx.nd.relu(total[1] / n - shifted_mean * shifted_mean)
        mean = shift + shifted_mean
        self.assign(out_data[0], req[0], mean)
        self.assign(out_data[1], req[1], var)
        self.assign(out_data[2], req[2], n)
        m = self.momentum
        running_mean[:] = running_mean * m + mean * (1 - m)
        running_var[:] = running_var * m + var * (1 - m)

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        # mean = K + S1/N and var = S2/N - (S1/N)^2 with S = sum over workers of the local sums:
        # dL/dS1 = dmean/N - dvar * 2 (S1/N) / N, dL/dS2 = dvar / N; the adjoint of the sum over
        # workers is again a sum over workers.
        d_mean, d_var = out_grad[0], out_grad[1]
        mean, _, n = out_data
        shifted_mean = mean - in_data[1]
        d_s1 = (d_mean - 2 * d_var * shifted_mean) / n
        d_s2 = d_var / n
        local = mx.nd.stack(d_s1, d_s2, mx.nd.zeros_like(d_s1))
        self.assign(in_grad[0], req[0], comm.nd_allreduce_sum(local, "syncbn.%s.bwd" % self.key))
        self.assign(in_grad[1], req[1], mx.nd.zeros_like(in_data[1]))


@mx.operator.register("deeplab_sync_bn_moments")
class _MomentsProp(mx.operator.CustomOpProp):
    def __init__(self, key, momentum):
        super().__init__(need_top_grad=True)
        self.key, self.momentum = key, float(momentum)

    def list_arguments(self):
        return ["sums", "shift"]

    def list_outputs(self):
        return ["mean", "var", "count"]

    def list_auxiliary_states(self):
        return ["running_mean", "running_var"]

    def infer_shape(self, in_shape):
        c = in_shape[1][0]
        return [[3, c], [c]], [[c], [c], [c]], [[c], [c]]

    def create_operator(self, ctx, shapes, dtypes):
        return _Moments(self.key, self.momentum)


class SyncBatchNorm(nn.BatchNorm):
    """Drop-in for `gluon.nn.BatchNorm` (same arguments and parameters, NCHW) whose batch
    statistics are those of the global batch over all workers.

    With use_global_stats=True (frozen BN) it is exactly BatchNorm on the running statistics.
    Each layer's collectives are named after the layer, so every worker must build the same
    network in the same order (as data-parallel training does anyway).
    """

    def __init__(self, axis=1, **kwargs):
        if axis != 1:
            raise ValueError("SyncBatchNorm supports axis=1 (NCHW) only, got axis=%r" % (axis,))
        super().__init__(axis=axis, **kwargs)

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        kw = self._kwargs
        if kw["use_global_stats"]:
            return F.BatchNorm(x, gamma, beta, running_mean, running_var, name="fwd", **kw)
        shift = F.BlockGrad(running_mean)
        xs = F.broadcast_sub(x, shift.reshape((1, -1, 1, 1)))
        s1 = xs.sum(axis=(0, 2, 3))
        s2 = (xs * xs).sum(axis=(0, 2, 3))
        pixels = F.slice_axis(x, axis=1, begin=0, end=1).ones_like().sum().reshape((1,))
        count = F.broadcast_like(pixels, s1)
        mean, var, _ = F.Custom(F.stack(s1, s2, count), shift, running_mean, running_var,
                                op_type="deeplab_sync_bn_moments", key=self.name,
                                momentum=kw["momentum"])
        inv_std = F.rsqrt(var + kw["eps"])
        scale = inv_std if kw["fix_gamma"] else gamma * inv_std
        bias = beta - mean * scale
        return F.broadcast_add(F.broadcast_mul(x, scale.reshape((1, -1, 1, 1))),
                               bias.reshape((1, -1, 1, 1)))
