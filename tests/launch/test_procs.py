"""launch/procs.py in-process: the out-of-memory counters read from cgroup files in the kernel's
formats (v2 memory.events and memory.max, v1 memory.oom_control and memory.limit_in_bytes),
the root-cause table, and the launcher's token that workers watch. The real out-of-memory
killer is in tests/launch/test_faults.py (test_a_worker_killed_for_memory_is_named_so)."""
import os
import signal
import subprocess
import sys
import time
import types

import pytest

from deeplab.errors import EXIT_DIVERGED, EXIT_STALLED, EXIT_USER_ERROR
from deeplab.launch import procs

# The files as the kernel writes them (Documentation/admin-guide/cgroup-v2.rst, cgroup-v1/).
V2_EVENTS = "low 0\nhigh 0\nmax 41\noom 2\noom_kill %d\noom_group_kill 0\n"
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill %d\n"
VMSTAT = "nr_free_pages 3296070\npgfault 9283471\noom_kill %d\n"


def _v2_root(tmp_path, kills, limit="536870912\n"):
    """A cgroup v2 mount whose root holds this process's cgroup ("0::/" here, or a deeper one:
    the directories are created along the path /proc/self/cgroup names)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    path = [line.split(":", 2)[2] for line in open("/proc/self/cgroup").read().splitlines()
            if line.startswith("0::")][0]
    inner = root.joinpath(*[p for p in path.split("/") if p])
    inner.mkdir(parents=True, exist_ok=True)
    (inner / "memory.events").write_text(V2_EVENTS % kills)
    (inner / "memory.max").write_text(limit)
    return root, inner


def test_a_rising_cgroup_v2_counter_names_the_out_of_memory_killer_and_the_limit(tmp_path):
    root, inner = _v2_root(tmp_path, 3)
    vmstat = tmp_path / "vmstat"
    vmstat.write_text(VMSTAT % 7)
    watch = procs.OomWatch(root=str(root), vmstat=str(vmstat))
    assert str(inner) in watch.cgroups
    assert procs.describe_status(137, watch) == "killed by SIGKILL (signal 9, exit code 137)"
    (inner / "memory.events").write_text(V2_EVENTS % 4)
    vmstat.write_text(VMSTAT % 8)
    assert procs.describe_status(137, watch) == (
        "killed by the out-of-memory killer (memory limit 512 MiB of cgroup %s) (signal 9, "
        "exit code 137)" % inner)
    assert procs.describe_status(-signal.SIGKILL, watch).endswith("(signal 9)")
    # other statuses are not the out-of-memory killer's
    assert procs.describe_status(143, watch) == "stopped by SIGTERM (exit code 143)"


def test_no_limit_and_only_the_machines_counter_say_less(tmp_path):
    root, inner = _v2_root(tmp_path, 0, limit="max\n")
    vmstat = tmp_path / "vmstat"
    vmstat.write_text(VMSTAT % 0)
    watch = procs.OomWatch(root=str(root), vmstat=str(vmstat))
    vmstat.write_text(VMSTAT % 1)  # another process on the machine may have been the victim
    assert "probably by the out-of-memory killer" in procs.describe_status(137, watch)
    (inner / "memory.events").write_text(V2_EVENTS % 1)
    assert procs.describe_status(137, watch).startswith(
        "killed by the out-of-memory killer (cgroup %s)" % inner)


def test_cgroup_v1_files_are_read(tmp_path):
    d = tmp_path / "v1"
    d.mkdir()
    (d / "memory.oom_control").write_text(V1_OOM_CONTROL % 5)
    (d / "memory.limit_in_bytes").write_text("268435456\n")
    assert procs.oom_kills([str(d)], vmstat=str(tmp_path / "none")) == {str(d): 5}
    assert procs.memory_limit(str(d)) == 256 << 20
    (d / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert procs.memory_limit(str(d)) is None


def test_a_documented_exit_outranks_a_peers_error_seen_first():
    assert [code for code, _ in procs.ROOT_CAUSES] == [EXIT_USER_ERROR, EXIT_DIVERGED,
                                                       EXIT_STALLED]
    assert procs.root_cause([(1, 1, 0.0), (0, 2, 1.0)]) == 1
    assert procs.root_cause([(1, 137, 0.0), (0, 1, 1.0)]) == 0
    assert procs.root_cause([(1, 143, 0.0), (0, 4, 1.0)]) == 1  # horovodrun's SIGTERM: 143
    assert procs.documented_exit("deeplab train: error: /w is in use by another run") == 2
    assert procs.documented_exit("deeplab train: training diverged: non-finite loss") == 3
    assert procs.documented_exit("deeplab: stalled: no progress for 20 s after ...") == 4
    assert procs.documented_exit("Traceback (most recent call last):") is None


class _Node:
    """A stand-in for the Popen of a node of `deeplab launch ps`: `code` once it has exited."""

    def __init__(self, pid):
        self.pid, self.code = pid, None

    def poll(self):
        return self.code


def _ps_job(tmp_path):
    """`deeplab launch ps`'s policy for a job on this machine over stand-in nodes: a
    scheduler, a server and two workers, worker 0 having reported rank 1 and worker 1 rank 0
    (ps-lite assigns ranks at registration)."""
    from deeplab.launch import ps

    job = ps._LocalJob(2, 1, ["train"], str(tmp_path), 30.0, 0.2)
    job.nodes = [("scheduler", _Node(101)), ("server 0", _Node(102)), ("worker 0", _Node(103)),
                 ("worker 1", _Node(104))]
    job.workers = job.nodes[2:]
    (tmp_path / "103").write_text("1")
    (tmp_path / "104").write_text("0")
    sup = types.SimpleNamespace(stopping=None, request_stop=lambda *a: None)
    return job, sup, dict(job.nodes)


def test_ps_names_a_documented_exit_over_a_peers_error_seen_before_it(tmp_path, capsys):
    """As `deeplab launch horovod` does (procs.root_cause): rank 1 fails through the broken
    collective (exit 1), seen first; rank 0's bad input (exit 2) a moment later is named as the
    cause, and the job's exit status is 2."""
    from deeplab.launch import ps

    job, sup, node = _ps_job(tmp_path)
    node["worker 0"].code = 1
    assert job.check(sup, 10.0) is None  # no documented reason yet: it may still come
    node["worker 1"].code = 2
    assert job.check(sup, 10.0 + ps.FAILURE_SETTLE / 2) == ("failed", 2)
    assert capsys.readouterr().err == (
        "deeplab launch ps: worker rank 0 (worker 1, pid 104) failed: bad input (exit code 2); "
        "the cause of the job's end (the failure of worker rank 1 (worker 0, pid 103) exit "
        "code 1, seen first, followed from it); stopping the job\n")


