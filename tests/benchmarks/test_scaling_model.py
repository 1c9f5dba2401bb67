"""benchmarks/scaling_model.py: its formulas against hand computations; benchmarks/
scaling_report.py: a full run on hand-made inputs that must produce every table cell;
benchmarks/allreduce.py: its fit, and a tiny run under horovodrun that writes a well-formed
report. No speed is asserted.
"""
import importlib.util
import json
import math
import os
import re
import sys

import pytest
from conftest import ROOT

ZERO = {"base": 0.0, "nvlink": 0.0, "net": 0.0}


def load(name):
    # benchmarks/ on sys.path, as for its scripts (scaling_report imports scaling_model)
    if os.path.join(ROOT, "benchmarks") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks",
                                                                     name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sm():
    return load("scaling_model")


@pytest.fixture(scope="module")
def report():
    return load("scaling_report")


def test_ring_allreduce_by_hand(sm):
    # 8 GPUs on 8 nodes (one GPU each), 100 MB, 100 Gb/s: 2 (n-1)/n x bytes / bandwidth.
    t = sm.ring_allreduce_s(100e6, 8, 100e9 / 8, gpus_per_node=1, nvlink_bw=1e15, lat=ZERO)
    assert math.isclose(t, 2 * 7 / 8 * 100e6 / 12.5e9)
    assert math.isclose(t, 0.014)
    # 16 GPUs on 2 nodes: 28 NVLink steps, 2 network steps, bytes limited by the network.
    lat = {"base": 1e-6, "nvlink": 2e-6, "net": 10e-6}
    t = sm.ring_allreduce_s(100e6, 16, 12.5e9, gpus_per_node=8, nvlink_bw=200e9, lat=lat)
    assert math.isclose(t, 1e-6 + 28 * 2e-6 + 2 * 10e-6 + 2 * 15 / 16 * 100e6 / 12.5e9)
    # One node: NVLink only, whatever the network.
    t = sm.ring_allreduce_s(100e6, 8, 1.0, gpus_per_node=8, nvlink_bw=200e9, lat=ZERO)
    assert math.isclose(t, 2 * 7 / 8 * 100e6 / 200e9)


def test_hierarchical_allreduce_by_hand(sm):
    # 16 GPUs, 2 nodes: reduce-scatter and allgather on NVLink, 1/8 to host and back over PCIe,
    # the 8 parallel cross-node allreduces of 10 MB sharing the node's 12.5 GB/s.
    t = sm.hierarchical_allreduce_s(80e6, 16, 12.5e9, gpus_per_node=8, nvlink_bw=200e9,
                                    pcie_bw=25e9, lat=ZERO)
    assert math.isclose(t, 2 * (7 / 8 * 80e6 / 200e9) + 2 * 10e6 / 25e9
                        + 2 * (1 / 2) * 80e6 / 12.5e9)
    assert math.isclose(t, 7.9e-3)


def test_allgather_ps_and_efficiency_by_hand(sm):
    assert math.isclose(sm.ring_allgather_s(1e6, 4, 1e9, 1, 1e15, ZERO), 3e-3)
    # 16 GPUs (2 nodes of 8 workers), 100 MB, 10 GB/s: each worker has 1/8 of its node's network.
    assert math.isclose(sm.ps_pushpull_s(1e8, 16, 2, 1e10, 8, ZERO), 2 * 1e8 / (1e10 / 8))
    assert math.isclose(sm.ps_pushpull_s(1e8, 16, 1, 1e10, 8, ZERO), 2 * 16 * 1e8 / 1e10)
    terms = {"compute": 3.0, "grad": 3.0, "syncbn": 1.0}
    assert math.isclose(sm.efficiency(terms, overlap=False), 3 / 7)
    assert math.isclose(sm.efficiency(terms, overlap=True), 3 / (3 + 1 + 1))


def test_utilization_and_fusion(sm):
    ref = {"forward_macs_per_image": 4.089e9, "train_flops_per_forward": 3.0}
    assert math.isclose(sm.utilization(ref), 1022 * 6 * 4.089e9 / 156e12)
    costs = phases()[0]
    fp32 = sm.step_terms(costs, 64, 400, "ring", 4, 1e-3, False, ref)
    fp16 = sm.step_terms(costs, 64, 400, "ring", 2, 1e-3, False, ref)
    assert (fp32["calls"], fp16["calls"]) == (2, 1)  # 200 MiB: two 128 MiB fusions, then one
    assert fp16["grad"] < fp32["grad"] and fp16["compute"] == fp32["compute"]


