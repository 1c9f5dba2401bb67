"""Latency of one small collective (the size synchronized BN sends per layer) through Horovod, as
a function of HOROVOD_CYCLE_TIME, the response cache and the process set (Gloo over loopback),
and straight over MPI (dist.sync_bn_transport mpi: deeplab.dist.mpi), on this machine.

    .venv/bin/python benchmarks/collective_latency.py [--calls 150] [--out benchmarks/results/collective_latency.json]

Runs one `horovodrun --gloo` job per configuration (Horovod reads these settings at start-up):
2 workers with HOROVOD_CYCLE_TIME 0.1, 1 (Horovod's default) and 5 ms, each with the response
cache on (default capacity) and off (HOROVOD_CACHE_CAPACITY=0); 4 workers at 0.1 and 1 ms, where
each call runs on all 4 workers or on a process set of 2 (`comm.new_group(2)`: static process
sets); and 4 workers with HOROVOD_DYNAMIC_PROCESS_SETS (sets added after start-up, which costs an
extra negotiation in every cycle). In each job the workers time back-to-back calls, each waited
for (as the layers of a network wait for their statistics), of an allgather of (3, C) and an
allreduce of (3, C) float32 for C = 64, 256 and 2048; the kinds of call alternate, block by
block, so that they share the machine's state. Also recorded: the CPU time Horovod's background
thread takes while the process idles (it wakes every cycle), as a share of one core.

MPI configurations (label "mpi ..."): the same workers under MPICH's mpirun, the calls through
`comm.nd_allgather` / `comm.nd_allreduce_sum` with the MPI transport (`comm.use_transport`),
groups as MPI communicators; with MPICH's defaults, and with the waiting rank never yielding the
core (MPIR_CVAR_POLLS_BEFORE_YIELD=0) or sleeping to yield it (MPIR_CVAR_ENABLE_HEAVY_YIELD=1);
and Horovod's own collectives over its MPI controller at a 1 ms cycle ("mpi horovod ..."), for
the ratio printed at the end (Horovod's per-call time over the MPI transport's, same calls).
Also recorded for them: the CPU the calling process used while timing, as a share of one core
(a waiting rank polls).

Prints a table; writes JSON (--out) and the table as a .log beside it. Times are per call, in
microseconds, medians over the calls of rank 0 (p10-p90 in the JSON).
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from deeplab.utils import write_json, write_text

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHANNELS = (64, 256, 2048)
OPS = ("allgather", "allreduce")


def configurations():
    """(label, workers, environment, process-set mode)."""
    out = []
    for cycle in ("0.1", "1", "5"):
        for cache in (None, "0"):
            env = {"HOROVOD_CYCLE_TIME": cycle}
            if cache is not None:
                env["HOROVOD_CACHE_CAPACITY"] = cache
            out.append(("2w cycle %sms cache %s" % (cycle, "off" if cache else "on"), 2, env,
                        "none"))
    for cycle in ("0.1", "1"):
        out.append(("4w cycle %sms static sets" % cycle, 4, {"HOROVOD_CYCLE_TIME": cycle},
                    "static"))
    out.append(("4w cycle 1ms dynamic sets", 4, {"HOROVOD_CYCLE_TIME": "1"}, "dynamic"))
    out.append(("mpi 2w", 2, {}, "mpi"))
    out.append(("mpi 2w never yield", 2, {"MPIR_CVAR_POLLS_BEFORE_YIELD": "0"}, "mpi"))
    out.append(("mpi 2w heavy yield", 2, {"MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}, "mpi"))
    out.append(("mpi 4w comms", 4, {}, "mpi-static"))
    out.append(("mpi horovod 2w cycle 1ms", 2, {"HOROVOD_CYCLE_TIME": "1"}, "mpi-horovod"))
    return out


# ---- worker side (under horovodrun) ------------------------------------------------------

def _cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker(args):
    import mxnet as mx
    import horovod.mxnet as hvd
    from deeplab.dist import comm

    groups = {}
    mpi_transport = args.sets in ("mpi", "mpi-static")
    if args.sets.startswith("mpi"):
        comm.init("horovod")
        size, rank = comm.size(), comm.rank()
        if mpi_transport:
            assert comm.use_transport("mpi") == "mpi"
        groups["all"] = None
        if args.sets == "mpi-static":
            groups["pair"] = comm.new_group(2)
    elif args.sets == "dynamic":
        hvd.init(process_sets="dynamic")
        size, rank = hvd.size(), hvd.rank()
        pairs = [hvd.add_process_set(list(range(i, i + 2))) for i in range(0, size, 2)]
        groups["all"] = None
        groups["pair"] = pairs[rank // 2]
    else:
        comm.init("horovod")
        size, rank = comm.size(), comm.rank()
        groups["all"] = None
        if args.sets == "static":
            groups["pair"] = comm.new_group(2).handle

    # Idle CPU of the background thread (the main thread sleeps).
    time.sleep(0.5)
    c0, t0 = _cpu_seconds(), time.perf_counter()
    time.sleep(2.0)
    idle_cpu = (_cpu_seconds() - c0) / (time.perf_counter() - t0)

    def call(op, x, name, ps):
        if mpi_transport:  # synchronous: the result is there when it returns
            fn = comm.nd_allgather if op == "allgather" else comm.nd_allreduce_sum
            return fn(x, name, ps)
        kw = {} if ps is None else {"process_set": ps}
        if op == "allgather":
            return hvd.allgather(x, name=name, **kw)
        return hvd.allreduce(x, average=False, name=name, **kw)

    def barrier():
        hvd.allreduce(mx.nd.zeros((1,)), name="barrier").wait_to_read()

    cases = [(op, c, g) for c in CHANNELS for op in OPS for g in groups]
    arrays = {c: mx.nd.ones((3, c)) for c in CHANNELS}
    times = {case: [] for case in cases}
    block = max(1, args.calls // 5)
    for case in cases:  # warm-up: negotiation, response cache
        op, c, g = case
        for _ in range(10):
            call(op, arrays[c], "%s.%d.%s" % case, groups[g]).wait_to_read()
    busy_c0, busy_t0 = _cpu_seconds(), time.perf_counter()
    for _ in range(5):
        for case in cases:
            op, c, g = case
            barrier()
            for _ in range(block):
                t = time.perf_counter()
                call(op, arrays[c], "%s.%d.%s" % case, groups[g]).wait_to_read()
                times[case].append(time.perf_counter() - t)
    busy_cpu = (_cpu_seconds() - busy_c0) / (time.perf_counter() - busy_t0)
    barrier()  # a worker that exits shuts Horovod down for all: wait for the other groups
    if rank == 0:
        result = {"workers": size, "idle_cpu_cores": idle_cpu, "calling_cpu_cores": busy_cpu,
                  "calls": {}}
        for (op, c, g), ts in times.items():
            us = np.array(ts) * 1e6
            result["calls"]["%s C=%d %s" % (op, c, g)] = {
                "median_us": float(np.median(us)), "p10_us": float(np.percentile(us, 10)),
                "p90_us": float(np.percentile(us, 90)), "n": len(us)}
        with open(args.worker_out, "w") as f:
            json.dump(result, f)


# ---- driver ------------------------------------------------------------------------------

def run_configuration(label, workers, env_extra, sets, calls):
    bindir = os.path.dirname(sys.executable)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HOROVOD_", "MPIR_"))}
        env.update(OMP_NUM_THREADS="1", **env_extra)
        if sets.startswith("mpi"):
            launcher = [os.path.join(bindir, "mpirun"), "-np", str(workers)]
        else:
            launcher = [os.path.join(bindir, "horovodrun"), "-np", str(workers), "-H",
                        "localhost:%d" % workers, "--gloo"]
        cmd = launcher + [sys.executable, os.path.abspath(__file__), "--worker",
                          "--worker-out", out, "--sets", sets, "--calls", str(calls)]
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=ROOT, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError("%s failed:\n%s" % (label, proc.stdout[-3000:]))
        with open(out) as f:
            result = json.load(f)
    result.update(label=label, environment=env_extra, sets=sets,
                  command=" ".join("%s=%s" % kv for kv in sorted(env_extra.items())) + " "
                  + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c
                             for c in cmd[:-6]))
    return result


def ratios(results):
    """Horovod's per-call time (its MPI controller, 1 ms cycle) over the MPI transport's
    (MPICH's defaults), per call of 2 workers: [(call, horovod us, mpi us, ratio)]."""
    by = {r["label"]: r for r in results}
    hvd, mpi = by.get("mpi horovod 2w cycle 1ms"), by.get("mpi 2w")
    if not hvd or not mpi:
        return []
    return [(k, hvd["calls"][k]["median_us"], mpi["calls"][k]["median_us"],
             hvd["calls"][k]["median_us"] / mpi["calls"][k]["median_us"])
            for k in mpi["calls"] if k in hvd["calls"]]


def format_table(results):
    cols = ["%s C=%d" % (op, c) for c in CHANNELS for op in OPS]
    lines = ["Per-call latency (us, median of rank 0) of a (3, C) float32 collective, waited for; "
             "idle CPU: Horovod's background thread, share of one core",
             "%-30s %9s %5s " % ("configuration", "idle CPU", "set") +
             " ".join("%15s" % c for c in cols)]
    for r in results:
        for g in ("all", "pair"):
            keys = ["%s %s" % (c, g) for c in cols]
            if keys[0] not in r["calls"]:
                continue
            lines.append("%-30s %9.2f %5s " % (r["label"], r["idle_cpu_cores"], g) +
                         " ".join("%15.0f" % r["calls"][k]["median_us"] for k in keys))
    mpi = [r for r in results if "calling_cpu_cores" in r and r["label"].startswith("mpi")]
    if mpi:
        lines.append("CPU of the calling process while timing back-to-back calls (share of one "
                     "core): " + ", ".join("%s %.2f" % (r["label"], r["calling_cpu_cores"])
                                           for r in mpi))
    for call, hvd_us, mpi_us, ratio in ratios(results):
        lines.append("%-22s Horovod (MPI controller, 1 ms cycle) %7.0f us / MPI transport "
                     "%5.1f us = %6.1fx" % (call, hvd_us, mpi_us, ratio))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=150, help="timed calls per kind of call")
    p.add_argument("--only", help="comma-separated labels' prefixes to run (default: all)")
    p.add_argument("--out", help="JSON file (a .log with the table is written beside it)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--sets", default="none", choices=("none", "static", "dynamic", "mpi",
                                                      "mpi-static", "mpi-horovod"),
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(args):
    if args.worker:
        return worker(args)
    results = []
    for label, workers, env, sets in configurations():
        if args.only and not any(label.startswith(p) for p in args.only.split(",")):
            continue
        print("running: %s" % label, file=sys.stderr, flush=True)
        results.append(run_configuration(label, workers, env, sets, args.calls))
    table = format_table(results)
    print(table)
    if args.out:
        report = {"benchmark": "benchmarks/collective_latency.py",
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec="seconds"),
                  "command": " ".join(sys.argv),
                  "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                  "results": results}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json(args.out, report)
        write_text(os.path.splitext(args.out)[0] + ".log", table + "\n")


if __name__ == "__main__":
    main(parse_args())
