"""What a user watches during and after training: evaluation every N iterations with the best
checkpoint, training metrics, metrics.jsonl, TensorBoard events, run.json, warmup and plots."""
import json
import os
import struct

import mxnet as mx
import numpy as np
import pytest

from conftest import TINY
from deeplab import evaluate, train
from deeplab.checkpoint import Checkpointer
from deeplab.config import load_config
from deeplab.metrics import confusion_matrix, confusion_nd

FAST = ["train.iterations=24", "train.checkpoint_every=8", "data.synthetic.train_size=48",
        "data.synthetic.val_size=6", "data.num_workers=0", "train.log_every=4",
        "train.eval_every=8"]


def run_train(workdir, overrides=(), resume=False, no_eval=True):
    args = train.parse_args([TINY, "--workdir", str(workdir), "--quiet"] + [
        a for o in list(FAST) + list(overrides) for a in ("--set", o)]
        + (["--resume"] if resume else []) + (["--no-eval"] if no_eval else []))
    return train.main(args)


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def tb_scalars(workdir):
    """{tag: [(step, value)]} read from the TFRecord event files under DIR/tb (no TensorBoard
    needed: length-prefixed records of Event protos)."""
    from tensorboardX.proto import event_pb2

    out = {}
    tb = os.path.join(workdir, "tb")
    for name in sorted(os.listdir(tb)):
        with open(os.path.join(tb, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_evaluation_every_n_iterations_keeps_the_best_checkpoint(tmp_path):
    run_train(tmp_path)
    rows = metrics(tmp_path)
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["iter"] for r in val] == [8, 16]  # the end has its own evaluation
    with open(tmp_path / "best.json") as f:
        best = json.load(f)
    assert best["iteration"] in (8, 16)
    assert best["mIoU"] == max(r["mIoU"] for r in val)
    log = (tmp_path / "train.log").read_text()
    assert "val iter 8  pixAcc" in log and "val iter 16  pixAcc" in log
    # An independent evaluation of best.params gives the recorded scores.
    out = tmp_path / "best_eval.json"
    evaluate.main(evaluate.parse_args([TINY, "--checkpoint", str(tmp_path / "best.params"),
                                       "--out", str(out), "--quiet", "--set",
                                       "data.synthetic.val_size=6", "data.num_workers=0"]))
    with open(out) as f:
        res = json.load(f)
    assert res["mIoU"] == pytest.approx(best["mIoU"], abs=1e-12)
    assert res["pixAcc"] == pytest.approx(best["pixAcc"], abs=1e-12)
    assert res["run"]["command"].startswith("deeplab")


def test_training_rows_carry_loss_lr_speed_memory_and_metrics(tmp_path):
    run_train(tmp_path)
    rows = [r for r in metrics(tmp_path) if r["kind"] == "train"]
    assert [r["iter"] for r in rows] == [4, 8, 12, 16, 20, 24]
    for r in rows:
        for key in ("time", "loss", "lr", "img_s", "data_s", "eta_s", "mem", "pixAcc", "mIoU"):
            assert key in r, key
        assert 0 <= r["pixAcc"] <= 1 and 0 <= r["mIoU"] <= 1 and r["mem"] > 0
    assert rows[-1]["eta_s"] == 0 and rows[-1]["lr"] == 0
    line = [x for x in (tmp_path / "train.log").read_text().splitlines() if "iter 24/24" in x][0]
    assert "eta 0:00:00" in line and "elapsed" in line and "pixAcc" in line
    assert line[:4].isdigit()  # a timestamp first


def test_device_confusion_counts_match_the_host_computation():
    rng = np.random.RandomState(0)
    logits = rng.randn(2, 5, 7, 9).astype(np.float32)
    label = rng.randint(0, 5, (2, 7, 9))
    label[0, 0] = 255
    got = confusion_nd(mx.nd.array(logits), mx.nd.array(label), 5).asnumpy().reshape(5, 5)
    np.testing.assert_array_equal(got, confusion_matrix(logits.argmax(1), label, 5))


def test_tensorboard_events_hold_the_same_scalars(tmp_path):
    run_train(tmp_path)
    tb = tb_scalars(tmp_path)
    rows = metrics(tmp_path)
    assert [s for s, _ in tb["train/loss"]] == [r["iter"] for r in rows if r["kind"] == "train"]
    assert [round(v, 5) for _, v in tb["val/mIoU"]] == [
        round(r["mIoU"], 5) for r in rows if r["kind"] == "val"]


def test_resume_keeps_the_best_and_records_each_iteration_once(tmp_path):
    run_train(tmp_path / "straight")
    work = tmp_path / "resumed"
    run_train(work)
    with open(work / "best.json") as f:
        best = json.load(f)
    # As if the run had died right after iteration 20: the newest checkpoint is 16.
    for ext in (".json", ".params", ".states"):
        os.remove(work / "checkpoints" / ("iter_0000024" + ext))
    os.remove(work / "final.params")
    assert Checkpointer(str(work)).latest()["iteration"] == 16
    run_train(work, resume=True)
    iters = [(r["kind"], r["iter"]) for r in metrics(work)]
    assert len(iters) == len(set(iters)) == len(metrics(tmp_path / "straight"))
    with open(work / "best.json") as f:
        assert json.load(f) == best  # 8 and 16 were evaluated before; nothing after beat them
    steps = [s for s, _ in tb_scalars(work)["train/loss"]]
    assert steps[-2:] == [20, 24]


def test_run_json_records_provenance_and_the_end(tmp_path):
    run_train(tmp_path, no_eval=False)
    with open(tmp_path / "run.json") as f:
        info = json.load(f)
    assert info["status"] == "finished" and info["duration_s"] > 0
    assert info["command"].startswith("deeplab train ") and "--workdir" in info["command"]
    for key in ("start", "end", "versions", "git_commit", "world_size", "backend", "host"):
        assert key in info
    assert info["versions"]["mxnet"] == mx.__version__ and info["world_size"] == 1
    assert info["sync_bn_transport"] is None  # one process: no synchronized BN to carry
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["run"]["versions"]["mxnet"] == mx.__version__


def test_warmup_rises_linearly_then_follows_the_poly_schedule():
    cfg = load_config(TINY, ["train.iterations=100", "train.lr=0.1", "train.warmup_iters=10"])
    s = train.lr_schedule(cfg)
    assert s(0) == pytest.approx(0.01) and s(9) == pytest.approx(0.1)
    assert all(s(t) < s(t + 1) for t in range(9))
    assert s(10) == pytest.approx(0.1) and s(99) == pytest.approx(0.0, abs=1e-12)
    assert all(s(t) >= s(t + 1) for t in range(10, 99))
    plain = load_config(TINY, ["train.iterations=100", "train.lr=0.1"])
    assert [train.lr_schedule(plain)(t) for t in range(100)] == \
        [train.poly_schedule(plain)(t) for t in range(100)]


def test_plot_writes_the_curves(tmp_path, dl):
    run_train(tmp_path)
    proc = dl.deeplab("plot", tmp_path, "--out", tmp_path / "c.png")
    assert "2 evaluations" in proc.stdout
    import matplotlib.image

    img = matplotlib.image.imread(str(tmp_path / "c.png"))
    assert img.shape[0] > 200 and img.shape[1] > 600
    bad = dl.deeplab("plot", tmp_path / "nothing", check=False)
    assert bad.returncode == 2 and "metrics.jsonl does not exist" in bad.stdout


def test_final_evaluation_is_recorded_and_counts_for_the_best(tmp_path, capsys):
    """The end's evaluation is the last val row (metrics.jsonl, TensorBoard), its per-class
    table is printed, and best.json never points at an evaluation worse than it."""
    res = run_train(tmp_path, no_eval=False)
    rows = metrics(tmp_path)
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["iter"] for r in val] == [8, 16, 24]
    assert val[-1]["mIoU"] == res["mIoU"] and val[-1]["pixAcc"] == res["pixAcc"]
    assert [s for s, _ in tb_scalars(tmp_path)["val/mIoU"]] == [8, 16, 24]
    with open(tmp_path / "best.json") as f:
        best = json.load(f)
    assert best["mIoU"] == max(r["mIoU"] for r in val) >= res["mIoU"]
    if best["iteration"] == 24:  # the final network is the best: best.params holds it
        assert {k: v.asnumpy().tolist() for k, v in mx.nd.load(
            str(tmp_path / "best.params")).items()} == {k: v.asnumpy().tolist() for k, v in
                                                        mx.nd.load(str(tmp_path /
                                                                       "final.params")).items()}
    out = capsys.readouterr().out
    table = out[out.index("per-class scores"):]
    for name, iou in zip(res["class_names"], res["per_class_iou"]):
        line = next(x for x in table.splitlines() if x.split()[2:3] == [name])
        assert line.split()[3] == ("-" if iou is None else "%.4f" % iou)


def test_best_is_chosen_among_all_evaluations_the_final_included(tmp_path):
    """best.json pointed at an earlier evaluation even when the final one was better: it is
    now chosen among all evaluations, the final one included."""
    run_train(tmp_path, ["train.eval_every=2", "train.iterations=3"], no_eval=False)
    with open(tmp_path / "best.json") as f:
        best = json.load(f)
    val = {r["iter"]: r["mIoU"] for r in metrics(tmp_path) if r["kind"] == "val"}
    assert sorted(val) == [2, 3]
    assert best["iteration"] == max(val, key=val.get)
    assert best["mIoU"] == max(val.values())
