"""Faults across emulated hosts, `deeplab launch horovod -np 4 -H node1:2,node2:2` started on
node1, shipped defaults (synchronized BN, 2 loader processes per worker):

- a worker on node2 killed (SIGKILL): the job ends within 60 s naming the rank and its host,
  and the last checkpoint resumes to bitwise the parameters of a run that never stopped (one
  worker per host here: with 4 workers, Horovod's sums of 4 values are not bitwise repeatable
  from run to run even on one host, so "bitwise" needs 2);
- node2 cut off (its link down): the job ends as stalled (exit 4) within dist.stall_timeout +
  60 s, naming the host and its ranks;
- SIGTERM, or Ctrl-C (SIGINT to the launcher's process group), to the launcher: the workers on
  both hosts stop after the same step (the stop vote rides on the per-step allreduce), rank 0
  saves it, exit 128 + the signal;
- a host that cannot be reached at start (a wrong name, no sshd): one line naming it.
After each, no process of the job is left on any host (the job's marker, walked in /proc: the
namespaces share this machine's PID namespace).
"""
import os
import signal
import time

import mxnet as mx
import numpy as np
import pytest

from conftest import wait_for
from deeplab.checkpoint import Checkpointer
from deeplab.launch import procs

pytestmark = pytest.mark.multihost

FOUR = ["launch", "horovod", "-np", "4", "-H", "node1:2,node2:2", "--"]
TWO = ["launch", "horovod", "-np", "2", "-H", "node1:1,node2:1", "--"]
RUN = ["train.iterations=40", "train.checkpoint_every=4", "data.synthetic.train_size=24",
       "data.synthetic.val_size=4", "train.batch_size=8", "train.log_every=4"]
BOUND = 60  # seconds from the fault to the end of the job
STALL = 20  # dist.stall_timeout lowered from 600 s only so that the test ends in seconds

MARK = "MULTIHOST_TEST"


def left(hosts):
    """Live processes of the test's jobs, on any host."""
    return procs.job_processes(hosts.marker, MARK)


def workers(hosts):
    """{rank: pid} of the job's training processes (not loaders, launchers or horovodrun)."""
    out = {}
    for pid in procs.training_processes(among=left(hosts)):
        rank = procs.environ(pid).get("HOROVOD_RANK")
        if rank is not None:
            out[int(rank)] = pid
    return out


def all_four(hosts, n=4):
    found = workers(hosts)
    return found if len(found) == n else None


def start(hosts, dl, workdir, overrides=(), launcher=FOUR):
    return hosts.start("node1", *launcher, "train", dl.TINY, "--workdir", workdir, "--no-eval",
                       *dl.sets(*RUN, *overrides))


def finish(hosts, job, since, timeout=240):
    """(exit code, output, seconds since `since`) once the launcher ended; checks that nothing
    of the job is left on any host."""
    out, _ = job.communicate(timeout=timeout)
    elapsed = time.time() - since
    print("job ended with %s, %.1f s after the fault" % (job.returncode, elapsed))
    time.sleep(1)  # a zombie's parent reaps it
    assert not left(hosts), "processes outlived the job: %s\n%s" % (
        {p: procs.cmdline(p) for p in left(hosts)}, out[-3000:])
    return job.returncode, out, elapsed


def test_worker_killed_on_another_host_is_named_and_the_checkpoint_resumes(tmp_path, dl,
                                                                           cluster):
    hosts = cluster(2)
    workdir = tmp_path / "killed"
    job = start(hosts, dl, workdir, launcher=TWO)
    wait_for(Checkpointer(str(workdir)).iterations, 240, "the first checkpoint")
    ranks = wait_for(lambda: all_four(hosts, 2), 30, "the two workers")
    assert hosts.host_of(ranks[1]) == "node2" and hosts.host_of(ranks[0]) == "node1"
    os.kill(ranks[1], signal.SIGKILL)
    code, out, elapsed = finish(hosts, job, time.time())
    assert code == 255, out[-3000:]  # ssh's status for a remote command killed by a signal
    assert elapsed < BOUND, "the job took %.0f s to stop" % elapsed
    assert "worker rank 1 on node2 was lost first: its ssh session ended with exit code 255: "\
        "killed by a signal on node2" in out, out[-3000:]

    state = Checkpointer(str(workdir)).latest()
    assert state is not None and state["iteration"] % 4 == 0 and state["iteration"] < 40
    # Resumed on the same hosts, it reaches bitwise what a run that never stopped reaches.
    straight = tmp_path / "straight"
    for where, extra in ((straight, []), (workdir, ["--resume"])):
        hosts.deeplab("node1", *TWO, "train", dl.TINY, "--workdir", where, "--no-eval",
                      *extra, *dl.sets(*RUN))
    a = mx.nd.load(str(straight / "final.params"))
    b = mx.nd.load(str(workdir / "final.params"))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k].asnumpy(), b[k].asnumpy(), err_msg=k)