def phases():
    entries = []
    for phase, os_, batch, frozen in ((1, 16, 16, False), (2, 8, 8, True)):
        for name, scale in (("deeplabv3_resnet50_v2", 1.0), ("deeplabv3_resnet101_v2", 1.5)):
            entries.append({
                "phase": phase, "config": "configs/x.yaml", "model": name, "output_stride": os_,
                "crop": 513, "global_batch": batch, "freeze_bn": frozen,
                "forward_gflops_per_image": 100.0 * scale * (16 / os_),
                "train_gflops_per_image": 300.0 * scale * (16 / os_),
                "grad_bytes": int(200 * 2 ** 20 * scale),
                "syncbn_channels": [] if frozen else [64, 256, 1024, 2048]})
    return entries


def write_inputs(tmp_path):
    costs = {"reference": {"name": "ResNet-50", "forward_macs_per_image": 4089184256,
                           "train_flops_per_forward": 3.0},
             "phases": phases()}
    fit = {"alpha_s": 1e-3, "beta_s_per_byte": 1e-9, "algbw_bytes_per_s": 1e9,
           "busbw_bytes_per_s": 1e9}
    allreduce = {"benchmark": "allreduce", "date": "2026-01-01T00:00:00+00:00",
                 "machine": {"hostname": "h", "cpus": 2, "loadavg_1min_at_start": 0.1},
                 "command": ["benchmarks/allreduce.py"], "workers": 2, "transport": "gloo",
                 "sizes": [4096, 1 << 20], "seconds": [0.001, 0.002], "fit": fit,
                 "float16": {"seconds": [0.001, 0.003], "fit": fit}}
    bench = {"model": {"name": "deeplabv3_resnet50_v2", "grad_bytes": 156163924},
             "workers": 2, "batch_per_worker": 1, "crop": 64,
             "variants": [{"name": "ours", "step_s": 2.0, "breakdown_s": {
                 "data": 0.1, "fwd_bwd": 1.5, "comm": 0.3, "update": 0.1}}]}
    paths = {}
    for name, obj in (("costs", costs), ("allreduce", allreduce), ("bench", bench),
                      ("latency", latency_report()), ("latency_mpi", mpi_latency_report())):
        paths[name] = tmp_path / (name + ".json")
        paths[name].write_text(json.dumps(obj))
    return paths


def latency_run(workers, cycle, sets="none", cache=True, us=(500.0, 800.0)):
    """One configuration of benchmarks/collective_latency.py's report: allgather and allreduce
    per-call medians us[0] and us[1] (plus 10 us per size step, averaged out below)."""
    env = {"HOROVOD_CYCLE_TIME": cycle}
    if not cache:
        env["HOROVOD_CACHE_CAPACITY"] = "0"
    calls = {}
    for i, ch in enumerate((64, 256, 2048)):
        for op, base in zip(("allgather", "allreduce"), us):
            for group in ("all",) + (("pair",) if sets != "none" else ()):
                calls["%s C=%d %s" % (op, ch, group)] = {
                    "median_us": base + 10.0 * (i - 1) + (0 if group == "all" else -100.0),
                    "p10_us": base, "p90_us": base, "n": 3}
    return {"workers": workers, "idle_cpu_cores": 0.1, "calls": calls,
            "label": "%dw cycle %sms %s" % (workers, cycle, sets), "environment": env,
            "sets": sets, "command": "horovodrun"}


def latency_report():
    return {"benchmark": "benchmarks/collective_latency.py", "date": "2026-01-01T00:00:00+00:00",
            "command": "benchmarks/collective_latency.py --calls 3",
            "machine": {"platform": "Linux", "cpus": 2},
            "results": [latency_run(2, "0.1", us=(500.0, 800.0)),
                        latency_run(2, "0.1", cache=False, us=(9000.0, 9000.0)),
                        latency_run(2, "1", us=(1100.0, 1200.0)),
                        latency_run(4, "1", "static", us=(3000.0, 4000.0)),
                        latency_run(4, "1", "dynamic", us=(7000.0, 9000.0))]}


def mpi_latency_run(label, workers=2, sets="mpi", env=None, us=(30.0, 40.0)):
    """One configuration of `benchmarks/collective_latency.py --only mpi`'s report."""
    calls = {}
    for i, ch in enumerate((64, 256, 2048)):
        for op, base in zip(("allgather", "allreduce"), us):
            calls["%s C=%d all" % (op, ch)] = {"median_us": base + 2.0 * (i - 1),
                                               "p10_us": base, "p90_us": base, "n": 3}
    return {"workers": workers, "idle_cpu_cores": 0.3, "calling_cpu_cores": 0.5,
            "calls": calls, "label": label, "environment": env or {}, "sets": sets,
            "command": "mpirun"}


