"""Faults users hit, with the shipped defaults (data.num_workers: 2 loader processes per worker):
Horovod (synchronized BN) and the parameter server (frozen BN), 2 workers each, tiny model;
the main rows again under `deeplab launch horovod --mpi` (MPICH's mpirun, synchronized BN's
statistics over MPI).

- A worker killed with SIGKILL right after the first checkpoint: the job stops within 60 s,
  naming the rank.
- SIGTERM to one worker, or to the launcher (a job scheduler, `kubectl delete`): every worker
  stops after the same step and rank 0 saves it; under the parameter server the servers are
  stopped after the workers.
- SIGTERM during the end-of-training evaluation.

After each: the exit code, the message, the time from the signal to the end of the job, that
no process of the job is left (every process of a job carries the test's marker in its
environment, whatever its parent, group or session; found through /proc), and where a
checkpoint is involved, that resuming it reaches bitwise the final.params of a run that never
stopped.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import mxnet as mx
import numpy as np
import pytest

from conftest import wait_for
from deeplab.checkpoint import Checkpointer

RUN = ["train.iterations=80", "train.checkpoint_every=4", "data.synthetic.train_size=24",
       "data.synthetic.val_size=4", "train.batch_size=6", "train.log_every=4"]
HOROVOD = ["launch", "horovod", "-np", "2", "--"]
MPI = ["launch", "horovod", "--mpi", "-np", "2", "--"]
PS = ["launch", "ps", "--workers", "2", "--servers", "1", "--"]
PS_RUN = ["train.freeze_bn=true"]  # BN statistics are per worker under the parameter server
STOPPED = 128 + signal.SIGTERM
BOUND = 60  # seconds from the fault to the end of the job


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


def _state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def processes_of(workdir):
    """{pid: (argv, environ)} of live processes whose command line names `workdir`."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_info(int(entry))
            if info and str(workdir) in info[0] and _state(int(entry)) not in (None, "Z"):
                out[int(entry)] = info
    return out


