"""A worker killed mid-run: the job stops within 60 s naming the lost rank, the last checkpoint
is intact, and resuming it gives the parameters of a run that never stopped.

Horovod (synchronized BN) and the parameter server (frozen BN), 2 workers each, on the tiny
model; the worker is killed with SIGKILL right after the first checkpoint appears.
"""
import os
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from deeplab.checkpoint import Checkpointer

RUN = ["train.iterations=80", "train.checkpoint_every=4", "data.train_size=24",
       "data.val_size=4", "data.num_workers=0", "train.batch_size=6", "train.log_every=4"]


def proc_info(pid):
    """(argv, environ) of a process, or None if it is gone."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
        with open("/proc/%d/environ" % pid, "rb") as f:
            env = dict(kv.split("=", 1) for kv in f.read().decode(errors="replace").split("\0")
                       if "=" in kv)
        return argv, env
    except OSError:
        return None


def processes_of(workdir):
    """{pid: (argv, environ)} of live processes whose command line names `workdir`."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_info(int(entry))
            if info and str(workdir) in info[0]:
                with open("/proc/%s/stat" % entry) as f:
                    if f.read().split(")")[-1].split()[0] == "Z":  # zombie: already dead
                        continue
                out[int(entry)] = info
    return out


def train_workers(workdir, rank_of):
    """{rank: pid} of the Python training workers (not the launchers, not shells)."""
    found = {}
    for pid, (argv, env) in processes_of(workdir).items():
        if os.path.basename(argv[0]).startswith("python") and "deeplab.cli" in argv \
                and "launch" not in argv:
            rank = rank_of(pid, env)
            if rank is not None:
                found[rank] = pid
    return found


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail("timed out after %ds waiting for %s" % (timeout, what))


def assert_same_final_params(a, b):
    """The final.params of runs `a` and `b` are bitwise equal."""
    pa, pb = mx.nd.load(str(a / "final.params")), mx.nd.load(str(b / "final.params"))
    assert sorted(pa) == sorted(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k].asnumpy(), pb[k].asnumpy(), err_msg=k)


def kill_resume_compare(tmp_path, dl, launcher, overrides, rank_of):
    workdir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "deeplab.cli", *launcher, "train", dl.TINY, "--workdir",
           str(workdir), "--no-eval", *dl.sets(*RUN, *overrides)]
    job = subprocess.Popen(cmd, env=dl.environ(), cwd=dl.ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        ckpt = Checkpointer(str(workdir))
        wait_for(ckpt.iterations, 180, "the first checkpoint")
        workers = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(
            train_workers(workdir, rank_of)), 30, "both workers")
        assert job.poll() is None, "the run ended before a worker could be killed"
        os.kill(workers[1], signal.SIGKILL)
        killed = time.time()
        out, _ = job.communicate(timeout=120)
        elapsed = time.time() - killed
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0, out
    assert elapsed < 60, "the job took %.0f s to stop" % elapsed
    assert "worker rank 1" in out and "lost" in out, out[-3000:]
    time.sleep(1)
    assert not processes_of(workdir), "processes outlived the job: %s" % processes_of(workdir)

    # The last checkpoint is complete and readable ...
    state = Checkpointer(str(workdir)).latest()
    assert state is not None and state["iteration"] % 4 == 0 and state["iteration"] < 80
    assert len(mx.nd.load(state["params"])) > 0

    # ... and resuming from it reaches the parameters of an uninterrupted run.
    dl.deeplab(*launcher, "train", dl.TINY, "--workdir", workdir, "--no-eval", "--resume",
               *dl.sets(*RUN, *overrides), timeout=300)
    dl.deeplab(*launcher, "train", dl.TINY, "--workdir", tmp_path / "straight", "--no-eval",
               *dl.sets(*RUN, *overrides), timeout=300)
    assert_same_final_params(workdir, tmp_path / "straight")
    return state["iteration"]


def test_horovod_worker_killed_then_resumed(tmp_path, dl):
    kill_resume_compare(tmp_path, dl, ["launch", "horovod", "-np", "2", "--"], [],
                        lambda pid, env: int(env["HOROVOD_RANK"]) if "HOROVOD_RANK" in env
                        else None)


def test_parameter_server_worker_killed_then_resumed(tmp_path, dl):
    def rank_of(pid, env):  # the rank the worker reported to `deeplab launch ps`
        if env.get("DMLC_ROLE") != "worker":
            return None
        try:
            with open(os.path.join(env["DEEPLAB_RANK_DIR"], str(pid))) as f:
                return int(f.read())
        except (OSError, KeyError, ValueError):
            return None
    kill_resume_compare(tmp_path, dl, ["launch", "ps", "--workers", "2", "--servers", "1", "--"],
                        ["train.freeze_bn=true"], rank_of)


def test_horovod_sigterm_to_one_worker_stops_all_with_a_checkpoint(tmp_path, dl):
    """A preempted worker (SIGTERM to rank 1 only): every worker stops after the same step,
    rank 0 saves that step, and --resume reaches the parameters of a run never stopped."""
    run = ["train.checkpoint_every=1000"]
    workdir = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "deeplab.cli", "launch", "horovod", "-np", "2", "--", "train",
           dl.TINY, "--workdir", str(workdir), "--no-eval", *dl.sets(*RUN, *run)]
    job = subprocess.Popen(cmd, env=dl.environ(), cwd=dl.ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = workdir / "train.log"
    try:
        wait_for(lambda: log.exists() and "iter " in log.read_text(), 180, "the first log line")
        workers = train_workers(workdir, lambda pid, env: int(env["HOROVOD_RANK"])
                                if "HOROVOD_RANK" in env else None)
        assert job.poll() is None and 1 in workers, "the run ended before the signal"
        os.kill(workers[1], signal.SIGTERM)
        out, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0, out
    saved = Checkpointer(str(workdir)).iterations()
    assert len(saved) == 1 and saved[0] < 80, (saved, out[-3000:])
    assert "stopped by SIGTERM after iteration %d" % saved[0] in log.read_text()

    dl.deeplab("launch", "horovod", "-np", "2", "--", "train", dl.TINY, "--workdir", workdir,
               "--no-eval", "--resume", *dl.sets(*RUN, *run), timeout=300)
    dl.deeplab("launch", "horovod", "-np", "2", "--", "train", dl.TINY, "--workdir",
               tmp_path / "straight", "--no-eval", *dl.sets(*RUN, *run), timeout=300)
    assert_same_final_params(workdir, tmp_path / "straight")