def mpi_latency_report():
    return {"benchmark": "benchmarks/collective_latency.py", "date": "2026-01-01T00:00:00+00:00",
            "command": "benchmarks/collective_latency.py --only mpi --calls 3",
            "machine": {"platform": "Linux", "cpus": 2},
            "results": [mpi_latency_run("mpi 2w never yield",
                                        env={"MPIR_CVAR_POLLS_BEFORE_YIELD": "0"},
                                        us=(5.0, 5.0)),
                        mpi_latency_run("mpi 2w", us=(30.0, 40.0)),
                        mpi_latency_run("mpi 4w comms", workers=4, sets="mpi-static",
                                        us=(9000.0, 9000.0)),
                        mpi_latency_run("mpi horovod 2w cycle 1ms", sets="mpi-horovod",
                                        env={"HOROVOD_CYCLE_TIME": "1"}, us=(2000.0, 2000.0))]}


def test_mpi_call_costs_from_the_mpi_report(sm):
    # The MPI transport on 2 workers with MPICH's defaults (no environment), calls over all
    # workers, mean over C (the +-2 us cancel); not the tuned MPICH runs, 4 workers or Horovod.
    calls = sm.mpi_call_costs(mpi_latency_report())
    assert calls == pytest.approx({"allgather": 30e-6, "allreduce": 40e-6})
    with pytest.raises(KeyError, match="MPI transport"):
        sm.mpi_call_costs({"results": mpi_latency_report()["results"][2:]})


def test_sync_call_costs_from_the_latency_report(sm):
    # 2 workers, cache on, calls over all workers only; the mean over C (the +-10 us cancel).
    calls = sm.sync_call_costs(latency_report())
    assert sorted(calls) == pytest.approx([1e-4, 1e-3])
    assert calls[1e-3]["allgather"] == pytest.approx(1.1e-3)
    assert calls[1e-3]["allreduce"] == pytest.approx(1.2e-3)
    assert sm.calls_at(calls, sm.c("tuned_cycle_time"))["allreduce"] == pytest.approx(0.8e-3)
    with pytest.raises(KeyError, match="5 ms"):
        sm.calls_at(calls, 5e-3)


def syncbn_entry(channels=(64, 256), frozen=False):
    return {"phase": 2 if frozen else 1, "model": "deeplabv3_resnet50_v2", "global_batch": 16,
            "freeze_bn": frozen, "train_gflops_per_image": 300.0, "grad_bytes": 100_000_000,
            "syncbn_channels": [] if frozen else list(channels), "output_stride": 16,
            "crop": 513}


REF = {"forward_macs_per_image": 4.089e9, "train_flops_per_forward": 3.0}


def test_group_node_syncbn_step_by_hand(sm):
    # 64 GPUs (8 nodes) at 100 Gb/s, SyncBN in process sets of one node: per layer of C channels
    # the measured costs of its two calls, the coordination round trip on each (the job spans
    # nodes), and the two collectives over the node's 8 GPUs on NVLink (small-message latency).
    e = syncbn_entry()
    lat, nv = sm.c("lat_small"), sm.c("nvlink_busbw")
    ag, ar, x = 1e-3, 2e-3, 20e-6
    t = sm.step_terms(e, 64, 100, "ring", 4, 0.0, True, REF, sync_call_s=(ag, ar),
                      sync_group=8, coordination_s=x)
    by_hand = 0.0
    for ch in (64, 256):
        allreduce = lat["base"] + 2 * 7 * lat["nvlink"] + 2 * 7 / 8 * (2 * ch * 4) / nv
        allgather = lat["base"] + 7 * lat["nvlink"] + 7 * (3 * ch * 4) / nv
        by_hand += ag + ar + 2 * x + allreduce + allgather
    assert math.isclose(t["syncbn"], by_hand)
    # Over all 64 GPUs the allgather crosses the network: 63 pieces of 3C float32 at 12.5 GB/s.
    t_all = sm.step_terms(e, 64, 100, "ring", 4, 0.0, True, REF, sync_call_s=(ag, ar),
                          coordination_s=x)
    gather_all = sum(lat["base"] + 56 * lat["nvlink"] + 7 * lat["net"] + 63 * 12 * ch / 12.5e9
                     for ch in (64, 256))
    gather_node = sum(lat["base"] + 7 * lat["nvlink"] + 7 * 12 * ch / nv for ch in (64, 256))
    assert t_all["syncbn"] > t["syncbn"]
    assert math.isclose(t_all["syncbn"] - t["syncbn"], gather_all - gather_node
                        + sum(sm.ring_allreduce_s(8 * ch, 64, 12.5e9, 8, nv, lat)
                              - sm.ring_allreduce_s(8 * ch, 8, 12.5e9, 8, nv, lat)
                              for ch in (64, 256)))
    # On one node there is no coordination term: 8 GPUs, group node = all.
    one = sm.step_terms(e, 8, 100, "ring", 4, 0.0, True, REF, sync_call_s=(ag, ar),
                        sync_group=8, coordination_s=x)
    assert math.isclose(one["syncbn"], by_hand - 2 * 2 * x)
    # Gradient calls pay the coordination too beyond one node: 100 MB is one fused call.
    g = sm.step_terms(e, 64, 100, "ring", 4, 1e-3, False, REF, coordination_s=x)
    assert math.isclose(g["grad"], 1e-3 + x + sm.ring_allreduce_s(
        100e6, 64, 12.5e9, 8, nv, sm.c("lat_large")))