def marked(marker):
    """{pid: argv} of live processes carrying the test's marker (FAULT_TEST) in their
    environment: every process a job started, its loader processes included."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_info(int(entry))
            if info and info[1].get("FAULT_TEST") == marker \
                    and _state(int(entry)) not in (None, "Z"):
                out[int(entry)] = info[0]
    return out


def comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def train_workers(workdir, rank_of):
    """{rank: pid} of the Python training workers (not the launchers, shells or loaders)."""
    found = {}
    for pid, (argv, env) in processes_of(workdir).items():
        if os.path.basename(argv[0]).startswith("python") and "deeplab.cli" in argv \
                and "launch" not in argv and comm(pid) != "deeplab-loader":
            rank = rank_of(pid, env)
            if rank is not None:
                found[rank] = pid
    return found


def horovod_rank(pid, env):
    return int(env["HOROVOD_RANK"]) if "HOROVOD_RANK" in env else None


def ps_rank(pid, env):
    """The rank the worker reported to `deeplab launch ps`."""
    if env.get("DMLC_ROLE") != "worker":
        return None
    try:
        with open(os.path.join(env["DEEPLAB_RANK_DIR"], str(pid))) as f:
            return int(f.read())
    except (OSError, KeyError, ValueError):
        return None


def assert_same_final_params(a, b):
    """The final.params of runs `a` and `b` are bitwise equal."""
    pa, pb = mx.nd.load(str(a / "final.params")), mx.nd.load(str(b / "final.params"))
    assert sorted(pa) == sorted(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k].asnumpy(), pb[k].asnumpy(), err_msg=k)


class Job:
    """A `deeplab launch ... -- train` job started in the background, every process marked."""

    def __init__(self, dl, workdir, launcher, overrides, evaluate=False, cgroup=None,
                 wrap=()):
        self.workdir, self.marker = workdir, uuid.uuid4().hex
        cmd = [*wrap, sys.executable, "-m", "deeplab.cli", *launcher, "train", dl.TINY,
               "--workdir", str(workdir), *([] if evaluate else ["--no-eval"]),
               *dl.sets(*overrides)]

        def join_cgroup():  # the launcher, and so all it starts, in the cgroup `cgroup`
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

        self.proc = subprocess.Popen(cmd, env=dl.environ(FAULT_TEST=self.marker), cwd=dl.ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True,
                                     preexec_fn=join_cgroup if cgroup else None)
        self.signalled = None

    def signal(self, pid, sig):
        """Sends `sig` to `pid` while the job runs; the clock of the time bound starts."""
        assert self.proc.poll() is None, "the run ended before the signal"
        os.kill(pid, sig)
        self.signalled = time.time()

    def finish(self, timeout=180, headless=False):
        """Waits for the job; returns (exit code, output, seconds since the signal), after
        checking that nothing of it is left. `headless`: the launcher was killed, the end of
        the job is when its last process is gone (waited for up to BOUND seconds)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.communicate()
        if headless:
            wait_for(lambda: not marked(self.marker), BOUND, "the job's processes to stop")
        elapsed = time.time() - self.signalled
        print("job ended with %s, %.1f s after the signal" % (self.proc.returncode, elapsed))
        time.sleep(1)  # a zombie's parent reaps it
        left = marked(self.marker)
        assert not left, "processes outlived the job: %s\n%s" % (left, out[-3000:])
        assert not processes_of(self.workdir)
        return self.proc.returncode, out, elapsed

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()
        for pid in marked(self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def jobs():
    started = []

    def start(*args, **kw):
        started.append(Job(*args, **kw))
        return started[-1]
    yield start
    for job in started:
        job.kill()


def assert_ran_under(workdir, launcher):
    """WORKDIR/run.json records the backend and world size `launcher` starts (2 workers under
    Horovod, MPI or the parameter server): bitwise-equal parameters alone would not show that
    the runs were distributed."""
    with open(os.path.join(str(workdir), "run.json")) as f:
        info = json.load(f)
    expected = ("ps" if launcher == PS else "horovod", 2)
    assert (info["backend"], info["world_size"]) == expected, (workdir, info)


_STRAIGHT = {}


@pytest.fixture
def straight(tmp_path_factory, dl):
    """final.params of an uninterrupted run, one per launcher and config (computed once)."""
    def run(launcher, overrides):
        key = (tuple(launcher), tuple(overrides))
        if key not in _STRAIGHT:
            workdir = tmp_path_factory.mktemp("straight")
            dl.deeplab(*launcher, "train", dl.TINY, "--workdir", workdir, "--no-eval",
                       *dl.sets(*overrides), timeout=300)
            _STRAIGHT[key] = workdir
        return _STRAIGHT[key]
    return run


def resume_equals_straight(dl, straight, workdir, launcher, overrides, reference):
    """Resuming `workdir` (run with `overrides`) reaches the final.params of a run with
    `reference` that never stopped (the checkpoint interval does not change what is trained);
    both ran with the backend and world size of `launcher`."""
    dl.deeplab(*launcher, "train", dl.TINY, "--workdir", workdir, "--no-eval", "--resume",
               *dl.sets(*overrides), timeout=300)
    reference_dir = straight(launcher, reference)
    assert_ran_under(workdir, launcher)
    assert_ran_under(reference_dir, launcher)
    assert_same_final_params(workdir, reference_dir)


def kill_resume_compare(tmp_path, dl, jobs, straight, launcher, overrides, rank_of):
    workdir = tmp_path / "killed"
    job = jobs(dl, workdir, launcher, [*RUN, *overrides])
    ckpt = Checkpointer(str(workdir))
    wait_for(ckpt.iterations, 180, "the first checkpoint")
    workers = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(
        train_workers(workdir, rank_of)), 30, "both workers")
    job.signal(workers[1], signal.SIGKILL)
    code, out, elapsed = job.finish()
    assert code == 128 + signal.SIGKILL, out[-3000:]
    assert elapsed < BOUND, "the job took %.0f s to stop" % elapsed
    assert "worker rank 1" in out and "was lost first: killed by SIGKILL" in out, out[-3000:]

    # The last checkpoint is complete and readable ...
    state = Checkpointer(str(workdir)).latest()
    assert state is not None and state["iteration"] % 4 == 0 and state["iteration"] < 80
    assert len(mx.nd.load(state["params"])) > 0

    # ... and resuming from it reaches the parameters of an uninterrupted run.
    resume_equals_straight(dl, straight, workdir, launcher, [*RUN, *overrides],
                           [*RUN, *overrides])
    return elapsed


