"""Runs every benchmark of the repository, one after the other, and regenerates
benchmarks/RESULTS.md (and benchmarks/SCALING.md) from their JSON output.

    .venv/bin/python benchmarks/run_all.py              # everything (about an hour on 2 cores)
    .venv/bin/python benchmarks/run_all.py --only gluoncv_os8,data_pipeline
    .venv/bin/python benchmarks/run_all.py --render     # only rewrite the markdown from the JSON

Each run writes benchmarks/results/NAME.json (its figures, command, date and machine) and
NAME.log (its output). Timings are only comparable on an otherwise idle machine: the share of the
CPUs busy during the 3 seconds before each run is recorded, and a run that started on a busy
machine (over 25%) is flagged in RESULTS.md.
Benchmarks never pass or fail; the targets are printed beside the figures.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

from deeplab.utils import write_json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
PY = sys.executable
DEEPLAB = [PY, "-m", "deeplab.cli"]
R50 = "configs/deeplabv3_r50v2-os16_bs16_30k_trainaug_513.yaml"
# Real sizes: ResNet-50 at a 512x512 crop (the recipe's 513 rounded to a multiple of the stride),
# one image per worker (the most a CPU step allows in reasonable time), one loader process.
REAL = ["--crop", "512", "--batch-per-worker", "1", "--set", "data.num_workers=1"]


def _bench(*args):
    return DEEPLAB + ["bench"] + list(args)


def _launch(backend_args, *args):
    return DEEPLAB + ["launch"] + backend_args + ["--", "bench"] + list(args)


SCALING = [*REAL, "--set", "dist.sync_bn=false", "--steps", "6", "--warmup", "2"]
BASELINE = ["--baseline", "{results}/scaling_1worker.json"]
ONE, TWO = {"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "2"}

SYNCBN_384 = [R50, "--crop", "384", *REAL[2:], "--steps", "4", "--warmup", "2", "--repeat", "3",
              "--compare", "bn", "--out", "{out}"]

# name -> (environment, command[, processes]); `{out}` is the run's JSON, `{results}` the folder.
# Runs with several processes start them at once (each its own JSON, merged afterwards).
RUNS = {
    "gluoncv_os8": (TWO, _bench(R50, "--set", "model.name=deeplabv3_resnet50_v1s", "--set",
                                "model.output_stride=8", *REAL, "--steps", "6", "--warmup", "2",
                                "--compare", "gluoncv", "--profile",
                                "{results}/gluoncv_os8_trace.json", "--out", "{out}")),
    "variants_os16": (TWO, _bench(R50, *REAL, "--steps", "4", "--warmup", "2",
                                  "--compare", "hybridize,head", "--out", "{out}")),
    "syncbn_2workers": (ONE, _launch(["horovod", "-np", "2"], R50, *REAL, "--steps", "4",
                                     "--warmup", "2", "--repeat", "3", "--compare", "bn",
                                     "--out", "{out}")),
    "syncbn_2workers_384": (ONE, _launch(["horovod", "-np", "2"], R50, "--crop", "384",
                                         *REAL[2:], "--steps", "4", "--warmup", "2", "--repeat",
                                         "3", "--compare", "bn", "--out", "{out}")),
    # Where synchronized BN's time goes: MXNet's profiler over the timed steps of one worker.
    "syncbn_profile": (ONE, _launch(["horovod", "-np", "1"], R50, *REAL, "--steps", "3",
                                    "--warmup", "1", "--compare", "bn", "--profile",
                                    "{results}/syncbn_profile_trace.json", "--out", "{out}")),
    "scaling_1worker": (ONE, _launch(["horovod", "-np", "1"], R50, *SCALING, "--out", "{out}")),
    # The machine's own ceiling: two processes that never communicate, side by side.
    "scaling_2independent": (ONE, _bench(R50, *SCALING, "--out", "{out}"), 2),
    # With the worker's defaults: without synchronized BN on CPUs, a 25 ms negotiation cycle
    # (dist.horovod_cycle_time).
    "scaling_horovod_2workers": (ONE, _launch(["horovod", "-np", "2"], R50, *SCALING, *BASELINE,
                                              "--out", "{out}")),
    # Horovod's own default cycle, 1 ms: its background thread, waking every cycle to
    # negotiate, takes CPU from the compute threads when every core computes.
    "scaling_horovod_2workers_cycle1": (dict(ONE, HOROVOD_CYCLE_TIME="1"), _launch(
        ["horovod", "-np", "2"], R50, *SCALING, *BASELINE, "--out", "{out}")),
    "scaling_ps_2workers": (ONE, _launch(["ps", "--workers", "2", "--servers", "1"], R50,
                                         *SCALING, *BASELINE, "--out", "{out}")),
    # Synchronized BN's statistics straight over MPI (`launch horovod --mpi`), beside the same
    # run through Horovod over Gloo, one worker (the layer's compute alone), and MPICH's heavy
    # yield; and the per-call cost of the MPI transport against Horovod's.
    "syncbn_2workers_384_mpi": (ONE, _launch(["horovod", "--mpi", "-np", "2"], *SYNCBN_384)),
    "syncbn_2workers_384_gloo_sameday": (ONE, _launch(["horovod", "-np", "2"], *SYNCBN_384)),
    "syncbn_1worker_384_mpi": (ONE, _launch(["horovod", "--mpi", "-np", "1"], *SYNCBN_384)),
    "syncbn_2workers_384_mpi_heavyyield": (dict(ONE, MPIR_CVAR_ENABLE_HEAVY_YIELD="1"), _launch(
        ["horovod", "--mpi", "-np", "2"], *SYNCBN_384)),
    # The transport polling 200 us, then sleeping 50 us between polls (only its own calls; the
    # gradients' allreduce keeps MPICH's defaults): does a waiting rank that leaves the cores
    # let the slower one catch up?
    "syncbn_2workers_384_mpi_spin": (dict(ONE, DEEPLAB_MPI_SPIN_US="200"), _launch(
        ["horovod", "--mpi", "-np", "2"], *SYNCBN_384)),
    "collective_latency_mpi": (ONE, [PY, "benchmarks/collective_latency.py", "--only", "mpi",
                                     "--calls", "150", "--out", "{out}"]),
    "data_pipeline": (ONE, [PY, "benchmarks/data_pipeline.py", "--out", "{out}"]),
    # What finding damaged images costs (docs/faults.md, deeplab check-data).
    "damaged_images": (ONE, [PY, "benchmarks/damaged_images.py", "--out", "{out}"]),
    "vortex_pooling": (TWO, [PY, "benchmarks/vortex_pooling.py", "--out", "{out}"]),
    # The seed project's network beside ours: needs DEEPLAB_SEED_REPO, a checkout (or bare git
    # directory) of github.com/MTCloudVision/deeplabv3-mxnet_gluon.
    "vortex_seed": (TWO, [PY, "benchmarks/seed_network.py", "--out", "{out}"]),
    "allreduce": (ONE, [os.path.join(os.path.dirname(PY), "horovodrun"), "-np", "2", "-H",
                        "localhost:2", "--gloo", PY, "benchmarks/allreduce.py", "--out", "{out}"]),
}


def run(name):
    env_extra, cmd, processes = (RUNS[name] + (1,))[:3]
    out = os.path.join(RESULTS, name + ".json")
    outs = [out] if processes == 1 else [os.path.join(RESULTS, "%s.%d.json" % (name, i))
                                         for i in range(processes)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
    load = _busy_share()
    placeholder = out if processes == 1 else os.path.join(RESULTS, name + ".N.json")
    shown = " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c
                     for c in (c.format(out=placeholder, results=RESULTS) for c in cmd))
    shown = " ".join("%s=%s" % kv for kv in sorted(env_extra.items())) + " " + shown.replace(
        PY, ".venv/bin/python").replace("python -m deeplab.cli", "deeplab").replace(
        ".venv/bin/deeplab", "deeplab")
    if processes > 1:
        shown = "%d at once (N = 0..%d): %s" % (processes, processes - 1, shown)
    print("[run_all] %s: %s" % (name, shown), flush=True)
    procs = []
    for i, path in enumerate(outs):
        log = open(os.path.join(RESULTS, name + (".log" if processes == 1 else ".%d.log" % i)),
                   "w")
        procs.append((subprocess.Popen([c.format(out=path, results=RESULTS) for c in cmd],
                                       cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        code = proc.wait()
        log.close()
        if code != 0:
            raise SystemExit("[run_all] %s failed (exit %d); see %s" % (name, code, log.name))
    reports = []
    for path in outs:
        with open(path) as f:
            reports.append(json.load(f))
    report = reports[0] if processes == 1 else {
        "benchmark": "independent processes", "processes": reports,
        "images_per_s": sum(r["variants"][0]["images_per_s"] for r in reports)}
    report["run_all"] = {"command": shown, "cpu_busy_before": load, "finished": _now()}
    write_json(out, report)


def _busy_share(seconds=3.0):
    """The share of all CPUs' time spent busy (not idle or waiting) over `seconds` (Linux)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except OSError:
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _load_report(name, results=None):
    path = os.path.join(results or RESULTS, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _provenance(r):
    ra = r.get("run_all", {})
    busy = ra.get("cpu_busy_before")
    flag = "; **machine busy before the run: %.0f%% of the CPUs**" % (100 * busy) \
        if busy is not None and busy > 0.25 else ""
    if ra.get("note"):  # a run made outside run_all, with what it was
        flag += "; %s" % ra["note"]
    return "`%s` (%s%s)" % (ra.get("command", r.get("command", "?")),
                            ra.get("finished", r.get("date", "?"))[:10], flag)


def _variant(r, name):
    return next(v for v in r["variants"] if v["name"] == name)


def _cycle(r):
    """The HOROVOD_CYCLE_TIME a Horovod bench ran with (recorded since the worker sets it)."""
    return r.get("machine", {}).get("HOROVOD_CYCLE_TIME") or "?"


def _bench_table(r):
    rows = ["| variant | s/step | img/s | data | fwd+bwd | comm | update | peak RSS | GFLOPs/img "
            "fwd |", "|---|---|---|---|---|---|---|---|---|"]
    for v in r["variants"]:
        b = v["breakdown_s"]
        rows.append("| %s: %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f GB | %.1f |" % (
            v["name"], v["description"], v["step_s"], v["images_per_s"], b["data"],
            b["fwd_bwd"], b["comm"], b["update"], v["peak_rss_bytes"] / 2 ** 30,
            v["costs"]["forward_gflops_per_image"]))
    return "\n".join(rows)


def _target(value, op, limit):
    ok = value <= limit if op == "<=" else value >= limit
    return "%.3f (target %s %.2f: %s)" % (value, op, limit, "met" if ok else "**not met**")


# Operator groups of a profile, by name prefix (first match wins).
PROFILE_GROUPS = (
    ("SyncBN fused kernels: moments, normalisation, their gradients",
     ("deeplab_bn_", "_backward_deeplab_bn_", "Reshape", "_backward_reshape")),
    ("SyncBN collective op: Python, allgather/allreduce, its small ops",
     ("deeplab_sync_bn_moments", "_backward_deeplab_sync_bn_moments")),
    ("SyncBN moments: mean, square, reshape, their gradients",
     ("mean", "_backward_mean", "square", "_backward_square", "Reshape", "slice_axis",
      "shape_array", "stack", "_backward_stack")),
    ("convolutions, forward", ("Convolution",)),
    ("convolutions, backward", ("_backward_Convolution",)),
    ("BatchNorm, activations", ("BatchNorm", "_backward_BatchNorm", "Activation",
                                "_backward_Activation")),
    ("pooling, resizing", ("Pooling", "_backward_Pooling", "_contrib_BilinearResize2D",
                           "_backward_contrib_BilinearResize2D")),
    ("loss (log_softmax, pick, ...)", ("log_softmax", "_backward_log_softmax", "pick",
                                      "_backward_pick", "softmax", "where", "broadcast_",
                                      "_backward_broadcast_")),
    ("gradient sums (add_n, elemwise_add)", ("add_n", "elemwise_add", "_backward_add")),
    ("SGD update", ("multi_sgd", "sgd_")),
)


def _profile_table(path, steps):
    """Markdown rows of a profile's operator time per step, by group."""
    groups = _profile_groups(path)
    total = sum(groups.values())
    rows = ["| operators | s per step | share |", "|---|---|---|"]
    for name, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        rows.append("| %s | %.3f | %.0f%% |" % (name, ms / 1e3 / steps, 100 * ms / total))
    return "\n".join(rows)


def _profile_groups(path):
    """{group: total ms} from MXNet's aggregate profiler table (`mx.profiler.dumps()`)."""
    groups, section = {}, None
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) in (1, 2) and not line.startswith((" ", "-", "=")):
                section = line.strip()
                continue
            if section not in ("operator", "Custom Operator") or len(fields) < 6:
                continue
            try:
                ms = float(fields[-4])
            except ValueError:
                continue
            name = " ".join(fields[:-5])
            group = next((g for g, prefixes in PROFILE_GROUPS if name.startswith(prefixes)),
                         "other operators")
            groups[group] = groups.get(group, 0.0) + ms
    return groups