def test_ps_ranks_the_failures_seen_at_once_and_waits_only_for_an_undocumented_one(tmp_path,
                                                                                  capsys):
    from deeplab.launch import ps

    # Both seen in one poll, the peer's error first in node order: the documented one at once.
    job, sup, node = _ps_job(tmp_path)
    node["worker 0"].code, node["worker 1"].code = 1, 2
    assert job.check(sup, 10.0) == ("failed", 2)
    assert "worker rank 0 (worker 1, pid 104) failed: bad input (exit code 2); the cause" \
        in capsys.readouterr().err
    # A worker killed, nothing documented: named once FAILURE_SETTLE has passed.
    job, sup, node = _ps_job(tmp_path)
    node["worker 1"].code = -signal.SIGKILL
    assert job.check(sup, 10.0) is None
    assert job.check(sup, 10.0 + ps.FAILURE_SETTLE) == ("failed", 137)
    assert capsys.readouterr().err == (
        "deeplab launch ps: worker rank 0 (worker 1, pid 104) was lost first: killed by SIGKILL "
        "(signal 9); stopping the job\n")
    # A documented exit seen first: at once, the others seen with it named as later.
    job, sup, node = _ps_job(tmp_path)
    node["worker 0"].code, node["scheduler"].code = 4, 1
    assert job.check(sup, 10.0) == ("failed", 4)
    assert capsys.readouterr().err.startswith(
        "deeplab launch ps: worker rank 1 (worker 0, pid 103) failed: stalled (exit code 4); "
        "the cause of the job's end (the failure of scheduler (pid 101) exit code 1, seen "
        "first, followed from it)")


def test_the_launcher_token_tells_a_gone_launcher_from_a_live_one():
    assert procs.launcher_alive(procs.launcher_token())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = procs.launcher_token(child.pid)
    child.wait()
    assert not procs.launcher_alive(token)
    pid, start, where = procs.launcher_token().split(":", 2)
    assert not procs.launcher_alive("%s:%d:%s" % (pid, int(start) + 1, where))  # a reused pid


