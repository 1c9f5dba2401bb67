"""Cost of synchronized BN per training step, against plain (per-worker) BN, in the same run.

Run on N workers, e.g.

    .venv/bin/horovodrun -np 2 -H localhost:2 --gloo .venv/bin/python benchmarks/syncbn_overhead.py
    .venv/bin/python benchmarks/syncbn_overhead.py          # one process (local backend)

Each worker builds the model twice, with MXNet's BatchNorm and with our SyncBatchNorm, the same
parameters, both hybridized as training runs them (static allocation for plain BN; custom ops
do not allow it), and times alternating training steps (forward, backward, Horovod's gradient
allreduce, SGD update) on the same random batch; medians after warm-up. Rank 0 prints a table.
"""
import argparse
import time

import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon import nn

from deeplab import dist
from deeplab.dist.syncbn import SyncBatchNorm
from deeplab.model import get_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deeplabv3_resnet50_v2")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch", type=int, default=2, help="images per worker")
    p.add_argument("--output-stride", type=int, default=16)
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2)
    return p.parse_args(argv)


def build(args, norm_layer, ctx):
    net = get_model(args.model, output_stride=args.output_stride, num_classes=21,
                    norm_layer=norm_layer, ctx=ctx, seed=0)
    dist.broadcast_parameters(net.collect_params())
    net.hybridize(static_alloc=norm_layer is nn.BatchNorm)
    trainer = dist.make_trainer(net.collect_params(), "sgd", {"learning_rate": 1e-4,
                                                             "momentum": 0.9})
    return net, trainer


def step(net, trainer, data, label):
    with autograd.record():
        out = net(data)
        loss = mx.nd.softmax_cross_entropy(out.transpose((0, 2, 3, 1)).reshape((-1, 21)),
                                           label.reshape((-1,)))
    loss.backward()
    trainer.step(data.shape[0] * dist.size())
    mx.nd.waitall()


def main(args):
    dist.init("auto")
    ctx = dist.context()
    rng = np.random.RandomState(dist.rank())
    data = mx.nd.array(rng.randn(args.batch, 3, args.crop, args.crop), ctx=ctx)
    label = mx.nd.array(rng.randint(0, 21, (args.batch, args.crop, args.crop)), ctx=ctx)
    variants = {"plain BN": build(args, nn.BatchNorm, ctx),
                "synchronized BN": build(args, SyncBatchNorm, ctx)}
    times = {k: [] for k in variants}
    for i in range(args.warmup + args.steps):
        for name, (net, trainer) in variants.items():  # alternate: same machine conditions
            dist.barrier()
            tic = time.perf_counter()
            step(net, trainer, data, label)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - tic)
    med = {k: float(np.median(v)) for k, v in times.items()}
    # The slowest worker sets the pace: report the maximum of the medians over workers.
    worst = dist.allreduce_sum(np.eye(dist.size())[dist.rank()][:, None]
                               * np.array([[med["plain BN"], med["synchronized BN"]]]))
    plain, sync = worst[:, 0].max(), worst[:, 1].max()
    if dist.is_main():
        print("%s, OS%d, crop %d, %d image(s) per worker, %d worker(s) (%s), median of %d steps"
              % (args.model, args.output_stride, args.crop, args.batch, dist.size(),
                 dist.backend(), args.steps))
        print("plain BN        %.3f s/step" % plain)
        print("synchronized BN %.3f s/step" % sync)
        print("synchronized / plain = %.3f (overhead %+.1f%%)" % (sync / plain,
                                                                 100 * (sync / plain - 1)))


if __name__ == "__main__":
    main(parse_args())
