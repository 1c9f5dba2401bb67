"""`deeplab bench`: runs under each backend and writes a well-formed report. Never timed: the
figures are checked for consistency with each other, not for speed."""
import json
import math
import os

import pytest

from deeplab.bench import PHASES

TINY_BENCH = ["--steps", "2", "--warmup", "1", "--batch", "2"]


def _report(path):
    with open(path) as f:
        r = json.load(f)  # json.load accepts NaN; the writer must not produce it
    assert "NaN" not in open(path).read() and "Infinity" not in open(path).read()
    return r


def _check_report(r, workers, backend, names):
    assert r["benchmark"] == "deeplab bench"
    assert (r["workers"], r["backend"], r["batch_per_worker"]) == (workers, backend, 2)
    assert r["global_batch"] == 2 * workers
    assert r["model"]["name"] == "deeplabv3_tiny_v2"
    assert r["model"]["grad_bytes"] == 4 * r["model"]["trainable_params"] > 0
    assert r["model"]["forward_gflops_per_image"] > 0
    assert [v["name"] for v in r["variants"]] == names
    for v in r["variants"]:
        assert len(v["step_s_all"]) == r["steps"] == 2
        assert v["step_s"] > 0 and math.isfinite(v["step_s"])
        assert v["images_per_s"] == pytest.approx(2 * workers / v["step_s"])
        assert v["images_per_s_per_worker"] == pytest.approx(v["images_per_s"] / workers)
        assert set(v["breakdown_s"]) == set(PHASES)
        assert all(t >= 0 for t in v["breakdown_s"].values())
        assert [w["rank"] for w in v["per_worker"]] == list(range(workers))
        # the reported step is the slowest worker's
        assert v["step_s"] >= min(w["step_s"] for w in v["per_worker"]) - 1e-9
        assert v["peak_rss_bytes"] > 50 * 2 ** 20
    for name, ratio in r["ratios"].items():
        other = next(v for v in r["variants"] if "ours/" + v["name"] == name)
        assert ratio == pytest.approx(r["variants"][0]["step_s"] / other["step_s"])


def test_local_bench_with_comparisons_json_and_plot(dl, tmp_path):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    proc = dl.deeplab("bench", dl.TINY, *TINY_BENCH, "--compare", "head,bn,hybridize",
                      "--out", out, "--plot", png)
    assert "step time ratios" in proc.stdout
    r = _report(out)
    _check_report(r, 1, "local", ["ours", "ours-vortex", "ours-syncbn", "ours-imperative"])
    assert r["command"].startswith("deeplab bench ")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_amp_comparison_on_synchronized_bn_workers(dl, tmp_path):
    # The AMP variant is built after the float32 network has traced its graph (AMP patches
    # MXNet's operators process-wide); under Horovod, through synchronized BN's fused kernels.
    out = tmp_path / "amp.json"
    dl.deeplab("launch", "horovod", "-np", "2", "--", "bench", dl.TINY, *TINY_BENCH,
               "--compare", "amp", "--out", out)
    r = _report(out)
    _check_report(r, 2, "horovod", ["ours", "ours-amp"])
    assert "bfloat16" in r["variants"][1]["description"]
    assert r["setup"]["precision"] == "float32"


def test_bench_under_mpi_reports_the_time_in_synchronized_bns_collectives(dl, tmp_path):
    """Under --mpi the transport times its calls: the synchronized-BN variant makes as many
    per step as its BN layers need (2 per layer and pass, the same on both workers), the
    per-worker-BN variant none; the time in them is part of fwd_bwd."""
    out = tmp_path / "mpi.json"
    proc = dl.deeplab("launch", "horovod", "--mpi", "-np", "2", "--", "bench", dl.TINY,
                      *TINY_BENCH, "--compare", "bn", "--out", out)
    r = _report(out)
    _check_report(r, 2, "horovod", ["ours", "ours-plainbn"])
    sync, plain = (v["in_layer_collectives"] for v in r["variants"])
    calls = {w["calls_per_step"] for w in sync}
    assert len(calls) == 1 and calls.pop() > 0
    assert {(w["calls_per_step"], w["s_per_step"]) for w in plain} == {(0, 0.0)}
    fwd_bwd = {w["rank"]: w["breakdown_s"]["fwd_bwd"] for w in r["variants"][0]["per_worker"]}
    assert all(0 < w["s_per_step"] <= fwd_bwd[w["rank"]] * 1.5 for w in sync)
    assert "in its synchronized BN collectives (MPI): rank 0" in proc.stdout


