"""Collectives and a training step across emulated hosts (scripts/cluster.py: network namespaces
joined by a bridge, links shaped with tc tbf), beside what benchmarks/scaling_model.py's formulas
predict for the same links. Needs root (like scripts/cluster.sh).

    .venv/bin/python benchmarks/multihost.py [--hosts 2 4] [--rates 100mbit 1gbit 10gbit] \
        [--sizes 65536 1048576 8388608] [--out benchmarks/results/multihost.json]

For each number of hosts and link rate: a cluster of that many hosts (one worker each, the
launcher on node1, the others reached over ssh) with every host's link limited to the rate in
both directions, and on it, each a `horovodrun --gloo -H node1:1,...` job:
- benchmarks/allreduce.py: seconds per gradient allreduce over --sizes (float32);
- benchmarks/collective_latency.py's worker: per-call cost of synchronized BN's collectives (an
  allgather and an allreduce of (3, C) float32, C = 64, 256, 2048; the median over C);
- `deeplab bench configs/tiny_synthetic.yaml` through `deeplab launch horovod`: a tiny training
  step (synchronized BN), its median time.
The prediction for an allreduce is the model's own `ring_allreduce_s` with these links (one
worker per host, the rate each way, one network hop per ring step at the hop latency measured
here without shaping) plus the software cost per call that benchmarks/allreduce.py measured over
loopback (its alpha, results/allreduce.json); for a synchronized-BN call, the per-call software
cost measured over loopback at Horovod's default cycle (results/collective_latency.json) plus the
ring's hops. Delays (netem) are added where the kernel has netem; this one is checked and said.

Writes JSON (--out) and prints the table that benchmarks/scaling_model.py --multihost puts in
SCALING.md ("the model against an emulated network").
"""
import argparse
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import scaling_model  # noqa: E402  (benchmarks/ is not a package)

from deeplab.utils import write_json  # noqa: E402


