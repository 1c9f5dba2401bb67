"""Vortex Pooling's average poolings: formulations side by side, alone and inside a whole training
step, against the ASPP head.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/vortex_pooling.py [--crop 513] [--rounds 6]
        [--warmup 2] [--pooling-rounds 3] [--parts pooling,network] [--out FILE.json]

The three pooled maps (sizes 3, 9, 27 at output stride 16; 7, 19, 55 at 8), as:

  direct     MXNet's square average pooling with count_include_pad=False: the mean over the
             in-image part of each window, the definition the head implements.
  separable  a (k x 1) then a (1 x k) pooling of that kind (the head's previous formulation).
  ours       the head's `box_average`: (k x 1) and (1 x k) valid poolings of the explicitly
             zero-padded map, scaled by the in-image counts; the direct pooling at size 3.
  seed       the seed project's rule (its resnet/network.py): square pooling counting the
             padding (count_include_pad=True, MXNet's default); a different function near borders.
  cascade    the head's `cascade=True` (the paper's dilated 3x3 averages); differs near borders.

Part "pooling": the pooled maps alone, forward + backward, on one 2048-channel map of the
features' size at each stride (33x33 and 65x65 for a 513 crop), made in the same hybridized
block by a depthwise 3x3 convolution, BN and ReLU, so that MKL-DNN gets the blocked layout the
head gets in the network (it picks its pooling kernels by layout); and the largest difference of
each from the definition, computed in float64 numpy. Direct and seed are not run at output
stride 8 (--skip-os8): MKL-DNN runs them in its reference kernel, already about 24 s per call
at 16. Part "network": one training step (forward, loss, backward; no update) of the whole
network, ResNet-50 v2, BN trained, batch 1, hybridized with static allocation as training runs
it: the ASPP head against the Vortex head with each formulation.

Timing: after --warmup calls of each variant (one in the pooling part), --rounds rounds
(--pooling-rounds in the pooling part) in each of which every variant runs once, in an order
rotated from round to round; each call's wall-clock time and the process's CPU time (all
threads). Ratios are taken within a round (the two calls close in time) and summarised by their
median, quartiles and range. On a machine shared with other work, wall-clock ratios are noisy;
CPU-time ratios much less so, since time spent descheduled is not counted.
"""
import argparse
import datetime
import functools
import os
import platform
import sys
import time
import types

import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon import nn

from deeplab.model import HEADS, get_model
from deeplab.model.heads import box_average
from deeplab.train import cross_entropy_sum
from deeplab.utils import write_json

__all__ = ["FORMULATIONS", "time_rounds", "ratio_stats", "command_line", "machine",
           "training_step"]

STRIDES = (16, 8)
MODEL = "deeplabv3_resnet50_v2"


def _pool(F, x, size, pad, include_pad):
    return F.Pooling(x, kernel=size, stride=(1, 1), pad=pad, pool_type="avg",
                     count_include_pad=include_pad)


