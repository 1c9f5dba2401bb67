"""The launchers' supervision with stand-in workers (no MXNet: each starts in a fraction of a
second). `deeplab launch horovod` under the real horovodrun: the rank that failed first is named
with what its exit status means, Horovod's lines about missing ranks are repeated, horovodrun's
traceback is left out, SIGTERM reaches each training process once (never its loader processes)
and nothing is left behind. `deeplab launch ps` on a cluster node: a worker is stopped at once,
a server only after the grace.

The stand-in worker is a `deeplab` package of its own on the workers' PYTHONPATH, so that their
command line is the real one, `python -m deeplab.cli train ...`."""
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from conftest import stop_started, wait_for
from deeplab.launch import procs

FAKE_CLI = textwrap.dedent("""
    import os, signal, sys, time
    rank, out = int(os.environ["HOROVOD_RANK"]), os.environ["FAKE_OUT"]
    behaviour = os.environ.get("FAKE_RANK%d" % rank, "train")
    requests = []
    signal.signal(signal.SIGTERM, lambda signum, frame: requests.append(1))
    parent = os.getpid()
    loader = os.fork()
    if loader == 0:  # a loader process: same command line; must never get a SIGTERM
        def hit(signum, frame):
            open(os.path.join(out, "loader-%d-got-sigterm" % rank), "w").close()
            os._exit(1)
        signal.signal(signal.SIGTERM, hit)
        while os.getppid() == parent:
            time.sleep(0.05)
        os._exit(0)
    open(os.path.join(out, "started-%d" % rank), "w").close()
    if behaviour == "stall":  # what Horovod's stall inspector and the watchdog print
        time.sleep(0.5)
        print("[2026-11-30 10:00:00.000000: W /tmp/horovod/common/stall_inspector.cc:107] One "
              "or more tensors were submitted to be reduced, gathered or broadcasted by subset "
              "of ranks and are waiting for remainder of ranks for more than 60 seconds.",
              file=sys.stderr, flush=True)
        print("Missing ranks:", file=sys.stderr, flush=True)
        print("1: [comm.allreduce.12]", file=sys.stderr, flush=True)
        sys.exit(4)
    if behaviour == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(600)
    if behaviour == "kill9":
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    if behaviour.startswith("exit"):  # exitN, or exitN@S: after S seconds (default 0.5)
        code, _, delay = behaviour[4:].partition("@")
        time.sleep(float(delay or 0.5))
        if code == "2":
            print("deeplab train: error: unknown key train.lrr", file=sys.stderr, flush=True)
        sys.exit(int(code))
    while not requests:
        time.sleep(0.05)
    time.sleep(2.0 if rank == 0 else 0.2)  # the current step, then rank 0's checkpoint
    with open(os.path.join(out, "stopped-%d" % rank), "w") as f:
        f.write(str(len(requests)))
    os.kill(loader, signal.SIGKILL)  # as the loader stops its processes when training ends
    os.waitpid(loader, 0)
    sys.exit(143)
""")

DRIVER = textwrap.dedent("""
    import os, sys
    from deeplab.launch import horovod
    cmd = horovod.horovod_command(2, ["train", "fake.yaml", "--workdir", "w"],
                                  start_timeout=60)
    env = horovod.worker_env(2)
    env["PYTHONPATH"] = os.environ["FAKE_PATH"]  # the workers' deeplab is the stand-in
    sys.exit(horovod.supervise(cmd, env, grace=float(os.environ["GRACE"])))
""")


@pytest.fixture
def job(tmp_path):
    """Starts the launcher's supervision (in a process of its own) on stand-in workers."""
    fake = tmp_path / "fake" / "deeplab"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "cli.py").write_text(FAKE_CLI)
    out = tmp_path / "out"
    out.mkdir()
    marker = uuid.uuid4().hex
    started = []

    def start(grace=30, **behaviours):
        env = dict(os.environ, FAKE_OUT=str(out), FAKE_PATH=str(tmp_path / "fake"),
                   GRACE=str(grace), SUPERVISE_TEST=marker, OMP_NUM_THREADS="1",
                   **{"FAKE_" + k.upper(): v for k, v in behaviours.items()})
        for k in list(env):
            if k.startswith(("HOROVOD_", "DMLC_", "DEEPLAB_")) or k == "PYTHONPATH":
                del env[k]
        proc = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, cwd=str(tmp_path),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        started.append(proc)
        return proc

    start.out, start.marker = out, marker
    yield start
    stop_started(started, "SUPERVISE_TEST", marker)


def left(marker):
    """Live processes of the test's job (they carry its marker in their environment)."""
    return procs.job_processes(marker, "SUPERVISE_TEST")


def finish(proc, marker, timeout=60):
    out, _ = proc.communicate(timeout=timeout)
    time.sleep(0.5)
    assert not left(marker), "processes outlived the job:\n" + out
    return out


def test_a_stalled_rank_is_named_with_horovods_missing_ranks(job):
    proc = job(rank0="stall")
    out = finish(proc, job.marker)
    assert proc.returncode == 4, out
    assert "deeplab launch: worker rank 0 failed first: stalled (exit code 4); later: rank 1 " \
           "stopped by SIGTERM" in out, out
    assert "deeplab launch: Horovod reported: Missing ranks:" in out
    assert "deeplab launch: Horovod reported: 1: [comm.allreduce.12]" in out
    assert "Traceback" not in out, out  # horovodrun's RuntimeError is reported, not shown


