"""Training end to end on the tiny model and synthetic data: learning, determinism, resume,
checkpoint safety and the files a run writes."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import mxnet as mx
import numpy as np
import pytest

from conftest import TINY, worker_environ
from deeplab import evaluate, train
from deeplab.checkpoint import Checkpointer
from deeplab.config import load_config
from deeplab.errors import WorkdirError
from deeplab.launch import procs
from deeplab.train import StopRequest
FAST = ["train.iterations=24", "train.checkpoint_every=8", "data.synthetic.train_size=48",
        "data.synthetic.val_size=6", "data.num_workers=0", "train.log_every=8"]


def run_train(workdir, overrides=(), resume=False, no_eval=True, allow_config_change=False):
    args = train.parse_args([TINY, "--workdir", str(workdir)] + [
        a for o in list(FAST) + list(overrides) for a in ("--set", o)]
        + (["--resume"] if resume else []) + (["--no-eval"] if no_eval else [])
        + (["--allow-config-change"] if allow_config_change else []))
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
    res = run_train(tmp_path, ["train.iterations=300", "data.synthetic.train_size=256",
                               "data.synthetic.val_size=48", "train.checkpoint_every=1000"],
                    no_eval=False)
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


def _loader_children():
    """PIDs of this process's children named as loader processes are."""
    from deeplab.data.loader import LOADER_NAME

    found = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/children" % task) as f:
                pids = f.read().split()
        except OSError:
            continue
        for pid in pids:
            try:
                with open("/proc/%s/comm" % pid) as f:
                    if f.read().strip() == LOADER_NAME:
                        found.add(int(pid))
            except OSError:
                pass
    return found


@pytest.mark.multiproc  # loader processes
def test_training_is_deterministic_and_independent_of_loader_processes(tmp_path):
    import threading

    run_train(tmp_path / "a")
    seen, done = set(), threading.Event()

    def watch():  # the loader processes this run starts, seen while they run
        while not done.is_set():
            seen.update(_loader_children())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run_train(tmp_path / "b", ["data.num_workers=2"])
    finally:
        done.set()
        watcher.join()
    assert len(seen) >= 2, "no loader processes ran: %s" % seen
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
    with pytest.raises(WorkdirError, match="--resume"):
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


MARKER = "TRAIN_TEST"
BOUND = 60  # seconds from a stop signal to the end of the process


