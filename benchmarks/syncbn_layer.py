"""Synchronized BN layer cost on CPU: MXNet's BatchNorm vs SyncBatchNorm composed of MXNet
operators vs SyncBatchNorm's fused kernels, at the activation sizes of ResNet-50 at a 512 crop.

    .venv/bin/python benchmarks/syncbn_layer.py [--repeat 7] [--out benchmarks/results/syncbn_layer.json]
    horovodrun -np 2 -H localhost:2 --gloo .venv/bin/python benchmarks/syncbn_layer.py ...

Each case is the hybridized BN layer, forward + backward, on a convolution's output (so that it
reads MKL-DNN's blocked layout, as in the network). Variants run alternately, case by case and repetition by repetition,
so that they share the machine's state; times are medians, ratios are taken per repetition and
reported as median [min, max]. Under horovodrun the synchronized variants communicate (rank 0
reports; every rank runs the same steps). Writes JSON (--out) and a log beside it.
"""
import argparse
import datetime
import os
import platform
import sys
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from deeplab import dist
from deeplab.dist.syncbn import SyncBatchNorm
from deeplab.utils import write_json, write_text

# (channels, side): the BN inputs of ResNet-50 v2 at a 512 crop, output stride 16 (stem at 1/2,
# stages at 1/4, 1/8, 1/16).
CASES = [(64, 256), (64, 128), (256, 128), (128, 64), (512, 64), (256, 32), (1024, 32),
         (2048, 32)]
VARIANTS = ("mxnet_bn", "sync_composed", "sync_fused")


def _norm(variant, channels):
    if variant == "mxnet_bn":
        return gluon.nn.BatchNorm(in_channels=channels)
    return SyncBatchNorm(in_channels=channels, implementation=variant.split("_")[1])


def _conv_output(channels, side, batch):
    """A (batch, channels, side, side) array in the layout MKL-DNN's convolution leaves."""
    x = mx.nd.random.normal(shape=(batch, channels, side, side))
    w = mx.nd.random.normal(shape=(channels, channels, 1, 1), scale=channels ** -0.5)
    return mx.nd.Convolution(x, w, kernel=(1, 1), num_filter=channels, no_bias=True)


def _step(net, x, dy):
    with autograd.record():
        y = net(x)
    y.backward(dy)
    mx.nd.waitall()


def run(repeat, batch):
    nets, inputs = {}, {}
    for c, side in CASES:
        x = _conv_output(c, side, batch)
        x.attach_grad()
        inputs[c, side] = (x, mx.nd.random.normal(shape=x.shape))
        for v in VARIANTS:
            net = _norm(v, c)
            net.initialize()
            dist.broadcast_parameters(net.collect_params())
            net.hybridize()
            _step(net, *inputs[c, side])  # graph construction, MKL-DNN's first-call work
            nets[v, c, side] = net
    times = {key: [] for key in nets}
    for _ in range(repeat):
        for c, side in CASES:
            for v in VARIANTS:
                dist.barrier()
                t = time.perf_counter()
                _step(nets[v, c, side], *inputs[c, side])
                times[v, c, side].append(time.perf_counter() - t)
    return times


def summarize(times, repeat):
    rows = []
    for c, side in CASES:
        row = {"channels": c, "side": side}
        bn = {v: np.array(times[v, c, side]) for v in VARIANTS}
        for v in VARIANTS:
            row[v + "_s"] = float(np.median(bn[v]))
        for v in ("sync_composed", "sync_fused"):
            r = bn[v] / bn["mxnet_bn"]
            row[v + "/mxnet_bn"] = [float(np.median(r)), float(r.min()), float(r.max())]
        r = bn["sync_composed"] / bn["sync_fused"]
        row["sync_composed/sync_fused"] = [float(np.median(r)), float(r.min()), float(r.max())]
        rows.append(row)
    total = {v: sum(r[v + "_s"] for r in rows) for v in VARIANTS}
    return rows, total


def format_table(rows, total, workers):
    lines = ["BN layer forward+backward on a convolution's output, %d worker(s); seconds, "
             "medians; ratio median [min, max] over repetitions" % workers,
             "%-14s %9s %9s %9s %22s %22s" % ("C x H x W", "mxnet_bn", "composed",
                                                  "fused", "fused/mxnet_bn",
                                                  "composed/fused")]
    for r in rows:
        f, cf = r["sync_fused/mxnet_bn"], r["sync_composed/sync_fused"]
        lines.append("%-14s %9.4f %9.4f %9.4f %8.2f [%5.2f, %5.2f] %8.2f [%5.2f, %5.2f]" % (
            "%dx%dx%d" % (r["channels"], r["side"], r["side"]), r["mxnet_bn_s"],
            r["sync_composed_s"], r["sync_fused_s"], f[0], f[1], f[2], cf[0], cf[1], cf[2]))
    lines.append("%-14s %9.4f %9.4f %9.4f   sum of medians: fused/mxnet_bn %.2f, "
                 "composed/fused %.2f" % ("total", total["mxnet_bn"], total["sync_composed"],
                                          total["sync_fused"],
                                          total["sync_fused"] / total["mxnet_bn"],
                                          total["sync_composed"] / total["sync_fused"]))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", help="JSON file (a .log with the table is written beside it)")
    return p.parse_args(argv)


def main(args):
    dist.init("auto")
    times = run(args.repeat, args.batch)
    rows, total = summarize(times, args.repeat)
    if not dist.is_main():
        return
    table = format_table(rows, total, dist.size())
    print(table)
    report = {"benchmark": "benchmarks/syncbn_layer.py",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), "workers": dist.size(), "backend": dist.backend(),
              "batch": args.batch, "repeat": args.repeat,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                          "HOROVOD_CYCLE_TIME": os.environ.get("HOROVOD_CYCLE_TIME")},
              "cases": rows, "total_s": total}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json(args.out, report)
        write_text(os.path.splitext(args.out)[0] + ".log", table + "\n")


if __name__ == "__main__":
    main(parse_args())
