"""Predicted data-parallel scaling efficiency of the DeepLabV3 recipe on GPU clusters, from measured
terms (model FLOPs, gradient bytes, BN layers: counted on the networks; Horovod's software cost per
allreduce: `benchmarks/allreduce.py`) and published figures (GPU throughput, link bandwidths and
latencies). Writes benchmarks/SCALING.md.

    .venv/bin/python benchmarks/scaling_model.py --allreduce benchmarks/results/allreduce.json \
        [--bench BENCH.json ...] [--costs COSTS.json] [--out benchmarks/SCALING.md]

Every published constant is in CONSTANTS below with its source; the formulas are the functions
`ring_allreduce_s`, `hierarchical_allreduce_s`, `ring_allgather_s`, `ps_pushpull_s`,
`step_terms` and `efficiency`, each stating its model. Nothing in the markdown is typed by hand:
tables and the closing observations are generated from the same numbers.

--costs replaces building the networks (about a minute here) with a JSON of the same shape as
`model_costs()` returns; the tests use it. --bench adds the CPU measurements of `deeplab bench`
for comparison only (this machine has no GPU: they do not enter the predictions).
"""
import argparse
import datetime
import json
import math
import os
import sys

MiB = 1 << 20

# Published constants. `value` in SI units (bytes, seconds, FLOP/s); `source` says where it is from.
CONSTANTS = {
    "peak_tf32_flops": {
        "value": 156e12, "text": "156 TFLOP/s",
        "what": "A100 SXM peak, TF32 tensor cores (dense): what MXNet's float32 convolutions use "
                "on Ampere",
        "source": "NVIDIA A100 Tensor Core GPU datasheet (TF32 Tensor Core: 156 TFLOPS, 312 with "
                  "sparsity)"},
    "rn50_images_per_s": {
        "value": 1022.0, "text": "1022 images/s",
        "what": "ResNet-50 v1.5 training throughput of one A100 80GB, MXNet, TF32, batch 256",
        "source": "NVIDIA DeepLearningExamples, MxNet/Classification/RN50v1.5/README.md, "
                  "'Training performance: NVIDIA DGX A100 (8x A100 80GB)', 1 GPU, TF32 "
                  "(mxnet-20.12-py3 container)"},
    "gpus_per_node": {
        "value": 8, "text": "8",
        "what": "GPUs per node, all-to-all NVLink through NVSwitch",
        "source": "NVIDIA DGX A100 / AWS p4d.24xlarge (8x A100 with NVSwitch)"},
    "nvlink_busbw": {
        "value": 235e9, "text": "235 GB/s",
        "what": "achievable NCCL bus bandwidth inside an A100 node (link: 600 GB/s total, "
                "both directions)",
        "source": "NVIDIA/nccl src/graph/tuning.cc (`if (compCap80) busBw = std::min(busBw, "
                  "235.0f)`); NVIDIA A100 datasheet (NVLink 600 GB/s)"},
    "pcie_bw": {
        "value": 32e9, "text": "32 GB/s",
        "what": "GPU <-> host copy bandwidth, one direction (PCIe Gen4 x16)",
        "source": "NVIDIA A100 datasheet (PCIe Gen4: 64 GB/s, both directions)"},
    "network_gbps": {
        "value": [25, 100, 400], "text": "25, 100, 400 Gb/s",
        "what": "network bandwidth per node (all its NICs together), full duplex",
        "source": "AWS p3.16xlarge (25 Gb/s), p3dn.24xlarge (100 Gb/s): AWS Compute Blog "
                  "'Optimizing deep learning on P3 and P3dn with EFA'; p4d.24xlarge (400 Gb/s "
                  "EFA): AWS Compute Blog 'Amazon EC2 P4d instances deep dive'"},
    "lat_large": {
        "value": {"base": 8.4e-6, "nvlink": 3.4e-6, "net": 9.6e-6},
        "text": "8.4 us per call + 3.4 us per NVLink hop + 9.6 us per network hop",
        "what": "collective latency for large messages (NCCL ring, Simple protocol)",
        "source": "NVIDIA/nccl src/graph/tuning.cc, baseLat and hwLat tables (Ring/Simple), "
                  "commit 01afd20a"},
    "lat_small": {
        "value": {"base": 3.6e-6, "nvlink": 0.47e-6, "net": 2.7e-6},
        "text": "3.6 us per call + 0.47 us per NVLink hop + 2.7 us per network hop",
        "what": "collective latency for small messages (NCCL ring, LL protocol): SyncBN's",
        "source": "NVIDIA/nccl src/graph/tuning.cc, baseLat and hwLat tables (Ring/LL), "
                  "commit 01afd20a"},
    "fusion_threshold": {
        "value": 128 * MiB, "text": "128 MiB",
        "what": "Horovod tensor-fusion buffer: gradients ready together go in one allreduce of "
                "at most this size",
        "source": "horovod/common/operations.cc (`SetTensorFusionThresholdBytes(128 * 1024 * "
                  "1024)`); Horovod CHANGELOG v0.21.0 (#2468: 64 MB -> 128 MB); "
                  "docs/tensor-fusion.rst still says 64 MB"},
    "horovod_cycle_time": {
        "value": 1e-3, "text": "1 ms",
        "what": "Horovod's background loop period: a call waits for the next cycle to be "
                "negotiated (used only in the software-cost sensitivity table)",
        "source": "horovod/common/operations.cc (`SetCycleTimeMs(1)`); Horovod CHANGELOG "
                  "v0.21.0 (#2468: 5 ms -> 1 ms)"},
    "reference_gpus": {
        "value": 8, "text": "8",
        "what": "GPUs the recipe's global batch is spread over; the per-GPU batch is then kept "
                "as GPUs are added (weak scaling)",
        "source": "assumption (one 8-GPU node runs the recipe as written)"},
}
CONFIGS = {1: "configs/deeplabv3_r50v2-os16_bs16_30k_trainaug_513.yaml",
           2: "configs/deeplabv3_r50v2-os8_bs8_30k_trainaug_513_frozenbn.yaml"}
