"""Writes benchmarks/SCALING.md: the predicted data-parallel scaling efficiency of the DeepLabV3
recipe on GPU clusters (the model: benchmarks/scaling_model.py) as Markdown tables, the
recommended settings and the observations they support.

    .venv/bin/python benchmarks/scaling_report.py --allreduce benchmarks/results/allreduce.json \
        --collective-latency benchmarks/results/collective_latency.json \
        [--collective-latency-mpi benchmarks/results/collective_latency_mpi.json] \
        [--bench BENCH.json ...] [--costs COSTS.json] [--out benchmarks/SCALING.md] \
        [--print-recommended]

Nothing in the markdown is typed by hand: tables, the recommended settings and the closing
observations are generated from the model's numbers (--print-recommended also prints the
recommended-settings table, for the README and docs/distributed.md).

--costs replaces building the networks (about half a minute here) with a JSON of the same shape as
`model_costs()` returns; the tests use it. --bench adds the CPU measurements of `deeplab bench`
for comparison only (this machine has no GPU: they do not enter the predictions).
"""
import argparse
import datetime
import json
import math
import os
import sys

# benchmarks/, this script's folder, is first on sys.path
from scaling_model import (CONFIGS, CONSTANTS, DESIGNS, GPUS, MiB, MODELS, SHORT, VARIANTS,
                           bn_images, c, calls_at, compute_s, coordination_s, design_groups,
                           design_predictions, efficiency, model_costs, mpi_call_costs,
                           phase_entry, predictions, ps_predictions, ps_servers, recommend,
                           ring_allreduce_s, settings, step_terms, sync_call_costs, utilization)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--allreduce", required=True,
                   help="JSON of benchmarks/allreduce.py: its alpha is the software cost per "
                        "gradient allreduce")
    p.add_argument("--collective-latency", required=True,
                   help="JSON of benchmarks/collective_latency.py: the software cost per "
                        "synchronized-BN call at each HOROVOD_CYCLE_TIME")
    p.add_argument("--collective-latency-mpi",
                   default="benchmarks/results/collective_latency_mpi.json",
                   help="JSON of `benchmarks/collective_latency.py --only mpi`: the software "
                        "cost per synchronized-BN call over the MPI transport (default: "
                        "%(default)s)")
    p.add_argument("--bench", nargs="*", default=[],
                   help="JSON reports of `deeplab bench` (CPU), shown for comparison")
    p.add_argument("--costs", help="model costs JSON instead of building the networks")
    p.add_argument("--multihost",
                   help="JSON of benchmarks/multihost.py: collectives measured across emulated "
                        "hosts over shaped links, set beside this model's formulas")
    p.add_argument("--out", default="benchmarks/SCALING.md")
    p.add_argument("--print-recommended", action="store_true",
                   help="also print the recommended-settings table (markdown)")
    args = p.parse_args(argv)
    args.command = [os.path.relpath(sys.executable), os.path.relpath(sys.argv[0])] + (
        sys.argv[1:] if argv is None else list(argv))
    return args



def cell(terms):
    return "%.2f / %.2f" % (efficiency(terms, False), efficiency(terms, True))


def variant_name(algorithm, vb):
    return "%s %s" % ("hier." if algorithm == "hierarchical" else "ring",
                      "fp32" if vb == 4 else "fp16")


def efficiency_table(pred, phase, model, sync):
    rows = ["| GPUs | network | " + " | ".join(variant_name(a, vb) for a, vb in VARIANTS) + " |",
            "|---|---|" + "---|" * len(VARIANTS)]
    for n in GPUS:
        for gbps in c("network_gbps"):
            rows.append("| %d | %d Gb/s | " % (n, gbps) + " | ".join(
                cell(pred[(phase, model, n, gbps, a, vb, sync)]) for a, vb in VARIANTS) + " |")
    return "\n".join(rows)