def test_a_launcher_on_another_host_or_pid_namespace_is_not_watched():
    """A worker started through ssh on another host (or in another pod) cannot see the
    launcher's pid: it must not take it for gone."""
    token = procs.launcher_token()
    assert procs.watchable(token)
    pid, start, where = token.split(":", 2)
    host, ns = where.split("/", 1)
    assert not procs.watchable("%s:%s:other-host/%s" % (pid, start, ns))
    assert not procs.watchable("%s:%s:%s/pid:[1]" % (pid, start, host))
    lost = []
    assert procs.watch_launcher(lost.append, {procs.LAUNCHER_ENV: "1:1:other-host/%s" % ns}) \
        is None
    assert procs.watch_launcher(lost.append, {}) is None


def elsewhere(token):
    """`token` as a process on another host sees it: another host name in its place."""
    head, _, rest = token.partition(" ")
    pid, start, where = head.split(":", 2)
    return "%s:%s:other-host/%s %s" % (pid, start, where.split("/", 1)[1], rest)


def test_a_process_elsewhere_follows_the_lifeline_stop_then_loss():
    """A worker on another host cannot see the launcher's pid: it holds a connection to the
    launcher's lifeline, which asks it to stop (one byte) and, closed, says the launcher is
    gone."""
    from conftest import wait_for

    lifeline = procs.Lifeline(addresses=["127.0.0.1"])
    token = elsewhere(procs.launcher_token(lifeline=lifeline))
    assert not procs.watchable(token) and "lifeline=127.0.0.1:%d" % lifeline.port in token
    lost, asked = [], []
    thread = procs.watch_launcher(lost.append, {procs.LAUNCHER_ENV: token}, on_stop=asked.append)
    assert thread is not None
    wait_for(lambda: lifeline.open() == 1, 10, "the connection")
    assert lifeline.stop() == 1 and lifeline.stop() == 0  # asked once
    wait_for(lambda: asked == [os.getpid()], 10, "the stop request")
    assert not lost
    lifeline.close()
    wait_for(lambda: lost == [os.getpid()], 10, "the loss")
    assert asked == [os.getpid()]


def test_a_process_that_connects_after_the_stop_is_asked_at_once():
    from conftest import wait_for

    lifeline = procs.Lifeline(addresses=["127.0.0.1"])
    lifeline.stop()
    asked = []
    procs.watch_launcher(lambda pid: None, {procs.LAUNCHER_ENV: elsewhere(
        procs.launcher_token(lifeline=lifeline))}, on_stop=asked.append)
    wait_for(lambda: asked, 10, "the stop request")
    lifeline.close()


def test_the_lifeline_listens_on_the_named_interface_only():
    """--network-interface lo: the lifeline binds lo's address, not 0.0.0.0, and its token
    names that address; another address of this host is refused. An interface this host lacks
    is named in one line."""
    import socket

    from conftest import wait_for
    from deeplab.errors import LaunchError

    lifeline = procs.Lifeline(interfaces="lo")
    try:
        assert lifeline.addresses == ["127.0.0.1"]
        assert [s.getsockname()[0] for s in lifeline.servers] == ["127.0.0.1"]
        token = elsewhere(procs.launcher_token(lifeline=lifeline))
        assert "lifeline=127.0.0.1:%d" % lifeline.port in token
        procs.watch_launcher(lambda pid: None, {procs.LAUNCHER_ENV: token})
        wait_for(lambda: lifeline.open() == 1, 10, "the connection")
        for address in procs.local_addresses():  # not listening there
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, lifeline.port), timeout=5).close()
    finally:
        lifeline.close()
    with pytest.raises(LaunchError, match="--network-interface lo,nosuch0: this host has no "
                                          "interface 'nosuch0' with an IPv4 address"):
        procs.Lifeline(interfaces="lo,nosuch0")


LAUNCHER = """
import subprocess, sys, time
from deeplab.launch import procs
lifeline = procs.Lifeline(addresses=["127.0.0.1"])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(procs.launcher_token(lifeline=lifeline), child.pid, flush=True)
time.sleep(120)
"""