MODELS = ("deeplabv3_resnet50_v2", "deeplabv3_resnet101_v2")
GPUS = (8, 64, 512)
VARIANTS = (("ring", 4), ("ring", 2), ("hierarchical", 4), ("hierarchical", 2))  # bytes per value
SHORT = {"deeplabv3_resnet50_v2": "R50", "deeplabv3_resnet101_v2": "R101"}


def c(name):
    return CONSTANTS[name]["value"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--allreduce", required=True,
                   help="JSON of benchmarks/allreduce.py: its alpha is the software cost per call")
    p.add_argument("--bench", nargs="*", default=[],
                   help="JSON reports of `deeplab bench` (CPU), shown for comparison")
    p.add_argument("--costs", help="model costs JSON instead of building the networks")
    p.add_argument("--out", default="benchmarks/SCALING.md")
    args = p.parse_args(argv)
    args.command = [os.path.relpath(sys.executable), os.path.relpath(sys.argv[0])] + (
        sys.argv[1:] if argv is None else list(argv))
    return args


# ---------------------------------------------------------------------------------------------
# Inputs counted on the networks

def model_costs():
    """FLOPs, gradient bytes and BN layers of both models in both phases, and ResNet-50's forward
    multiply-adds (the utilization reference), counted with deeplab.bench.costs on networks built as
    training builds them (phase 1: synchronized BN; phase 2: frozen BN, gamma/beta not trained).
    """
    import mxnet as mx
    from gluoncv.model_zoo import resnet50_v1b

    from deeplab import dist
    from deeplab.build import build_model
    from deeplab.config import load_config
    from deeplab.bench.costs import TRAIN_FLOPS_PER_FORWARD, count_costs
    from deeplab.dist.syncbn import SyncBatchNorm

    dist.init("local")
    rn50 = resnet50_v1b(pretrained=False)  # ResNet-50 v1.5: stride 2 in the 3x3 convolutions
    rn50.initialize()
    ref = count_costs(rn50, (1, 3, 224, 224))
    out = {"reference": {"name": "ResNet-50 v1.5 (gluoncv resnet50_v1b), 224x224",
                         "forward_macs_per_image": ref["forward_macs_per_image"],
                         "train_flops_per_forward": TRAIN_FLOPS_PER_FORWARD},
           "phases": []}
    for phase, path in sorted(CONFIGS.items()):
        for name in MODELS:
            cfg = load_config(path, ["model.name=" + name])
            crop = cfg["data"]["crop_size"]
            net = build_model(cfg, mx.cpu(), training=True, sync_bn=True)
            costs = count_costs(net, (1, 3, crop, crop))
            sync = []
            net.apply(lambda b: sync.append(b.gamma.shape[0])
                      if isinstance(b, SyncBatchNorm) else None)
            out["phases"].append({
                "phase": phase, "config": path, "model": name,
                "output_stride": cfg["model"]["output_stride"], "crop": crop,
                "global_batch": cfg["train"]["batch_size"], "freeze_bn": cfg["train"]["freeze_bn"],
                "forward_gflops_per_image": costs["forward_gflops_per_image"],
                "train_gflops_per_image": costs["train_gflops_per_image"],
                "grad_bytes": costs["grad_bytes"], "syncbn_channels": sync})
    return out