def _mpi_section(load):
    """RESULTS.md's lines on synchronized BN's statistics over MPI ([] without the reports)."""
    lat = load("collective_latency_mpi")
    runs = [(label, load(name)) for label, name in (
        ("2 workers, statistics over MPI (MPICH defaults)", "syncbn_2workers_384_mpi"),
        ("2 workers, statistics through Horovod (Gloo), the same day",
         "syncbn_2workers_384_gloo_sameday"),
        ("1 worker (the layer's own compute, nothing sent)", "syncbn_1worker_384_mpi"),
        ("2 workers over MPI, heavy yield (MPIR_CVAR_ENABLE_HEAVY_YIELD=1)",
         "syncbn_2workers_384_mpi_heavyyield"),
        ("2 workers over MPI, the transport polls 200 us then sleeps (DEEPLAB_MPI_SPIN_US=200)",
         "syncbn_2workers_384_mpi_spin"))]
    if not lat or not all(r for _, r in runs[:4]):
        return []
    runs = [(label, r) for label, r in runs if r]
    cols = [(op, c) for c in (64, 256, 2048) for op in ("allgather", "allreduce")]
    by = {r["label"]: r for r in lat["results"]}
    parts = ["## Synchronized BN's statistics straight over MPI (2 workers, crop 384)", "",
             "Per call: " + _provenance(lat), "",
             "| configuration | idle CPU | " + " | ".join("%s C=%d" % oc for oc in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for r in lat["results"]:
        for g in ("all", "pair"):
            keys = ["%s C=%d %s" % (op, c, g) for op, c in cols]
            if keys[0] in r["calls"]:
                parts.append("| %s%s | %.2f | " % (r["label"], " (pairs)" if g == "pair" else "",
                                                   r["idle_cpu_cores"]) +
                             " | ".join("%.0f us" % r["calls"][k]["median_us"] for k in keys)
                             + " |")
    hvd, mpi = by["mpi horovod 2w cycle 1ms"], by["mpi 2w"]
    ratios = [hvd["calls"][k]["median_us"] / mpi["calls"][k]["median_us"] for k in mpi["calls"]]
    worst = max(v["median_us"] for v in mpi["calls"].values())
    parts += ["", "(mpi: the MPI transport, `deeplab.dist.mpi`, through `comm.nd_allgather` / "
              "`comm.nd_allreduce_sum`; mpi horovod: Horovod's own collectives over its MPI "
              "controller; idle CPU: the process while its main thread sleeps, share of one "
              "core.)", "",
              "- per call of the MPI transport, 2 workers, MPICH's defaults, the slowest of the "
              "six calls: %.0f us (target <= 50 us: %s); Horovod / MPI transport, same calls: "
              "%.0fx-%.0fx" % (worst, "met" if worst <= 50 else "**not met**", min(ratios),
                               max(ratios)), ""]
    parts += ["Step overhead of synchronized BN over per-worker BN:", ""]
    parts += ["- %s: %s" % (label, _provenance(r)) for label, r in runs]
    parts += ["", "ResNet-50 v2 OS16, crop 384, 1 image per worker, one thread and one loader "
              "process per worker.", "",
              "| run | synchronized BN s/step | per-worker BN s/step | overhead | comm (sync / "
              "per-worker) |", "|---|---|---|---|---|"]
    over = {}
    for label, r in runs:
        ours, plain = _variant(r, "ours"), _variant(r, "ours-plainbn")
        over[label] = ours["step_s"] / plain["step_s"] - 1
        parts.append("| %s | %.3f | %.3f | %+.0f%% | %.3f / %.3f |" % (
            label, ours["step_s"], plain["step_s"], 100 * over[label],
            ours["breakdown_s"]["comm"], plain["breakdown_s"]["comm"]))
    labels = [label for label, _ in runs]
    parts += ["", "- cost of synchronized BN over MPI, 2 workers: " +
              _target(over[labels[0]], "<=", 0.15) + "; through Horovod the same day: %.3f; "
              "one worker alone (no communication): %.3f" % (over[labels[1]], over[labels[2]]),
              ""]
    parts += _mpi_waiting(runs)
    return parts


def _mpi_waiting(runs):
    """Where the 2-worker overhead over MPI goes: the layer's compute (one worker's overhead)
    and each worker's time inside the transport's calls (bench's in_layer_collectives), from
    the reports that have the latter."""
    rows = []
    one = next(_variant(r, "ours")["step_s"] / _variant(r, "ours-plainbn")["step_s"] - 1
               for label, r in runs if label.startswith("1 worker"))
    for label, r in runs:
        ours, plain = _variant(r, "ours"), _variant(r, "ours-plainbn")
        calls = ours.get("in_layer_collectives")
        if not calls or r["workers"] < 2:
            continue
        extra = ours["step_s"] - plain["step_s"]
        compute = one * plain["step_s"]
        rows.append("| %s | %+.3f | %.3f | %s | %.0f | %.3f |" % (
            label, extra, compute, " / ".join("%.3f" % w["s_per_step"] for w in calls),
            calls[0]["calls_per_step"], extra - compute - max(w["s_per_step"] for w in calls)))
    if not rows:
        return []
    return ["Where the 2-worker overhead goes (seconds per step): the extra step time of "
            "synchronized BN over per-worker BN; the layer's compute (one worker's relative "
            "overhead x the per-worker-BN step); each worker's time inside the MPI transport's "
            "calls (posting its messages until the peer's arrive: mostly waiting for the "
            "slower rank; bench's `in_layer_collectives`); what neither accounts for.", "",
            "| run | extra s/step | compute | in the calls (rank 0 / 1) | calls/step | rest |",
            "|---|---|---|---|---|---|"] + rows + [""]


def render(results=RESULTS, out=os.path.join(HERE, "RESULTS.md")):
    """Writes `out` (RESULTS.md) from the JSON reports in `results`."""
    def _load(name):
        return _load_report(name, results)

    m = (_load("scaling_1worker") or _load("gluoncv_os8") or {}).get("machine", {})
    machine = "%s, %s cores, Python %s, MXNet %s" % (m.get("platform"), m.get("cpus"),
                                                     m.get("python"), m.get("mxnet"))
    parts = ["# Benchmark results",
             "",
             "Generated by `.venv/bin/python benchmarks/run_all.py` from benchmarks/results/*.json "
             "(each run's full report and log are there). Do not edit by hand. Machine: %s, "
             "MXNet on the CPU, no GPU. Every ratio is measured side by side in one run; medians "
             "after warm-up; a step is the slowest worker's. Timings in a bench step drain the "
             "engine between its parts (data, forward+backward, gradient communication, "
             "update)." % machine, ""]
    r = _load("gluoncv_os8")
    if r:
        ours, g, gh = (_variant(r, n) for n in ("ours", "gluoncv", "gluoncv-hybridized"))
        parts += ["## Training step against GluonCV's DeepLabV3 (output stride 8)", "",
                  _provenance(r), "",
                  "ResNet-50 (GluonCV's resnet50_v1s, deep stem, in both), output stride 8, "
                  "crop %d, %d image(s), aux head off, BN trained, SGD; %d timed steps." % (
                      r["crop"], r["batch_per_worker"], r["steps"]), "",
                  _bench_table(r), "",
                  "- ours / GluonCV as its train.py runs it (imperative): " +
                  _target(ours["step_s"] / g["step_s"], "<=", 0.9),
                  "- ours / GluonCV hybridized the same way as ours (static allocation): %.3f; "
                  "their arithmetic differs by %.1f%% (GluonCV's head has an extra 3x3 "
                  "convolution), so per FLOP: %.3f" % (
                      ours["step_s"] / gh["step_s"],
                      100 * (g["costs"]["forward_gflops_per_image"]
                             / ours["costs"]["forward_gflops_per_image"] - 1),
                      (ours["step_s"] / ours["costs"]["forward_gflops_per_image"])
                      / (gh["step_s"] / gh["costs"]["forward_gflops_per_image"])),
                  "- peak RSS is the process's: the first variant's is its own, later ones "
                  "include the earlier networks.", ""]
        table = os.path.join(results, "gluoncv_os8_trace.txt")
        if os.path.exists(table):
            parts += ["Where our step's time goes (MXNet profiler over our %d timed steps; "
                      "GluonCV's network runs the same operators):" % r["steps"], "",
                      _profile_table(table, r["steps"]), ""]
    r = _load("variants_os16")
    if r:
        ours = _variant(r, "ours")
        ratios = r["ratios"]
        parts += ["## Output stride 16: hybridized vs imperative, ASPP vs Vortex Pooling", "",
                  _provenance(r), "",
                  "The phase-1 network (ResNet-50 v2, OS16, BN trained), crop %d, %d image(s)." % (
                      r["crop"], r["batch_per_worker"]), "",
                  _bench_table(r), ""]
        for k, v in ratios.items():
            parts.append("- %s step time: %.3f" % (k, v))
        parts.append("")
    for name in ("syncbn_2workers", "syncbn_2workers_384"):
        r = _load(name)
        if not r:
            continue
        ours, plain = _variant(r, "ours"), _variant(r, "ours-plainbn")
        parts += ["## Synchronized BN on 2 Horovod workers, crop %d" % r["crop"], "",
                  _provenance(r), "",
                  "ResNet-50 v2 OS16, crop %d, %d image(s) per worker, one thread per worker." % (
                      r["crop"], r["batch_per_worker"]), "", _bench_table(r), "",
                  "- cost of synchronized BN, (sync - per-worker) / per-worker step: " +
                  _target(ours["step_s"] / plain["step_s"] - 1, "<=", 0.15), ""]
    parts += _mpi_section(_load)
    one = _load("scaling_1worker")
    runs = [(label, _load(name)) for label, name in (
        ("1 worker (Horovod, 1 process)", "scaling_1worker"),
        ("2 independent processes, no communication", "scaling_2independent"),
        ("Horovod, 2 workers (the worker's default cycle)", "scaling_horovod_2workers"),
        ("Horovod, 2 workers, HOROVOD_CYCLE_TIME=1 (Horovod's default)",
         "scaling_horovod_2workers_cycle1"),
        ("parameter server, 2 workers + 1 server", "scaling_ps_2workers"))]
    if one and all(r for _, r in runs):
        parts += ["## Scaling from 1 to 2 workers (one thread each)", ""]
        parts += ["- %s: %s" % (label, _provenance(r)) for label, r in runs]
        parts += ["", "ResNet-50 v2 OS16, crop %d, %d image(s) per worker (weak scaling), per-"
                  "worker BN in all (the parameter server has no synchronized BN). Efficiency = "
                  "images/s / (2 x one worker's). Two processes that never communicate show what "
                  "this machine allows at all." % (one["crop"], one["batch_per_worker"]), "",
                  "| run | img/s | fwd+bwd | comm | update | efficiency |",
                  "|---|---|---|---|---|---|"]
        base = one["variants"][0]["images_per_s"]
        eff = {}
        for label, r in runs:
            reps = r.get("processes", [r])
            vs = [x["variants"][0] for x in reps]
            img_s = r.get("images_per_s", vs[0]["images_per_s"])
            eff[label] = img_s / (len(reps) * base) if r is not one and len(reps) > 1 \
                else img_s / (r["workers"] * base)

            def per(phase):
                return "/".join("%.2f" % w["breakdown_s"][phase] for v in vs
                                for w in v["per_worker"])
            parts.append("| %s | %.3f | %s | %s | %s | %.3f |" % (
                label, img_s, per("fwd_bwd"), per("comm"), per("update"), eff[label]))
        labels = [label for label, _ in runs]
        parts += ["", "(fwd+bwd, comm, update: medians of each worker, in seconds.)", "",
                  "- Horovod scaling efficiency with the worker's defaults (negotiation cycle "
                  "%s ms): " % _cycle(runs[2][1]) + _target(eff[labels[2]], ">=", 0.85) +
                  "; with Horovod's default 1 ms cycle: %.3f; the machine's ceiling (no "
                  "communication at all): %.3f" % (eff[labels[3]], eff[labels[1]]),
                  "- parameter server: %.3f" % eff[labels[4]], ""]
    r = _load("syncbn_profile")
    table = os.path.join(results, "syncbn_profile_trace.txt")
    if r and os.path.exists(table):
        ours, plain = _variant(r, "ours"), _variant(r, "ours-plainbn")
        parts += ["## Where synchronized BN's time goes (MXNet profiler)", "", _provenance(r), "",
                  "One Horovod worker, the same network and crop as above; the profiler covers "
                  "the %d timed steps of the synchronized-BN network (%.3f s per step, against "
                  "%.3f s with MXNet's BatchNorm in the same run). Operator time summed over "
                  "the steps (operators of MXNet's engine threads; the custom operator's Python "
                  "holds up everything after it):" % (r["steps"], ours["step_s"],
                                                      plain["step_s"]), "",
                  _profile_table(table, r["steps"]), ""]
    r = _load("data_pipeline")
    if r:
        res = r["results"]
        parts += ["## Data pipeline against GluonCV's VOC training transform", "",
                  _provenance(r), "",
                  "One loader process, one thread, the same %d JPEG/PNG files (VOC sizes), crop "
                  "%d; decoded + augmented samples per second." % (r["params"]["images"],
                                                                  r["params"]["crop"]), "",
                  "| pipeline | samples/s | decode only, samples/s |", "|---|---|---|"]
        for name in ("ours", "gluoncv"):
            parts.append("| %s | %.1f | %.1f |" % (name, res[name]["samples_per_s"],
                                                   res[name].get("decode_samples_per_s", 0)))
        parts += ["", "- ours / GluonCV: " + _target(r["ratio_ours_over_gluoncv"], ">=", 1.5),
                  "- the recipes differ: GluonCV also blurs half of the samples (Gaussian, "
                  "PIL), pads the mask with background instead of ignore and normalises with "
                  "MXNet operators; ours decodes with OpenCV and normalises in numpy.", ""]
    r = _load("damaged_images")
    if r:
        ms, x = r["per_image_ms"], r["extrapolation"]
        p = r["params"]
        found = r["truncations"]
        parts += ["## Finding damaged images", "", _provenance(r), "",
                  "%d synthetic JPEGs of VOC's size (%dx%d, %.0f KB on average) and their PNG "
                  "masks, in the page cache; one process, one thread, best of %d passes; "
                  "milliseconds per image:" % (p["images"], p["size"][0], p["size"][1],
                                               p["mean_jpeg_kb"], p["passes"]), "",
                  "| check | ms/image |", "|---|---|"]
        parts += ["| %s | %.3f |" % (name, v) for name, v in ms.items()]
        parts += ["", "- one image cut at %d points (10%% ... 99%% of its bytes, and all but its "
                  "last 2): found by the end-of-image marker %d times, by PIL's decode %d, "
                  "refused by OpenCV %d" % (len(found), sum(t["marker"] for t in found),
                                            sum(t["pil_decode"] for t in found),
                                            sum(t["opencv_refuses"] for t in found)),
                  "- VOC trainaug's %d samples, **extrapolated** from these per-image figures "
                  "(VOC itself is not on this machine): the marker alone %.1f s; a full check "
                  "(`deeplab check-data`) %.0f s (%.1f min) in one process, at best half in 2 "
                  "processes" % (x["samples"], x["marker_s"], x["full_check_1_process_s"],
                                 x["full_check_1_process_s"] / 60), ""]
    r = _load("vortex_pooling")
    if r and "network" in r:
        parts += ["## Vortex Pooling: the head's average poolings", "", _provenance(r), "",
                  "The three pooled maps, each the mean over the in-image part of every window "
                  "(*ours*: valid poolings of the explicitly zero-padded map, scaled by the "
                  "in-image counts, the head's formulation; *separable*: the previous one, "
                  "poolings padded by the operator; *direct*: one square pooling with "
                  "count_include_pad=False, the definition), or a different function near the "
                  "borders (*seed*: square pooling counting the padding, the seed project's "
                  "rule; *cascade*: the paper's cascaded 3x3 averages, `model.vortex_cascade`). "
                  "Variants alternate, %d rounds after warm-up; ratios are taken per round: "
                  "median [quartiles]. Wall-clock ratios are noisy on a shared machine; "
                  "CPU-time ratios much less so." % r["rounds"], "",
                  "Whole training step (forward, loss, backward) of ResNet-50 v2, BN trained, "
                  "crop %d, batch 1, hybridized:" % r["crop"], "",
                  "| OS | variant | s/step | CPU s/step | / ASPP (wall) | / ASPP (CPU) |",
                  "|---|---|---|---|---|---|"]
        for row in r["network"]:
            for name, v in row["variants"].items():
                parts.append("| %d | %s | %.3f | %.3f | %s | %s |" % (
                    row["output_stride"], name, v["wall_s"], v["cpu_s"],
                    *(("%.3f [%.3f-%.3f]" % (v[k]["median"], v[k]["q25"], v[k]["q75"])
                       if k in v else "1") for k in ("wall_ratio", "cpu_ratio"))))
        parts.append("")
        for row in r["network"]:
            v = row["variants"].get("ours")
            if v and "wall_ratio" in v:
                parts.append("- OS%d, Vortex (ours) / ASPP step: %s; CPU time %.3f" % (
                    row["output_stride"], _target(v["wall_ratio"]["median"], "<=", 1.1),
                    v["cpu_ratio"]["median"]))
        if r["pooling"]:
            parts += ["", "The pooled maps alone, forward + backward, on one 2048-channel map "
                      "in MKL-DNN's blocked layout (as the head receives it), %d rounds; the "
                      "largest difference from the definition (float64). On this layout "
                      "MKL-DNN runs *direct* and *seed* in its reference kernel; they are not "
                      "run at OS8:" % r["pooling_rounds"], "",
                      "| OS | features | pool sizes | formulation | s | CPU s | / %s (CPU) | "
                      "max difference |" % r["pooling"][0]["baseline"],
                      "|---|---|---|---|---|---|---|---|"]
            for row in r["pooling"]:
                for name, v in row["formulations"].items():
                    parts.append("| %d | %dx%d | %s | %s | %.3f | %.3f | %s | %.1e |" % (
                        row["output_stride"], row["feature"][0], row["feature"][1],
                        ", ".join(map(str, row["pool_sizes"])), name, v["wall_s"], v["cpu_s"],
                        "%.2f" % v["cpu_ratio"]["median"] if "cpu_ratio" in v else "1",
                        v["max_abs_diff_vs_definition"]))
        parts.append("")
    r = _load("vortex_seed")
    if r:
        seed = r["seed"]
        parts += ["## Against the seed project's network", "", _provenance(r), "",
                  "The seed's %s (%s, commit %s) loaded at run time and run imperatively, as its "
                  "train.py runs it (its blocks read shapes in hybrid_forward); ours hybridized "
                  "with static allocation, as our training runs it. ResNet-50 v2, OS16, crop %d, "
                  "batch 1, same input and loss, forward + backward; %d rounds, variants "
                  "alternating; ratios per round, median [quartiles]." % (
                      seed["file"], seed["repository"], (seed.get("commit") or "?")[:10],
                      r["crop"], r["rounds"]), "",
                  "| network | s/step | CPU s/step |", "|---|---|---|"]
        for name, v in r["variants"].items():
            parts.append("| %s | %.3f | %.3f |" % (name, v["wall_s"], v["cpu_s"]))
        parts.append("")
        targets = {"ours-vortex/seed-vortex": 0.9, "ours-vortex/ours-aspp": 1.1}
        for name, q in r["ratios"].items():
            w, c = q["wall"], q["cpu"]
            value = (_target(w["median"], "<=", targets[name]) if name in targets
                     else "%.3f" % w["median"])
            parts.append("- %s step: %s [%.3f-%.3f]; CPU time %.3f [%.3f-%.3f]" % (
                name, value, w["q25"], w["q75"], c["median"], c["q25"], c["q75"]))
        parts.append("")
    r = _load("allreduce")
    if r:
        fit = r["fit"]
        parts += ["## Horovod allreduce on this machine", "", _provenance(r), "",
                  "Gloo over loopback, %d workers: the software cost of an allreduce (not a "
                  "network): alpha %.1f us, bus bandwidth %.2f GB/s. Used by "
                  "benchmarks/SCALING.md." % (r["workers"], fit["alpha_s"] * 1e6,
                                              fit["busbw_bytes_per_s"] / 1e9), ""]
    with open(out, "w") as f:
        f.write("\n".join(parts).rstrip() + "\n")


def scaling_md():
    """SCALING.md from the allreduce and collective-latency reports, Horovod's and the MPI
    transport's (skipped without them)."""
    # Relative to the checkout (the command is recorded in SCALING.md).
    inputs = {"--allreduce": "benchmarks/results/allreduce.json",
              "--collective-latency": "benchmarks/results/collective_latency.json",
              "--collective-latency-mpi": "benchmarks/results/collective_latency_mpi.json"}
    # benchmarks/multihost.py (root only) is run by hand; its report is used when present.
    if os.path.exists(os.path.join(ROOT, "benchmarks/results/multihost.json")):
        inputs["--multihost"] = "benchmarks/results/multihost.json"
    if all(os.path.exists(os.path.join(ROOT, path)) for path in inputs.values()):
        subprocess.check_call([PY, "benchmarks/scaling_report.py"]
                              + [a for kv in inputs.items() for a in kv], cwd=ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated runs: " + ", ".join(RUNS))
    p.add_argument("--render", action="store_true", help="only regenerate the markdown")
    return p.parse_args(argv)


def main(args):
    os.makedirs(RESULTS, exist_ok=True)
    if not args.render:
        names = [n.strip() for n in args.only.split(",")] if args.only else list(RUNS)
        unknown = [n for n in names if n not in RUNS]
        if unknown:
            raise SystemExit("run_all: unknown run(s) %s; valid: %s" % (", ".join(unknown),
                                                                        ", ".join(RUNS)))
        for name in names:
            run(name)
    scaling_md()
    render()
    print("[run_all] wrote benchmarks/RESULTS.md and benchmarks/SCALING.md")


if __name__ == "__main__":
    main(parse_args())