def _cluster_module():
    spec = importlib.util.spec_from_file_location("deeplab_cluster",
                                                  os.path.join(ROOT, "scripts", "cluster.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, nargs="+", default=[2, 4])
    p.add_argument("--rates", nargs="+", default=["none", "100mbit", "1gbit", "10gbit"],
                   help="link rates each way; 'none': links not shaped (the emulation's own "
                        "ceiling)")
    p.add_argument("--sizes", type=int, nargs="+", default=[65536, 1 << 20, 8 << 20])
    p.add_argument("--calls", type=int, default=60, help="timed calls per synchronized-BN case")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--out", default=os.path.join(HERE, "results", "multihost.json"))
    p.add_argument("--repredict", action="store_true",
                   help="only recompute the predictions in --out from its measurements")
    return p.parse_args(argv)


def environ():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HOROVOD_", "DMLC_", "DEEPLAB_DIST"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def on_node1(cluster, cmd, timeout=900):
    proc = subprocess.run(cluster.command("node1", cmd), env=environ(), cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("%s failed:\n%s" % (" ".join(cmd), proc.stdout[-3000:]))
    return proc.stdout


def horovodrun(n):
    return [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "-np", str(n), "-H",
            ",".join("node%d:1" % k for k in range(1, n + 1)), "--gloo"]


def hop_latency(cluster):
    """One-way latency of a TCP round trip between node1 and node2, unshaped (median of 200,
    halved): what a ring step adds besides its bytes."""
    code = ("import socket,time,statistics as s\n"
            "c=socket.create_connection(('node2',7777));c.setsockopt(6,1,1);t=[]\n"
            "for _ in range(200):\n a=time.perf_counter();c.sendall(b'x');c.recv(1);"
            "t.append(time.perf_counter()-a)\nprint(s.median(t)/2)")
    server = ("import socket\nl=socket.socket();l.setsockopt(1,2,1);l.bind(('0.0.0.0',7777));"
              "l.listen(1);c,_=l.accept();c.setsockopt(6,1,1)\nwhile True:\n d=c.recv(1)\n"
              " if not d: break\n c.sendall(d)")
    srv = cluster.popen("node2", [sys.executable, "-c", server])
    try:
        time.sleep(1.0)
        return float(on_node1(cluster, [sys.executable, "-c", code], timeout=60).strip())
    finally:
        srv.kill()
        srv.wait()


def measure(cluster, n, args, tmp):
    out = {}
    ar = os.path.join(tmp, "allreduce.json")
    on_node1(cluster, horovodrun(n) + [sys.executable, os.path.join(HERE, "allreduce.py"),
                                       "--sizes", *map(str, args.sizes), "--reps", "3",
                                       "--warmup", "1", "--out", ar])
    with open(ar) as f:
        out["allreduce_s"] = json.load(f)["seconds"]
    lat = os.path.join(tmp, "latency.json")
    on_node1(cluster, horovodrun(n) + [sys.executable, os.path.join(HERE,
                                                                     "collective_latency.py"),
                                       "--worker", "--worker-out", lat, "--calls",
                                       str(args.calls)])
    with open(lat) as f:
        calls = json.load(f)["calls"]
    out["syncbn_call_us"] = {op: statistics.mean(v["median_us"] for k, v in calls.items()
                                                 if k.startswith(op))
                             for op in ("allgather", "allreduce")}
    bench = os.path.join(tmp, "bench.json")
    hosts = ",".join("node%d:1" % k for k in range(1, n + 1))
    on_node1(cluster, [sys.executable, "-m", "deeplab.cli", "launch", "horovod", "-np", str(n),
                       "-H", hosts, "--", "bench", os.path.join(ROOT, "configs",
                                                                 "tiny_synthetic.yaml"),
                       "--steps", str(args.steps), "--warmup", "2", "--quiet",
                       "--out", bench])
    with open(bench) as f:
        report = json.load(f)
    out["train_step_s"] = _step_seconds(report)
    return out


def _step_seconds(report):
    """The median seconds per training step of a `deeplab bench` report."""
    variant = report["variants"][0] if isinstance(report["variants"], list) else \
        next(iter(report["variants"].values()))
    for key in ("step_s", "median_step_s", "seconds_per_step"):
        if key in variant:
            return float(variant[key])
    ips = variant.get("images_per_s") or variant.get("total_images_per_s")
    return float(report["global_batch"]) / float(ips)


def predictions(n, rate_bits, sizes, hop_s, software):
    """The model's seconds per allreduce and µs per synchronized-BN call on these links."""
    lat = {"base": 0.0, "nvlink": 0.0, "net": hop_s}
    hw = dict(net_bw=rate_bits / 8, gpus_per_node=1, nvlink_bw=float("inf"), lat=lat)
    allreduce = [software["alpha_s"] + scaling_model.ring_allreduce_s(s, n, **hw)
                 for s in sizes]
    ch = 256
    call = {"allgather": software["allgather_s"]
            + scaling_model.ring_allgather_s(3 * ch * 4, n, **hw),
            "allreduce": software["allreduce_s"]
            + scaling_model.ring_allreduce_s(3 * ch * 4, n, **hw)}
    return allreduce, {k: v * 1e6 for k, v in call.items()}


def software_costs(n):
    """Per-call software costs measured over loopback: allreduce.py's alpha (2 workers: the
    only count it measures) and collective_latency.py's synchronized-BN calls over all workers
    at Horovod's default 1 ms cycle with the response cache on, from its run with `n` workers
    (on 2 cores, 4 workers wait for each other's scheduling: 3.5-7.6 ms per call against 1.1
    ms with 2), else with 2."""
    with open(os.path.join(HERE, "results", "allreduce.json")) as f:
        alpha = json.load(f)["fit"]["alpha_s"]
    with open(os.path.join(HERE, "results", "collective_latency.json")) as f:
        latency = json.load(f)
    calls = scaling_model.calls_at(scaling_model.sync_call_costs(latency), 1e-3)
    for r in latency["results"]:
        env = r.get("environment", {})
        if r["workers"] == n and n != 2 and env.get("HOROVOD_CYCLE_TIME") == "1" \
                and "HOROVOD_CACHE_CAPACITY" not in env and r.get("sets") != "dynamic":
            calls = {op: statistics.mean(v["median_us"] * 1e-6 for k, v in r["calls"].items()
                                         if k.startswith(op + " ") and k.endswith(" all"))
                     for op in ("allgather", "allreduce")}
            break
    return {"alpha_s": alpha, "allgather_s": calls["allgather"],
            "allreduce_s": calls["allreduce"]}


def main(args):
    cl = _cluster_module()
    why = cl.available()
    if why:
        raise SystemExit("benchmarks/multihost.py: %s" % why)
    if args.repredict:
        return repredict(args.out)
    name = "dlbench%d" % os.getpid()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = cl.Cluster(2, name).up()
        try:
            hop = hop_latency(probe)
        finally:
            probe.down()
        for n in args.hosts:
            for rate in args.rates:
                cluster = cl.Cluster(n, name).up(rate=None if rate == "none" else rate)
                try:
                    t0, load = time.time(), os.getloadavg()[0]
                    measured = measure(cluster, n, args, tmp)
                finally:
                    cluster.down()
                bits = float("inf") if rate == "none" else cl._rate_bits(rate)
                pred_ar, pred_call = predictions(n, bits, args.sizes, hop, software_costs(n))
                results.append({"hosts": n, "rate": rate,
                                "rate_bits_per_s": None if rate == "none" else bits,
                                "measured": measured, "predicted": {
                                    "allreduce_s": pred_ar, "syncbn_call_us": pred_call},
                                "seconds": time.time() - t0, "loadavg_1min_at_start": load})
                print(format_row(results[-1], args.sizes), flush=True)
    report = {"benchmark": "multihost",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:],
              "cpu_count": os.cpu_count(), "netem": cl.netem_available(),
              "hop_latency_s": hop, "software": {n: software_costs(n) for n in args.hosts},
              "sizes": args.sizes,
              "results": results}
    write_json(args.out, report)
    print("netem: %s; hop latency %.1f us; written %s" % (
        "available" if report["netem"] else "absent (no delay cases)", hop * 1e6, args.out))


def repredict(path):
    """Recomputes the predictions of the report `path` from its measurements with the current
    formulas and loopback costs (the measurements are kept as they are)."""
    with open(path) as f:
        report = json.load(f)
    hosts = sorted({r["hosts"] for r in report["results"]})
    report["software"] = {str(n): software_costs(n) for n in hosts}
    for r in report["results"]:
        bits = r["rate_bits_per_s"] or float("inf")
        pred_ar, pred_call = predictions(r["hosts"], bits, report["sizes"],
                                         report["hop_latency_s"], software_costs(r["hosts"]))
        r["predicted"] = {"allreduce_s": pred_ar, "syncbn_call_us": pred_call}
        print(format_row(r, report["sizes"]))
    write_json(path, report)


def format_row(r, sizes):
    m, p = r["measured"], r["predicted"]
    cells = ["%d hosts %s" % (r["hosts"], r["rate"])]
    for s, a, b in zip(sizes, m["allreduce_s"], p["allreduce_s"]):
        cells.append("%d B: %.2f ms (model %.2f)" % (s, a * 1e3, b * 1e3))
    for op in ("allgather", "allreduce"):
        cells.append("SyncBN %s %.0f us (model %.0f)" % (op, m["syncbn_call_us"][op],
                                                        p["syncbn_call_us"][op]))
    cells.append("tiny step %.3f s" % m["train_step_s"])
    return " | ".join(cells)


if __name__ == "__main__":
    main(parse_args())