# ---------------------------------------------------------------------------------------------
# The model

def nodes_and_local(n, gpus_per_node):
    """(nodes, GPUs per node used) for n GPUs filling nodes of gpus_per_node."""
    local = min(n, gpus_per_node)
    if n % local:
        raise ValueError("%d GPUs do not fill nodes of %d" % (n, gpus_per_node))
    return n // local, local


def ring_allreduce_s(nbytes, n, net_bw, gpus_per_node, nvlink_bw, lat):
    """One ring allreduce of nbytes over n GPUs (NCCL's flat ring, Horovod's default).

    2(n-1) steps each pass nbytes/n to the next GPU: bytes term 2(n-1)/n * nbytes / bw, with bw
    the slowest link on the ring -- NVLink inside one node, else the node's network (a ring enters
    and leaves each node once per step; NCCL's parallel rings share the node's NICs). Latency as
    NCCL's tuning model: a base per call plus one hop latency per step, NVLink steps inside a
    node and 2(nodes-1) network steps.
    """
    if n == 1:
        return 0.0
    nodes, _ = nodes_and_local(n, gpus_per_node)
    bw = nvlink_bw if nodes == 1 else min(nvlink_bw, net_bw)
    latency = lat["base"] + 2 * (n - nodes) * lat["nvlink"] + 2 * (nodes - 1) * lat["net"]
    return latency + 2 * (n - 1) / n * nbytes / bw


def hierarchical_allreduce_s(nbytes, n, net_bw, gpus_per_node, nvlink_bw, pcie_bw, lat):
    """Horovod's HOROVOD_HIERARCHICAL_ALLREDUCE (horovod/common/ops/nccl_operations.cc,
    NCCLHierarchicalAllreduce): NCCL reduce-scatter inside the node, a copy of each GPU's 1/local
    share to host memory, MPI allreduce of that share across nodes (the `local` GPUs of a node in
    parallel, sharing its network: 2(nodes-1)/nodes * nbytes / net_bw in all), the copy back, NCCL
    allgather inside the node. MPI's per-hop latency is taken as NCCL's network hop.
    """
    if n == 1:
        return 0.0
    nodes, local = nodes_and_local(n, gpus_per_node)
    intra = lat["base"] + (local - 1) * lat["nvlink"] + (local - 1) / local * nbytes / nvlink_bw
    copies = 2 * nbytes / local / pcie_bw
    cross = 2 * (nodes - 1) * lat["net"] + 2 * (nodes - 1) / nodes * nbytes / net_bw
    return 2 * intra + copies + cross


def ring_allgather_s(nbytes_per_gpu, n, net_bw, gpus_per_node, nvlink_bw, lat):
    """Ring allgather of nbytes_per_gpu from each of n GPUs (output n * nbytes_per_gpu): n-1 steps
    of nbytes_per_gpu each, the same links and hop latencies as the ring allreduce."""
    if n == 1:
        return 0.0
    nodes, _ = nodes_and_local(n, gpus_per_node)
    bw = nvlink_bw if nodes == 1 else min(nvlink_bw, net_bw)
    latency = lat["base"] + (n - nodes) * lat["nvlink"] + (nodes - 1) * lat["net"]
    return latency + (n - 1) * nbytes_per_gpu / bw