def test_inprocess_design_by_hand(sm):
    # 8 devices, 80 MB: each sends and receives 7/8 of the bytes twice over NVLink.
    assert math.isclose(sm.inprocess_reduce_s(80e6, 8, 200e9), 2 * 7 / 8 * 80e6 / 200e9)
    assert math.isclose(sm.inprocess_reduce_s(80e6, 8, 200e9), 0.7e-3)
    assert sm.inprocess_reduce_s(80e6, 1, 200e9) == 0.0
    e, nv, a = syncbn_entry(), sm.c("nvlink_busbw"), sm.c("inprocess_sync_s")
    # One node: the in-process sum, and 2 barriers per BN layer; no network.
    t = sm.inprocess_terms(e, 8, 25, REF)
    assert math.isclose(t["grad"], 2 * 7 / 8 * 100e6 / nv)
    assert math.isclose(t["syncbn"], 2 * 2 * a)
    # 64 GPUs on 100 Gb/s: + one push/pull of 100 MB per node, one server per node (8).
    t = sm.inprocess_terms(e, 64, 100, REF)
    assert math.isclose(t["grad"], 2 * 7 / 8 * 100e6 / nv + 2 * 100e6 / 12.5e9
                        + 2 * sm.c("lat_large")["net"])
    assert math.isclose(t["syncbn"], 2 * 2 * a)
    assert sm.inprocess_terms(syncbn_entry(frozen=True), 64, 100, REF)["syncbn"] == 0.0
    d = next(d for d in sm.DESIGNS if d["key"] == "inprocess")
    assert sm.design_terms(e, 64, 100, d, 1e-3, {}, REF) == t
    assert sm.bn_images(d, 512, e) == 16 and sm.bn_images(d, 512, syncbn_entry(frozen=True)) \
        is None


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert math.isclose(a[k], b[k], rel_tol=1e-12), k


def test_horovod_designs_by_hand(sm):
    calls = sm.sync_call_costs(latency_report())
    e, alpha = syncbn_entry(), 2e-3
    designs = {d["key"]: d for d in sm.DESIGNS}
    x = 2 * sm.c("lat_large")["net"]
    # Tuned cycle: SyncBN calls at 0.5 + 0.8 ms; gradient calls alpha + (0.8 - 1.2) ms.
    t = sm.design_terms(e, 64, 100, designs["node-tuned"], alpha, calls, REF)
    same(t, sm.step_terms(e, 64, 100, "ring", 4, alpha - 0.4e-3, True, REF,
                          sync_call_s=(0.5e-3, 0.8e-3), sync_group=8, coordination_s=x))
    assert t["calls"] == 1
    # Default cycle, all workers: 1.1 + 1.2 ms per layer, gradient calls at alpha.
    t = sm.design_terms(e, 512, 100, designs["all"], alpha, calls, REF)
    same(t, sm.step_terms(e, 512, 100, "ring", 4, alpha, True, REF,
                          sync_call_s=(1.1e-3, 1.2e-3), sync_group=512, coordination_s=x))
    # Per-GPU BN: no SyncBN term; BN frozen: no design has one.
    assert sm.design_terms(e, 64, 100, designs["gpu"], alpha, calls, REF)["syncbn"] == 0.0
    for d in sm.DESIGNS:
        assert sm.design_terms(syncbn_entry(frozen=True), 64, 100, d, alpha, calls,
                               REF)["syncbn"] == 0.0
    # Images per normalisation at 2 per GPU.
    assert [sm.bn_images(designs[k], 512, e) for k in ("all", "node", "gpu")] == [1024, 16, 2]
    # The parameter server: one server per node.
    t = sm.design_terms(e, 64, 100, designs["ps"], alpha, calls, REF)
    assert math.isclose(t["grad"], sm.ps_pushpull_s(100e6, 64, 8, 12.5e9, 8, sm.c("lat_large")))