def direct(F, x, k):
    return _pool(F, x, (k, k), (k // 2, k // 2), False)


def separable(F, x, k):
    if k <= 3:
        return direct(F, x, k)
    return _pool(F, _pool(F, x, (k, 1), (k // 2, 0), False), (1, k), (0, k // 2), False)


def seed(F, x, k):
    return _pool(F, x, (k, k), (k // 2, k // 2), True)


# name -> fn(F, x, size) of one pooled map; "cascade" is the head's own code (cascade=True).
FORMULATIONS = {"direct": direct, "separable": separable, "ours": box_average, "seed": seed,
                "cascade": None}


def pooled_maps(head, name, F, x):
    """The three pooled maps of `x` by formulation `name`; "ours" and "cascade" run the head's
    own code (`head` built with cascade=True for "cascade")."""
    if name in ("ours", "cascade"):
        return head.branch_inputs(F, x)[2:]
    return [FORMULATIONS[name](F, x, k) for k in head.pool_sizes]


class Pooling(nn.HybridBlock):
    """The pooled maps of one formulation, of a map in the layout the head receives in the
    network: MKL-DNN's blocked one (nChw16c), made by a depthwise 3x3 convolution, BN and ReLU
    (a few tens of MFLOPs). The layout matters: MKL-DNN picks its pooling kernel by it."""

    def __init__(self, head, name, channels):
        super().__init__()
        # a partial, not the head itself: a Block attribute would register the head's layers
        self.maps = functools.partial(pooled_maps, head, name)
        with self.name_scope():
            self.conv = nn.Conv2D(channels, 3, padding=1, groups=channels, use_bias=False,
                                  in_channels=channels)
            self.bn = nn.BatchNorm(in_channels=channels)

    def hybrid_forward(self, F, x):
        return tuple(self.maps(F, F.relu(self.bn(self.conv(x)))))


def vortex_network(output_stride, formulation):
    """Our ResNet-50 v2 network with the Vortex head, its pooling computed by `formulation`."""
    net = get_model(MODEL, head="vortex", output_stride=output_stride, seed=0,
                    vortex_cascade=formulation == "cascade")
    if formulation not in ("ours", "cascade"):
        head = net.head

        def branch_inputs(self, F, x):
            return [x, x] + pooled_maps(self, formulation, F, x)
        head.branch_inputs = types.MethodType(branch_inputs, head)
    return net


def training_step(net, x, label, loss=cross_entropy_sum):
    """A callable running one forward + loss + backward of `net` and waiting for it."""
    def run():
        with autograd.record():
            out = loss(mx.nd, net(x), label)
        out.backward()
        mx.nd.waitall()
    return run


def time_rounds(variants, rounds, warmup, log=print):
    """{name: {"wall_s": [...], "cpu_s": [...]}} of `variants` ({name: callable}) run alternately:
    `warmup` calls each first, then `rounds` rounds with the order rotated every round."""
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    times = {n: {"wall_s": [], "cpu_s": []} for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            w, c = time.perf_counter(), time.process_time()
            variants[name]()
            times[name]["wall_s"].append(time.perf_counter() - w)
            times[name]["cpu_s"].append(time.process_time() - c)
        log("  round %d/%d: %s" % (r + 1, rounds, ", ".join(
            "%s %.3fs" % (n, times[n]["wall_s"][-1]) for n in names)))
    return times


def ratio_stats(num, den):
    """Summary of the per-round ratios num[i] / den[i]."""
    r = np.asarray(num, dtype=float) / np.asarray(den, dtype=float)
    q25, med, q75 = np.percentile(r, [25, 50, 75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75), "min": float(r.min()),
            "max": float(r.max()), "all": [float(v) for v in r]}


def summarize(times, baseline):
    """Medians of each variant and its ratios to `baseline`, wall-clock and CPU time."""
    out = {}
    for name, t in times.items():
        out[name] = {"wall_s": float(np.median(t["wall_s"])),
                     "cpu_s": float(np.median(t["cpu_s"])),
                     "wall_s_all": t["wall_s"], "cpu_s_all": t["cpu_s"]}
        if name != baseline:
            out[name]["wall_ratio"] = ratio_stats(t["wall_s"], times[baseline]["wall_s"])
            out[name]["cpu_ratio"] = ratio_stats(t["cpu_s"], times[baseline]["cpu_s"])
    return out


def command_line():
    """This run's command line as one would type it, thread setting included."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) \
        else sys.executable
    return "OMP_NUM_THREADS=%s %s %s" % (os.environ.get("OMP_NUM_THREADS", "(unset)"), python,
                                         " ".join(sys.argv))


def machine():
    return {"hostname": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "mxnet": mx.__version__,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def box_mean_reference(x, size):
    """The definition in float64 numpy: the mean over the in-image part of each size x size
    window of (N, C, H, W) maps, from integral images."""
    r = size // 2

    def box_sums(a):
        a = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(r + 1, r), (r + 1, r)])
        s = a.cumsum(-2).cumsum(-1)
        return s[..., size:, size:] - s[..., :-size, size:] - s[..., size:, :-size] \
            + s[..., :-size, :-size]
    return box_sums(x.astype(np.float64)) / box_sums(np.ones(x.shape[-2:]))


def _feature_side(crop, output_stride):
    side = crop
    for _ in range({16: 4, 8: 3}[output_stride]):  # the stem's conv and pool, then each stage
        side = (side - 1) // 2 + 1
    return side


def _at_stride(names, args, output_stride):
    skip = args.skip_os8.split(",") if output_stride == 8 else []
    return [n for n in names.split(",") if n not in skip]


def bench_pooling(args, output_stride):
    side = _feature_side(args.crop, output_stride)
    channels = 2048
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.standard_normal((1, channels, side, side)))
    x.attach_grad()
    names = _at_stride(args.formulations, args, output_stride)
    blocks, errors = {}, {}
    for name in names:
        head = HEADS["vortex"](channels, 256, 21, output_stride, cascade=name == "cascade")
        block = Pooling(head, name, channels)
        block.initialize()
        block.hybridize(static_alloc=True)
        blocks[name] = block
        with autograd.predict_mode():
            maps = [m.asnumpy() for m in block(x)]
            feature = mx.nd.relu(block.bn(block.conv(x))).asnumpy()
        errors[name] = max(float(np.abs(m - box_mean_reference(feature, k)).max())
                           for m, k in zip(maps, head.pool_sizes))
    grads = [mx.nd.array(rng.standard_normal(x.shape)) for _ in range(3)]

    def step(block):
        def run():
            with autograd.record():
                maps = block(x)
            autograd.backward(list(maps), head_grads=grads)
            mx.nd.waitall()
        return run

    print("pooling, OS%d, %dx%d x %d channels, sizes %s:" % (
        output_stride, side, side, channels, list(head.pool_sizes)), flush=True)
    times = time_rounds({n: step(b) for n, b in blocks.items()}, args.pooling_rounds, 1)
    results = summarize(times, names[0])
    for name in names:
        results[name]["max_abs_diff_vs_definition"] = errors[name]
    return {"output_stride": output_stride, "feature": [side, side],
            "pool_sizes": list(head.pool_sizes), "channels": channels, "baseline": names[0],
            "formulations": results}


def bench_network(args, output_stride):
    names = _at_stride(args.network_variants, args, output_stride)
    nets = {}
    for name in names:
        net = (get_model(MODEL, head="aspp", output_stride=output_stride, seed=0)
               if name == "aspp" else vortex_network(output_stride, name))
        net.hybridize(static_alloc=True)
        nets[name] = net
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.standard_normal((1, 3, args.crop, args.crop)))
    label = mx.nd.array(rng.randint(0, 21, (1, args.crop, args.crop)))
    print("network, OS%d, crop %d: %s" % (output_stride, args.crop, ", ".join(names)), flush=True)
    times = time_rounds({n: training_step(net, x, label) for n, net in nets.items()},
                        args.rounds, args.warmup)
    return {"output_stride": output_stride, "crop": args.crop, "model": MODEL,
            "baseline": "aspp", "variants": summarize(times, "aspp")}


def _format_ratio(s):
    return "%.3f [IQR %.3f-%.3f, range %.3f-%.3f]" % (s["median"], s["q25"], s["q75"], s["min"],
                                                     s["max"])


def main(args):
    parts = args.parts.split(",")
    report = {"benchmark": "vortex_pooling", "command": command_line(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "crop": args.crop, "batch": 1, "rounds": args.rounds,
              "warmup": args.warmup, "pooling_rounds": args.pooling_rounds, "pooling": [],
              "network": []}
    for os_ in STRIDES:
        if "pooling" in parts:
            report["pooling"].append(bench_pooling(args, os_))
        if "network" in parts:
            report["network"].append(bench_network(args, os_))
    for row in report["pooling"]:
        print("pooling OS%d %dx%d: median fwd+bwd (wall / CPU), ratio to %s (CPU):" % (
            row["output_stride"], *row["feature"], row["baseline"]))
        for name, v in row["formulations"].items():
            print("  %-10s %.4f s / %.4f s  %s  max |diff| from the definition %.1e" % (
                name, v["wall_s"], v["cpu_s"],
                _format_ratio(v["cpu_ratio"]) if "cpu_ratio" in v else "(baseline)",
                v["max_abs_diff_vs_definition"]))
    for row in report["network"]:
        print("network OS%d crop %d: median training step (wall / CPU), ratio to ASPP:" % (
            row["output_stride"], row["crop"]))
        for name, v in row["variants"].items():
            extra = ("wall %s; CPU %s" % (_format_ratio(v["wall_ratio"]),
                                          _format_ratio(v["cpu_ratio"]))
                     if "wall_ratio" in v else "(baseline)")
            print("  %-10s %.3f s / %.3f s  %s" % (name, v["wall_s"], v["cpu_s"], extra))
    if args.out:
        write_json(args.out, report)
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crop", type=int, default=513)
    p.add_argument("--rounds", type=int, default=6, help="network part")
    p.add_argument("--warmup", type=int, default=2, help="network part")
    p.add_argument("--pooling-rounds", type=int, default=3,
                   help="pooling part (after one warm-up call each)")
    p.add_argument("--parts", default="pooling,network", help="pooling, network or both")
    p.add_argument("--formulations", default="ours,separable,cascade,direct,seed",
                   help="pooling part; ratios are to the first")
    p.add_argument("--network-variants", default="aspp,ours,separable,cascade",
                   help="network part: aspp and Vortex formulations")
    p.add_argument("--skip-os8", default="direct,seed",
                   help="formulations not run at output stride 8 (MKL-DNN runs them in its "
                        "reference kernel, already 24 s per call at 16)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    unknown = [n for n in (args.formulations.split(",") + args.network_variants.split(","))
               if n not in FORMULATIONS and n != "aspp"]
    if unknown:
        p.error("unknown formulation(s) %s; valid: %s" % (", ".join(unknown),
                                                         ", ".join(FORMULATIONS)))
    return args


if __name__ == "__main__":
    main(parse_args())
