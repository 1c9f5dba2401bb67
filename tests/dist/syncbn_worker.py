"""Runs SyncBatchNorm on this worker's slice of a fixed global batch and saves what it computed.

Started by tests/dist/test_syncbn.py, once per worker under `horovodrun` (or once, alone):

    python syncbn_worker.py OUT_DIR GLOBAL_BATCH HYBRIDIZE [GROUP [TRANSPORT]]

GROUP is `dist.sync_bn_group`'s value ('all' by default, 'node' or a number k), TRANSPORT
`dist.sync_bn_transport`'s ('auto' by default: mpi under mpirun, else Horovod's). For each
implementation (fused C++ kernels, composed MXNet operators), with the same parameters, it runs
two training steps and writes, per rank, the layer's output, the input gradient, the gamma and
beta gradients (this worker's share: the group's gradient is their sum) and the running
statistics after the step; then one predict-mode output. Keys are "IMPLEMENTATION.NAME". The
loss is sum(y * W) for a fixed random W, so every output element gets its own gradient.
"""
import os
import sys

import mxnet as mx
import numpy as np

from deeplab import dist
from deeplab.dist.syncbn import SyncBatchNorm, configure_sync_bn

C, H, W = 4, 5, 6
IMPLEMENTATIONS = ("fused", "composed")


def global_inputs(batch, step):
    rng = np.random.RandomState(step)
    # A large mean and uneven scales per channel: the statistics must not lose precision.
    x = 10.0 + rng.randn(batch, C, H, W) * np.array([0.5, 1.0, 3.0, 7.0]).reshape(1, C, 1, 1)
    w = rng.randn(batch, C, H, W)
    return x.astype(np.float32), w.astype(np.float32)


def run_layer(implementation, batch, hybridize):
    r, n = dist.rank(), dist.size()
    per = batch // n
    layer = SyncBatchNorm(in_channels=C, momentum=0.9, implementation=implementation)
    layer.initialize()
    rng = np.random.RandomState(7)  # gamma, beta away from 1, 0
    layer.gamma.set_data(mx.nd.array(rng.uniform(0.5, 1.5, C)))
    layer.beta.set_data(mx.nd.array(rng.uniform(-1, 1, C)))
    dist.broadcast_parameters(layer.collect_params())
    if hybridize:
        layer.hybridize()
    out = {}
    for step in range(2):
        x, w = global_inputs(batch, step)
        x = mx.nd.array(x[r * per:(r + 1) * per])
        x.attach_grad()
        with mx.autograd.record():
            y = layer(x)
            loss = (y * mx.nd.array(w[r * per:(r + 1) * per])).sum()
        loss.backward()
        out["y%d" % step] = y.asnumpy()
        out["gx%d" % step] = x.grad.asnumpy()
        out["ggamma%d" % step] = layer.gamma.grad().asnumpy()
        out["gbeta%d" % step] = layer.beta.grad().asnumpy()
        out["running_mean%d" % step] = layer.running_mean.data().asnumpy()
        out["running_var%d" % step] = layer.running_var.data().asnumpy()
    x, _ = global_inputs(batch, 2)
    out["predict"] = layer(mx.nd.array(x[r * per:(r + 1) * per])).asnumpy()
    out["gamma"] = layer.gamma.data().asnumpy()
    out["beta"] = layer.beta.data().asnumpy()
    out["fused"] = np.array(layer.fused)
    return out


def main(out_dir, batch, hybridize, group="all", transport="auto"):
    dist.init("auto")
    dist.use_transport(transport)
    g = configure_sync_bn(int(group) if group.isdigit() else group)
    out = {"size": dist.size(), "transport": dist.transport(),
           "group": np.array(g.ranks if g is not None else range(dist.size()))}
    for impl in IMPLEMENTATIONS:
        out.update({"%s.%s" % (impl, k): v for k, v in run_layer(impl, batch, hybridize).items()})
    np.savez(os.path.join(out_dir, "rank%d.npz" % dist.rank()), **out)
    dist.barrier()  # a worker that exits shuts Horovod down for all: wait for the other groups


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", *sys.argv[4:6])