def test_horovod_worker_killed_then_resumed(tmp_path, dl, jobs, straight):
    kill_resume_compare(tmp_path, dl, jobs, straight, HOROVOD, [], horovod_rank)


def test_mpi_worker_killed_then_resumed(tmp_path, dl, jobs, straight):
    """Under mpirun: Hydra ends the other rank as soon as one dies of a signal."""
    kill_resume_compare(tmp_path, dl, jobs, straight, MPI, [], horovod_rank)


def test_parameter_server_worker_killed_then_resumed(tmp_path, dl, jobs, straight):
    kill_resume_compare(tmp_path, dl, jobs, straight, PS, PS_RUN, ps_rank)


def stop_resume_compare(tmp_path, dl, jobs, straight, launcher, overrides, target,
                        sig=signal.SIGTERM, expected=STOPPED):
    """`sig` (SIGTERM) to `target(job, workers)` once training runs: every worker stops after
    the same step, rank 0 saves that step, the job ends with `expected` (143), and --resume
    reaches the parameters of a run never stopped. Returns the job's output."""
    run = [*RUN, *overrides, "train.checkpoint_every=1000"]
    workdir = tmp_path / "stopped"
    job = jobs(dl, workdir, launcher, run)
    log = workdir / "train.log"
    wait_for(lambda: log.exists() and "iter " in log.read_text(), 180, "the first log line")
    rank_of = ps_rank if launcher == PS else horovod_rank
    workers = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(
        train_workers(workdir, rank_of)), 30, "both workers")
    job.signal(target(job, workers), sig)
    code, out, elapsed = job.finish(headless=sig == signal.SIGKILL)
    assert code == expected, out[-3000:]
    assert elapsed < BOUND, "the job took %.0f s to stop" % elapsed
    saved = Checkpointer(str(workdir)).iterations()
    assert len(saved) == 1 and saved[0] < 80, (saved, out[-3000:])
    assert "stopped by SIGTERM after iteration %d" % saved[0] in log.read_text()
    resume_equals_straight(dl, straight, workdir, launcher, run, [*RUN, *overrides])
    return out


def test_horovod_sigterm_to_one_worker_stops_all_with_a_checkpoint(tmp_path, dl, jobs,
                                                                   straight):
    """A preempted worker (SIGTERM to rank 1 only)."""
    out = stop_resume_compare(tmp_path, dl, jobs, straight, HOROVOD, [],
                              lambda job, workers: workers[1])
    # Both stop after the same step; either may exit first.
    assert re.search(r"worker rank [01] exited first: stopped by SIGTERM \(exit code 143\)",
                     out), out[-3000:]


def test_mpi_sigterm_to_one_worker_stops_all_with_a_checkpoint(tmp_path, dl, jobs, straight):
    """A preempted worker under mpirun: the statistics' transport (MPI) and the stop vote
    (Horovod) carry the stop to the other rank after the same step."""
    out = stop_resume_compare(tmp_path, dl, jobs, straight, MPI, [],
                              lambda job, workers: workers[1])
    assert re.search(r"worker rank [01] exited first: stopped by SIGTERM \(exit code 143\)",
                     out), out[-3000:]
    assert "synchronized BN; BN statistics over mpi" in out, out[-3000:]


@pytest.mark.parametrize("launcher", [HOROVOD, MPI], ids=["horovod", "mpi"])
def test_horovod_launcher_sigterm_stops_the_workers_with_a_checkpoint(tmp_path, dl, jobs,
                                                                      straight, launcher):
    """SIGTERM to `deeplab launch horovod` (a job scheduler, `kubectl delete`)."""
    out = stop_resume_compare(tmp_path, dl, jobs, straight, launcher, [],
                              lambda job, workers: job.proc.pid)
    assert "deeplab launch: stopped by SIGTERM: SIGTERM sent to 2 local worker(s)" in out, \
        out[-3000:]


