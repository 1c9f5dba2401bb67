"""Training end to end on the tiny model and synthetic data: learning, determinism, resume,
checkpoint safety and the files a run writes."""
import json
import os
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from deeplab import evaluate, train
from deeplab.checkpoint import Checkpointer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY = os.path.join(ROOT, "configs", "tiny_synthetic.yaml")
FAST = ["train.iterations=24", "train.checkpoint_every=8", "data.train_size=48",
        "data.val_size=6", "data.num_workers=0", "train.log_every=8"]


def run_train(workdir, overrides=(), resume=False, no_eval=True):
    args = train.parse_args([TINY, "--workdir", str(workdir)] + [
        a for o in list(FAST) + list(overrides) for a in ("--set", o)]
        + (["--resume"] if resume else []) + (["--no-eval"] if no_eval else []))
    return train.main(args)


def load(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def assert_same_params(a, b, rtol=0, atol=0):
    pa, pb = load(a), load(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=rtol, atol=atol, err_msg=k)


def test_tiny_model_learns_the_synthetic_data(tmp_path):
    # Chance level: predicting background everywhere gives mIoU 0.17 on this val set (one class
    # of five, IoU 0.86, the rest 0). The config's 300 iterations reached mIoU 0.546, 0.594 and
    # 0.630 with seeds 0, 1, 2 (pixAcc 0.931-0.943).
    res = run_train(tmp_path, ["train.iterations=300", "data.train_size=256",
                               "data.val_size=48", "train.checkpoint_every=1000"], no_eval=False)
    assert res["mIoU"] > 0.45, res
    assert res["pixAcc"] > 0.9, res


def test_run_writes_config_checkpoints_final_params_and_results(tmp_path):
    res = run_train(tmp_path, no_eval=False)
    files = set(os.listdir(tmp_path))
    assert {"config.yaml", "train.log", "checkpoints", "final.params", "results.json"} <= files
    assert Checkpointer(str(tmp_path)).iterations() == [8, 16, 24]
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    for key in ("pixAcc", "mIoU", "per_class_iou", "confusion_matrix", "num_images"):
        assert key in saved
    assert saved["num_images"] == 6
    assert np.array(saved["confusion_matrix"]).shape == (5, 5)
    assert saved["mIoU"] == res["mIoU"]
    arrays = mx.nd.load(str(tmp_path / "final.params"))  # plain MXNet can read it
    assert any(k.startswith("backbone.") for k in arrays)
    assert_same_params(tmp_path / "final.params", tmp_path / "checkpoints" / "iter_0000024.params")


def test_training_is_deterministic_and_independent_of_loader_processes(tmp_path):
    run_train(tmp_path / "a")
    run_train(tmp_path / "b", ["data.num_workers=2"])
    assert_same_params(tmp_path / "a" / "final.params", tmp_path / "b" / "final.params")


def test_frozen_bn_keeps_statistics_and_affine_parameters(tmp_path):
    run_train(tmp_path / "p1", ["train.iterations=8"])
    p1 = tmp_path / "p1" / "final.params"
    run_train(tmp_path / "p2", ["train.iterations=8", "train.freeze_bn=true",
                                "model.params=%s" % p1])
    before, after = load(p1), load(tmp_path / "p2" / "final.params")
    bn = [k for k in before if k.endswith(("gamma", "beta", "running_mean", "running_var"))]
    conv = [k for k in before if k.endswith("weight")]
    assert bn and conv
    for k in bn:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    assert any(not np.array_equal(before[k], after[k]) for k in conv)


def test_workdir_with_checkpoints_is_not_overwritten_without_resume(tmp_path):
    run_train(tmp_path)
    before = load(tmp_path / "checkpoints" / "iter_0000024.params")
    with pytest.raises(SystemExit, match="--resume"):
        run_train(tmp_path)
    after = load(tmp_path / "checkpoints" / "iter_0000024.params")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    """SIGKILL mid-run, then --resume: the same final parameters as a run never stopped."""
    its = ["train.iterations=60", "train.checkpoint_every=10"]
    run_train(tmp_path / "straight", its)

    work = tmp_path / "killed"
    cmd = [sys.executable, "-m", "deeplab.cli", "train", TINY, "--workdir", str(work),
           "--no-eval"] + [a for o in FAST + its for a in ("--set", o)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = Checkpointer(str(work))
    deadline = time.time() + 120
    while not ckpt.iterations() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert ckpt.iterations() and ckpt.iterations()[-1] < 60, "the run finished before the kill"
    assert not (work / "final.params").exists()

    run_train(work, its, resume=True)
    assert_same_params(tmp_path / "straight" / "final.params", work / "final.params")


def test_sigterm_checkpoints_and_resumes_to_the_same_parameters(tmp_path):
    """SIGTERM (a preempted pod): the run saves a checkpoint at the next step, exits with 143,
    and --resume reaches the parameters of a run never stopped."""
    its = ["train.iterations=60", "train.checkpoint_every=1000"]  # no periodic checkpoint
    run_train(tmp_path / "straight", its)

    work = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "deeplab.cli", "train", TINY, "--workdir", str(work),
           "--no-eval"] + [a for o in FAST + its for a in ("--set", o)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = work / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and (
            not log.exists() or "iter " not in log.read_text()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read().decode()
    its_saved = Checkpointer(str(work)).iterations()
    assert len(its_saved) == 1 and 8 <= its_saved[0] < 60, its_saved
    assert "stopped by SIGTERM after iteration %d" % its_saved[0] in log.read_text()
    assert not (work / "final.params").exists()

    run_train(work, its, resume=True)
    assert_same_params(tmp_path / "straight" / "final.params", work / "final.params")


def test_eval_command_reproduces_the_end_of_training_results(tmp_path):
    run_train(tmp_path, no_eval=False)
    out = tmp_path / "eval.json"
    args = evaluate.parse_args([TINY, "--checkpoint", str(tmp_path / "final.params"),
                                "--out", str(out), "--set", "data.val_size=6",
                                "--set", "data.num_workers=0"])
    evaluate.main(args)
    with open(out) as f, open(tmp_path / "results.json") as g:
        a, b = json.load(f), json.load(g)
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["mIoU"] == b["mIoU"]


def test_multiscale_flip_eval_at_another_output_stride(tmp_path):
    run_train(tmp_path, ["model.output_stride=16"])
    out = tmp_path / "ms.json"
    args = evaluate.parse_args([
        TINY, "--checkpoint", str(tmp_path / "final.params"), "--out", str(out),
        "--set", "model.output_stride=16", "--set", "eval.output_stride=8",
        "--set", "eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75]", "--set", "eval.flip=true",
        "--set", "data.val_size=4", "--set", "data.num_workers=0"])
    evaluate.main(args)
    with open(out) as f:
        res = json.load(f)
    assert res["output_stride"] == 8 and res["flip"] and len(res["scales"]) == 6
    assert res["num_images"] == 4 and 0 <= res["mIoU"] <= 1
    assert int(np.sum(res["confusion_matrix"])) > 0


def test_cli_reports_bad_config_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "deeplab.cli", "train", TINY, "--workdir",
                           str(tmp_path), "--set", "train.lrate=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.lrate" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists()
