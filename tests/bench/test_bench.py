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


def test_horovod_and_ps_bench_report_scaling_against_one_worker(dl, tmp_path):
    one, hvd, ps = tmp_path / "one.json", tmp_path / "hvd.json", tmp_path / "ps.json"
    dl.deeplab("launch", "horovod", "-np", "1", "--", "bench", dl.TINY, *TINY_BENCH,
               "--out", one)
    dl.deeplab("launch", "horovod", "-np", "2", "--", "bench", dl.TINY, *TINY_BENCH,
               "--out", hvd, "--baseline", one)
    dl.deeplab("launch", "ps", "--workers", "2", "--servers", "1", "--", "bench", dl.TINY,
               *TINY_BENCH, "--set", "dist.sync_bn=false", "--out", ps, "--baseline", one)
    base = _report(one)
    _check_report(base, 1, "horovod", ["ours"])
    assert base["model"]["sync_bn"] is True
    for path, backend in ((hvd, "horovod"), (ps, "ps")):
        r = _report(path)
        _check_report(r, 2, backend, ["ours"])
        s = r["scaling"]["ours"]
        assert s["images_per_s_1"] == pytest.approx(base["variants"][0]["images_per_s"])
        assert s["efficiency"] == pytest.approx(r["variants"][0]["images_per_s"]
                                                / (2 * s["images_per_s_1"]))


@pytest.mark.parametrize("args, message", [
    (["--compare", "gluoncv"], "needs a ResNet-50 or -101 model"),
    (["--set", "model.output_stride=16", "--compare", "gluoncv"], "needs model.output_stride 8"),
    (["--compare", "hybrid"], "unknown comparison 'hybrid'"),
    (["--steps", "0"], "need --steps >= 1"),
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