def test_ps_launcher_sigterm_stops_the_workers_first_with_a_checkpoint(tmp_path, dl, jobs,
                                                                       straight):
    """SIGTERM to `deeplab launch ps`: the workers stop after the same step (which needs the
    servers), then the servers and the scheduler."""
    out = stop_resume_compare(tmp_path, dl, jobs, straight, PS, PS_RUN,
                              lambda job, workers: job.proc.pid)
    assert "stopped by SIGTERM: the workers saved a checkpoint and exited; stopping the " \
           "servers and the scheduler" in out, out[-3000:]


@pytest.mark.parametrize("launcher", [HOROVOD, PS], ids=["horovod", "ps"])
def test_sigterm_during_evaluation_leaves_no_process(tmp_path, dl, jobs, launcher):
    """SIGTERM to the launcher while the workers and their loader processes evaluate."""
    workdir = tmp_path / "evaluating"
    job = jobs(dl, workdir, launcher, ["train.iterations=8", "train.batch_size=6",
                                       "data.synthetic.train_size=24",
                                       "data.synthetic.val_size=400",
                                       *(PS_RUN if launcher == PS else [])], evaluate=True)
    wait_for(lambda: (workdir / "final.params").exists(), 180, "the end of training")
    wait_for(lambda: [pid for pid in marked(job.marker) if comm(pid) == "deeplab-loader"], 30,
             "the evaluation's loader processes")
    job.signal(job.proc.pid, signal.SIGTERM)
    code, out, elapsed = job.finish()
    assert code == STOPPED, out[-3000:]
    assert elapsed < BOUND, "the job took %.0f s to stop" % elapsed
    assert not (workdir / "results.json").exists()


STALL = 20  # dist.stall_timeout lowered from 600 s only so the test ends in seconds


@pytest.mark.parametrize("launcher", [HOROVOD, MPI, PS], ids=["horovod", "mpi", "ps"])
def test_a_stopped_worker_stalls_the_job_which_ends_naming_it(tmp_path, dl, jobs, straight,
                                                               launcher):
    """SIGSTOP of rank 1 (a frozen process, a node that stopped answering): the other worker's
    watchdog ends it after dist.stall_timeout with the stall's line, the launcher names the
    stopped rank and ends the job (exit 4), nothing is left, and the last checkpoint resumes
    to an uninterrupted run's parameters. Defaults otherwise (2 loader processes per worker)."""
    overrides = [*RUN, *(PS_RUN if launcher == PS else []), "dist.stall_timeout=%d" % STALL]
    workdir = tmp_path / "stalled"
    job = jobs(dl, workdir, launcher, overrides)
    wait_for(Checkpointer(str(workdir)).iterations, 180, "the first checkpoint")
    rank_of = ps_rank if launcher == PS else horovod_rank
    workers = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(
        train_workers(workdir, rank_of)), 30, "both workers")
    job.signal(workers[1], signal.SIGSTOP)
    code, out, elapsed = job.finish()
    assert code == 4, out[-3000:]
    # The watchdog counts from rank 0's last step, before the signal; mpirun ends the job at
    # once when it exits, so there the job may end up to a step's time before STALL seconds.
    assert STALL - (2 if launcher == MPI else 0) <= elapsed < STALL + BOUND, \
        "the job took %.0f s to stop" % elapsed
    assert re.search(r"deeplab: stalled: no progress for 20 s after iteration \d+ "
                     r"\(rank 0 of 2", out), out[-3000:]
    assert "worker rank 1 (pid %d) on this machine is stopped" % workers[1] in out, out[-3000:]
    assert "stalled" in out.split("deeplab launch")[-1], out[-3000:]
    state = Checkpointer(str(workdir)).latest()
    assert state is not None and state["iteration"] < 80
    resume_equals_straight(dl, straight, workdir, launcher, overrides,
                           [*RUN, *(PS_RUN if launcher == PS else [])])