def ps_pushpull_s(nbytes, n, servers, net_bw, gpus_per_node, lat):
    """MXNet dist_sync: every worker pushes its whole gradient and pulls the whole sum; the keys
    are spread evenly over `servers` server machines with net_bw each. One worker process per GPU
    (as `deeplab launch ps` runs it), so a node's workers share its network: worker side 2 nbytes
    / (net_bw / local), server side 2 n nbytes / (servers net_bw). Push, then pull (the server
    sums all n pushes of a key before any pull of it): the two add. Latency: one network hop
    each way (ps-lite's own software cost is not measured, which favours the PS).
    """
    _, local = nodes_and_local(n, gpus_per_node)
    worker = 2 * nbytes / (net_bw / local)
    server = 2 * n * nbytes / (servers * net_bw)
    return max(worker, server) + 2 * lat["net"]


def compute_s(train_gflops_per_image, batch, reference):
    """Seconds of one training step on one GPU: the step's FLOPs at the FLOP rate the published
    ResNet-50 throughput implies (utilization = that rate / peak)."""
    return train_gflops_per_image * 1e9 * batch / (c("peak_tf32_flops") * utilization(reference))


def utilization(reference):
    """Fraction of TF32 peak that MXNet's ResNet-50 training reaches on an A100: images/s x
    training FLOPs per image / peak, with the FLOPs counted by the same rule as ours."""
    flops = reference["train_flops_per_forward"] * 2 * reference["forward_macs_per_image"]
    return c("rn50_images_per_s") * flops / c("peak_tf32_flops")


def step_terms(costs, n, gbps, algorithm, value_bytes, software_s, sync_bn, reference):
    """Seconds per step on n GPUs: compute, gradient communication, SyncBN's collectives.

    Gradients (value_bytes per value: 4, or 2 with fp16 compression) go in ceil(bytes / fusion
    threshold) allreduces, each paying the measured software cost. SyncBN (if on): per BN layer
    of C channels one allgather of 3C float32 (forward) and one allreduce of 2C (backward), each
    a separate Horovod call with the same software cost; they sit between layers, so they are
    never hidden behind computation.
    """
    batch = costs["global_batch"] // c("reference_gpus")
    net_bw = gbps * 1e9 / 8
    hw = dict(net_bw=net_bw, gpus_per_node=c("gpus_per_node"), nvlink_bw=c("nvlink_busbw"))

    def allreduce(nbytes, lat):
        if algorithm == "ring":
            return ring_allreduce_s(nbytes, n, lat=lat, **hw)
        return hierarchical_allreduce_s(nbytes, n, pcie_bw=c("pcie_bw"), lat=lat, **hw)

    wire = costs["grad_bytes"] * value_bytes // 4
    calls = math.ceil(wire / c("fusion_threshold"))
    grad = calls * (software_s + allreduce(wire / calls, c("lat_large")))
    sync = 0.0
    if sync_bn:
        for ch in costs["syncbn_channels"]:
            sync += 2 * software_s + allreduce(2 * ch * 4, c("lat_small")) + ring_allgather_s(
                3 * ch * 4, n, lat=c("lat_small"), **hw)
    return {"compute": compute_s(costs["train_gflops_per_image"], batch, reference),
            "grad": grad, "syncbn": sync, "calls": calls}


def efficiency(terms, overlap):
    """compute / (compute + exposed communication). Without overlap everything is exposed; with
    full overlap the gradient communication hides behind backward (2/3 of the compute: backward
    costs twice the forward) and only its excess is exposed. SyncBN is always exposed."""
    grad = terms["grad"]
    if overlap:
        grad = max(0.0, grad - 2.0 / 3.0 * terms["compute"])
    return terms["compute"] / (terms["compute"] + grad + terms["syncbn"])


# ---------------------------------------------------------------------------------------------
# The report

def predictions(costs, software_s):
    """Every table cell: {(phase, model, n, gbps, algorithm, value_bytes, sync_bn): terms}."""
    out = {}
    for entry in costs["phases"]:
        sync_options = (False,) if entry["freeze_bn"] else (True, False)
        for n in GPUS:
            for gbps in c("network_gbps"):
                for algorithm, vb in VARIANTS:
                    for sync in sync_options:
                        key = (entry["phase"], entry["model"], n, gbps, algorithm, vb, sync)
                        out[key] = step_terms(entry, n, gbps, algorithm, vb, software_s, sync,
                                              costs["reference"])
    return out