def test_mpi_exchange_by_hand(sm):
    # 16 GPUs on 2 nodes of 8, 1 MB per GPU, 1 GB/s network, 10 GB/s PCIe, no hop latency: each
    # node's NIC carries its 8 members' piece to the 8 others; 7 on-node pieces in shared memory;
    # the piece down and the 16 gathered pieces up (allgather) or the sum (allreduce), plus two
    # copy latencies.
    hw = dict(net_bw=1e9, gpus_per_node=8, pcie_bw=1e10, lat=ZERO, copy_s=1e-5)
    gather = sm.mpi_exchange_s(1e6, 16, False, **hw)
    assert math.isclose(gather, 8 * 8 * 1e6 / 1e9 + 7 * 1e6 / 1e10 + 17 * 1e6 / 1e10 + 2e-5)
    reduce_ = sm.mpi_exchange_s(1e6, 16, True, **hw)
    assert math.isclose(reduce_, gather - 15 * 1e6 / 1e10)
    # The network bytes are L (g - L) / (g - 1) = 64/15 a ring allgather's (each piece enters a
    # node once there).
    ring = sm.ring_allgather_s(1e6, 16, 1e9, 8, 1e15, ZERO)
    assert math.isclose(8 * 8 * 1e6 / 1e9, 64 / 15 * ring)
    # Latency: one hop per peer, as the ring: base + 14 NVLink hops + 1 network hop.
    lat = {"base": 1e-6, "nvlink": 2e-6, "net": 10e-6}
    assert math.isclose(sm.mpi_exchange_s(0, 16, True, 1e9, 8, 1e10, lat),
                        1e-6 + 14 * 2e-6 + 10e-6)
    # One node: nothing on the network, whatever its bandwidth.
    assert sm.mpi_exchange_s(1e6, 8, False, 1.0, 8, 1e10, ZERO) == pytest.approx(
        7 * 1e6 / 1e10 + 9 * 1e6 / 1e10)
    assert sm.mpi_exchange_s(1e6, 1, False, **hw) == 0.0


def test_mpi_designs_by_hand(sm):
    """Horovod with SyncBN's statistics over the MPI transport: the gradients as the other
    Horovod designs at the default cycle (alpha, the coordination round trip beyond one node);
    SyncBN at the MPI report's per-call costs plus the per-peer exchanges and GPU-host copies,
    with no Horovod negotiation or coordination term."""
    calls, mpi = sm.sync_call_costs(latency_report()), sm.mpi_call_costs(mpi_latency_report())
    e, alpha = syncbn_entry(), 2e-3
    designs = {d["key"]: d for d in sm.DESIGNS}
    x = 2 * sm.c("lat_large")["net"]
    lat, pcie, cp = sm.c("lat_small"), sm.c("pcie_bw"), sm.c("gpu_host_copy_s")
    # All workers, 64 GPUs (8 nodes of 8) at 100 Gb/s, layers of 64 and 256 channels.
    t = sm.design_terms(e, 64, 100, designs["all-mpi"], alpha, calls, REF, mpi_calls=mpi)
    grad = sm.step_terms(e, 64, 100, "ring", 4, alpha, False, REF, coordination_s=x)
    assert math.isclose(t["grad"], grad["grad"]) and t["calls"] == grad["calls"] == 1
    assert math.isclose(t["grad"], alpha + x + sm.ring_allreduce_s(
        100e6, 64, 12.5e9, 8, sm.c("nvlink_busbw"), sm.c("lat_large")))
    by_hand = 0.0
    for ch in (64, 256):
        hops = lat["base"] + 56 * lat["nvlink"] + 7 * lat["net"]
        for piece, back in ((12 * ch, 64 * 12 * ch), (8 * ch, 8 * ch)):
            by_hand += (hops + 8 * 56 * piece / 12.5e9 + 7 * piece / pcie + 2 * cp
                        + (piece + back) / pcie)
        by_hand += 30e-6 + 40e-6  # the measured calls: no cycle, no coordination
    assert math.isclose(t["syncbn"], by_hand)
    # Against Horovod's transport (all workers, default cycle): the same gradients; SyncBN
    # without the measured 1.1 + 1.2 ms and the 2 x coordination per layer, but with more bytes.
    h = sm.design_terms(e, 64, 100, designs["all"], alpha, calls, REF)
    assert math.isclose(h["grad"], t["grad"]) and t["syncbn"] < h["syncbn"]
    # One node's workers: no network bytes and no coordination, the same at 8 and 64 GPUs.
    node = sm.design_terms(e, 64, 100, designs["node-mpi"], alpha, calls, REF, mpi_calls=mpi)
    one = sm.design_terms(e, 8, 100, designs["all-mpi"], alpha, calls, REF, mpi_calls=mpi)
    assert math.isclose(node["syncbn"], one["syncbn"])
    assert math.isclose(one["syncbn"], sum(
        30e-6 + 40e-6 + 2 * (lat["base"] + 7 * lat["nvlink"]) + 4 * cp
        + 7 * 20 * ch / pcie + (12 * ch + 8 * 12 * ch) / pcie + (8 * ch + 8 * ch) / pcie
        for ch in (64, 256)))
    assert math.isclose(node["grad"], t["grad"])
    # BN frozen: no SyncBN; statistics over 16 / 1024 images at 2 per GPU; the settings.
    assert sm.design_terms(syncbn_entry(frozen=True), 64, 100, designs["all-mpi"], alpha, calls,
                           REF, mpi_calls=mpi)["syncbn"] == 0.0
    assert [sm.bn_images(designs[k], 512, e) for k in ("all-mpi", "node-mpi")] == [1024, 16]
    how = sm.settings(designs["all-mpi"], 64, 1)
    assert "`dist.sync_bn_transport: mpi`" in how and "`deeplab launch horovod --mpi`" in how
    assert "`dist.sync_bn_group: all`" in how and "HOROVOD_CYCLE_TIME default" in how
    assert "`dist.sync_bn_group: node`" in sm.settings(designs["node-mpi"], 64, 1)
    assert "mpi" not in sm.settings(designs["all-mpi"], 64, 2)  # BN frozen: nothing to send
    with pytest.raises(ValueError, match="mpi_calls"):
        sm.design_terms(e, 64, 100, designs["all-mpi"], alpha, calls, REF)