@pytest.mark.parametrize("launcher", [HOROVOD, PS], ids=["horovod", "ps"])
def test_sighup_to_the_launcher_stops_the_job_like_sigterm(tmp_path, dl, jobs, straight,
                                                           launcher):
    """The terminal closed, the ssh session dropped, `tmux kill-session`: SIGHUP to the
    launcher is a stop request (checkpoint, everything stopped, nothing left), exit 129."""
    out = stop_resume_compare(tmp_path, dl, jobs, straight, launcher,
                              PS_RUN if launcher == PS else [],
                              lambda job, workers: job.proc.pid,
                              sig=signal.SIGHUP, expected=128 + signal.SIGHUP)
    assert "stopped by SIGHUP" in out, out[-3000:]


@pytest.mark.parametrize("launcher", [HOROVOD, MPI, PS], ids=["horovod", "mpi", "ps"])
def test_a_killed_launcher_leaves_a_checkpoint_and_no_process(tmp_path, dl, jobs, straight,
                                                              launcher):
    """SIGKILL to the launcher (out of memory, a scheduler's hard kill): every process of the
    job notices within a second that it is gone (procs.watch_launcher); the workers stop after
    the same step with a checkpoint, the servers and the scheduler once the workers are gone,
    horovodrun when its workers have exited. Nothing is left within BOUND seconds, and the
    checkpoint resumes to the parameters of a run never stopped."""
    stop_resume_compare(tmp_path, dl, jobs, straight, launcher,
                        PS_RUN if launcher == PS else [], lambda job, workers: job.proc.pid,
                        sig=signal.SIGKILL, expected=-signal.SIGKILL)


@pytest.mark.parametrize("launcher", [HOROVOD, MPI, PS], ids=["horovod", "mpi", "ps"])
def test_ctrl_c_twice_kills_the_job_says_so_and_records_it(tmp_path, dl, jobs, straight,
                                                           launcher):
    """Ctrl-C twice within a second: the job is killed at once; the launcher says only what
    happened (no checkpoint claimed that was not saved), run.json records the run as killed
    (or, where the workers saved their checkpoint before the kill, their own stop), nothing is
    left, and the newest checkpoint is intact and resumes bitwise."""
    run = [*RUN, *(PS_RUN if launcher == PS else [])]
    workdir = tmp_path / "interrupted"
    job = jobs(dl, workdir, launcher, run)
    ckpt = Checkpointer(str(workdir))
    wait_for(ckpt.iterations, 180, "the first checkpoint")
    job.signal(job.proc.pid, signal.SIGINT)
    time.sleep(0.3)
    os.kill(job.proc.pid, signal.SIGINT)
    code, out, elapsed = job.finish()
    assert code == 128 + signal.SIGINT, out[-3000:]
    assert elapsed < BOUND, "the job took %.0f s to stop" % elapsed
    assert "Traceback" not in out, out[-3000:]
    if "SIGINT again: killing the job" not in out:
        # Every worker had stopped with its checkpoint before the second Ctrl-C (the parameter
        # server's often do within the 0.3 s): it changed nothing, the first stop is reported.
        assert "stopped by SIGINT: " in out and "killed by a second signal" not in out, \
            out[-3000:]
        info = json.loads((workdir / "run.json").read_text())
        assert (info["status"], info["ended_by"], info["checkpoint_saved"]) == (
            "preempted", "SIGTERM", Checkpointer(str(workdir)).latest()["iteration"]), info
        resume_equals_straight(dl, straight, workdir, launcher, run, run)
        return
    tail = out.split("SIGINT again: killing the job")[1]
    assert "which save a checkpoint" not in tail, out[-3000:]
    saved = re.search(r"SIGINT twice: killed (before any checkpoint was saved; the newest is "
                      r"from iteration (\d+), before the stop|after the workers saved the "
                      r"checkpoint of iteration (\d+))", tail)
    assert saved, out[-3000:]
    state = Checkpointer(str(workdir)).latest()
    assert state["iteration"] == int(saved.group(2) or saved.group(3))
    info = json.loads((workdir / "run.json").read_text())
    if saved.group(2):  # killed before the workers saved: the launcher records the kill
        assert (info["status"], info["ended_by"]) == ("killed", "SIGINT twice"), info
    else:  # or the workers had saved and recorded their stop (the parameter server's stop
        # in a fraction of a second, before the second Ctrl-C killed its servers)
        assert (info["status"], info["ended_by"]) == ("killed", "SIGINT twice") or (
            info["status"], info["ended_by"], info["checkpoint_saved"]) == (
            "preempted", "SIGTERM", int(saved.group(3))), info
    resume_equals_straight(dl, straight, workdir, launcher, run, run)