def test_a_host_cut_off_stalls_the_job_which_ends_naming_it(tmp_path, dl, cluster):
    hosts = cluster(2)
    workdir = tmp_path / "cut"
    job = start(hosts, dl, workdir, ["train.iterations=400", "dist.stall_timeout=%d" % STALL])
    wait_for(Checkpointer(str(workdir)).iterations, 240, "the first checkpoint")
    wait_for(lambda: all_four(hosts), 30, "the four workers")
    hosts.cut("node2")
    cut = time.time()
    out, _ = job.communicate(timeout=STALL + BOUND + 60)
    elapsed = time.time() - cut
    print("job ended with %s, %.1f s after the cut" % (job.returncode, elapsed))
    assert job.returncode == 4, out[-3000:]
    assert STALL <= elapsed < STALL + BOUND, "the job took %.0f s to stop" % elapsed
    assert "deeplab: stalled: no progress for %d s" % STALL in out, out[-3000:]
    assert "host node2 (worker ranks 2, 3) does not answer over ssh" in out, out[-3000:]
    # The workers on node2 end by their own watchdog (their output cannot come back).
    wait_for(lambda: not left(hosts), BOUND, "the workers on node2 to end")
    state = Checkpointer(str(workdir)).latest()
    assert state is not None and len(mx.nd.load(state["params"])) > 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_to_the_launcher_stops_every_host_after_one_step(tmp_path, dl, cluster, sig):
    hosts = cluster(2)
    workdir = tmp_path / "stopped"
    job = start(hosts, dl, workdir, ["train.iterations=400", "train.checkpoint_every=1000"])
    log = workdir / "train.log"
    wait_for(lambda: log.exists() and "iter " in log.read_text(), 240, "the first log line")
    ranks = wait_for(lambda: all_four(hosts), 30, "the four workers")
    assert {hosts.host_of(ranks[r]) for r in (2, 3)} == {"node2"}
    launcher = job.pid  # `ip netns exec` execs the launcher: the same process
    assert "launch" in procs.cmdline(launcher)
    if sig == signal.SIGINT:
        os.killpg(launcher, sig)  # Ctrl-C: the terminal signals the foreground group
    else:
        os.kill(launcher, sig)
    code, out, elapsed = finish(hosts, job, time.time())
    assert code == 128 + sig, out[-3000:]
    assert elapsed < BOUND, "the job took %.0f s to stop" % elapsed
    saved = Checkpointer(str(workdir)).iterations()
    assert len(saved) == 1 and saved[0] < 400, (saved, out[-3000:])
    assert "stopped by SIGTERM after iteration %d" % saved[0] in log.read_text()
    # The launcher signalled its own host's workers only; ranks 2 and 3 on node2 stopped after
    # the same step through the vote, and said so (their exit statuses may not reach
    # horovodrun, which ends their ssh sessions once the first worker exited).
    assert "stopped by %s: SIGTERM sent to 2 local worker(s)" % signal.Signals(sig).name \
        in out, out[-3000:]
    for rank in range(4):
        assert "[%d]<stderr>:deeplab train: stopped by SIGTERM after iteration %d;" \
            % (rank, saved[0]) in out, out[-3000:]


