"""Runs each collective of `deeplab.dist` once on this worker, then its shutdown, and saves what
they returned.

Started by tests/dist/test_comm.py, once per worker (Horovod, the parameter server) or alone:

    python comm_worker.py OUT_DIR

Worker r contributes values made from r, so the expected results are known for any number of
workers; a collective the backend does not support is recorded as the name of its error.
"""
import json
import os
import sys

import mxnet as mx
import numpy as np

from deeplab import dist


def attempt(fn):
    try:
        return fn()
    except (RuntimeError, ValueError) as err:
        return type(err).__name__


def main(out_dir):
    dist.init("auto")
    r = dist.rank()
    out = {"size": dist.size(), "backend": dist.backend()}
    out["step"] = [dist.allreduce_sum(np.array([r + 1.0, 10.0 * r]), name="step").tolist()
                   for _ in range(3)]
    out["unnamed"] = dist.allreduce_sum(np.full((2, 3), r + 0.5)).tolist()
    out["list"] = dist.allreduce_sum([r]).tolist()
    out["broadcast"] = dist.broadcast({"from": r, "bytes": bytes(range(r, 256))})["from"]
    out["broadcast_root1"] = attempt(lambda: dist.broadcast(r, root=1))
    dist.barrier()
    out["nd_allgather"] = attempt(
        lambda: dist.nd_allgather(mx.nd.array([[r]]), "test.gather").asnumpy().tolist())
    out["nd_allreduce_sum"] = attempt(
        lambda: dist.nd_allreduce_sum(mx.nd.array([r, 1]), "test.sum").asnumpy().tolist())

    # Parameters become worker 0's; one SGD step applies (sum of the gradients) / n.
    net = mx.gluon.nn.Dense(1, in_units=3, use_bias=False)
    net.initialize(mx.init.Constant(r + 1.0))
    dist.broadcast_parameters(net.collect_params())
    out["broadcast_parameters"] = net.weight.data().asnumpy().tolist()
    trainer = dist.make_trainer(net.collect_params(), "sgd", {"learning_rate": 1.0})
    x = mx.nd.array([[1.0, 2.0, 3.0]]) + 3 * r
    with mx.autograd.record():
        loss = net(x).sum()
    loss.backward()
    trainer.step(2.0)
    out["sgd_step"] = net.weight.data().asnumpy().tolist()
    # The backend's end (ps-lite's last barrier, Horovod's last cycle); the rank and the size
    # still answer after it (the run's record and the watchdog ask).
    dist.shutdown()
    out["after_shutdown"] = {"same_rank": dist.rank() == r, "size": dist.size()}
    if dist.backend() == "horovod":
        import horovod.mxnet as hvd

        out["horovod_initialized_after_shutdown"] = hvd.is_initialized()
    with open(os.path.join(out_dir, "rank%d.json" % r), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1])