@pytest.mark.parametrize("launcher", [HOROVOD, PS], ids=["horovod", "ps"])
def test_a_rank_failing_for_a_documented_reason_is_named_over_its_peer(tmp_path, dl, jobs,
                                                                       launcher):
    """Rank 0 refuses a directory in use by another run (exit 2); rank 1 learns it through
    on_main's shared verdict and exits with the same reason, or fails through the broken
    collective (exit 1), and either may be seen first: the launcher names the documented reason
    (from whichever rank reported it) and exits 2, within BOUND seconds of the job's start (the
    fault is there from the start), nothing of the job left."""
    from deeplab.workdir import WorkdirLock

    workdir = tmp_path / "busy"
    workdir.mkdir()
    lock = WorkdirLock(str(workdir)).acquire()  # "another run"
    try:
        job = jobs(dl, workdir, launcher, [*RUN, *(PS_RUN if launcher == PS else [])])
        job.signalled = time.time()
        code, out, elapsed = job.finish()
    finally:
        lock.release()
    assert code == 2, out[-3000:]
    assert elapsed < BOUND, "the job took %.0f s to end" % elapsed
    if launcher == HOROVOD:
        assert re.search(r"deeplab launch: worker rank [01] failed( first)?: bad input \(exit "
                         r"code 2\): deeplab train: error: \S+ is in use by another run", out), \
            out[-3000:]
    else:
        assert re.search(r"deeplab launch ps: worker rank [01] \(worker [01], pid \d+\) failed"
                         r"( first)?: bad input \(exit code 2\)", out), out[-3000:]
        assert re.search(r"deeplab train: error: \S+ is in use by another run", out), out[-3000:]


@pytest.fixture
def memory_cgroup():
    """A memory cgroup (v2, or v1's memory controller) made below this process's own, limited
    to the given number of bytes; the test is skipped where none can be made (not root, no
    memory controller)."""
    made = []

    def make(limit):
        from deeplab.launch import procs

        parents = procs.memory_cgroups()
        if not parents:
            pytest.skip("no memory cgroup to make one in")
        d = os.path.join(parents[0], "deeplab-test-%s" % uuid.uuid4().hex[:8])
        try:
            os.mkdir(d)
        except OSError as err:
            pytest.skip("cannot make a memory cgroup: %s" % err)
        made.append(d)
        name = "memory.max" if os.path.exists(os.path.join(d, "memory.max")) else \
            "memory.limit_in_bytes"
        with open(os.path.join(d, name), "w") as f:
            f.write(str(limit))
        return d
    yield make
    for d in made:
        wait_for(lambda: not open(os.path.join(d, "cgroup.procs")).read().strip(), 30,
                 "the test cgroup's processes to end")
        os.rmdir(d)


def test_a_worker_killed_for_memory_is_named_so(tmp_path, dl, jobs, memory_cgroup):
    """A job under a memory limit too small for it (a container's, a cgroup's): the kernel's
    out-of-memory killer kills a worker with SIGKILL; the launcher reads the cgroup's counter
    and says so, with the limit, instead of only "killed by SIGKILL"."""
    limit = 450 << 20  # the launcher, horovodrun and two workers need about 700 MiB
    cgroup = memory_cgroup(limit)
    workdir = tmp_path / "oom"
    job = jobs(dl, workdir, HOROVOD, RUN, cgroup=cgroup)
    job.signalled = time.time()  # the clock starts with the job: the limit is there from the start
    code, out, elapsed = job.finish()
    assert code == 128 + signal.SIGKILL, out[-3000:]
    assert elapsed < BOUND + 60, "the job took %.0f s to end" % elapsed
    assert re.search(r"deeplab launch: worker rank [01] was lost first: killed by the "
                     r"out-of-memory killer \(memory limit 450 MiB of cgroup %s\) \(signal 9, "
                     r"exit code 137\)" % re.escape(cgroup), out), out[-3000:]