@pytest.mark.parametrize("how", ["wrong name", "no sshd"])
def test_a_host_that_cannot_be_reached_at_start_is_named(tmp_path, dl, cluster, how):
    hosts = cluster(2)
    if how == "no sshd":
        hosts.stop_sshd("node2")
        spec, name = "node1:2,node2:2", "node2"
    else:
        spec, name = "node1:2,nodeX:2", "nodeX"
    began = time.time()
    job = hosts.start("node1", "launch", "horovod", "-np", "4", "-H", spec,
                      "--horovodrun-arg=--disable-cache", "--", "train", dl.TINY,
                      "--workdir", tmp_path / "never", "--no-eval", *dl.sets(*RUN))
    code, out, elapsed = finish(hosts, job, began, timeout=180)
    assert code != 0
    assert elapsed < 120, "the launcher took %.0f s (--start-timeout 120)" % elapsed
    lines = [line for line in out.splitlines() if line.startswith("deeplab launch: ")][1:]
    assert len(lines) == 1 and "cannot reach host %s over ssh" % name in lines[0], out[-3000:]
    assert "Traceback" not in out, out[-3000:]


ELSEWHERE = ["launch", "horovod", "-np", "2", "-H", "node2:1,node3:1", "--"]


def stop_launcher(hosts, job, sig, workdir):
    """Sends `sig` (SIGTERM or SIGKILL) to the launcher of a 400-iteration run into `workdir`;
    checks that the job ended within BOUND (SIGTERM: exit 143; SIGKILL: every process of it on
    every host gone) with one checkpoint, that of the step after which its workers stopped;
    returns the launcher's output ('' after SIGKILL)."""
    os.kill(job.pid, sig)
    signalled = time.time()
    if sig == signal.SIGKILL:
        # Nobody reads the launcher's output now: the workers' own ending is in the run's files.
        job.wait(timeout=30)
        wait_for(lambda: not left(hosts), BOUND, "the job's processes to end")
        elapsed, out = time.time() - signalled, ""
        print("the job's processes ended %.1f s after the launcher was killed" % elapsed)
    else:
        code, out, elapsed = finish(hosts, job, signalled)
        assert code == 128 + sig, out[-3000:]
    assert elapsed < BOUND, "the job took %.0f s to stop" % elapsed
    saved = Checkpointer(str(workdir)).iterations()
    assert len(saved) == 1 and saved[0] < 400, (saved, out[-3000:])
    assert "stopped by SIGTERM after iteration %d" % saved[0] in (workdir / "train.log").read_text()
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_launcher_with_every_worker_on_other_hosts_stops_them_through_its_lifeline(
        tmp_path, dl, cluster, sig):
    """The launcher on node1 (a login node), its two workers on node2 and node3: no worker
    can see its pid and its signals do not cross hosts. SIGTERM: it asks them through its
    lifeline; SIGKILL: its kernel closes the lifeline and each worker sends itself the SIGTERM
    the launcher would have sent. Either way they stop after the same step, rank 0 saves it,
    and nothing is left on any host."""
    hosts = cluster(3)
    workdir = tmp_path / "elsewhere"
    job = start(hosts, dl, workdir, ["train.iterations=400", "train.checkpoint_every=1000"],
                launcher=ELSEWHERE)
    log = workdir / "train.log"
    wait_for(lambda: log.exists() and "iter " in log.read_text(), 240, "the first log line")
    ranks = wait_for(lambda: all_four(hosts, 2), 30, "the two workers")
    assert [hosts.host_of(ranks[r]) for r in (0, 1)] == ["node2", "node3"]
    out = stop_launcher(hosts, job, sig, workdir)
    if sig == signal.SIGTERM:
        for rank in range(2):
            assert "[%d]<stderr>:deeplab: the launcher (pid %d) asks the job to stop" \
                % (rank, job.pid) in out, out[-3000:]


PS_ELSEWHERE = ["launch", "ps", "--workers", "2", "--servers", "2", "-H", "node2:1,node3:1",
                "--"]