def test_recommendation_keeps_bn_statistics(sm, report, tmp_path):
    paths = write_inputs(tmp_path)
    costs = json.loads(paths["costs"].read_text())
    dp = sm.design_predictions(costs, 1e-3, sm.sync_call_costs(latency_report()),
                               sm.mpi_call_costs(mpi_latency_report()))
    for phase in (1, 2):
        for model in sm.MODELS:
            entry = sm.phase_entry(costs, phase, model)
            for n in sm.GPUS:
                for gbps in sm.c("network_gbps"):
                    d = sm.recommend(dp, costs, phase, model, n, gbps)
                    ok = [o for o in sm.DESIGNS if sm.bn_images(o, n, entry) is None
                          or sm.bn_images(o, n, entry) >= 16]
                    assert d in ok
                    best = max(sm.efficiency(dp[(phase, model, n, gbps, o["key"])], False)
                               for o in ok)
                    assert math.isclose(sm.efficiency(dp[(phase, model, n, gbps, d["key"])],
                                                      False), best, rel_tol=1e-5)
                    if phase == 1:  # 2 images per GPU: per-GPU BN never qualifies
                        assert d["bn"] != "gpu"
    table = report.recommended_table(dp, costs)
    assert [r.split(" | ")[0] for r in table.splitlines()[2:5]] == ["| 8 (1 node)",
                                                                  "| 64 (8 nodes)",
                                                                  "| 512 (64 nodes)"]


def tables(markdown):
    """{(section, model): {(GPUs, Gb/s): [cells]}} for every table row of the report."""
    out, section, model = {}, None, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            section, model = line[3:], None
        elif line.startswith("### "):
            model = line[4:]
        m = re.match(r"\| (\d+) \| (\d+) Gb/s \| (.*) \|$", line)
        if m:
            out.setdefault((section, model), {})[(int(m[1]), int(m[2]))] = m[3].split(" | ")
    return out