def test_horovod_and_ps_bench_report_scaling_against_one_worker(dl, tmp_path):
    # Each run against a one-worker baseline with the same BN mode: synchronized BN under
    # Horovod; per-worker BN (the parameter server's) against one plain-BN process.
    one, hvd, ps = tmp_path / "one.json", tmp_path / "hvd.json", tmp_path / "ps.json"
    local = tmp_path / "local.json"
    dl.deeplab("launch", "horovod", "-np", "1", "--", "bench", dl.TINY, *TINY_BENCH,
               "--out", one)
    dl.deeplab("bench", dl.TINY, *TINY_BENCH, "--out", local)
    dl.deeplab("launch", "horovod", "-np", "2", "--", "bench", dl.TINY, *TINY_BENCH,
               "--out", hvd, "--baseline", one)
    dl.deeplab("launch", "ps", "--workers", "2", "--servers", "1", "--", "bench", dl.TINY,
               *TINY_BENCH, "--set", "dist.sync_bn=false", "--out", ps, "--baseline", local)
    base = _report(one)
    _check_report(base, 1, "horovod", ["ours"])
    assert base["model"]["sync_bn"] is True
    # The worker picked Horovod's cycle for synchronized BN (Horovod's default, 1 ms).
    assert base["machine"]["HOROVOD_CYCLE_TIME"] == "1"
    assert _report(ps)["machine"]["HOROVOD_CYCLE_TIME"] is None
    for path, backend, baseline in ((hvd, "horovod", base), (ps, "ps", _report(local))):
        r = _report(path)
        _check_report(r, 2, backend, ["ours"])
        s = r["scaling"]["ours"]
        assert s["images_per_s_1"] == pytest.approx(baseline["variants"][0]["images_per_s"])
        assert s["efficiency"] == pytest.approx(r["variants"][0]["images_per_s"]
                                                / (2 * s["images_per_s_1"]))


@pytest.mark.parametrize("args, message", [
    (["--compare", "gluoncv"], "needs a ResNet-50 or -101 model"),
    (["--set", "model.output_stride=16", "--compare", "gluoncv"], "needs model.output_stride 8"),
    (["--compare", "hybrid"], "unknown comparison 'hybrid'"),
    (["--steps", "0"], "need --steps >= 1"),
    (["--compare", "amp,hybridize"], "--compare amp needs hybridized float32 networks"),
    (["--compare", "amp", "--set", "train.amp=true"], "--compare amp needs hybridized float32"),
])
def test_bad_options_are_named(dl, args, message):
    proc = dl.deeplab("bench", dl.TINY, *args, check=False)
    assert proc.returncode == 2 and message in proc.stdout