def _background_train(workdir, overrides):
    """`deeplab train` (no evaluation) in the background as from a terminal (SIGINT at its
    default); returns (its Popen, the marker every process of it carries in its environment,
    its loader processes included: tests/launch/test_faults.py's way of finding what is left)."""
    marker = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "deeplab.cli", "train", TINY, "--workdir", str(workdir),
           "--no-eval"] + [a for o in overrides for a in ("--set", o)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=worker_environ(**{MARKER: marker}),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, marker


def _finish(proc, marker, signalled):
    """(exit code, stderr, seconds from the signal to the exit), once nothing of the run is
    left (checked after a second, for a parent to reap its zombies)."""
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    elapsed = time.time() - signalled
    time.sleep(1)
    left = procs.job_processes(marker, MARKER)
    procs.kill_processes(lambda: procs.job_processes(marker, MARKER))
    assert not left, "processes outlived the run: %s\n%s" % (left, err.decode()[-3000:])
    print("exit %s, %.1f s after the signal" % (proc.returncode, elapsed))
    return proc.returncode, err.decode(), elapsed


def _wait_for_log(proc, log, what, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and (
            not log.exists() or what not in log.read_text()):
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before %r" % what


@pytest.mark.parametrize("signum,words,status,loaders", [
    (signal.SIGTERM, "SIGTERM", "preempted", 0),
    (signal.SIGINT, "SIGINT (Ctrl-C)", "interrupted", 0),
    (signal.SIGINT, "SIGINT (Ctrl-C)", "interrupted", 2)],  # the shipped default
    ids=["SIGTERM", "SIGINT", "SIGINT-2-loaders"])
def test_sigterm_checkpoints_and_resumes_to_the_same_parameters(tmp_path, signum, words, status,
                                                                loaders):
    """SIGTERM (a preempted pod) or Ctrl-C on a plain `deeplab train`, with the shipped 2 loader
    processes too: the run saves a checkpoint at the next step, exits with 143 (SIGTERM) or 130
    (SIGINT) in one line within a step and a checkpoint write, records how it ended in
    run.json, leaves no process (no loader process either), and --resume reaches the
    parameters of a run never stopped."""
    its = ["train.iterations=60", "train.checkpoint_every=1000"]  # no periodic checkpoint
    run_train(tmp_path / "straight", its)

    work = tmp_path / "stopped"
    proc, marker = _background_train(work, FAST + its + ["data.num_workers=%d" % loaders])
    log = work / "train.log"
    _wait_for_log(proc, log, "iter ")
    proc.send_signal(signum)
    code, err, elapsed = _finish(proc, marker, time.time())
    assert code == 128 + signum, err
    assert elapsed < BOUND, "the run took %.0f s to stop" % elapsed
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    its_saved = Checkpointer(str(work)).iterations()
    assert len(its_saved) == 1 and 8 <= its_saved[0] < 60, its_saved
    assert "stopped by %s after iteration %d" % (words, its_saved[0]) in log.read_text()
    assert "deeplab train: stopped by %s after iteration %d; continue with --resume" % (
        words, its_saved[0]) in err
    info = json.loads((work / "run.json").read_text())
    assert (info["status"], info["ended_by"], info["checkpoint_saved"],
            info["newest_checkpoint"]) == (status, signum.name, its_saved[0], its_saved[0])
    assert not (work / "final.params").exists()

    run_train(work, its, resume=True)
    assert_same_params(tmp_path / "straight" / "final.params", work / "final.params")


def test_ctrl_c_twice_stops_at_once_without_a_checkpoint_says_so_and_records_it(tmp_path):
    """Ctrl-C twice, 0.2 s apart, on a plain `deeplab train` with the shipped 2 loader
    processes (issue 19, item 3): the second stops the run at once, before the first one's
    checkpoint: exit 130, one line saying that no checkpoint was saved, run.json "killed" by
    "SIGINT twice" (the launchers' words) with the newest checkpoint, no temporary file in
    checkpoints/, nothing left; the newest checkpoint resumes to the parameters of a run never
    stopped."""
    # Steps of about half a second (a larger crop), so that the second Ctrl-C, sent 0.2 s
    # after the first right after a step's log line, comes before that step's checkpoint.
    its = ["train.iterations=16", "train.checkpoint_every=4", "train.log_every=1",
           "data.crop_size=256"]
    run_train(tmp_path / "straight", its)

    work = tmp_path / "interrupted"
    proc, marker = _background_train(work, FAST + its + ["data.num_workers=2"])
    _wait_for_log(proc, work / "train.log", "iter 5/16")  # training iterates after a checkpoint
    proc.send_signal(signal.SIGINT)
    signalled = time.time()
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    code, err, elapsed = _finish(proc, marker, signalled)
    assert code == 130, err
    assert elapsed < BOUND, "the run took %.0f s to stop" % elapsed
    assert err.strip().splitlines()[-1] == "deeplab train: interrupted (Ctrl-C): stopped at " \
        "once, without a checkpoint; continue from the last one with --resume", err
    assert "Traceback" not in err, err
    saved = Checkpointer(str(work)).iterations()
    assert saved and saved[-1] < 16 and saved[-1] % 4 == 0, saved
    info = json.loads((work / "run.json").read_text())
    assert (info["status"], info["ended_by"], info["checkpoint_saved"],
            info["newest_checkpoint"]) == ("killed", "SIGINT twice", None, saved[-1]), info
    assert not [n for n in os.listdir(work / "checkpoints") if n.endswith(".tmp")]
    assert not (work / "final.params").exists()

    run_train(work, its, resume=True)
    assert_same_params(tmp_path / "straight" / "final.params", work / "final.params")


def test_eval_command_reproduces_the_end_of_training_results(tmp_path):
    run_train(tmp_path, no_eval=False)
    out = tmp_path / "eval.json"
    args = evaluate.parse_args([TINY, "--checkpoint", str(tmp_path / "final.params"),
                                "--out", str(out), "--set", "data.synthetic.val_size=6",
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
        "--set", "data.synthetic.val_size=4", "--set", "data.num_workers=0"])
    evaluate.main(args)
    with open(out) as f:
        res = json.load(f)
    assert res["output_stride"] == 8 and res["flip"] and len(res["scales"]) == 6
    assert res["num_images"] == 4 and 0 <= res["mIoU"] <= 1
    assert int(np.sum(res["confusion_matrix"])) > 0
    # The distinct input shapes the network saw (what cuDNN autotuning would benchmark on a
    # GPU): each image size at each scale; the mirrored image adds none.
    from deeplab.build import build_dataset

    cfg = load_config(TINY, ["data.synthetic.val_size=4"])
    ds = build_dataset(cfg, "val")
    sizes = [ds.generate(i)[0].shape[:2] for i in range(4)]
    assert res["input_shapes_per_worker"] == [len({
        (1, 3, int(round(h * s)), int(round(w * s))) for h, w in sizes for s in res["scales"]})]


def test_cli_reports_bad_config_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "deeplab.cli", "train", TINY, "--workdir",
                           str(tmp_path), "--set", "train.lrate=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.lrate" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


# --- faults a single run meets: divergence, its directory, resume mismatches -----------------

def _cli_train(dl, workdir, *overrides, resume=False, extra=(), timeout=300):
    return dl.deeplab("train", TINY, "--workdir", workdir, "--no-eval",
                      *dl.sets(*FAST, *overrides), *(["--resume"] if resume else []), *extra,
                      check=False, timeout=timeout)


def _all_finite(path):
    return all(np.isfinite(v).all() for v in load(path).values())


def test_divergence_stops_with_exit_3_naming_the_iteration_and_saves_nothing_non_finite(
        tmp_path, dl):
    proc = _cli_train(dl, tmp_path, "train.lr=1000000", "train.checkpoint_every=2")
    assert proc.returncode == 3, proc.stdout[-3000:]
    assert "training diverged: non-finite" in proc.stdout and "iteration" in proc.stdout
    assert "Traceback" not in proc.stdout
    assert not (tmp_path / "final.params").exists()
    assert not (tmp_path / "results.json").exists()
    saved = Checkpointer(str(tmp_path)).iterations()
    for it in saved:
        assert _all_finite(tmp_path / "checkpoints" / ("iter_%07d.params" % it)), it


def test_fp16_style_overflow_in_parameters_is_caught_before_a_checkpoint(tmp_path, dl):
    # lr 1e4: the loss of a step can still be finite while the update already overflowed the
    # parameters; the checkpoint's own check refuses to write them.
    proc = _cli_train(dl, tmp_path, "train.lr=10000", "train.checkpoint_every=1")
    assert proc.returncode == 3, proc.stdout[-3000:]
    for it in Checkpointer(str(tmp_path)).iterations():
        assert _all_finite(tmp_path / "checkpoints" / ("iter_%07d.params" % it)), it


def test_a_second_run_on_the_same_directory_is_refused(tmp_path, dl):
    first = subprocess.Popen(
        [sys.executable, "-m", "deeplab.cli", "train", TINY, "--workdir", str(tmp_path),
         "--no-eval", *dl.sets(*FAST, "train.iterations=200", "train.checkpoint_every=1000")],
        env=dl.environ(), cwd=dl.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        log = tmp_path / "train.log"
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and (
                not log.exists() or "iter " not in log.read_text()):
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended early"
        second = _cli_train(dl, tmp_path, "train.iterations=200", resume=True)
        assert second.returncode == 2, second.stdout[-3000:]
        assert "in use by another run (pid %d" % first.pid in second.stdout
        assert "Traceback" not in second.stdout
        assert first.wait(timeout=300) == 0, first.stdout.read()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    text = (tmp_path / "train.log").read_text()
    assert text.count("training on ") == 1  # nothing of the second run in the first's log


def test_resume_with_a_config_that_changes_the_training_is_refused(tmp_path, dl):
    assert _cli_train(dl, tmp_path).returncode == 0
    before = (tmp_path / "config.yaml").read_text()
    for override, key in (("train.batch_size=4", "train.batch_size"),
                          ("train.lr=0.5", "train.lr")):
        proc = _cli_train(dl, tmp_path, override, resume=True)
        assert proc.returncode == 2 and key in proc.stdout, proc.stdout[-2000:]
        assert "--allow-config-change" in proc.stdout
    assert (tmp_path / "config.yaml").read_text() == before
    proc = _cli_train(dl, tmp_path, "train.lr=0.5", resume=True,
                      extra=["--allow-config-change"])
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_resume_below_the_checkpoint_iteration_is_refused_and_rewrites_nothing(tmp_path, dl):
    assert _cli_train(dl, tmp_path).returncode == 0
    ckpt = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    proc = _cli_train(dl, tmp_path, "train.iterations=10", resume=True)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "train.iterations is 10" in proc.stdout and "iteration 24" in proc.stdout
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def test_truncated_newest_checkpoint_falls_back_and_resumes_bitwise(tmp_path):
    its = ["train.iterations=40", "train.checkpoint_every=10"]
    run_train(tmp_path / "straight", its)
    work = tmp_path / "damaged"
    run_train(work, its)
    for ext in (".json", ".params", ".states"):  # as if stopped after iteration 30 ...
        os.remove(work / "checkpoints" / ("iter_0000040" + ext))
    os.remove(work / "final.params")
    newest = work / "checkpoints" / "iter_0000030.params"  # ... with its newest file truncated
    newest.write_bytes(newest.read_bytes()[:-100])
    run_train(work, its, resume=True)
    assert "skipping checkpoint 30" in (work / "train.log").read_text()
    assert "resuming from %s" % (work / "checkpoints" / "iter_0000020.params") in \
        (work / "train.log").read_text()
    assert_same_params(tmp_path / "straight" / "final.params", work / "final.params")


@pytest.mark.parametrize("setup, words", [
    ("file", ["is a file"]),
    ("foreign", ["not a training run's", "notes.txt"]),
    ("checkpoints", ["already holds a run", "--resume"]),
])
def test_unusable_workdir_is_refused_in_one_line_and_nothing_is_written(tmp_path, dl, setup,
                                                                        words):
    work = tmp_path / "run"
    if setup == "file":
        work.write_text("x")
    elif setup == "foreign":
        work.mkdir()
        (work / "notes.txt").write_text("mine")
        (work / "config.yaml").write_text("mine too")
    else:
        assert _cli_train(dl, work).returncode == 0
        (work / "config.yaml").write_text("the first run's")
    before = sorted(os.listdir(work)) if work.is_dir() else None
    proc = _cli_train(dl, work, "train.lr=0.01")
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout
    for w in words:
        assert w in proc.stdout, proc.stdout[-2000:]
    if work.is_dir():
        assert sorted(os.listdir(work)) == before
        assert (work / "config.yaml").read_text() in ("mine too", "the first run's")


@pytest.mark.parametrize("override, words", [
    ("train.checkpoint_every=0", ["train.checkpoint_every", ">= 1"]),
    ("train.log_every=0", ["train.log_every", ">= 1"]),
    ("train.iterations=-3", ["train.iterations", ">= 1"]),
    ("eval.scales=[0]", ["eval.scales", "> 0"]),
    ("train.momentum=-5", ["train.momentum"]),
])
def test_bad_values_are_one_line_errors(tmp_path, dl, override, words):
    proc = _cli_train(dl, tmp_path / "run", override)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout[-2000:]
    for w in words:
        assert w in proc.stdout
    assert not (tmp_path / "run").exists()


def test_a_missing_validation_image_is_reported_before_training(tmp_path, dl):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "voc_tree", os.path.join(dl.ROOT, "tests", "data", "conftest.py"))
    voc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(voc)
    tree = voc.build_tree(tmp_path / "voc", voc_train=["a", "b"], voc_val=["v1", "v2"])
    os.remove(tree.voc_image("v2"))
    work = tmp_path / "run"
    proc = _cli_train(dl, work, "data.name=voc", "data.root=%s" % tree.root,
                      "data.train_split=train", "model.num_classes=21", "train.batch_size=2")
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert tree.voc_image("v2") in proc.stdout and "does not exist" in proc.stdout
    assert "iter " not in proc.stdout and not work.exists()


def test_evaluation_after_training_runs_plain_batchnorm(tmp_path, monkeypatch):
    """Training with synchronized BN (forced here on one process), then evaluation: not one
    call of the synchronized layer's operator while evaluating."""
    from deeplab import build
    from deeplab.dist import syncbn

    monkeypatch.setattr(build, "uses_sync_bn", lambda cfg: not cfg["train"]["freeze_bn"])
    monkeypatch.setattr(train, "uses_sync_bn", build.uses_sync_bn)
    calls = {True: 0, False: 0}
    forward = syncbn._Moments.forward

    def counting(self, is_train, *args, **kwargs):
        calls[bool(is_train)] += 1
        return forward(self, is_train, *args, **kwargs)

    monkeypatch.setattr(syncbn._Moments, "forward", counting)
    res = run_train(tmp_path, ["train.iterations=4"], no_eval=False)
    assert calls[True] > 0, "training did not run the synchronized layer"
    assert calls[False] == 0
    assert res["num_images"] == 6


def test_a_second_signal_stops_at_once(tmp_path):
    """The first SIGTERM or SIGINT is recorded (the loop checkpoints at the next step); a
    second SIGINT raises KeyboardInterrupt at once (reported in one line, status
    "interrupted"), and the previous handlers come back after the loop."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert stop.signal is None and not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.signal == signal.SIGINT and stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second SIGTERM kills
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_second_signal_during_one_c_call_is_not_lost(tmp_path):
    """Two Ctrl-C while the main thread waits inside one C call (a step waiting for MXNet's
    engine): Python runs its handler once for both; StopRequest counts them on its wakeup fd
    and stops at once when the handler runs, the KeyboardInterrupt carrying how the run
    ended."""
    import threading

    a = mx.nd.ones((2500, 2500))

    def ctrl_c_twice():
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=ctrl_c_twice)
    with pytest.raises(KeyboardInterrupt) as stopped:
        with StopRequest() as stop:
            b = a
            for _ in range(8):  # seconds of one wait, past both signals
                b = mx.nd.dot(b, a) / 2500
            sender.start()
            b.wait_to_read()
    sender.join()
    assert stop.signal == signal.SIGINT
    assert stopped.value.ended_by == "SIGINT twice"
    assert signal.getsignal(signal.SIGINT) is not stop._handle  # restored
    assert signal.set_wakeup_fd(-1) == -1  # and the wakeup fd


def test_ctrl_c_outside_the_training_loop_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C while `deeplab train` starts (before the loop's handler is in place), through
    the console command users run. (Under `python -m deeplab.cli`, runpy can still end the
    process by SIGINT after the line when the signal lands while it imports the module.)"""
    cmd = [os.path.join(os.path.dirname(sys.executable), "deeplab"), "train", TINY, "--workdir",
           str(tmp_path / "w")]
    # As from a terminal: SIGINT at its default even where this suite runs in the background
    # (a non-interactive shell starts background jobs with SIGINT ignored, which Python keeps).
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def status(field):
        try:
            with open("/proc/%d/status" % proc.pid) as f:
                return int(next(line for line in f if line.startswith(field)).split()[1], 16)
        except (OSError, StopIteration, ValueError):
            return 0

    def importing_mxnet():  # deeplab's code runs and loads MXNet's library
        try:
            with open("/proc/%d/maps" % proc.pid) as f:
                return "libmxnet" in f.read()
        except OSError:
            return False

    # Python's SIGINT handler in place (before it, SIGINT kills the interpreter), then either
    # MXNet's library loading or 1.5 s (site's import, which SIGINT would make a fatal error,
    # takes a fraction of that; training starts seconds later).
    deadline = time.time() + 60
    while not status("SigCgt:") & (1 << (signal.SIGINT - 1)) and time.time() < deadline:
        time.sleep(0.005)
    deadline = time.time() + 1.5
    while not importing_mxnet() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)  # before the training loop's handler
    proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert proc.returncode == 130, err
    assert "deeplab train: interrupted (Ctrl-C): stopped at once" in err and "Traceback" not in err


def test_run_directory_is_not_world_readable_by_default(tmp_path):
    """train.umask (default '027'): a run on a shared volume is readable by the group only."""
    old = os.umask(0o022)
    try:
        run_train(tmp_path / "run", ["train.iterations=8", "train.checkpoint_every=4"])
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for path in (run, run / "checkpoints"):
        assert os.stat(path).st_mode & 0o777 == 0o750, path
    for path in [run / "final.params", run / "run.json", run / "config.yaml", run / "train.log"] \
            + sorted((run / "checkpoints").iterdir()):
        assert os.stat(path).st_mode & 0o777 == 0o640, path


@pytest.mark.parametrize("setup", ["missing", "empty"])
def test_resume_with_nothing_to_resume_is_refused_naming_the_directory(tmp_path, dl, setup):
    """A mistyped --workdir with --resume must not train from iteration 0 without a word."""
    work = tmp_path / "runs" / "dem"
    if setup == "empty":
        work.mkdir(parents=True)
    proc = _cli_train(dl, work, resume=True)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout
    assert "--resume: %s %s" % (work, "does not exist" if setup == "missing"
                                else "holds no checkpoint") in proc.stdout
    assert "--resume-if-exists" in proc.stdout
    assert os.listdir(work) == [] if setup == "empty" else not work.exists()


def test_resume_if_exists_starts_a_new_run_then_continues_it(tmp_path):
    """What a scheduler that restarts jobs runs: the first start trains from 0, a restart with
    the same command continues from the checkpoint."""
    work = tmp_path / "run"
    args = [TINY, "--workdir", str(work), "--no-eval", "--resume-if-exists"]
    overrides = [a for o in FAST for a in ("--set", o)]
    train.main(train.parse_args(args + overrides + ["--set", "train.iterations=8"]))
    assert Checkpointer(str(work)).iterations() == [8]
    # A longer schedule changes the learning rates: allowed explicitly.
    train.main(train.parse_args(args + overrides + ["--allow-config-change"]))
    assert "resuming from %s" % (work / "checkpoints" / "iter_0000008.params") in \
        (work / "train.log").read_text()
    assert Checkpointer(str(work)).iterations()[-1] == 24


def test_resume_and_resume_if_exists_exclude_each_other():
    with pytest.raises(SystemExit):
        train.parse_args([TINY, "--workdir", "w", "--resume", "--resume-if-exists"])
    assert train.parse_args([TINY, "--workdir", "w", "--resume"]).resume == "required"
    assert train.parse_args([TINY, "--workdir", "w"]).resume is False


def test_a_planted_pickle_in_the_newest_checkpoint_is_refused_and_never_runs(tmp_path, dl):
    """Whoever can write the run directory can also rewrite the checksums: resuming must not
    unpickle anything. The planted file would create `pwned` if it were unpickled."""
    import hashlib
    import pickle

    assert _cli_train(dl, tmp_path, "train.iterations=16").returncode == 0
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for ext in (".json", ".params", ".states"):  # as if stopped after iteration 8
        os.remove(tmp_path / "checkpoints" / ("iter_0000016" + ext))
    os.remove(tmp_path / "final.params")
    stem = tmp_path / "checkpoints" / "iter_0000008"
    stem.with_suffix(".states").write_bytes(pickle.dumps(Planted()))
    meta = json.loads(stem.with_suffix(".json").read_text())
    meta["sha256"]["states"] = hashlib.sha256(
        stem.with_suffix(".states").read_bytes()).hexdigest()
    stem.with_suffix(".json").write_text(json.dumps(meta))
    proc = _cli_train(dl, tmp_path, "train.iterations=16", resume=True)
    assert proc.returncode == 2, proc.stdout[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert "pickled optimizer state" in last and str(stem) + ".states" in last
    assert "Traceback" not in proc.stdout and not marker.exists()


def test_a_global_batch_that_does_not_split_is_refused_before_the_run_directory(tmp_path,
                                                                                monkeypatch):
    """Rank 0's pre-flight (for jobs started without `deeplab launch`'s own check): as if on 3
    workers with the global batch of 8."""
    from deeplab import dist
    from deeplab.errors import ConfigError

    cfg = load_config(TINY, FAST)
    monkeypatch.setattr(dist, "size", lambda: 3)
    with pytest.raises(ConfigError, match=r"train.batch_size 8 \(the global batch\) does not "
                                          r"split over 3 workers"):
        train.prepare(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