def ps_predictions(costs):
    """PS cells for phase 1 (per-worker BN: the parameter server has no SyncBN):
    {(model, n, gbps, servers): terms}."""
    out = {}
    for entry in costs["phases"]:
        if entry["phase"] != 1:
            continue
        batch = entry["global_batch"] // c("reference_gpus")
        t_c = compute_s(entry["train_gflops_per_image"], batch, costs["reference"])
        for n in GPUS:
            for gbps in c("network_gbps"):
                for m in ps_servers(n):
                    t = ps_pushpull_s(entry["grad_bytes"], n, m, gbps * 1e9 / 8,
                                      c("gpus_per_node"), c("lat_large"))
                    out[(entry["model"], n, gbps, m)] = {"compute": t_c, "grad": t,
                                                         "syncbn": 0.0}
    return out


def ps_servers(n):
    """Server counts shown: one, one per worker node, one per GPU."""
    return sorted({1, max(1, n // c("gpus_per_node")), n})


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
    levels = (("%.2f ms (measured)" % (1e3 * software_s), software_s),
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


def phase_entry(costs, phase, model):
    return next(e for e in costs["phases"] if e["phase"] == phase and e["model"] == model)


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
        "software cost of every Horovod call; it also contains two loopback hops, so it errs "
        "high. Bandwidths come from the published figures below. The float16 bytes cost more "
        "here than float32 bytes (Horovod sums float16 on the CPU in software); NCCL sums float16 "
        "natively on GPUs, so fp16 compression is modelled as halving the bytes only.",
    ])


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


def observations(pred, ps, costs, software_s):
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
                             SHORT[model], phase, ", SyncBN" if sync else ", no SyncBN",
                             _configs(strict), _configs(with_overlap)))
    for model in MODELS:
        entry = phase_entry(costs, 1, model)
        calls = 2 * len(entry["syncbn_channels"])
        t8 = pred[(1, model, 8, 100, "ring", 4, True)]
        bare = step_terms(entry, 512, 25, "ring", 4, 0.0, True, costs["reference"])
        gathered = 511 * 3 * 4 * sum(entry["syncbn_channels"])
        lines.append(
            "- %s: SyncBN's %d Horovod calls per step cost %.0f ms on one node against %.1f ms "
            "of compute, %.1f%% of it the measured software cost per call (%.2f ms). Without "
            "any software cost, at 512 GPUs on 25 Gb/s they would still cost %.1f ms: each GPU "
            "receives %.0f MB of allgathered statistics per step (the gradient is %.0f MB)."
            % (SHORT[model], calls, 1e3 * t8["syncbn"], 1e3 * t8["compute"],
               100 * calls * software_s / t8["syncbn"], 1e3 * software_s, 1e3 * bare["syncbn"],
               gathered / 1e6, entry["grad_bytes"] / 1e6))
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


def _configs(groups):
    """{(GPUs, Gb/s): [variants]} as '8 GPUs at 25/100/400 Gb/s (all variants); ...' or 'none'
    (networks with the same variants are merged)."""
    merged = {}
    for (n, gbps), variants in sorted(groups.items()):
        names = "all variants" if len(variants) == len(VARIANTS) else ", ".join(variants)
        merged.setdefault((n, names), []).append(str(gbps))
    return "; ".join("%d GPUs at %s Gb/s (%s)" % (n, "/".join(g), names)
                     for (n, names), g in merged.items()) or "none"


def assumptions_section(costs, software_s, workers):
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
        "- Software cost per Horovod call: alpha of the allreduce benchmark (%.2f ms), for "
        "gradient allreduces, SyncBN's allgathers and allreduces alike. It includes Horovod's "
        "wait for its next cycle (HOROVOD_CYCLE_TIME, 1 ms by default) and the negotiation of "
        "every call among the workers. It was measured with %d workers; the negotiation "
        "involves every worker each cycle, so on 64-512 GPUs it is probably larger (not "
        "modelled), while an idle GPU host's CPU may be faster than this one."
        % (1e3 * software_s, workers),
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
        "GPUs ((n-1) x 3C x 4 per GPU).",
        "- Parameter server: one server process per machine with the same network; keys spread "
        "evenly over servers (MXNet splits large arrays across servers); the server's summing "
        "and ps-lite's software cost are not counted; no fp16 compression (ours is Horovod's).",
    ])