def test_baseline_must_be_a_one_worker_run_of_the_same_work(dl, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    proc = dl.deeplab("bench", dl.TINY, *TINY_BENCH, "--baseline", bad, check=False)
    assert proc.returncode == 2 and "not a `deeplab bench` JSON" in proc.stdout
    one = tmp_path / "one.json"
    dl.deeplab("bench", dl.TINY, *TINY_BENCH, "--out", one)
    proc = dl.deeplab("bench", dl.TINY, "--steps", "1", "--warmup", "1", "--batch", "4",
                      "--baseline", one, check=False)
    assert proc.returncode == 2 and "equal work per worker" in proc.stdout
    assert os.path.exists(one)


@pytest.mark.parametrize("change, named", [
    (["--set", "model.head=vortex"], "head"),
    (["--set", "model.output_stride=16"], "output_stride"),
    (["--set", "train.freeze_bn=true"], "bn"),
    (["--set", "dist.fp16_compression=true"], "precision"),
    (["--crop", "48"], "crop"),
])
def test_a_baseline_of_other_work_is_refused_naming_the_difference(dl, tmp_path, change, named):
    one = tmp_path / "one.json"
    dl.deeplab("bench", dl.TINY, *TINY_BENCH, "--out", one)
    proc = dl.deeplab("bench", dl.TINY, *TINY_BENCH, *change, "--baseline", one, check=False)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "--baseline" in proc.stdout and named in proc.stdout
    assert "Traceback" not in proc.stdout and "deeplab bench: deeplabv3" not in proc.stdout


def test_synchronized_bn_against_a_plain_bn_baseline_is_refused(dl, tmp_path):
    local = tmp_path / "local.json"
    dl.deeplab("bench", dl.TINY, *TINY_BENCH, "--out", local)  # one process: plain BN
    proc = dl.deeplab("launch", "horovod", "-np", "2", "--", "bench", dl.TINY, *TINY_BENCH,
                      "--baseline", local, check=False)
    assert proc.returncode != 0
    assert "bn 'per-worker' (baseline) vs 'synchronized' (this run)" in proc.stdout


def test_repeats_give_medians_and_spread(dl, tmp_path):
    out = tmp_path / "r.json"
    dl.deeplab("bench", dl.TINY, *TINY_BENCH, "--repeat", "3", "--out", out)
    v = _report(out)["variants"][0]
    assert len(v["repeats"]) == 3 and len(v["step_s_all"]) == 6
    lo, hi = v["spread"]["step_s"]
    assert lo == min(x["step_s"] for x in v["repeats"]) <= hi
    assert lo <= max(v["step_s_all"]) and min(v["step_s_all"]) <= hi


def test_inference_bench_reports_throughput_latency_and_spread(dl, tmp_path):
    out, one, two = tmp_path / "i.json", tmp_path / "one.json", tmp_path / "two.json"
    proc = dl.deeplab("bench", dl.TINY, "--mode", "infer", "--steps", "3", "--warmup", "1",
                      "--repeat", "2", "--set", "eval.scales=[0.5,1.0]", "eval.flip=true",
                      "--out", out)
    assert "latency per batch: p50" in proc.stdout and "MFLOPs/image" in proc.stdout
    r = _report(out)
    assert r["mode"] == "infer" and r["model"]["scales"] == [0.5, 1.0] and r["model"]["flip"]
    assert len(r["latency_s_all"]) == 6 and len(r["repeats"]) == 2
    lat = r["latency_s"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= max(r["latency_s_all"])
    assert r["images_per_s"] == pytest.approx(sum(w["images_per_s"] for w in r["per_worker"]))
    lo, hi = r["spread"]["images_per_s"]
    assert lo <= hi and lo == min(x["images_per_s"] for x in r["repeats"])
    # on 2 Horovod workers against a one-worker inference baseline
    dl.deeplab("bench", dl.TINY, "--mode", "infer", "--steps", "2", "--warmup", "1",
               "--out", one)
    dl.deeplab("launch", "horovod", "-np", "2", "--", "bench", dl.TINY, "--mode", "infer",
               "--steps", "2", "--warmup", "1", "--baseline", one, "--out", two)
    r2 = _report(two)
    assert [w["rank"] for w in r2["per_worker"]] == [0, 1]
    assert r2["scaling"]["infer"]["efficiency"] == pytest.approx(
        r2["images_per_s"] / (2 * _report(one)["images_per_s"]))


def test_flops_print_in_adaptive_units():
    from deeplab.bench.common import format_flops

    assert format_flops(123.4) == "123 GFLOPs"
    assert format_flops(0.0123) == "12.3 MFLOPs"
    assert format_flops(2500.0) == "2.5 TFLOPs"
    assert format_flops(0.0000045) == "4.5 kFLOPs"