@pytest.mark.parametrize("behaviour, status, words", [
    ("exit3", 3, "failed first: diverged (non-finite loss) (exit code 3)"),
    ("exit2", 2, "failed first: bad input (exit code 2): deeplab train: error: unknown key "
                 "train.lrr"),
    ("kill9", 137, "was lost first: killed by SIGKILL (signal 9, exit code 137)"),
])
def test_the_first_failing_rank_is_named_with_its_exit_status(job, behaviour, status, words):
    proc = job(rank1=behaviour)
    out = finish(proc, job.marker)
    assert proc.returncode == status, out
    assert "deeplab launch: worker rank 1 %s" % words in out, out
    assert "Traceback" not in out, out


def test_a_documented_exit_is_the_cause_over_a_peers_error_seen_before_it(job):
    """Rank 0 fails with bad input (exit 2) a moment after rank 1 failed through the broken
    collective (exit 1): rank 0 is named as the cause and the launcher exits 2."""
    proc = job(rank0="exit2@2", rank1="exit1@0.5")
    out = finish(proc, job.marker)
    assert proc.returncode == 2, out
    assert "Process 1 exit with status code 1" in out.split("Process 0 exit")[0], out
    assert "deeplab launch: worker rank 0 failed: bad input (exit code 2): deeplab train: " \
           "error: unknown key train.lrr; the cause of the job's end (the failure of rank 1 " \
           "exit code 1, seen first, followed from it)" in out, out


def test_sigterm_reaches_each_training_process_once_and_no_loader(job):
    """Rank 0 takes longer to stop (its checkpoint), and still gets no second SIGTERM when
    rank 1 has exited before it."""
    proc = job()
    wait_for(lambda: len(list(job.out.glob("started-*"))) == 2, 120, "both workers")
    proc.send_signal(signal.SIGTERM)
    tic = time.time()
    out = finish(proc, job.marker)
    assert proc.returncode == 143, out
    for rank in (0, 1):
        assert (job.out / ("stopped-%d" % rank)).read_text() == "1", out
    assert not list(job.out.glob("loader-*")), out
    assert "deeplab launch: stopped by SIGTERM: SIGTERM sent to 2 local worker(s)" in out
    assert time.time() - tic < 20, out


def test_workers_that_outlive_the_grace_are_killed(job):
    proc = job(grace=2, rank0="ignore", rank1="ignore")
    wait_for(lambda: len(list(job.out.glob("started-*"))) == 2, 120, "both workers")
    time.sleep(0.5)  # past the stand-ins' signal set-up
    proc.send_signal(signal.SIGTERM)
    tic = time.time()
    out = finish(proc, job.marker)
    assert proc.returncode == 143, out
    assert "the workers did not stop within --grace 2 s: killing the job" in out, out
    assert 2 <= time.time() - tic < 15, out


# `deeplab launch ps` on a cluster node (DMLC_ROLE set): a worker is sent one SIGTERM and
# checkpoints; a server keeps serving after SIGTERM (the workers still need it for their last
# step) until it exits or the grace ends. The server stand-in is an `mxnet` package of its own.
FAKE_SERVER = textwrap.dedent("""
    import os, signal, time
    out = os.environ["FAKE_OUT"]
    signal.signal(signal.SIGTERM, lambda signum, frame: open(
        os.path.join(out, "server-got-sigterm-%.3f" % time.time()), "w").close())
    open(os.path.join(out, "started-server"), "w").close()
    while True:
        time.sleep(0.05)
""")

NODE_DRIVER = textwrap.dedent("""
    import os, sys
    from deeplab.launch import ps
    os.environ["PYTHONPATH"] = os.environ["FAKE_PATH"]  # the node's command is the stand-in
    sys.exit(ps.run_node(["train", "fake.yaml"], grace=float(os.environ["GRACE"])))
""")


@pytest.mark.parametrize("role", ["worker", "server"])
def test_a_cluster_node_stops_its_role_the_way_it_can_checkpoint(job, tmp_path, role):
    (tmp_path / "fake" / "mxnet").mkdir()
    (tmp_path / "fake" / "mxnet" / "__init__.py").write_text(FAKE_SERVER)
    env = dict(os.environ, FAKE_OUT=str(job.out), FAKE_PATH=str(tmp_path / "fake"), GRACE="3",
               SUPERVISE_TEST=job.marker, HOROVOD_RANK="0", DMLC_ROLE=role,
               DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT="9", DMLC_NUM_WORKER="1",
               DMLC_NUM_SERVER="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen([sys.executable, "-c", NODE_DRIVER], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: list(job.out.glob("started-*")), 120, "the node's process")
        time.sleep(0.5)  # past the stand-ins' signal set-up
        proc.send_signal(signal.SIGTERM)
        tic = time.time()
        out = finish(proc, job.marker, timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    elapsed = time.time() - tic
    assert proc.returncode == 143, out
    if role == "worker":
        assert (job.out / "stopped-0").read_text() == "1", out
        assert not list(job.out.glob("loader-*")), out
        assert elapsed < 3, out  # it did not wait for the grace
    else:  # served through the grace, then stopped (SIGTERM, then SIGKILL as it ignores it)
        (hit,) = job.out.glob("server-got-sigterm-*")
        assert float(hit.name.rsplit("-", 1)[1]) - tic >= 2.5, out
        assert 3 <= elapsed < 15, out