@pytest.mark.parametrize("evaluate", [False, True], ids=["no-eval", "eval"])
def test_a_stopped_ps_scheduler_stalls_the_workers_shutdown_which_ends_naming_it(
        tmp_path, dl, jobs, straight, evaluate):
    """SIGSTOP of the parameter server's scheduler (issue 19, item 6): training, which talks to
    the servers only, runs to the end; then the next barrier of every node waits for good: the
    final evaluation's first allreduce (a new kvstore key), or with --no-eval ps-lite's
    shutdown. Each worker's watchdog ends it (4x dist.stall_timeout in evaluation) with the
    stall's line naming the phase; the job ends with 4, nothing is left, and the last checkpoint
    (the final one) resumes."""
    overrides = [*RUN, *PS_RUN, "dist.stall_timeout=%d" % STALL]
    workdir = tmp_path / "scheduler"
    job = jobs(dl, workdir, PS, overrides, evaluate=evaluate)
    wait_for(Checkpointer(str(workdir)).iterations, 180, "the first checkpoint")
    scheduler = wait_for(lambda: [pid for pid in marked(job.marker)
                                  if proc_info(pid) and
                                  proc_info(pid)[1].get("DMLC_ROLE") == "scheduler"],
                         30, "the scheduler")
    assert len(scheduler) == 1, scheduler
    job.signal(scheduler[0], signal.SIGSTOP)
    # The clock of the bound starts when training ends (final.params written).
    wait_for(lambda: (workdir / "final.params").exists(), 300, "the end of training")
    job.signalled = time.time()
    code, out, elapsed = job.finish()
    assert code == 4, out[-3000:]
    limit = 4 * STALL if evaluate else STALL
    assert elapsed < limit + BOUND, "the job took %.0f s to stop" % elapsed
    phase = (r"80 s in the final evaluation after [^(]+" if evaluate else
             r"20 s in the ps backend's shutdown after (saving final.params|the final checkpoint)")
    assert re.search(r"deeplab: stalled: no progress for %s \(rank [01] of 2, backend ps\)"
                     % phase, out), out[-3000:]
    assert not (workdir / "results.json").exists()
    state = Checkpointer(str(workdir)).latest()
    assert state is not None and state["iteration"] == 80
    resume_equals_straight(dl, straight, workdir, PS, overrides, [*RUN, *PS_RUN])