def render(args, costs, ar, benches, software_s):
    pred = predictions(costs, software_s)
    ps = ps_predictions(costs)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    inputs = ["- allreduce benchmark: `%s`" % args.allreduce,
              "- model costs: %s" % ("`%s`" % args.costs if args.costs else
                                     "counted on the networks built from %s (R50 as written, "
                                     "R101 with `model.name` swapped)"
                                     % ", ".join("`%s`" % p for p in CONFIGS.values()))]
    inputs += ["- deeplab bench: `%s`" % p for p, _ in benches]
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
        "## Assumptions",
        "",
        assumptions_section(costs, software_s, ar["workers"]),
        "",
        "## Formulas",
        "",
        "Per step, n GPUs, nodes of L = 8, network bandwidth B per node, NVLink bus bandwidth "
        "B_nv, PCIe B_pcie, N = n / L nodes, software cost per Horovod call s; latencies a_base, "
        "a_nv, a_net from NCCL's tuning model:",
        "",
        "- compute: t_c = train GFLOPs/image x images/GPU / (peak x utilization)",
        "- ring allreduce of m bytes: a_base + 2(n-N) a_nv + 2(N-1) a_net + 2(n-1)/n x m / "
        "min(B_nv, B) (B_nv alone when N = 1)",
        "- hierarchical: 2 [a_base + (L-1) a_nv + (L-1)/L x m / B_nv] + 2 (m/L) / B_pcie + "
        "2(N-1) a_net + 2(N-1)/N x m / B",
        "- ring allgather of m bytes per GPU: a_base + (n-N) a_nv + (N-1) a_net + (n-1) x m / "
        "min(B_nv, B)",
        "- gradients: k = ceil(G / 128 MiB) calls of G/k bytes, each + s (G halved with fp16 "
        "compression)",
        "- SyncBN: sum over BN layers of [2 s + allreduce(2C x 4) + allgather(3C x 4)], small-"
        "message latencies",
        "- parameter server with M servers: max(2G / (B/L), 2nG / (M B)) + 2 a_net",
        "- efficiency: t_c / (t_c + t_grad + t_syncbn) without overlap; t_c / (t_c + max(0, "
        "t_grad - 2/3 t_c) + t_syncbn) with full overlap",
        "",
        "## Phase 1 as the recipe runs it (%s, synchronized BN)" % phase_label(costs, 1),
        "",
    ]
    for model in MODELS:
        parts += ["### %s" % model, "", efficiency_table(pred, 1, model, True), ""]
    parts += ["## Phase 1, gradient allreduce only (%s, per-GPU BN: `dist.sync_bn: false`)"
              % phase_label(costs, 1), ""]
    for model in MODELS:
        parts += ["### %s" % model, "", efficiency_table(pred, 1, model, False), ""]
    p1, p2 = (phase_entry(costs, p, MODELS[0]) for p in (1, 2))
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
              "s = the measured alpha (%.2f ms: Gloo over loopback, %d CPUs, load average %.2f), "
              "one Horovod cycle, or nothing (the network model alone)."
              % (1e3 * software_s, ar["machine"]["cpus"],
                 ar["machine"]["loadavg_1min_at_start"]), ""]
    for model in MODELS:
        parts += ["### %s" % model, "", sensitivity_table(costs, model, software_s), ""]
    parts += ["## Where the time goes (phase 1, milliseconds per step)", "",
              "Compute on one GPU, then the gradient communication of each variant (before "
              "any overlap), then SyncBN's collectives.", ""]
    for model in MODELS:
        parts += ["### %s" % model, "", breakdown_table(pred, model), ""]
    if benches:
        parts += ["## Measured on this machine (CPU, `deeplab bench`), for comparison", "",
                  "Shares of the measured step; the last column is what the allreduce fit "
                  "predicts for the gradient allreduce on this machine (same number of "
                  "workers only).", "", bench_section(benches, ar), ""]
    parts += ["## What this says", "", observations(pred, ps, costs, software_s), ""]
    return "\n".join(parts)


def main(args):
    with open(args.allreduce) as f:
        ar = json.load(f)
    if args.costs:
        with open(args.costs) as f:
            costs = json.load(f)
    else:
        costs = model_costs()
    benches = []
    for path in args.bench:
        with open(path) as f:
            benches.append((path, json.load(f)))
    text = render(args, costs, ar, benches, software_s=ar["fit"]["alpha_s"])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print("wrote %s" % args.out)


if __name__ == "__main__":
    main(parse_args())