def breakdown_table(pred, model):
    head = ["compute"] + [variant_name(a, vb) for a, vb in VARIANTS] + ["SyncBN, ring",
                                                                          "SyncBN, hier."]
    rows = ["| GPUs | network | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for n in GPUS:
        for gbps in c("network_gbps"):
            t = {(a, vb): pred[(1, model, n, gbps, a, vb, True)] for a, vb in VARIANTS}
            vals = ([t[VARIANTS[0]]["compute"]] + [t[v]["grad"] for v in VARIANTS]
                    + [t[("ring", 4)]["syncbn"], t[("hierarchical", 4)]["syncbn"]])
            rows.append("| %d | %d Gb/s | " % (n, gbps)
                        + " | ".join("%.1f" % (1e3 * v) for v in vals) + " |")
    return "\n".join(rows)


def sensitivity_table(costs, model, software_s):
    """Phase 1, ring fp32, with the software cost per call at the measured value, one Horovod
    cycle, and zero (the network alone)."""
    entry = phase_entry(costs, 1, model)
    levels = (("%.2f ms (alpha)" % (1e3 * software_s), software_s),
              ("1 ms (1 cycle)", c("horovod_cycle_time")), ("0", 0.0))
    head = ["%s, s = %s" % (what, name) for what in ("SyncBN", "gradients only")
            for name, _ in levels]
    rows = ["| GPUs | network | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for n in GPUS:
        for gbps in c("network_gbps"):
            rows.append("| %d | %d Gb/s | " % (n, gbps) + " | ".join(
                cell(step_terms(entry, n, gbps, "ring", 4, s, sync, costs["reference"]))
                for sync in (True, False) for _, s in levels) + " |")
    return "\n".join(rows)


def phase_label(costs, phase):
    """'OS16, 513 crop, 2 img/GPU' from the phase's config."""
    e = phase_entry(costs, phase, MODELS[0])
    return "OS%d, %d crop, %d img/GPU" % (e["output_stride"], e["crop"],
                                             e["global_batch"] // c("reference_gpus"))


def ps_table(ps, pred, model):
    head = ["M = 1", "M = n/8 (one per node)", "M = n (one per GPU)", "Horovod ring fp32"]
    rows = ["| GPUs | network | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for n in GPUS:
        for gbps in c("network_gbps"):
            ms = (1, max(1, n // c("gpus_per_node")), n)
            rows.append("| %d | %d Gb/s | " % (n, gbps) + " | ".join(
                [cell(ps[(model, n, gbps, m)]) for m in ms]
                + [cell(pred[(1, model, n, gbps, "ring", 4, False)])]) + " |")
    return "\n".join(rows)


def costs_table(costs):
    rows = ["| phase | model | OS | crop | images/GPU | fwd GFLOPs/img | train GFLOPs/img | "
            "gradient MB | SyncBN layers (channels) | step compute on one A100 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for e in costs["phases"]:
        batch = e["global_batch"] // c("reference_gpus")
        sync = ("%d (%d)" % (len(e["syncbn_channels"]), sum(e["syncbn_channels"]))
                if not e["freeze_bn"] else "none (BN frozen)")
        rows.append("| %d | %s | %d | %d | %d | %.1f | %.1f | %.1f | %s | %.1f ms |" % (
            e["phase"], e["model"], e["output_stride"], e["crop"], batch,
            e["forward_gflops_per_image"], e["train_gflops_per_image"], e["grad_bytes"] / 1e6,
            sync, 1e3 * compute_s(e["train_gflops_per_image"], batch, costs["reference"])))
    return "\n".join(rows)


def allreduce_section(ar):
    fit, fit16 = ar["fit"], ar["float16"]["fit"]
    m = ar["machine"]
    rows = ["| bytes | float32 s | float16 s |", "|---|---|---|"]
    for s, t32, t16 in zip(ar["sizes"], ar["seconds"], ar["float16"]["seconds"]):
        rows.append("| %d | %.5f | %.5f |" % (s, t32, t16))
    return "\n".join([
        "`%s` on %d workers, %s, %s (%s CPUs; load average %.2f at its start), %s:"
        % (" ".join(ar["command"]), ar["workers"], ar["transport"], m["hostname"], m["cpus"],
           m["loadavg_1min_at_start"], ar["date"]),
        "",
        *rows,
        "",
        "Fit t = alpha + bytes x beta (rows weighted by 1/t): float32 alpha = %.2f ms, algbw = "
        "%.3f GB/s, busbw = %.3f GB/s; float16 alpha = %.2f ms, algbw = %.3f GB/s."
        % (1e3 * fit["alpha_s"], fit["algbw_bytes_per_s"] / 1e9, fit["busbw_bytes_per_s"] / 1e9,
           1e3 * fit16["alpha_s"], fit16["algbw_bytes_per_s"] / 1e9),
        "",
        "This is Gloo over loopback on a CPU: it measures Horovod's *software* cost per call "
        "(negotiation, the cycle wait, fusion copies, the reduction on the CPU) and checks that "
        "time is affine in bytes; it is not a network. Only alpha enters the predictions, as the "
        "software cost of every gradient allreduce (synchronized BN's calls: next section); it "
        "also contains two loopback hops, so it errs high. Bandwidths come from the published "
        "figures below. The float16 bytes cost more here than float32 bytes (Horovod sums "
        "float16 on the CPU in software); NCCL sums float16 natively on GPUs, so fp16 "
        "compression is modelled as halving the bytes only.",
    ])


def latency_section(latency, calls):
    """The per-call latencies of benchmarks/collective_latency.py and what the model takes."""
    keys = []
    for r in latency["results"]:
        for k in r["calls"]:
            op, ch, _ = k.split(" ")
            if (op, ch) not in keys:
                keys.append((op, ch))
    keys.sort(key=lambda k: (int(k[1][2:]), k[0]))
    rows = ["| configuration | Horovod thread's idle CPU (cores) | calls over | " + " | ".join(
        "%s %s" % k for k in keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for r in latency["results"]:
        for group in ("all", "pair"):
            if not any(k.endswith(" " + group) for k in r["calls"]):
                continue
            rows.append("| %s | %.2f | %s | %s |" % (
                r["label"], r["idle_cpu_cores"],
                "all %d workers" % r["workers"] if group == "all" else "a process set of 2",
                " | ".join("%.2f" % (r["calls"]["%s %s %s" % (op, ch, group)]["median_us"] / 1e3)
                           for op, ch in keys)))
    used = "; ".join("HOROVOD_CYCLE_TIME %g ms: allgather %.2f ms, allreduce %.2f ms" % (
        cycle * 1e3, 1e3 * v["allgather"], 1e3 * v["allreduce"]) for cycle, v in sorted(
        calls.items()))
    return "\n".join([
        "`%s` (%s, %s CPUs), one `horovodrun --gloo` job per configuration; milliseconds per "
        "call, medians of rank 0's %s timed calls, each waited for, of a (3, C) float32 "
        "collective (the size synchronized BN sends per layer):" % (
            latency["command"], latency["date"], latency["machine"]["cpus"],
            "/".join(sorted({str(v["n"]) for r in latency["results"]
                             for v in r["calls"].values()}))),
        "",
        *rows,
        "",
        "Taken as the software cost of one synchronized-BN call (2 workers, all of them, "
        "response cache on as by default, mean over C): %s. A call costs about one cycle: it "
        "waits for the next negotiation. These are CPU processes over loopback; on a cluster the "
        "coordination crosses the network (one round trip added per call, see Assumptions) "
        "and involves every worker, so they are a lower bound there." % used,
    ])


def mpi_latency_section(latency_mpi, mpi_calls, path):
    """The MPI transport's per-call latencies (2 workers) and what the model takes."""
    rows = []
    for r in latency_mpi["results"]:
        if r["workers"] != 2:
            continue
        rows.append("| %s | %s | %s |" % (r["label"], r.get("sets", ""), " | ".join(
            "%.0f" % r["calls"]["%s C=%d all" % (op, ch)]["median_us"]
            for ch in (64, 256, 2048) for op in ("allgather", "allreduce"))))
    return "\n".join([
        "`%s` (`%s`, %s, %s CPUs): microseconds per call, medians of rank 0's timed calls, 2 "
        "workers under `mpirun`; *mpi*: the MPI transport (`deeplab.dist.mpi`, point-to-point "
        "messages tagged by the layer's name), *mpi-horovod*: Horovod's own collectives over its "
        "MPI controller:" % (latency_mpi["command"], path, latency_mpi["date"],
                             latency_mpi["machine"]["cpus"]),
        "",
        "| configuration | sets | " + " | ".join("%s C=%d" % (op, ch) for ch in (64, 256, 2048)
                                                for op in ("allgather", "allreduce")) + " |",
        "|---|---|" + "---|" * 6,
        *rows,
        "",
        "Taken as the software cost of one synchronized-BN call over the MPI transport (2 "
        "workers, MPICH's defaults as the launcher keeps them, mean over C): allgather %.0f us, "
        "allreduce %.0f us. No negotiation cycle and no coordination round trip: MPI matches "
        "the messages by tag as they arrive. With more workers each call sends to and receives "
        "from every other member of its group: the bytes and one hop latency per peer are "
        "modelled (Formulas); the per-message software cost beyond one peer is not measured "
        "(4 workers on these 2 cores measured the contention of busy-polling ranks, not the "
        "transport)." % (1e6 * mpi_calls["allgather"], 1e6 * mpi_calls["allreduce"]),
    ])


def designs_overview(costs, alpha_s, calls, mpi_calls):
    """One row per design: its settings, whose statistics BN uses, its software costs."""
    p1 = phase_entry(costs, 1, MODELS[0])
    default = calls_at(calls, c("horovod_cycle_time"))
    rows = ["| design | settings | BN statistics over (images, at %s GPUs) | software cost per "
            "SyncBN layer (forward + backward) | gradient communication |"
            % " / ".join(map(str, GPUS)), "|---|---|---|---|---|"]
    for d in DESIGNS:
        how = settings(d, GPUS[-1], 1)
        one_node = settings(d, GPUS[0], 1)
        if one_node != how:
            how += " (on one node: %s)" % one_node
        images = " / ".join(str(bn_images(d, n, p1)) for n in GPUS)
        if d["backend"] == "horovod":
            per = calls_at(calls, c(d["cycle"]))
            sync = ("%.2f + %.2f ms (measured at %g ms), + 2 x %.0f us beyond one node" % (
                1e3 * per["allgather"], 1e3 * per["allreduce"], 1e3 * c(d["cycle"]),
                1e6 * coordination_s()) if d["bn"] in ("all", "node") else "none")
            if d.get("transport") == "mpi":
                sync = ("%.3f + %.3f ms (MPI transport, measured on 2 workers), no negotiation "
                        "or coordination; + 2 x 2 GPU-host copies (%.0f us each, assumed) and "
                        "one message per peer" % (
                            1e3 * mpi_calls["allgather"], 1e3 * mpi_calls["allreduce"],
                            1e6 * c("gpu_host_copy_s")))
            grad_s = alpha_s + per["allreduce"] - default["allreduce"]
            grad = "ring allreduce, k x %.2f ms per call%s" % (
                1e3 * grad_s, "" if d["cycle"] == "horovod_cycle_time"
                else " (alpha %.2f ms, %+.2f ms: the cycle's effect on the measured small "
                "allreduce)" % (1e3 * alpha_s, 1e3 * (per["allreduce"] - default["allreduce"])))
        elif d["backend"] == "ps":
            sync, grad = "none", "every GPU's worker pushes and pulls the whole gradient"
        else:
            sync = "2 x %.0f us (assumed, in-process)" % (1e6 * c("inprocess_sync_s"))
            grad = "summed over the node's GPUs in-process (NVLink), then one push/pull per node"
        rows.append("| %s | %s | %s | %s | %s |" % (d["label"], how, images, sync, grad))
    return "\n".join(rows)


def design_table(dp, phase, model, columns):
    """Efficiency cells of `columns` ([(header, design key)]) for every cluster."""
    rows = ["| GPUs | network | " + " | ".join(h for h, _ in columns) + " |",
            "|---|---|" + "---|" * len(columns)]
    for n in GPUS:
        for gbps in c("network_gbps"):
            rows.append("| %d | %d Gb/s | " % (n, gbps) + " | ".join(
                cell(dp[(phase, model, n, gbps, k)]) for _, k in columns) + " |")
    return "\n".join(rows)


def phase2_columns(dp):
    """[(header, design key)] of the distinct phase-2 designs, and the sentence saying which
    designs coincide there."""
    groups = design_groups(dp, 2)
    columns, merged = [], []
    for g in groups:
        d = g[0]
        if d["backend"] == "horovod":
            header = "Horovod, %g ms cycle" % (1e3 * c(d["cycle"]))
        else:
            header = d["column"]
        columns.append((header, d["key"]))
        if len(g) > 1:
            merged.append("%s: %s" % (header, ", ".join("*%s*" % m["column"] for m in g)))
    text = ("With BN frozen no design has synchronized-BN collectives, so designs that differ "
            "only in BN coincide: %s." % "; ".join(merged)) if merged else ""
    return columns, text


def _where(cases):
    """'R50 at 25/100 Gb/s; R101 at 400 Gb/s', or 'at 25 Gb/s' when every model agrees, or ''."""
    per_model = {}
    for model, gbps in cases:
        per_model.setdefault(model, []).append(gbps)
    sets = {tuple(sorted(v)) for v in per_model.values()}
    if len(per_model) == len(MODELS) and len(sets) == 1:
        nets = sets.pop()
        return "" if len(nets) == len(c("network_gbps")) else "at %s Gb/s" % "/".join(
            map(str, nets))
    return "; ".join("%s at %s Gb/s" % (SHORT[m], "/".join(map(str, sorted(g))))
                     for m, g in per_model.items())


def recommendations(dp, costs):
    """{(phase, n): {(model, gbps): design}}."""
    return {(phase, n): {(model, gbps): recommend(dp, costs, phase, model, n, gbps)
                         for model in MODELS for gbps in c("network_gbps")}
            for phase in (1, 2) for n in GPUS}


def recommended_table(dp, costs):
    """Markdown: per scale, the recommended settings of both phases and their predicted
    efficiency (no overlap), generated from the design predictions."""
    rec = recommendations(dp, costs)
    nets = " / ".join(map(str, c("network_gbps")))
    rows = ["| GPUs | phase 1 (BN trained): settings | phase 1: predicted efficiency | "
            "phase 2 (BN frozen): settings | phase 2: predicted efficiency |",
            "|---|---|---|---|---|"]
    for n in GPUS:
        nodes = n // min(n, c("gpus_per_node"))
        cells = []
        for phase in (1, 2):
            by_setting = {}
            for (model, gbps), d in rec[(phase, n)].items():
                by_setting.setdefault(settings(d, n, phase), []).append((model, gbps))
            if len(by_setting) == 1:
                cells.append(next(iter(by_setting)))
            else:
                cells.append("; ".join("%s: %s" % (_where(cases), how)
                                       for how, cases in by_setting.items()))
            effs = []
            for model in MODELS:
                vals = ["%.2f" % efficiency(dp[(phase, model, n, gbps,
                                                rec[(phase, n)][(model, gbps)]["key"])], False)
                        for gbps in c("network_gbps")]
                effs.append("%s %s" % (SHORT[model], vals[0] if len(set(vals)) == 1
                                       else " / ".join(vals)))
            cells.append("; ".join(effs))
        rows.append("| %d (%d node%s) | %s |" % (n, nodes, "s" if nodes > 1 else "",
                                                 " | ".join(cells)))
    return "\n".join(rows + [
        "",
        "Efficiency without overlap of the gradient communication, at %s Gb/s where the "
        "network matters (one value: the same on every network). Phase 1 keeps BN statistics "
        "over at least the recipe's %d images per normalisation." % (
            nets, phase_entry(costs, 1, MODELS[0])["global_batch"])])


def recommendation_notes(dp, costs, alpha_s):
    """Where a recommendation rests on software costs the model does not count: the parameter
    server's and the in-process reduction's per-call costs are not measured (zero here), while
    Horovod's are. Charged Horovod's per-call cost for each 128 MiB of gradient, does the
    recommended design still beat the best other qualifying design?"""
    rec = recommendations(dp, costs)
    close = {}
    for (phase, n), cases in rec.items():
        for (model, gbps), d in cases.items():
            if d["backend"] == "horovod":
                continue
            t = dict(dp[(phase, model, n, gbps, d["key"])])
            entry = phase_entry(costs, phase, model)
            t["grad"] += math.ceil(entry["grad_bytes"] / c("fusion_threshold")) * alpha_s
            need = phase_entry(costs, 1, model)["global_batch"]
            others = [(efficiency(dp[(phase, model, n, gbps, o["key"])], False), o)
                      for o in DESIGNS if o is not d and (bn_images(o, n, entry) is None
                                                          or bn_images(o, n, entry) >= need)]
            best, other = max(others, key=lambda x: x[0])
            if efficiency(t, False) < best:
                close.setdefault((phase, n, other["key"]), []).append((model, gbps))
    if not close:
        return ("Every recommendation holds if the parameter server's and the in-process "
                "reduction's unmeasured software costs matched Horovod's measured %.2f ms per "
                "128 MiB call." % (1e3 * alpha_s))
    items = []
    for (phase, n, key), cases in sorted(close.items()):
        other = next(d for d in DESIGNS if d["key"] == key)
        items.append("phase %d at %d GPUs%s (%s)" % (
            phase, n, (" " + _where(cases)) if _where(cases) else "",
            settings(other, n, phase)))
    return ("Close calls: the parameter server's and the in-process reduction's software "
            "costs are not measured (zero here) while Horovod's are; charged Horovod's %.2f ms "
            "per 128 MiB of gradient, the recommended design would fall behind the next best "
            "in %s." % (1e3 * alpha_s, "; ".join(items)))


def bench_section(benches, ar):
    rows = ["| report | model | workers | images/worker | crop | variant | s/step | fwd+bwd | "
            "comm | alpha-beta prediction of comm |", "|---|---|---|---|---|---|---|---|---|---|"]
    for path, b in benches:
        g = b["model"]["grad_bytes"]
        predicted = "n/a (%d workers, allreduce fit on %d)" % (b["workers"], ar["workers"])
        if b["workers"] == ar["workers"]:
            calls = math.ceil(g / c("fusion_threshold"))
            predicted = "%.3f s" % (calls * ar["fit"]["alpha_s"] + g * ar["fit"]["beta_s_per_byte"])
        for v in b["variants"]:
            br = v["breakdown_s"]
            rows.append("| %s | %s | %d | %s | %s | %s | %.3f | %.0f%% | %.0f%% | %s |" % (
                os.path.basename(path), b["model"]["name"], b["workers"],
                b.get("batch_per_worker", "?"), b.get("crop", "?"), v["name"], v["step_s"],
                100 * br["fwd_bwd"] / v["step_s"], 100 * br["comm"] / v["step_s"], predicted))
    return "\n".join(rows)


def observations(pred, ps, costs, dp, calls, mpi_calls):
    """The 'What this says' bullets, computed from the predictions."""
    lines = []
    for model in MODELS:
        for phase, sync in ((1, True), (1, False), (2, False)):
            strict, with_overlap = {}, {}
            for n in GPUS:
                for gbps in c("network_gbps"):
                    for a, vb in VARIANTS:
                        t = pred[(phase, model, n, gbps, a, vb, sync)]
                        if efficiency(t, False) >= 0.9:
                            strict.setdefault((n, gbps), []).append(variant_name(a, vb))
                        elif efficiency(t, True) >= 0.9:
                            with_overlap.setdefault((n, gbps), []).append(variant_name(a, vb))
            lines.append("- %s, phase %d%s: efficiency >= 0.9 without overlap: %s; only with "
                         "full overlap: %s." % (
                             SHORT[model], phase, ", SyncBN over all workers (default cycle)"
                             if sync else ", no SyncBN",
                             _configs(strict), _configs(with_overlap)))
    lines += design_observations(dp, costs, calls, mpi_calls)
    for model in MODELS:
        a = pred[(1, model, 512, 25, "ring", 4, False)]
        b = pred[(1, model, 512, 25, "ring", 2, False)]
        h = pred[(1, model, 512, 400, "hierarchical", 4, False)]
        r = pred[(1, model, 512, 400, "ring", 4, False)]
        ring_lat = ring_allreduce_s(0, 512, 400e9 / 8, c("gpus_per_node"), c("nvlink_busbw"),
                                    c("lat_large"))
        lines.append(
            "- %s at 512 GPUs, no SyncBN: fp16 compression takes 25 Gb/s from %.2f to %.2f "
            "(no overlap); at 400 Gb/s hierarchical allreduce gives %.2f against the ring's %.2f "
            "(the ring's latency is %.1f ms per call: %d hops)."
            % (SHORT[model], efficiency(a, False), efficiency(b, False), efficiency(h, False),
               efficiency(r, False), 1e3 * ring_lat, 2 * 511))
    gbps = c("network_gbps")[-1]
    for model in MODELS:
        entry = phase_entry(costs, 1, model)
        per_node = c("gpus_per_node")
        bound = 2 * entry["grad_bytes"] / (gbps * 1e9 / 8 / per_node)
        lines.append(
            "- %s, parameter server at %d Gb/s: %s; Horovod's ring fp32: %s (no overlap). Each "
            "of a node's %d workers pushes and pulls the whole gradient through the node's "
            "network: at least %.0f ms per step whatever M, against about 2 G / B = %.0f ms for a "
            "ring."
            % (SHORT[model], gbps, "; ".join(
                "%d GPUs: %s" % (n, ", ".join("M = %d: %.2f" % (m, efficiency(
                    ps[(model, n, gbps, m)], False)) for m in ps_servers(n))) for n in GPUS),
               ", ".join("%.2f" % efficiency(pred[(1, model, n, gbps, "ring", 4, False)], False)
                         for n in GPUS),
               per_node, 1e3 * bound, 1e3 * 2 * entry["grad_bytes"] / (gbps * 1e9 / 8)))
    return "\n".join(lines)


def _effs(dp, phase, model, key, gpus=GPUS):
    """'0.16 at 8 GPUs, 0.09 / 0.13 / 0.14 at 64, ...': no overlap, one value per network."""
    out = []
    for n in gpus:
        vals = ["%.2f" % efficiency(dp[(phase, model, n, gbps, key)], False)
                for gbps in c("network_gbps")]
        out.append("%s at %d%s" % (vals[0] if len(set(vals)) == 1 else " / ".join(vals), n,
                                   " GPUs" if not out else ""))
    return ", ".join(out)


def design_observations(dp, costs, calls, mpi_calls):
    """Bullets on the synchronized-BN designs."""
    lines = []
    nets = " / ".join(map(str, c("network_gbps")))
    one, last = GPUS[0], GPUS[-1]
    low, high = c("network_gbps")[0], c("network_gbps")[-1]
    default = calls_at(calls, c("horovod_cycle_time"))
    tuned = calls_at(calls, c("tuned_cycle_time"))
    by_key = {d["key"]: d for d in DESIGNS}
    for model in MODELS:
        entry = phase_entry(costs, 1, model)
        layers = len(entry["syncbn_channels"])
        t = {d["key"]: dp[(1, model, one, low, d["key"])] for d in DESIGNS}
        lines.append(
            "- %s, phase 1, Horovod with SyncBN over all workers at Horovod's %g ms cycle: %s "
            "(no overlap; %s Gb/s). Its %d Horovod calls per step cost %.0f ms on one node "
            "against %.1f ms of compute, %.0f%% of it the measured cost per call (%.2f ms per "
            "allgather, %.2f ms per allreduce)."
            % (SHORT[model], 1e3 * c("horovod_cycle_time"), _effs(dp, 1, model, "all"), nets,
               2 * layers, 1e3 * t["all"]["syncbn"], 1e3 * t["all"]["compute"],
               100 * layers * (default["allgather"] + default["allreduce"]) / t["all"]["syncbn"],
               1e3 * default["allgather"], 1e3 * default["allreduce"]))
        lines.append(
            "- %s, tuned cycle (`HOROVOD_CYCLE_TIME=%g`, what the worker picks on GPUs with "
            "SyncBN): calls measured at %.2f ms (allgather) "
            "and %.2f ms (allreduce) bring SyncBN to %.0f ms per step on one node: %s. Per-GPU "
            "BN without SyncBN would give %.2f on one node, with 2 images per normalisation."
            % (SHORT[model], 1e3 * c("tuned_cycle_time"), 1e3 * tuned["allgather"],
               1e3 * tuned["allreduce"], 1e3 * t["all-tuned"]["syncbn"],
               _effs(dp, 1, model, "all-tuned"), efficiency(t["gpu"], False)))
        lines.append(mpi_observation(dp, model, entry, mpi_calls, t))
        node_mb = (min(last, c("gpus_per_node")) - 1) * 3 * 4 * sum(entry["syncbn_channels"])
        all_mb = (last - 1) * 3 * 4 * sum(entry["syncbn_channels"])

        def e(key, gbps):
            return efficiency(dp[(1, model, last, gbps, key)], False)
        lines.append(
            "- %s, SyncBN in process sets of one node (`dist.sync_bn_group: node`): on one node "
            "the same as all workers. At %d GPUs each GPU receives %.1f MB of statistics per "
            "step instead of %.0f MB, which takes %d Gb/s from %.2f to %.2f at the default "
            "cycle (%.2f to %.2f tuned) and %d Gb/s from %.2f to %.2f (%.2f to %.2f tuned). "
            "What remains is the cost per call: Horovod negotiates every process set in its one "
            "background cycle, the global set's coordination included."
            % (SHORT[model], last, node_mb / 1e6, all_mb / 1e6, low, e("all", low),
               e("node", low), e("all-tuned", low), e("node-tuned", low), high, e("all", high),
               e("node", high), e("all-tuned", high), e("node-tuned", high)))
        ip = t["inprocess"]
        best = max((d for d in DESIGNS if d["backend"] == "horovod"
                    and bn_images(d, one, entry) >= entry["global_batch"]),
                   key=lambda d: efficiency(t[d["key"]], False))
        e_best = efficiency(t[best["key"]], False)
        breakeven = (ip["compute"] / e_best - ip["compute"] - ip["grad"]) / (2 * layers)
        lines.append(
            "- %s, one process per node driving its %d GPUs (`dist.devices_per_worker: %d`): "
            "no Horovod call in the step; SyncBN costs 2 x %d x %.0f us = %.1f ms per step "
            "(assumed) and the in-process gradient sum %.1f ms: %s. On one node it stays ahead "
            "of the best Horovod design with BN over %d images (%s: %.2f) unless MXNet's "
            "synchronization costs more than %.0f us per layer and pass (%.2gx the assumption). "
            "Beyond one node it is about as network-bound as Horovod with per-GPU BN (%s), but "
            "with BN over the node's %d images."
            % (SHORT[model], c("gpus_per_node"), c("gpus_per_node"), layers,
               1e6 * c("inprocess_sync_s"), 1e3 * ip["syncbn"], 1e3 * ip["grad"],
               _effs(dp, 1, model, "inprocess"), entry["global_batch"], best["column"], e_best,
               1e6 * breakeven, breakeven / c("inprocess_sync_s"),
               _effs(dp, 1, model, "gpu", GPUS[1:]),
               bn_images(by_key["inprocess"], one, entry)))
    for model in MODELS:
        columns, _ = phase2_columns(dp)
        lines.append("- %s, phase 2 (BN frozen): %s." % (SHORT[model], "; ".join(
            "%s: %s" % (header, _effs(dp, 2, model, key)) for header, key in columns)))
    return lines


def mpi_observation(dp, model, entry, mpi_calls, t):
    """The bullet on the MPI transport's designs: their efficiency at every scale beside
    Horovod's SyncBN over all workers (default and tuned cycle), and what grows beyond a node."""
    mid, local = GPUS[1], c("gpus_per_node")
    mb = local * (mid - local) * 5 * 4 * sum(entry["syncbn_channels"]) / 1e6
    return (
        "- %s, statistics straight over MPI (`dist.sync_bn_transport: mpi` under `deeplab launch "
        "horovod --mpi`; gradients through Horovod at its default cycle): calls measured at %.0f "
        "us (allgather) and %.0f us (allreduce) on 2 CPU workers, no negotiation; with two "
        "copies between GPU and host per call (%.0f us each, assumed) and the messages, SyncBN "
        "costs %.1f ms per step on one node. SyncBN over all workers: %s, against %s through "
        "Horovod at the default cycle and %s at the tuned one (no overlap; %s Gb/s). Beyond one "
        "node every GPU sends its statistics to every other member of its group (no ring, no "
        "hierarchy): at %d GPUs each node's network carries %.0f MB of them per step each way. "
        "Over the workers of one node (`dist.sync_bn_group: node`) they stay on the node: %s."
        % (SHORT[model], 1e6 * mpi_calls["allgather"], 1e6 * mpi_calls["allreduce"],
           1e6 * c("gpu_host_copy_s"), 1e3 * t["all-mpi"]["syncbn"],
           _effs(dp, 1, model, "all-mpi"), _effs(dp, 1, model, "all"),
           _effs(dp, 1, model, "all-tuned"), " / ".join(map(str, c("network_gbps"))), mid, mb,
           _effs(dp, 1, model, "node-mpi")))


def _one(values):
    """'0.66' when every network gives the same, else '0.18 / 0.40 / 0.57'."""
    return values[0] if len(set(values)) == 1 else " / ".join(values)


def mpi_recommendation_text(dp, costs):
    """Phase 1: the best design with the statistics over MPI against the recommended one at
    each scale, and where it is the recommended one."""
    rec = recommendations(dp, costs)
    mpi = [d for d in DESIGNS if d.get("transport") == "mpi"]
    per_n, picked = [], []
    for n in GPUS:
        parts = []
        for model in MODELS:
            ours, theirs = [], []
            for gbps in c("network_gbps"):
                best = max(mpi, key=lambda d: efficiency(dp[(1, model, n, gbps, d["key"])],
                                                         False))
                r = rec[(1, n)][(model, gbps)]
                e_best = efficiency(dp[(1, model, n, gbps, best["key"])], False)
                e_rec = efficiency(dp[(1, model, n, gbps, r["key"])], False)
                ours.append("%.2f" % e_best)
                theirs.append("%.2f" % e_rec)
                if r.get("transport") == "mpi":
                    others = [o for o in DESIGNS if o.get("transport") != "mpi"
                              and bn_images(o, n, phase_entry(costs, 1, model))
                              >= phase_entry(costs, 1, model)["global_batch"]]
                    o = max(others, key=lambda o: efficiency(dp[(1, model, n, gbps, o["key"])],
                                                             False))
                    picked.append("%d GPUs, %s at %d Gb/s (*%s* %.3f against *%s* %.3f)" % (
                        n, SHORT[model], gbps, r["column"], e_rec, o["column"],
                        efficiency(dp[(1, model, n, gbps, o["key"])], False)))
            parts.append("%s %s against %s" % (SHORT[model], _one(ours), _one(theirs)))
        per_n.append("%d GPUs: %s" % (n, "; ".join(parts)))
    text = ("Phase 1, the best design with BN's statistics over MPI against the recommended "
            "one (no overlap): %s." % "; ".join(per_n))
    if picked:
        text += (" A design over MPI is the recommended one at %s: ahead by less than the "
                 "model's precision, so either serves there." % "; ".join(picked))
    else:
        text += " No design over MPI is the recommended one."
    return text


def _configs(groups):
    """{(GPUs, Gb/s): [variants]} as '8 GPUs at 25/100/400 Gb/s (all variants); ...' or 'none'
    (networks with the same variants are merged)."""
    merged = {}
    for (n, gbps), variants in sorted(groups.items()):
        names = "all variants" if len(variants) == len(VARIANTS) else ", ".join(variants)
        merged.setdefault((n, names), []).append(str(gbps))
    return "; ".join("%d GPUs at %s Gb/s (%s)" % (n, "/".join(g), names)
                     for (n, names), g in merged.items()) or "none"


def assumptions_section(costs, software_s, workers, latency):
    ref = costs["reference"]
    rows = ["| constant | value | what | source |", "|---|---|---|---|"]
    for name, k in CONSTANTS.items():
        rows.append("| `%s` | %s | %s | %s |" % (name, k["text"], k["what"], k["source"]))
    util = utilization(ref)
    p1 = dict(phase_entry(costs, 1, MODELS[0]))
    p1["batch"] = p1["global_batch"] // c("reference_gpus")
    first, last = -(-p1["crop"] // 4), -(-p1["crop"] // p1["output_stride"])
    return "\n".join(rows + [
        "",
        "Derived and modelling assumptions:",
        "",
        "- GPU: one A100 SXM 80GB per worker, float32 training (TF32 tensor cores), as our "
        "package trains. ResNet-50 v1.5 costs %.2f GMACs forward per 224x224 image, counted here "
        "by `deeplab.bench.costs` on GluonCV's resnet50_v1b (the same counting rule as DeepLabV3's "
        "FLOPs); training = %g x forward. Utilization = %d images/s x %.1f GFLOPs / 156 TFLOP/s "
        "= **%.1f%%** of TF32 peak, i.e. %.1f TFLOP/s achieved."
        % (ref["forward_macs_per_image"] / 1e9, ref["train_flops_per_forward"],
           c("rn50_images_per_s"), ref["train_flops_per_forward"] * 2
           * ref["forward_macs_per_image"] / 1e9, 100 * util, util * 156),
        "- DeepLabV3 is assumed to reach the same FLOP rate as ResNet-50 classification. In phase "
        "1 its features are %dx%d (stride 4) down to %dx%d (output stride) for %d images per "
        "GPU, as much work per convolution as a ResNet-50 batch of %.0f-%.0f at 224x224 (56x56 "
        "down to 7x7); dilated 3x3 convolutions and the memory-bound BN/ReLU of a small batch "
        "could make it lower, which would raise every efficiency below."
        % (first, first, last, last, p1["batch"], p1["batch"] * (first / 56) ** 2,
           p1["batch"] * (last / 7) ** 2),
        "- Per-GPU batch: the recipe's global batch over %d GPUs (%s), kept as GPUs are added "
        "(weak scaling: %d GPUs train a global batch of %d in phase 1)."
        % (c("reference_gpus"), "; ".join("phase %d: %d -> %d img/GPU" % (
            e["phase"], e["global_batch"], e["global_batch"] // c("reference_gpus"))
            for e in costs["phases"] if e["model"] == MODELS[0]),
           GPUS[-1], GPUS[-1] * p1["batch"]),
        "- Nodes of %d GPUs; rows with that many GPUs or fewer are one node, where only NVLink "
        "is used, so the network column does not change them (except the PS, whose servers are "
        "other machines)." % c("gpus_per_node"),
        "- Links run at their nominal rate, full duplex; no congestion, no stragglers, no jitter.",
        "- Software cost per Horovod gradient allreduce: alpha of the allreduce benchmark "
        "(%.2f ms, measured at the default cycle), plus, at another cycle, the change that cycle "
        "made to the measured small allreduce below. It includes Horovod's wait for its next "
        "cycle (HOROVOD_CYCLE_TIME, 1 ms by default) and the negotiation of every call among the "
        "workers. It was measured with %d workers; an idle GPU host's CPU may be faster than "
        "this one." % (1e3 * software_s, workers),
        "- Software cost per synchronized-BN call (allgather forward, allreduce backward): "
        "measured by benchmarks/collective_latency.py at each cycle (2 workers, response cache "
        "on; section above), about one cycle per call. These are CPU processes over loopback, "
        "a lower bound for a cluster in two ways. Once the job spans nodes, every call's "
        "coordination crosses the network: one round trip, 2 x %.1f us (NCCL's network hop "
        "latency), is added to every Horovod call then (modelled). And the coordination "
        "involves every worker (not modelled): %s; this machine has 2 cores for the 4 "
        "processes, so that mixes the coordination's growth with contention, which errs the "
        "other way." % (1e6 * c("lat_large")["net"], _growth_text(latency)),
        "- Synchronized BN's statistics over MPI (`dist.sync_bn_transport: mpi`): each call "
        "costs the per-call latency measured on 2 CPU workers (MPI transport section above: "
        "the exchange and the copies between MXNet and numpy arrays), no Horovod cycle and no "
        "coordination term (the messages are matched by tag, not negotiated), plus on GPUs two "
        "small copies between GPU and host (`gpu_host_copy_s`, assumed, and their bytes at the "
        "PCIe rate; no CUDA-aware MPI). Its point-to-point exchange is modelled as what it "
        "sends: every member's piece to each other member of the group, on the network "
        "l (g-l) pieces per node each way (up to L times a ring allgather's; an allreduce moves as "
        "much as an allgather, the sum being made on the host), with one small-message hop "
        "latency per peer in sequence (NCCL's figures standing for MPI's per-message cost, not "
        "measured beyond one peer). On one node the messages go through host shared memory, "
        "charged at the PCIe rate. Gradients: Horovod at its default cycle, the worker's "
        "default when the statistics go over MPI.",
        "- Process sets (`dist.sync_bn_group: node`): a layer's allgather (8 x 3C values) and "
        "allreduce span the %d GPUs of one node, on NVLink. Horovod runs one background loop "
        "per process that negotiates every process set in turn each cycle "
        "(horovod/common/operations.cc, RunLoopOnce; controller.cc, CoordinateCacheAndState: "
        "a bit-vector allreduce over the set's ranks), so a node set's call still waits for a "
        "cycle that also coordinates the global set across the network: same per-call cost as "
        "calls over all workers. Our groups are static process sets (Horovod restarted with "
        "them, over Gloo); over MPI they need HOROVOD_DYNAMIC_PROCESS_SETS=1, whose calls "
        "measured %s here (not modelled)."
        % (c("gpus_per_node"), _dynamic_text(latency)),
        "- The tuned cycle costs CPU: Horovod's background thread took %s of a core while idle "
        "(8 per node: one per GPU), against %s at the default cycle; not counted (an A100 "
        "node's host has dozens of cores)." % _idle_cpu_text(latency),
        "- One process per node (`dist.devices_per_worker: %d`): the GPUs' gradients are "
        "summed in-process over NVLink (MXNet's CommDevice: merge buffers spread over the "
        "devices, peer-to-peer copies) at the NCCL bus bandwidth; with several nodes, one "
        "worker and one server per node push and pull the node's sum (dist_device_sync). BN: "
        "MXNet's SyncBatchNorm synchronizes each layer across the node's devices with a barrier "
        "of their threads, forward and backward (`inprocess_sync_s`, assumed; exposed). That "
        "layer computes the variance as E[x^2] - E[x]^2 in float32 (the formulation "
        "deeplab/dist/syncbn.py avoids for precision). The Python and engine overhead of one "
        "process driving %d GPUs is not counted (GluonCV's training scripts run this way)."
        % (c("gpus_per_node"), c("gpus_per_node")),
        "- Overlap. Horovod's MXNet binding (horovod/mxnet/__init__.py, DistributedTrainer."
        "_allreduce_grads) issues one `allreduce_` per parameter when `trainer.step` runs, which "
        "our training loop calls right after `loss.backward()` returns, i.e. while MXNet's "
        "asynchronous engine is still running backward; each allreduce is pushed to the engine "
        "(horovod/mxnet/mpi_ops.cc, MXEnginePushAsync) depending only on its gradient, so the "
        "allreduces of the last layers can run while earlier layers' gradients are computed. How "
        "much overlaps depends on the GPU engine's scheduling and Horovod's 1 ms cycles, so two "
        "bounds are given: **no overlap** / **full overlap** of the gradient communication with "
        "backward (2/3 of the compute). Cells read `no overlap / full overlap`.",
        "- Fusion: the gradient goes in ceil(bytes / 128 MiB) allreduces (all gradients ready in "
        "one cycle): the fewest calls, so the least latency.",
        "- fp16 compression (Horovod `Compression.fp16`) halves the bytes on the wire; the casts "
        "(a few hundred microseconds of GPU memory traffic) are left out.",
        "- Hierarchical allreduce applies to every Horovod allreduce (gradients and SyncBN's "
        "backward); SyncBN's forward allgather stays a flat ring (HOROVOD_HIERARCHICAL_ALLGATHER "
        "not set).",
        "- SyncBN: per BN layer one allgather of 3C float32 (count, mean, variance) and one "
        "allreduce of 2C (deeplab/dist/syncbn.py); the allgather's bytes grow with the number of "
        "GPUs of the layer's group ((g-1) x 3C x 4 per GPU).",
        "- Parameter server: one server process per machine with the same network; keys spread "
        "evenly over servers (MXNet splits large arrays across servers); the server's summing "
        "and ps-lite's software cost are not counted (not measured), nor the copies of the "
        "gradient between GPU and host memory that dist_device_sync makes (%s MB each way per "
        "GPU and step with one worker per GPU, at %.0f GB/s: %.1f ms; 1/%d of it with one "
        "process per node, the merge buffers being spread over the GPUs); no fp16 compression "
        "(ours is Horovod's). The designs' tables use one server per node." % (
            "%.0f" % (p1["grad_bytes"] / 1e6), c("pcie_bw") / 1e9,
            1e3 * p1["grad_bytes"] / c("pcie_bw"), c("gpus_per_node")),
    ])


def _latency_span(results, group):
    """'a-b ms': the range of the per-call medians of `results` over calls of `group`."""
    v = [x["median_us"] / 1e3 for r in results for k, x in r["calls"].items()
         if k.endswith(" " + group)]
    return "%.2f-%.2f ms" % (min(v), max(v)) if v else "n/a"


def _cycle_ms(r):
    return "%g" % float(r["environment"].get("HOROVOD_CYCLE_TIME", "1"))


def _growth_text(latency):
    """How the measured per-call cost grew from 2 workers to more, as a phrase."""
    static = [r for r in latency["results"] if r["workers"] > 2 and r.get("sets") == "static"]
    if not static:
        return "only 2 workers were measured"
    two = {_cycle_ms(r): r for r in latency["results"] if r["workers"] == 2
           and r.get("sets", "none") == "none"
           and "HOROVOD_CACHE_CAPACITY" not in r["environment"]}
    return "with %d workers, calls over all of them took %s, calls over a process set of 2 in " \
        "the same jobs %s, against %s with 2 workers" % (
            static[0]["workers"],
            " and ".join("%s at the %s ms cycle" % (_latency_span([r], "all"), _cycle_ms(r))
                         for r in static),
            " and ".join(_latency_span([r], "pair") for r in static),
            " and ".join(_latency_span([two[_cycle_ms(r)]], "all") for r in static
                         if _cycle_ms(r) in two))


def _dynamic_text(latency):
    """The dynamic process sets' per-call costs, as a phrase."""
    dynamic = [r for r in latency["results"] if r.get("sets") == "dynamic"]
    static = {_cycle_ms(r): r for r in latency["results"] if r.get("sets") == "static"}
    return "; ".join(
        "%s over all workers and %s over a set of 2 (%d workers, %s ms cycle; static sets: %s "
        "and %s)" % (_latency_span([r], "all"), _latency_span([r], "pair"), r["workers"],
                     _cycle_ms(r), _latency_span([static[_cycle_ms(r)]], "all")
                     if _cycle_ms(r) in static else "n/a",
                     _latency_span([static[_cycle_ms(r)]], "pair")
                     if _cycle_ms(r) in static else "n/a")
        for r in dynamic) or "n/a"


def _idle_cpu_text(latency):
    """(idle CPU at the tuned cycle, at the default cycle) of 2-worker runs with the cache on."""
    def idle(cycle_s):
        v = [r["idle_cpu_cores"] for r in latency["results"]
             if r["workers"] == 2 and "HOROVOD_CACHE_CAPACITY" not in r["environment"]
             and math.isclose(float(r["environment"].get("HOROVOD_CYCLE_TIME", "nan")) * 1e-3,
                              cycle_s, rel_tol=1e-6)]
        return "%.2f" % (sum(v) / len(v)) if v else "n/a"
    return idle(c("tuned_cycle_time")), idle(c("horovod_cycle_time"))


def render(args, costs, ar, benches, software_s, latency, latency_mpi):
    calls = sync_call_costs(latency)
    mpi_calls = mpi_call_costs(latency_mpi)
    pred = predictions(costs, software_s, calls)
    ps = ps_predictions(costs)
    dp = design_predictions(costs, software_s, calls, mpi_calls)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    inputs = ["- allreduce benchmark: `%s`" % args.allreduce,
              "- synchronized-BN call latency: `%s`" % args.collective_latency,
              "- synchronized-BN call latency over the MPI transport: `%s`"
              % args.collective_latency_mpi,
              "- model costs: %s" % ("`%s`" % args.costs if args.costs else
                                     "counted on the networks built from %s (R50 as written, "
                                     "R101 with `model.name` swapped)"
                                     % ", ".join("`%s`" % p for p in CONFIGS.values()))]
    inputs += ["- deeplab bench: `%s`" % p for p, _ in benches]
    p1, p2 = (phase_entry(costs, p, MODELS[0]) for p in (1, 2))
    columns2, coincide = phase2_columns(dp)
    parts = [
        "# Scaling predictions: DeepLabV3 on GPU clusters",
        "",
        "Generated by `%s` on %s. Do not edit by hand: rerun the command." % (
            " ".join(args.command), date),
        "",
        "Inputs:",
        "",
        *inputs,
        "",
        "Efficiency = compute / (compute + exposed communication) per GPU, against one GPU "
        "without any communication (weak scaling). Every cell is `no overlap / full overlap` "
        "(see Assumptions).",
        "",
        "## Model costs (counted)",
        "",
        costs_table(costs),
        "",
        "## Horovod allreduce on this machine (measured)",
        "",
        allreduce_section(ar),
        "",
        "## Synchronized-BN call latency on this machine (measured)",
        "",
        latency_section(latency, calls),
        "",
        "## Synchronized-BN call latency over the MPI transport on this machine (measured)",
        "",
        mpi_latency_section(latency_mpi, mpi_calls, args.collective_latency_mpi),
        "",
        "## Assumptions",
        "",
        assumptions_section(costs, software_s, ar["workers"], latency),
        "",
        "## Formulas",
        "",
        "Per step, n GPUs, nodes of L = 8, network bandwidth B per node, NVLink bus bandwidth "
        "B_nv, PCIe B_pcie, N = n / L nodes, software cost per Horovod gradient call s; "
        "latencies a_base, a_nv, a_net from NCCL's tuning model:",
        "",
        "- compute: t_c = train GFLOPs/image x images/GPU / (peak x utilization)",
        "- ring allreduce of m bytes: a_base + 2(n-N) a_nv + 2(N-1) a_net + 2(n-1)/n x m / "
        "min(B_nv, B) (B_nv alone when N = 1)",
        "- hierarchical: 2 [a_base + (L-1) a_nv + (L-1)/L x m / B_nv] + 2 (m/L) / B_pcie + "
        "2(N-1) a_net + 2(N-1)/N x m / B",
        "- ring allgather of m bytes per GPU: a_base + (n-N) a_nv + (N-1) a_net + (n-1) x m / "
        "min(B_nv, B)",
        "- coordination beyond one node: x = 2 a_net added to every Horovod call when N > 1 "
        "(0 on one node)",
        "- gradients: k = ceil(G / 128 MiB) calls of G/k bytes, each + s + x (G halved with fp16 "
        "compression); at a cycle T other than the default, s = alpha + s_ar(T) - s_ar(1 ms)",
        "- SyncBN under Horovod, over the g GPUs of a layer's group (g = n for `all`, "
        "min(n, L) for `node`): sum over BN layers of [s_ag(T) + s_ar(T) + 2x + "
        "allreduce_g(2C x 4) + allgather_g(3C x 4)], small-message latencies; s_ag(T), s_ar(T) "
        "the measured cost per allgather and allreduce call at cycle T",
        "- SyncBN over the MPI transport (`dist.sync_bn_transport: mpi`), group of g GPUs on "
        "N_g nodes, l = min(g, L) of them per node: sum over BN layers of [m_ag + m_ar + "
        "e(3C x 4, g) + e(2C x 4, g)], m_ag and m_ar the measured cost per call (2 workers); no "
        "x, no cycle. One exchange of p bytes per GPU (every member sends p to each other "
        "member; the allreduce sums the gathered pieces on the host): e(p, g) = a_base + "
        "(g-N_g) a_nv + (N_g-1) a_net + l (g-l) p / B + (l-1) p / B_pcie + 2 a_copy + (p + r) / "
        "B_pcie, with r = g p returned to the GPU by an allgather, p by an allreduce, a_copy = "
        "`gpu_host_copy_s`; small-message latencies. Gradients as the Horovod designs at the "
        "default cycle",
        "- parameter server with M servers: max(2G / (B/L), 2nG / (M B)) + 2 a_net",
        "- one process per node (D = L devices): t_grad = 2(L-1)/L x G / B_nv + [N > 1] "
        "(max(2G / B, 2NG / (M B)) + 2 a_net) with M = N servers; t_syncbn = 2 x BN layers x "
        "a_dev (a_dev = `inprocess_sync_s`)",
        "- efficiency: t_c / (t_c + t_grad + t_syncbn) without overlap; t_c / (t_c + max(0, "
        "t_grad - 2/3 t_c) + t_syncbn) with full overlap",
        "",
        "## Synchronized-BN designs",
        "",
        "Ways to train phase 1 with BN statistics over more than one GPU's images, with "
        "per-GPU BN and today's parameter server for reference. Horovod designs use the ring "
        "allreduce and fp32 gradients (the defaults; fp16 and hierarchical variants of the "
        "all-worker design are in the later tables). %d images per GPU in phase 1." % (
            p1["global_batch"] // c("reference_gpus")),
        "",
        designs_overview(costs, software_s, calls, mpi_calls),
        "",
        "## Designs, phase 1 (%s, BN trained)" % phase_label(costs, 1),
        "",
    ]
    columns1 = [(d["column"], d["key"]) for d in DESIGNS]
    for model in MODELS:
        parts += ["### %s" % model, "", design_table(dp, 1, model, columns1), ""]
    parts += ["## Designs, phase 2 (%s, BN frozen)" % phase_label(costs, 2), "", coincide, ""]
    for model in MODELS:
        parts += ["### %s" % model, "", design_table(dp, 2, model, columns2), ""]
    parts += ["## Recommended settings per scale", "",
              "The design with the best predicted efficiency (no overlap, then full overlap) "
              "among those whose BN statistics span at least the recipe's %d images per "
              "normalisation in phase 1 (any design in phase 2, BN frozen), for each model and "
              "network:" % p1["global_batch"], "",
              recommended_table(dp, costs), "",
              recommendation_notes(dp, costs, software_s), "",
              mpi_recommendation_text(dp, costs), ""]
    parts += ["## Phase 1 as the recipe runs it (%s, SyncBN over all workers, default cycle)"
              % phase_label(costs, 1), ""]
    for model in MODELS:
        parts += ["### %s" % model, "", efficiency_table(pred, 1, model, True), ""]
    parts += ["## Phase 1, gradient allreduce only (%s, per-GPU BN: `dist.sync_bn: false`)"
              % phase_label(costs, 1), ""]
    for model in MODELS:
        parts += ["### %s" % model, "", efficiency_table(pred, 1, model, False), ""]
    parts += ["## Phase 2 (%s, BN frozen: no SyncBN)" % phase_label(costs, 2), "",
              "%s: %.1fx the compute per GPU of phase 1 (FLOPs per image x images per GPU) for "
              "the same gradient, so communication weighs less." % (
                  SHORT[MODELS[0]], p2["train_gflops_per_image"] * p2["global_batch"]
                  / (p1["train_gflops_per_image"] * p1["global_batch"])), ""]
    for model in MODELS:
        parts += ["### %s" % model, "", efficiency_table(pred, 2, model, False), ""]
    parts += ["## Parameter server (MXNet dist_sync), phase 1, per-worker BN", "",
              "M server machines; one worker process per GPU. Last column: Horovod's ring "
              "(fp32, gradient only) on the same cluster.", ""]
    for model in MODELS:
        parts += ["### %s" % model, "", ps_table(ps, pred, model), ""]
    parts += ["## How much rides on the software cost per call (phase 1, ring fp32)", "",
              "One software cost s for every Horovod call, gradients and SyncBN alike (no "
              "coordination term): the allreduce benchmark's alpha (%.2f ms: Gloo over "
              "loopback, %d CPUs, load average %.2f), one Horovod cycle, or nothing (the "
              "network model alone)."
              % (1e3 * software_s, ar["machine"]["cpus"],
                 ar["machine"]["loadavg_1min_at_start"]), ""]
    for model in MODELS:
        parts += ["### %s" % model, "", sensitivity_table(costs, model, software_s), ""]
    parts += ["## Where the time goes (phase 1, milliseconds per step)", "",
              "Compute on one GPU, then the gradient communication of each variant (before "
              "any overlap), then SyncBN's collectives over all workers at the default cycle.",
              ""]
    for model in MODELS:
        parts += ["### %s" % model, "", breakdown_table(pred, model), ""]
    if benches:
        parts += ["## Measured on this machine (CPU, `deeplab bench`), for comparison", "",
                  "Shares of the measured step; the last column is what the allreduce fit "
                  "predicts for the gradient allreduce on this machine (same number of "
                  "workers only).", "", bench_section(benches, ar), ""]
    if getattr(args, "multihost", None):
        with open(args.multihost) as f:
            parts += [multihost_section(json.load(f), args.multihost), ""]
    parts += ["## What this says", "", observations(pred, ps, costs, dp, calls, mpi_calls), ""]
    return "\n".join(parts)


def _pct(measured, predicted):
    return 100.0 * (measured - predicted) / predicted


def multihost_section(mh, path):
    """'The model against an emulated network': benchmarks/multihost.py's measurements beside
    ring_allreduce_s / ring_allgather_s for the same links (its JSON carries both)."""
    rows = ["| hosts | link each way | collective | measured | model | measured vs model |",
            "|---|---|---|---|---|---|"]
    far = []
    for r in mh["results"]:
        m, p = r["measured"], r["predicted"]
        link = "not shaped" if r["rate"] == "none" else r["rate"]
        cases = [("allreduce %s" % _bytes(size), a * 1e3, b * 1e3, "ms")
                 for size, a, b in zip(mh["sizes"], m["allreduce_s"], p["allreduce_s"])]
        cases += [("SyncBN %s (3 x C float32)" % op, m["syncbn_call_us"][op],
                   p["syncbn_call_us"][op], "us") for op in ("allgather", "allreduce")]
        for what, a, b, unit in cases:
            d = _pct(a, b)
            if abs(d) > 25:
                far.append((r["hosts"], link, what, d))
            rows.append("| %d | %s | %s | %.4g %s | %.4g %s | %+.0f%% |"
                        % (r["hosts"], link, what, a, unit, b, unit, d))
        rows.append("| %d | %s | tiny training step (`deeplab bench`, SyncBN) | %.3g s | — | "
                    "— |" % (r["hosts"], link, m["train_step_s"]))
    soft = mh["software"]
    if "alpha_s" not in soft:  # per number of hosts
        soft = soft[str(min(int(k) for k in soft))]
    text = [
        "## The model against an emulated network", "",
        "Measured by `%s` (`%s`, %s, %d CPU cores, netem %s): each host a network namespace "
        "with its own sshd, links limited with tc tbf in both directions, one Horovod worker per "
        "host over Gloo. The model is this file's `ring_allreduce_s` / `ring_allgather_s` with "
        "those links (one worker per node, the rate each way, %.1f us per network hop: the "
        "one-way latency of a TCP round trip between two unshaped hosts), plus the software cost "
        "per call measured over loopback (allreduce alpha %.2f ms; synchronized-BN calls at the "
        "1 ms cycle %.0f / %.0f us with 2 workers, and the loopback figures for 4 workers "
        "where the hosts are 4)."
        % (" ".join(mh["command"]), path, mh["date"], mh["cpu_count"],
           "available" if mh["netem"] else "absent: no delay cases", mh["hop_latency_s"] * 1e6,
           soft["alpha_s"] * 1e3, soft["allgather_s"] * 1e6, soft["allreduce_s"] * 1e6), "",
        "\n".join(rows), ""]
    # The emulation's own ceiling: the largest allreduce's bandwidth with links not shaped.
    ceiling = {}
    for r in mh["results"]:
        if r["rate"] == "none":
            n, size, t = r["hosts"], mh["sizes"][-1], r["measured"]["allreduce_s"][-1]
            ceiling[n] = 2 * (n - 1) / n * size / t
    reasons = {"ceiling": [], "alpha": [], "other": []}
    by_case = {(r["hosts"], "not shaped" if r["rate"] == "none" else r["rate"]): r
               for r in mh["results"]}
    for hosts, link, what, d in far:
        r = by_case[hosts, link]
        bits = r.get("rate_bits_per_s")
        small = what.startswith("SyncBN") or (what.startswith("allreduce") and
                                              what.endswith("KiB"))
        if not small and (bits is None or (hosts in ceiling and bits / 8 >= ceiling[hosts])):
            reasons["ceiling"].append("%d hosts %s %s %+.0f%%" % (hosts, link, what, d))
        elif small:
            reasons["alpha"].append("%d hosts %s %s %+.0f%%" % (hosts, link, what, d))
        else:
            reasons["other"].append("%d hosts %s %s %+.0f%%" % (hosts, link, what, d))
    total = sum(len(mh["sizes"]) + 2 for _ in mh["results"])
    text += ["%d of %d cases differ from the model by more than 25%%." % (len(far), total), ""]
    if reasons["ceiling"]:
        text += ["- **Above what the emulation can carry** (%s): with links not shaped, the "
                 "largest allreduce moved %s bus bandwidth, so a faster link setting cannot show: "
                 "the namespaces' veth and bridge path, tc and Gloo's reductions share this "
                 "machine's %d cores, and the measured time is the host's, not the link's. The "
                 "model's bandwidth term (the link rate) is right for real NICs, where the "
                 "network and not the CPU is the slower; the emulation cannot represent links "
                 "faster than its ceiling." % ("; ".join(reasons["ceiling"]), ", ".join(
                     "%.0f MB/s on %d hosts" % (bw / 1e6, n) for n, bw in sorted(
                         ceiling.items())), mh["cpu_count"])]
    if reasons["alpha"]:
        text += ["- **Per-call software cost** (%s): these calls are dominated by the software "
                 "cost per call, which the model takes from the loopback benchmarks (Horovod's 1 "
                 "ms cycle, negotiation, Gloo on the CPU) and which varies with how busy the "
                 "machine's cores are (1-minute load average at the start of each setting: %s). "
                 "The network terms of these calls (a few hops of %.0f us and a few KiB) are "
                 "below that noise, so they neither confirm nor refute the model's latency "
                 "terms." % ("; ".join(reasons["alpha"]), ", ".join(
                     "%.1f" % r["loadavg_1min_at_start"] for r in mh["results"]
                     if "loadavg_1min_at_start" in r) or "not recorded",
                     mh["hop_latency_s"] * 1e6)]
    if reasons["other"]:
        text += ["- **Not explained by the emulation's known limits**: %s."
                 % "; ".join(reasons["other"])]
    return "\n".join(text)


def _bytes(n):
    return "%d MiB" % (n >> 20) if n >= MiB and n % MiB == 0 else "%d KiB" % (n >> 10)


def main(args):
    with open(args.allreduce) as f:
        ar = json.load(f)
    with open(args.collective_latency) as f:
        latency = json.load(f)
    if args.costs:
        with open(args.costs) as f:
            costs = json.load(f)
    else:
        costs = model_costs()
    benches = []
    for path in args.bench:
        with open(path) as f:
            benches.append((path, json.load(f)))
    with open(args.collective_latency_mpi) as f:
        latency_mpi = json.load(f)
    text = render(args, costs, ar, benches, software_s=ar["fit"]["alpha_s"], latency=latency,
                  latency_mpi=latency_mpi)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print("wrote %s" % args.out)
    if args.print_recommended:
        dp = design_predictions(costs, ar["fit"]["alpha_s"], sync_call_costs(latency),
                                mpi_call_costs(latency_mpi))
        print(recommended_table(dp, costs))


if __name__ == "__main__":
    main(parse_args())
