"""benchmarks/scaling_model.py: its formulas against hand computations, and a full run on hand-made
inputs that must produce every table cell; benchmarks/allreduce.py: its fit, and a tiny run under
horovodrun that writes a well-formed report. No speed is asserted.
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
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks",
                                                                     name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sm():
    return load("scaling_model")


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
    for name, obj in (("costs", costs), ("allreduce", allreduce), ("bench", bench)):
        paths[name] = tmp_path / (name + ".json")
        paths[name].write_text(json.dumps(obj))
    return paths


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


def test_report_has_every_cell(sm, dl, tmp_path):
    paths = write_inputs(tmp_path)
    out = tmp_path / "SCALING.md"
    dl.run([sys.executable, "benchmarks/scaling_model.py", "--allreduce", str(paths["allreduce"]),
            "--costs", str(paths["costs"]), "--bench", str(paths["bench"]), "--out", str(out)],
           timeout=60)
    text = out.read_text()
    assert "benchmarks/scaling_model.py --allreduce %s" % paths["allreduce"] in text
    for name in sm.CONSTANTS:
        assert "| `%s` |" % name in text
    assert "## What this says" in text and "## Measured on this machine" in text

    found = tables(text)
    efficiency_sections = ("Phase 1 as the recipe", "Phase 1, gradient allreduce only",
                           "Phase 2", "Parameter server", "How much rides")
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


def test_every_prediction_is_an_efficiency(sm, tmp_path):
    costs = json.loads(write_inputs(tmp_path)["costs"].read_text())
    cells = list(sm.predictions(costs, software_s=1e-3).values())
    cells += list(sm.ps_predictions(costs).values())
    # Horovod: 2 models x 9 clusters x 4 variants, with and without SyncBN in phase 1; PS: 2
    # models x 3 networks x server counts {1, 8}, {1, 8, 64}, {1, 64, 512}.
    assert len(cells) == 2 * 9 * 4 * 2 + 2 * 9 * 4 + 2 * 3 * (2 + 3 + 3)
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