def test_report_has_every_cell(sm, report, dl, tmp_path):
    paths = write_inputs(tmp_path)
    out = tmp_path / "SCALING.md"
    proc = dl.run([sys.executable, "benchmarks/scaling_report.py", "--allreduce",
                   str(paths["allreduce"]), "--collective-latency", str(paths["latency"]),
                   "--collective-latency-mpi", str(paths["latency_mpi"]),
                   "--costs", str(paths["costs"]), "--bench", str(paths["bench"]), "--out",
                   str(out), "--print-recommended"], timeout=60)
    text = out.read_text()
    assert ("benchmarks/scaling_report.py --allreduce %s --collective-latency %s "
            "--collective-latency-mpi %s" % (paths["allreduce"], paths["latency"],
                                             paths["latency_mpi"])) in text
    assert "- synchronized-BN call latency over the MPI transport: `%s`" % paths[
        "latency_mpi"] in text
    for name in sm.CONSTANTS:
        assert "| `%s` |" % name in text
    for heading in ("## What this says", "## Measured on this machine", "## Synchronized-BN "
                    "call latency on this machine", "## Synchronized-BN designs",
                    "## Synchronized-BN call latency over the MPI transport on this machine",
                    "## Recommended settings per scale"):
        assert heading in text, heading
    # The recommended-settings table is printed as written into the report.
    printed = proc.stdout[proc.stdout.index("| GPUs | phase 1"):].strip()
    assert printed.split("\n\n")[0] in text

    found = tables(text)
    efficiency_sections = ("Phase 1 as the recipe", "Phase 1, gradient allreduce only",
                           "Phase 2", "Parameter server", "How much rides", "Designs, phase 1",
                           "Designs, phase 2")
    every = {(n, g) for n in (8, 64, 512) for g in (25, 100, 400)}
    for model in sm.MODELS:
        for prefix in efficiency_sections + ("Where the time goes",):
            rows = [v for (sec, mod), v in found.items()
                    if sec.startswith(prefix) and mod == model]
            assert len(rows) == 1, (prefix, model)
            assert set(rows[0]) == every, (prefix, model)
            if not prefix.startswith(efficiency_sections):
                continue
            for cells in rows[0].values():
                for cell in cells:
                    low, high = map(float, re.fullmatch(r"(\d\.\d\d) / (\d\.\d\d)", cell).groups())
                    assert 0.0 <= low <= high <= 1.0, cell

    # The MPI designs have their column in phase 1, their cells the model's, and the bullets
    # set SyncBN over all workers via MPI beside Horovod's transport at 8 and 64 GPUs.
    costs = json.loads(paths["costs"].read_text())
    dp = sm.design_predictions(costs, 1e-3, sm.sync_call_costs(latency_report()),
                               sm.mpi_call_costs(mpi_latency_report()))
    for model in sm.MODELS:
        section = "## Designs, phase 1"
        block = text[text.index(section):].split("### %s" % model)[1].split("\n\n")[1]
        header = block.splitlines()[0].split(" | ")
        rows = next(v for (sec, mod), v in found.items()
                    if sec.startswith("Designs, phase 1") and mod == model)
        for d in sm.DESIGNS:
            if d.get("transport") != "mpi":
                continue
            col = header.index(d["column"]) - 2
            for (n, gbps), cells in rows.items():
                assert cells[col] == report.cell(dp[(1, model, n, gbps, d["key"])])
        bullet = next(line for line in text.splitlines()
                      if line.startswith("- %s, statistics straight over MPI" % sm.SHORT[model]))
        for key in ("all-mpi", "all", "all-tuned", "node-mpi"):
            assert report._effs(dp, 1, model, key) in bullet, key
    assert "Phase 1, the best design with BN's statistics over MPI against the recommended" \
        in text
    assert "| mpi 2w | mpi | 28 | 38 | 30 | 40 | 32 | 42 |" in text


def test_report_reads_the_mpi_report_by_default(report):
    args = report.parse_args(["--allreduce", "a.json", "--collective-latency", "c.json"])
    assert args.collective_latency_mpi == "benchmarks/results/collective_latency_mpi.json"


def test_every_prediction_is_an_efficiency(sm, tmp_path):
    costs = json.loads(write_inputs(tmp_path)["costs"].read_text())
    cells = list(sm.predictions(costs, software_s=1e-3).values())
    cells += list(sm.predictions(costs, 1e-3, sm.sync_call_costs(latency_report())).values())
    cells += list(sm.ps_predictions(costs).values())
    # Horovod (uniform software cost, then measured per-call costs): 2 models x 9 clusters x 4
    # variants, with and without SyncBN in phase 1; PS: 2 models x 3 networks x server counts
    # {1, 8}, {1, 8, 64}, {1, 64, 512}.
    assert len(cells) == 2 * (2 * 9 * 4 * 2 + 2 * 9 * 4) + 2 * 3 * (2 + 3 + 3)
    designs = sm.design_predictions(costs, 1e-3, sm.sync_call_costs(latency_report()),
                                    sm.mpi_call_costs(mpi_latency_report()))
    assert len(designs) == 2 * 2 * 9 * len(sm.DESIGNS)  # phases x models x clusters x designs
    cells += list(designs.values())
    for terms in cells:
        for overlap in (False, True):
            assert 0.0 < sm.efficiency(terms, overlap) <= 1.0


