"""Horovod allreduce microbenchmark: seconds per `hvd.allreduce_` of MXNet NDArrays against size,
and the alpha-beta fit t = alpha + bytes * beta that `benchmarks/scaling_model.py` reads.

    .venv/bin/horovodrun -np 2 -H localhost:2 --gloo .venv/bin/python benchmarks/allreduce.py \
        [--sizes 4096 65536 ...] [--reps 7] [--warmup 2] [--out FILE.json]

What it measures: each call is the in-place averaging allreduce that Horovod's
DistributedTrainer issues per gradient (`allreduce_`, one name reused every call so Horovod's
response cache is hit, as in training), waited for before the next call; float32 and float16
(what `Compression.fp16` sends) at the same byte sizes. Medians over --reps calls after --warmup
(sizes under 1 MB: up to 10x as many calls, as their millisecond times are the noisiest); each
size's figure is the slowest worker's median.

The fit weights each point by 1/t (least squares on relative error), so alpha is set by the small
sizes and beta by the large ones instead of the largest point dominating both. Reported: alpha
(seconds per call), beta (seconds per byte), the algorithm bandwidth algbw = 1 / beta and the bus
bandwidth busbw = algbw * 2 (n - 1) / n, NCCL's definition for allreduce (NVIDIA nccl-tests,
doc/PERFORMANCE.md, "AllReduce"): the rate each link would need for a ring, comparable across n.

On one machine under `--gloo` (the case here: 2 CPU cores, TCP over loopback) this measures the
*software* cost of an allreduce -- Horovod's per-call negotiation and cycle wait
(HOROVOD_CYCLE_TIME, 1 ms by default), fusion-buffer copies, Gloo's reductions on the CPU -- and
whether the alpha-beta shape holds; it says nothing about a network. scaling_model.py uses its
alpha as the per-call software overhead and takes link bandwidths and latencies from published
figures.
"""
import argparse
import datetime
import os
import platform
import sys
import time

import horovod
import horovod.mxnet as hvd
import mxnet as mx
import numpy as np

from deeplab.utils import write_json

LOAD_AT_START = os.getloadavg()[0]  # before this benchmark's own load
DEFAULT_SIZES = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20, 160 << 20]
DTYPES = ("float32", "float16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES,
                   help="message sizes in bytes (default: 4 KB to 160 MB, about R50's gradient)")
    p.add_argument("--reps", type=int, default=7, help="timed calls per size and dtype")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before them")
    p.add_argument("--out", help="JSON report (written by rank 0)")
    return p.parse_args(argv)


def timed_calls(nbytes, reps):
    """Timed calls for one size: --reps, up to 10x under 1 MB (the same on every worker)."""
    return reps * min(10, max(1, (1 << 20) // nbytes))


def time_allreduce(nbytes, dtype, reps, warmup):
    """Median seconds of one in-place averaging allreduce of `nbytes` bytes of `dtype`."""
    x = mx.nd.ones((nbytes // np.dtype(dtype).itemsize,), dtype=dtype)
    name = "bench.%s.%d" % (dtype, nbytes)
    times = []
    for i in range(warmup + timed_calls(nbytes, reps)):
        tic = time.perf_counter()
        hvd.allreduce_(x, op=hvd.Average, name=name)
        x.wait_to_read()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    return float(np.median(times))


def slowest(values):
    """COLLECTIVE. Element-wise maximum over workers (all wait for the slowest)."""
    arr = mx.nd.array(values, dtype="float64")
    return hvd.allreduce(arr, op=hvd.Max, name="bench.max.%d" % len(values)).asnumpy().tolist()


def fit_alpha_beta(sizes, seconds, workers):
    """Least squares of t = alpha + beta * bytes on relative error (rows weighted by 1 / t)."""
    sizes, seconds = np.asarray(sizes, float), np.asarray(seconds, float)
    a = np.stack([np.ones_like(sizes), sizes], axis=1) / seconds[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(a, np.ones_like(seconds), rcond=None)
    algbw = 1.0 / beta
    return {"alpha_s": float(alpha), "beta_s_per_byte": float(beta),
            "algbw_bytes_per_s": float(algbw),
            "busbw_bytes_per_s": float(algbw * 2 * (workers - 1) / workers)}


def machine():
    return {"hostname": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "mxnet": mx.__version__,
            "horovod": horovod.__version__, "gloo": bool(hvd.gloo_enabled()),
            "mpi": bool(hvd.mpi_enabled()), "nccl": bool(hvd.nccl_built()),
            "HOROVOD_CYCLE_TIME": os.environ.get("HOROVOD_CYCLE_TIME"),
            "HOROVOD_FUSION_THRESHOLD": os.environ.get("HOROVOD_FUSION_THRESHOLD"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "loadavg_1min_at_start": LOAD_AT_START}


def main(args):
    hvd.init()
    sizes = sorted(args.sizes)
    if len(sizes) < 2 or sizes[0] < 4:
        raise SystemExit("need at least two --sizes of 4 bytes or more")
    results = {}
    for dtype in DTYPES:
        seconds = slowest([time_allreduce(s, dtype, args.reps, args.warmup) for s in sizes])
        results[dtype] = {"seconds": seconds, "fit": fit_alpha_beta(sizes, seconds, hvd.size())}
    if hvd.rank() != 0:
        return
    report = {
        "benchmark": "allreduce",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": [os.path.relpath(sys.argv[0])] + sys.argv[1:],
        "workers": hvd.size(),
        "transport": "gloo" if hvd.gloo_enabled() else "mpi",
        "timed_calls": [timed_calls(n, args.reps) for n in sizes],
        "warmup": args.warmup,
        "sizes": sizes,
        "seconds": results["float32"]["seconds"],
        "fit": results["float32"]["fit"],
        "float16": results["float16"],
        "note": "software cost of Horovod's allreduce (negotiation, cycle wait, fusion copies, "
                "reduction on the CPU) over loopback; not a network measurement",
    }
    for dtype in DTYPES:
        r = results[dtype]
        print("%s, %d workers (%s): alpha %.3g s, algbw %.3g GB/s, busbw %.3g GB/s"
              % (dtype, hvd.size(), report["transport"], r["fit"]["alpha_s"],
                 r["fit"]["algbw_bytes_per_s"] / 1e9, r["fit"]["busbw_bytes_per_s"] / 1e9))
        for s, t in zip(sizes, r["seconds"]):
            print("  %12d bytes  %.6f s" % (s, t))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json(args.out, report)


if __name__ == "__main__":
    main(parse_args())