def test_the_launchers_death_closes_the_lifeline_though_its_children_live():
    """SIGKILL leaves no time for goodbyes: the launcher's kernel closes the connection. The
    processes it started (horovodrun, a scheduler) do not inherit the lifeline, so they cannot
    keep it open."""
    from conftest import wait_for

    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE,
                                text=True)
    try:
        line = launcher.stdout.readline().split()
        token, child = " ".join(line[:2]), int(line[2])
        lost = []
        assert procs.watch_launcher(lost.append, {procs.LAUNCHER_ENV: elsewhere(token)})
        time.sleep(0.5)
        assert not lost
        launcher.kill()
        launcher.wait()
        wait_for(lambda: lost == [launcher.pid], 10, "the loss")
        assert procs.alive(child)
    finally:
        launcher.kill()
        procs.kill_processes(lambda: [child] if procs.alive(child) else [])


def test_an_unreachable_lifeline_is_said_and_not_taken_for_a_loss(capfd, monkeypatch):
    monkeypatch.setattr(procs, "LIFELINE_CONNECT", 1.0)
    lifeline = procs.Lifeline(addresses=["127.0.0.1"])
    token = elsewhere(procs.launcher_token(lifeline=lifeline))
    lifeline.close()  # nobody listens there any more
    lost = []
    assert procs.watch_launcher(lost.append, {procs.LAUNCHER_ENV: token}) is None
    assert not lost
    assert "cannot reach the launcher's lifeline at 127.0.0.1 port %d" % lifeline.port \
        in capfd.readouterr().err


def test_workdir_of_a_deeplab_command_line():
    assert procs.workdir_of(["train", "c.yaml", "--workdir", "runs/a", "--no-eval"]) == "runs/a"
    assert procs.workdir_of(["train", "c.yaml", "--workdir=runs/b"]) == "runs/b"
    assert procs.workdir_of(["eval", "c.yaml", "--checkpoint", "x"]) is None


HUP = """
import os, signal, time
from deeplab.launch import procs
with procs.StopSignals() as stop:
    os.kill(os.getpid(), signal.SIGHUP)
    time.sleep(0.2)
print(stop.count, stop.exit_code)
"""


def test_sighup_is_a_stop_request_unless_nohup_ignores_it():
    def run(ignored):
        return subprocess.run(
            [sys.executable, "-c", HUP], capture_output=True, text=True, timeout=60,
            preexec_fn=(lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if ignored
            else None).stdout.split()
    assert run(ignored=False) == ["1", "129"]
    assert run(ignored=True) == ["0", "0"]  # nohup deeplab launch ...


AFTER_THE_END = """
import os, signal, subprocess, sys, time
from deeplab.launch import procs

class Quick(procs.Policy):
    # The workers stop as soon as they are asked (they saved their checkpoint at once).
    def check(self, sup, now):
        if not sup.stop.count:
            os.kill(os.getpid(), signal.SIGINT)
    def ended(self, sup):
        return sup.stopping is not None
    def report(self, sup, outcome):
        return sup.stop.exit_code

code = procs.Supervisor(Quick(), 30.0, poll=0.01).run()
os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again, after the job already ended
signal.raise_signal(signal.SIGTERM)
# Ctrl-C after Ctrl-C until this process is gone: some land while the interpreter finalizes.
storm = subprocess.Popen(["sh", "-c", "while kill -INT %d 2>/dev/null; do :; done" % os.getpid()],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(0.3)
print("exiting with", code, flush=True)
sys.exit(code)
"""


def test_a_signal_after_the_job_ended_does_not_change_the_launchers_exit():
    """Ctrl-C twice where the workers stop within the second: the launcher's process still
    exits 130 with its report, not with a KeyboardInterrupt traceback or killed by the signal
    while the interpreter finalizes (status -2 either way)."""
    done = subprocess.run([sys.executable, "-c", AFTER_THE_END], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert done.stdout == "exiting with 130\n" and "Traceback" not in done.stderr


def test_the_watch_calls_back_once_the_launcher_is_gone():
    from conftest import wait_for

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    lost = []
    thread = procs.watch_launcher(lost.append,
                                  {procs.LAUNCHER_ENV: procs.launcher_token(child.pid)}, poll=0.05)
    assert thread is not None and not lost
    child.wait()  # reaped; a zombie would count as gone too
    wait_for(lambda: lost == [child.pid], 10, "the watch's call")
