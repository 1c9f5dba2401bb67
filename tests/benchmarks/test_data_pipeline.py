"""benchmarks/data_pipeline.py runs end to end on a tiny setting and writes a well-formed report.

Never asserts a speed: only that both pipelines ran over the same images, produced training-ready
crops, and that the reported figures are consistent with each other.
"""
import json
import math
import sys

IMAGES, CROP, REPEATS = 4, 64, 1


def test_data_pipeline_report(dl, tmp_path):
    out = tmp_path / "dp.json"
    dl.run([sys.executable, "benchmarks/data_pipeline.py", "--images", str(IMAGES),
            "--crop", str(CROP), "--repeats", str(REPEATS), "--warmup", "1", "--out", str(out)],
           timeout=120)
    report = json.loads(out.read_text())

    assert report["benchmark"] == "data_pipeline"
    assert set(report["machine"]) >= {"cpus", "platform", "python", "mxnet", "gluoncv", "opencv"}
    assert report["command"][1:] == ["--images", str(IMAGES), "--crop", str(CROP), "--repeats",
                                     str(REPEATS), "--warmup", "1", "--out", str(out)]
    assert (report["params"]["images"], report["params"]["crop"],
            report["params"]["repeats"]) == (IMAGES, CROP, REPEATS)
    assert isinstance(report["date"], str)

    rates = {}
    for name in ("ours", "gluoncv"):
        res = report["results"][name]
        rate = res["samples_per_s"]
        assert isinstance(rate, float) and math.isfinite(rate) and rate > 0, (name, rate)
        assert len(res["all"]) == REPEATS and rate in res["all"]
        # Every timed pass went over all images and produced what training consumes.
        assert res["samples"] == IMAGES * REPEATS
        assert res["image_shape"] == [3, CROP, CROP] and res["image_dtype"] == "float32"
        assert res["label_shape"] == [CROP, CROP]
        rates[name] = rate
    assert math.isclose(report["ratio_ours_over_gluoncv"], rates["ours"] / rates["gluoncv"],
                        rel_tol=1e-12)