def test_allreduce_fit_recovers_alpha_beta():
    ar = load("allreduce")
    sizes = [4096, 1 << 20, 64 << 20]
    fit = ar.fit_alpha_beta(sizes, [2e-3 + s * 1e-9 for s in sizes], workers=4)
    assert math.isclose(fit["alpha_s"], 2e-3, rel_tol=1e-9)
    assert math.isclose(fit["beta_s_per_byte"], 1e-9, rel_tol=1e-9)
    assert math.isclose(fit["busbw_bytes_per_s"], 1e9 * 2 * 3 / 4, rel_tol=1e-9)


def test_allreduce_benchmark_report(dl, tmp_path):
    out = tmp_path / "ar.json"
    dl.run([os.path.join(dl.BIN, "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
            sys.executable, "benchmarks/allreduce.py", "--sizes", "4096", "65536", "--reps", "2",
            "--warmup", "1", "--out", str(out)], timeout=90)
    report = json.loads(out.read_text())
    assert report["benchmark"] == "allreduce" and report["workers"] == 2
    assert report["sizes"] == [4096, 65536] and report["transport"] == "gloo"
    assert isinstance(report["date"], str) and report["command"][0].endswith("allreduce.py")
    for part in (report, report["float16"]):
        assert len(part["seconds"]) == 2
        assert all(math.isfinite(t) and t > 0 for t in part["seconds"])
        assert set(part["fit"]) == {"alpha_s", "beta_s_per_byte", "algbw_bytes_per_s",
                                    "busbw_bytes_per_s"}


def test_multihost_section_sets_measurement_beside_model_and_sorts_the_differences(report):
    """benchmarks/multihost.py's report rendered: one row per collective, and each difference
    over 25% put under the emulation's ceiling (a shaped rate above what unshaped links
    carried), the per-call software cost (small calls), or left unexplained."""
    sizes = [65536, 8 << 20]

    def result(rate, bits, ar, pred_ar, calls=(1000.0, 1000.0)):
        return {"hosts": 2, "rate": rate, "rate_bits_per_s": bits,
                "loadavg_1min_at_start": 3.0,
                "measured": {"allreduce_s": ar, "train_step_s": 0.2,
                             "syncbn_call_us": dict(zip(("allgather", "allreduce"), calls))},
                "predicted": {"allreduce_s": pred_ar,
                              "syncbn_call_us": {"allgather": 1000.0, "allreduce": 1000.0}}}
    mh = {"command": ["benchmarks/multihost.py"], "date": "2026-12-02", "cpu_count": 2,
          "netem": False, "hop_latency_s": 1e-5, "sizes": sizes,
          "software": {"alpha_s": 2e-3, "allgather_s": 1e-3, "allreduce_s": 1e-3},
          "results": [
              # unshaped: 8 MiB in 80 ms, a ceiling of 2 (1/2) 8 MiB / 80 ms = 105 MB/s
              result("none", None, [2e-3, 80e-3], [2e-3, 2e-3]),
              result("100mbit", 1e8, [2.1e-3, 700e-3], [2e-3, 690e-3]),
              result("10gbit", 1e10, [2e-3, 80e-3], [2e-3, 9e-3], calls=(1000.0, 2000.0)),
              result("1gbit", 1e9, [2e-3, 200e-3], [2e-3, 70e-3])]}
    text = report.multihost_section(mh, "multihost.json")
    assert text.startswith("## The model against an emulated network")
    assert "| 2 | 100mbit | allreduce 8 MiB | 700 ms | 690 ms | +1% |" in text
    assert "| 2 | 10gbit | SyncBN allreduce (3 x C float32) | 2000 us | 1000 us | +100% |" in text
    assert "4 of 16 cases differ from the model by more than 25%." in text
    ceiling = text.split("**Above what the emulation can carry** (")[1].split("): with")[0]
    assert "2 hosts not shaped allreduce 8 MiB" in ceiling
    assert "2 hosts 10gbit allreduce 8 MiB" in ceiling
    assert "105 MB/s on 2 hosts" in text
    software = text.split("**Per-call software cost** (")[1].split("): these")[0]
    assert software == "2 hosts 10gbit SyncBN allreduce (3 x C float32) +100%"
    # 1 Gbit/s (125 MB/s) is above the 105 MB/s ceiling too.
    assert "2 hosts 1gbit allreduce 8 MiB" in ceiling
    assert "Not explained" not in text
