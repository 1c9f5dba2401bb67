"""deeplab.k8s.entrypoint as PID 1 of a pod, in a PID namespace of its own (`unshare`): on
SIGTERM the training processes (not children of PID 1: started through sshd) save their
checkpoint before anything else stops, zombies are reaped, and nothing is left behind.

The training process is a stand-in: a `deeplab` package of its own on PYTHONPATH, so that its
command line is `python -m deeplab.cli train ...` as in a real pod; it forks a "loader" copy of
itself, finishes its step in 1 s after SIGTERM, writes a checkpoint file and exits 143.
"""
import os
import shutil
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
    out = os.environ["FAKE_OUT"]
    requests = []
    signal.signal(signal.SIGTERM, lambda signum, frame: requests.append(time.time()))
    if os.environ.get("FAKE_IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getpid()
    loader = os.fork()  # a loader process: same command line, must never get the SIGTERM
    if loader == 0:
        def hit(signum, frame):
            open(os.path.join(out, "loader-got-sigterm"), "w").close()
            os._exit(1)
        signal.signal(signal.SIGTERM, hit)
        while os.getppid() == parent:
            time.sleep(0.05)
        os._exit(0)
    open(os.path.join(out, "training-%d" % os.getpid()), "w").close()
    while not requests:
        time.sleep(0.05)
    time.sleep(1.0)  # the current step, then the checkpoint
    with open(os.path.join(out, "checkpoint"), "w") as f:
        f.write(str(len(requests)))
    os.kill(loader, signal.SIGKILL)
    os.waitpid(loader, 0)
    sys.exit(143)
""")

# Stands in for `sshd -De`: starts the training command the way an ssh session would (a shell
# in a session of its own, not waited for), then serves until SIGTERM.
FAKE_SSHD = textwrap.dedent("""
    import os, subprocess, sys, time
    subprocess.Popen(["sh", "-c", 'exec "$0" -m deeplab.cli train fake.yaml --workdir w',
                      sys.executable], env=dict(os.environ, PYTHONPATH=os.environ["FAKE_PATH"]),
                     start_new_session=True)
    time.sleep(600)
""")

# Stands in for `deeplab launch ...` in the launcher pod: leaves orphans that exit (zombies
# unless PID 1 reaps them), and on SIGTERM takes 1 s to stop its workers, then exits 143.
FAKE_LAUNCHER = textwrap.dedent("""
    import os, signal, sys, time
    out = os.environ["FAKE_OUT"]
    requests = []
    signal.signal(signal.SIGTERM, lambda signum, frame: requests.append(time.time()))
    for _ in range(3):
        if os.fork() == 0:
            if os.fork() == 0:
                time.sleep(0.2)
            os._exit(0)
    open(os.path.join(out, "launcher-ready"), "w").close()
    while not requests:
        time.sleep(0.05)
    time.sleep(1.0)
    with open(os.path.join(out, "launcher-stopped"), "w") as f:
        f.write(str(len(requests)))
    sys.exit(143)
""")


def _unshare_works():
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "--fork", "--pid", "--mount-proc", "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


NAMESPACE = pytest.param(True, marks=pytest.mark.skipif(
    not _unshare_works(), reason="unshare --pid --mount-proc is not permitted here"),
    id="pid-namespace")


@pytest.fixture
def pod(tmp_path):
    """Writes the stand-ins; returns a function that starts the entrypoint on a command."""
    fake = tmp_path / "fake"
    (fake / "deeplab").mkdir(parents=True)
    (fake / "deeplab" / "__init__.py").write_text("")
    (fake / "deeplab" / "cli.py").write_text(FAKE_CLI)
    (tmp_path / "sshd.py").write_text(FAKE_SSHD)
    (tmp_path / "launcher.py").write_text(FAKE_LAUNCHER)
    out = tmp_path / "out"
    out.mkdir()
    marker = uuid.uuid4().hex
    started = []

    def start(entry_args, command, namespace, **env):
        environ = dict(os.environ, FAKE_OUT=str(out), FAKE_PATH=str(fake), POD_TEST=marker,
                       **env)
        environ.pop("PYTHONPATH", None)  # the entrypoint imports the real deeplab
        argv = [sys.executable, "-m", "deeplab.k8s.entrypoint", *entry_args, "--", *command]
        if namespace:
            argv = [shutil.which("unshare"), "--fork", "--pid", "--mount-proc"] + argv
        proc = subprocess.Popen(argv, env=environ, cwd=str(tmp_path), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        started.append(proc)
        return proc

    start.out, start.tmp, start.marker = out, tmp_path, marker
    yield start
    stop_started(started, "POD_TEST", marker)


def left(marker):
    """Live processes of the test (they carry its marker in their environment)."""
    return procs.job_processes(marker, "POD_TEST")


def entrypoint_pid(proc, namespace):
    """Host pid of the entrypoint (under unshare: the child that is PID 1 of the namespace)."""
    if not namespace:
        return proc.pid
    deadline = time.time() + 30
    while time.time() < deadline:
        children = [pid for pid in procs.all_pids() if (procs.stat(pid) or (0, 0))[1] == proc.pid]
        if children:
            return children[0]
        time.sleep(0.05)
    pytest.fail("unshare started no process")


@pytest.mark.parametrize("namespace", [NAMESPACE, False], ids=["pid-namespace", "subreaper"])
def test_worker_pod_sigterm_stops_training_started_through_sshd_first(pod, namespace):
    proc = pod(["--workers", "--grace", "30"], [sys.executable, str(pod.tmp / "sshd.py")],
               namespace)
    wait_for(lambda: any(p.name.startswith("training-") for p in pod.out.iterdir()), 60,
             "the training process")
    os.kill(entrypoint_pid(proc, namespace), signal.SIGTERM)
    tic = time.time()
    out, _ = proc.communicate(timeout=30)
    elapsed = time.time() - tic
    # One SIGTERM reached the training process, none its loader; it saved its checkpoint
    # before the entrypoint stopped sshd and exited with sshd's status (killed by SIGTERM).
    assert (pod.out / "checkpoint").read_text() == "1", out
    assert not (pod.out / "loader-got-sigterm").exists(), out
    assert proc.returncode == 143, out
    assert 1.0 <= elapsed < 15, (elapsed, out)
    assert "SIGTERM: stopping the training processes, then" in out
    time.sleep(0.5)
    assert not left(pod.marker)


@pytest.mark.parametrize("namespace", [NAMESPACE, False], ids=["pid-namespace", "subreaper"])
def test_training_that_ignores_sigterm_is_killed_after_the_grace(pod, namespace):
    proc = pod(["--workers", "--grace", "2"], [sys.executable, str(pod.tmp / "sshd.py")],
               namespace, FAKE_IGNORE_SIGTERM="1")
    wait_for(lambda: any(p.name.startswith("training-") for p in pod.out.iterdir()), 60,
             "the training process")
    os.kill(entrypoint_pid(proc, namespace), signal.SIGTERM)
    tic = time.time()
    out, _ = proc.communicate(timeout=30)
    assert 2.0 <= time.time() - tic < 10, out
    assert proc.returncode == 128 + signal.SIGKILL, out  # sshd was killed with the rest
    assert "still running 2 s after SIGTERM: killing everything" in out
    assert not (pod.out / "checkpoint").exists()
    time.sleep(0.5)
    assert not left(pod.marker)


@pytest.mark.parametrize("namespace", [NAMESPACE], ids=["pid-namespace"])
def test_launcher_pod_forwards_sigterm_and_reaps_zombies(pod, namespace):
    proc = pod(["--grace", "30"], [sys.executable, str(pod.tmp / "launcher.py")], namespace)
    wait_for(lambda: (pod.out / "launcher-ready").exists(), 60, "the launcher")
    pid1 = entrypoint_pid(proc, namespace)
    time.sleep(1.0)  # the orphans have exited and were re-parented to PID 1

    def zombies():
        return [pid for pid in procs.all_pids()
                if (procs.stat(pid) or ("", 0))[:2] == ("Z", pid1)]
    wait_for(lambda: not zombies(), 5, "PID 1 to reap its zombies %s" % zombies())
    os.kill(pid1, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert (pod.out / "launcher-stopped").read_text() == "1", out
    assert proc.returncode == 143, out
    assert not left(pod.marker)


def test_the_command_must_follow_a_double_dash(capsys):
    from deeplab.k8s import entrypoint

    with pytest.raises(SystemExit):
        entrypoint.parse_args(["--workers", "/usr/sbin/sshd"])
    assert "put the pod's command after '--'" in capsys.readouterr().err
    args = entrypoint.parse_args(["--grace", "5", "--", "deeplab", "launch", "ps", "--", "x"])
    assert args.command == ["deeplab", "launch", "ps", "--", "x"] and args.grace == 5