def voc_tree(dl, root, train_ids):
    """A small VOC tree (tests/data/conftest.py's build_tree) and the overrides that train on
    it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "voc_tree", os.path.join(dl.ROOT, "tests", "data", "conftest.py"))
    voc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(voc)
    tree = voc.build_tree(root, voc_train=train_ids, voc_val=["v1", "v2"])
    return tree, ["data.name=voc", "data.root=%s" % tree.root, "data.train_split=train",
                  "model.num_classes=21", "train.batch_size=2", "train.iterations=80",
                  "train.checkpoint_every=4", "train.log_every=4"]


def damaged_then_resumed(tmp_path, dl, jobs, damage, overrides=()):
    """Trains plain `deeplab train` (defaults: 2 loader processes) on a VOC tree, applies
    `damage(path)` to a training image after the first checkpoint, and waits for the job.
    Returns (exit code, output, seconds since the damage, the image, the workdir, the
    checkpoint iterations before the damage); the image is restored afterwards and --resume
    must then finish the run from the last checkpoint."""
    ids = ["a", "b", "c", "d"]
    tree, run = voc_tree(dl, tmp_path / "voc", ids)
    run += list(overrides)
    workdir = tmp_path / "run"
    job = jobs(dl, workdir, [], run)
    ckpt = Checkpointer(str(workdir))
    wait_for(ckpt.iterations, 180, "the first checkpoint")
    image = tree.voc_image("a")
    with open(image, "rb") as f:
        original = f.read()
    before = ckpt.iterations()
    damage(image)
    job.signalled = time.time()
    code, out, elapsed = job.finish()
    state = ckpt.latest()
    assert state is not None and state["iteration"] < 80, out[-3000:]
    assert len(mx.nd.load(state["params"])) > 0
    os.remove(image)
    with open(image, "wb") as f:
        f.write(original)
    dl.deeplab("train", dl.TINY, "--workdir", workdir, "--no-eval", "--resume", *dl.sets(*run),
               timeout=300)
    assert ckpt.latest()["iteration"] == 80 and (workdir / "final.params").exists()
    return code, out, elapsed, image, before


def test_a_data_file_that_blocks_stalls_naming_the_loader_and_the_file(tmp_path, dl, jobs):
    """A FIFO in place of a training JPEG (a file that never delivers: a dead NFS server):
    the loader process reading it blocks; the watchdog ends the job after dist.stall_timeout
    (lowered only so the test is short) with a line naming the data loader, the sample, its
    file and the loader process (issue 19, item 7)."""
    def block(path):
        os.remove(path)
        os.mkfifo(path)

    code, out, elapsed, image, _ = damaged_then_resumed(
        tmp_path, dl, jobs, block, ["dist.stall_timeout=%d" % STALL])
    assert code == 4, out[-3000:]
    assert STALL <= elapsed < STALL + BOUND, "the job took %.0f s to stop" % elapsed
    assert re.search(r"deeplab: stalled: no progress for 20 s after iteration \d+ \(rank 0 of "
                     r"1, backend local\); waiting for the data loader to read sample a \(%s, "
                     r"[^)]*a\.png\): loader process \d+ has been reading it for \d+ s"
                     % re.escape(image), out), out[-3000:]


def test_a_truncated_training_image_is_an_error_naming_it(tmp_path, dl, jobs):
    """A training JPEG cut in half (`truncate -s 50%`), which OpenCV would decode without an
    error into a half-grey image: one line naming the file, exit 2 (issue 19, item 10)."""
    def truncate(path):
        os.truncate(path, os.path.getsize(path) // 2)

    code, out, elapsed, image, _ = damaged_then_resumed(tmp_path, dl, jobs, truncate)
    assert code == 2, out[-3000:]
    assert elapsed < BOUND, "the job took %.0f s to stop" % elapsed
    assert "deeplab train: error: image %s is damaged: truncated JPEG" % image in out, \
        out[-3000:]
    assert "Traceback" not in out and "Premature end of JPEG" not in out, out[-3000:]


def _network_namespaces_work():
    try:
        return subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up && tc qdisc show "
                               "dev lo"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# The job in a network namespace of its own, its loopback up: the test may then break its
# network (tc, ip) without touching the machine's.
IN_NETNS = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


@pytest.mark.skipif(not _network_namespaces_work(),
                    reason="network namespaces (unshare -n) and tc are not available here")
def test_a_failing_network_is_one_line_naming_the_peer_with_its_own_exit_code(
        tmp_path, dl, jobs, straight):
    """The job's loopback throttled to 1 Mbit/s with a 2 s queue mid-training (issue 19, item
    8; all defaults, dist.stall_timeout included): Gloo's connection times out; each worker
    says so in one line naming the peer's address, exit code 5 (EXIT_NETWORK), no traceback;
    nothing is left, and the last checkpoint resumes to an uninterrupted run's parameters."""
    workdir = tmp_path / "network"
    job = jobs(dl, workdir, HOROVOD, RUN, wrap=IN_NETNS)
    wait_for(Checkpointer(str(workdir)).iterations, 180, "the first checkpoint")
    assert job.proc.poll() is None
    subprocess.run(["nsenter", "-t", str(job.proc.pid), "-n", "tc", "qdisc", "add", "dev", "lo",
                    "root", "tbf", "rate", "1mbit", "burst", "10kb", "latency", "2s"],
                   check=True, timeout=30)
    job.signalled = time.time()
    code, out, elapsed = job.finish()
    assert code == 5, out[-3000:]
    assert elapsed < BOUND, "the job took %.0f s to stop" % elapsed
    assert re.search(r"deeplab train: lost the network connection to the worker at "
                     r"127\.0\.0\.1:\d+ \(Gloo: (Read|Write) error \[127\.0\.0\.1\]:\d+: ", out), \
        out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "exit code 5" in out.split("deeplab launch:")[-1], out[-3000:]
    state = Checkpointer(str(workdir)).latest()
    assert state is not None and state["iteration"] < 80
    resume_equals_straight(dl, straight, workdir, HOROVOD, RUN, RUN)
