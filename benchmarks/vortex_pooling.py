"""Vortex Pooling head cost: square average pooling vs our separable pooling vs the paper's
cascade, side by side in one process, at the real feature sizes (ResNet features, 2048 channels,
513x513 crops: 33x33 at output stride 16, 65x65 at 8).

    .venv/bin/python benchmarks/vortex_pooling.py [--repeat 3] [--batch 1] [--out FILE.json]

Prints a table and one JSON line (also written to --out); times are medians of --repeat runs
after one warm-up.
"""
import argparse
import datetime
import json
import platform
import time

import mxnet as mx
import numpy as np
from mxnet import autograd

from deeplab.model import HEADS


def median_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def square_pooling(x, sizes):
    return [mx.nd.Pooling(x, kernel=(k, k), stride=(1, 1), pad=(k // 2, k // 2), pool_type="avg",
                          count_include_pad=False) for k in sizes]


def head_step(head, x):
    def run():
        with autograd.record():
            y = head(x)
        y.backward()
        mx.nd.waitall()
    return run


def main(args):
    rows = []
    for os_, side in ((16, 33), (8, 65)):
        x = mx.nd.random.normal(shape=(args.batch, 2048, side, side))
        direct = HEADS["vortex"](2048, 256, 21, os_)
        cascade = HEADS["vortex"](2048, 256, 21, os_, cascade=True)
        sizes = direct.pool_sizes
        row = {"output_stride": os_, "feature": side, "pool_sizes": list(sizes)}
        row["pool_square_s"] = median_time(
            lambda: mx.nd.waitall() or [p.wait_to_read() for p in square_pooling(x, sizes)],
            args.repeat)
        for name, h in (("separable", direct), ("cascade", cascade)):
            row["pool_%s_s" % name] = median_time(
                lambda h=h: [p.wait_to_read() for p in h.branch_inputs(mx.nd, x)[2:]], args.repeat)
            h.initialize()
            x.attach_grad()
            row["head_fwd_bwd_%s_s" % name] = median_time(head_step(h, x), args.repeat)
        row["pool_square_over_separable"] = row["pool_square_s"] / row["pool_separable_s"]
        row["pool_separable_over_cascade"] = row["pool_separable_s"] / row["pool_cascade_s"]
        row["head_separable_over_cascade"] = (row["head_fwd_bwd_separable_s"]
                                              / row["head_fwd_bwd_cascade_s"])
        rows.append(row)
        print("OS%-2d %dx%d pools %s: pooling square %.3fs, separable %.3fs, cascade %.3fs; "
              "head fwd+bwd separable %.3fs, cascade %.3fs (ratio %.2f)" % (
                  os_, side, side, sizes, row["pool_square_s"], row["pool_separable_s"],
                  row["pool_cascade_s"], row["head_fwd_bwd_separable_s"],
                  row["head_fwd_bwd_cascade_s"], row["head_separable_over_cascade"]), flush=True)
    report = {"benchmark": "vortex_pooling", "batch": args.batch, "repeat": args.repeat,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "mxnet": mx.__version__},
              "rows": rows}
    print(json.dumps(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