def ps_workers(hosts):
    found = [pid for pid in procs.training_processes(among=left(hosts))
             if procs.environ(pid).get("DMLC_ROLE") == "worker"]
    return found if len(found) == 2 else None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_parameter_server_launcher_stops_its_nodes_on_other_hosts(tmp_path, dl, cluster, sig):
    """`deeplab launch ps -H node2:1,node3:1` on node1: the scheduler on node1, a server and a
    worker on each other host, each supervised there by `deeplab launch ps` started over ssh.
    SIGTERM to the launcher: through its lifeline each node's worker gets one SIGTERM, they stop
    after the same step, rank 0 saves it, the servers serve until then; exit 143. SIGKILL: the
    lifeline closes and the nodes do the same by themselves. Nothing is left on any host."""
    hosts = cluster(3)
    workdir = tmp_path / "ps"
    job = start(hosts, dl, workdir, ["train.iterations=400", "train.checkpoint_every=1000",
                                     "train.freeze_bn=true"], launcher=PS_ELSEWHERE)
    log = workdir / "train.log"
    wait_for(lambda: log.exists() and "iter " in log.read_text(), 240, "the first log line")
    pids = wait_for(lambda: ps_workers(hosts), 30, "the two workers")
    assert sorted(hosts.host_of(p) for p in pids) == ["node2", "node3"]
    stop_launcher(hosts, job, sig, workdir)


def test_a_parameter_server_worker_killed_on_another_host_is_named(tmp_path, dl, cluster):
    hosts = cluster(3)
    workdir = tmp_path / "ps-killed"
    job = start(hosts, dl, workdir, ["train.iterations=400", "train.freeze_bn=true"],
                launcher=PS_ELSEWHERE)
    wait_for(Checkpointer(str(workdir)).iterations, 240, "the first checkpoint")
    pids = wait_for(lambda: ps_workers(hosts), 30, "the two workers")
    victim = next(p for p in pids if hosts.host_of(p) == "node3")
    os.kill(victim, signal.SIGKILL)
    code, out, elapsed = finish(hosts, job, time.time())
    assert code == 128 + signal.SIGKILL, out[-3000:]
    assert elapsed < BOUND, "the job took %.0f s to stop" % elapsed
    assert "deeplab launch ps: worker 1 on node3 was lost first: killed by SIGKILL" in out, \
        out[-3000:]
    state = Checkpointer(str(workdir)).latest()
    assert state is not None and state["iteration"] % 4 == 0


MPI_TWO = ["launch", "horovod", "--mpi", "-np", "2", "-H", "node1:1,node2:1", "--"]


@pytest.mark.parametrize("fault", ["worker killed on node2", "sigterm to the launcher"])
def test_faults_under_mpirun_across_hosts(tmp_path, dl, cluster, fault):
    """`deeplab launch horovod --mpi` across node1 and node2 (Hydra's ssh launcher), shipped
    defaults: a worker on node2 killed ends the job within 60 s with a non-zero exit; SIGTERM to
    the launcher stops both workers after the same step with rank 0's checkpoint (rank 1 on
    node2 through the vote and the launcher's lifeline), exit 143. Nothing is left on any
    host."""
    hosts = cluster(2)
    workdir = tmp_path / "mpi"
    job = start(hosts, dl, workdir, ["train.iterations=400", "train.checkpoint_every=1000"]
                if fault.startswith("sigterm") else [], launcher=MPI_TWO)
    if fault.startswith("sigterm"):
        log = workdir / "train.log"
        wait_for(lambda: log.exists() and "iter " in log.read_text(), 240, "the first log line")
    else:
        wait_for(Checkpointer(str(workdir)).iterations, 240, "the first checkpoint")
    ranks = wait_for(lambda: all_four(hosts, 2), 30, "the two workers")
    assert hosts.host_of(ranks[1]) == "node2"
    if fault.startswith("sigterm"):
        os.kill(job.pid, signal.SIGTERM)
    else:
        os.kill(ranks[1], signal.SIGKILL)
    code, out, elapsed = finish(hosts, job, time.time())
    assert elapsed < BOUND, "the job took %.0f s to stop" % elapsed
    if fault.startswith("sigterm"):
        assert code == 143, out[-3000:]
        saved = Checkpointer(str(workdir)).iterations()
        assert len(saved) == 1 and saved[0] < 400, (saved, out[-3000:])
    else:
        assert code != 0, out[-3000:]
        assert "worker rank 1" in out, out[-3000:]
        state = Checkpointer(str(workdir)).latest()
        assert state is not None and state["iteration"] % 4 == 0
    assert "Traceback" not in out, out[-3000:]
