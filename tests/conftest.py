"""Shared helpers for tests that start worker processes (Horovod, the parameter server), and
the test tiers: every test is marked `unit` (in-process, seconds) or `multiproc` (starts worker
processes) by the rule in `pytest_collection_modifyitems`, so `pytest -m unit` is the
developer's loop; `multihost` tests (emulated hosts) are marked by hand."""
import inspect
import os
import signal
import subprocess
import sys
import time
import types

import pytest

from deeplab.launch import procs

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TINY = os.path.join(ROOT, "configs", "tiny_synthetic.yaml")
BIN = os.path.dirname(sys.executable)


def wait_for(predicate, timeout, what):
    """Polls `predicate` until it returns something true (which is returned); fails the test
    after `timeout` seconds naming `what` it waited for."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail("timed out after %ds waiting for %s" % (timeout, what))


def stop_started(started, var, marker):
    """A fixture's teardown: kills the process groups of the Popen objects `started`, then every
    process still carrying `var`=marker in its environment (what they started)."""
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    procs.kill_processes(lambda: procs.job_processes(marker, var))


def worker_environ(**extra):
    """The environment for worker processes: one thread each (2 cores here), no inherited
    backend selection."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HOROVOD_", "DMLC_", "DEEPLAB_DIST"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def run(cmd, timeout=300, check=True, **extra_env):
    """Runs a command with the worker environment; returns the CompletedProcess (text)."""
    proc = subprocess.run(cmd, env=worker_environ(**extra_env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        pytest.fail("%s exited with %d:\n%s" % (" ".join(cmd), proc.returncode,
                                                   proc.stdout[-6000:]))
    return proc


def deeplab(*args, **kw):
    """`deeplab ARGS...` as a subprocess (the console command of this environment)."""
    return run([sys.executable, "-m", "deeplab.cli"] + [str(a) for a in args], **kw)


def horovod(n):
    """`deeplab launch horovod -np N --`, to put before a subcommand."""
    return ["launch", "horovod", "-np", str(n), "--"]


def horovod_mpi(n):
    """`deeplab launch horovod --mpi -np N --` (MPICH's mpirun), to put before a subcommand."""
    return ["launch", "horovod", "--mpi", "-np", str(n), "--"]


def ps(workers, servers):
    """`deeplab launch ps --workers W --servers S --`."""
    return ["launch", "ps", "--workers", str(workers), "--servers", str(servers), "--"]


def assert_params_close(a, b, rel):
    """Every array of the .params files `a` and `b` agrees: max |x - y| <= rel * max |x| + 1e-7
    (float32; summation order differs with the number of workers)."""
    import mxnet as mx
    import numpy as np

    pa, pb = mx.nd.load(str(a)), mx.nd.load(str(b))
    assert sorted(pa) == sorted(pb)
    for k in pa:
        x, y = pa[k].asnumpy(), pb[k].asnumpy()
        bound = rel * np.abs(x).max() + 1e-7
        assert np.abs(x - y).max() <= bound, "%s: %g > %g" % (k, np.abs(x - y).max(), bound)


def train_tiny(workdir, iterations):
    """final.params of a one-process run of the tiny config on 16 synthetic images."""
    from deeplab import train

    train.main(train.parse_args([TINY, "--workdir", str(workdir), "--no-eval", "--quiet",
                                 "--set", "train.iterations=%d" % iterations,
                                 "data.num_workers=0", "data.synthetic.train_size=16",
                                 "data.synthetic.val_size=4"]))
    return os.path.join(str(workdir), "final.params")


def sets(*overrides):
    """['--set', o1, '--set', o2, ...]"""
    return [a for o in overrides for a in ("--set", o)]


PAGE = 4096  # a tmpfs's block


def mount_tmpfs(path, size):
    """Mounts a tmpfs of `size` bytes (whole pages) on `path`, made if needed: a real full
    disk, as MXNet's writer meets it. Skips the test where it cannot be done (not root)."""
    os.makedirs(str(path), exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=%d" % size, "tmpfs", str(path)],
            capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    return path


def unmount(path):
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size): a new tmpfs of `size` bytes under tmp_path, unmounted after the test (root
    only: the test is skipped otherwise)."""
    mounted = []

    def mount(size):
        mounted.append(mount_tmpfs(tmp_path / ("disk-%d" % len(mounted)), size))
        return mounted[-1]

    yield mount
    for path in mounted:
        unmount(path)


def fill_leaving(disk, free):
    """Fills tmpfs `disk` with DISK/filler so that `free` bytes (whole pages) are left; remove
    the filler to free them again."""
    import shutil

    have = shutil.disk_usage(str(disk)).free
    with open(os.path.join(str(disk), "filler"), "wb") as f:
        f.write(b"\0" * (have - free))
    assert shutil.disk_usage(str(disk)).free == free


@pytest.fixture
def dl():
    """Helpers as a fixture: dl.run, dl.deeplab, dl.sets, dl.environ, dl.TINY, dl.ROOT, dl.BIN."""
    return types.SimpleNamespace(run=run, deeplab=deeplab, sets=sets, environ=worker_environ,
                                 TINY=TINY, ROOT=ROOT, BIN=BIN)


# ---- test tiers ----------------------------------------------------------------------------

# What starts processes when a test calls it: the helpers above that run commands, the fixture
# that hands them out, the standard library's process modules, and the package's launchers.
_LAUNCH_HELPERS = {"run", "deeplab", "horovod", "horovod_mpi", "ps", "stop_started"}
_LAUNCH_MODULES = ("subprocess", "multiprocessing", "deeplab.launch", "deeplab.k8s.local",
                   "deeplab.k8s.entrypoint")
# Commands whose main() runs a whole training or evaluation in the test's process.
_COMMAND_MODULES = ("deeplab.train", "deeplab.evaluate", "deeplab.predict", "deeplab.export",
                    "deeplab.bench")
_TIER_MARKERS = ("unit", "integration", "multiproc", "multihost")


def _reaches(obj, seen):
    """What calling `obj` (a test, a fixture's or a helper's function) reaches through the
    functions of the test modules and this file it names: {'multiproc'} if it starts
    processes, {'integration'} if it runs a command's main() in-process, else nothing."""
    code = getattr(obj, "__code__", None)
    if code is None or id(code) in seen:
        return set()
    seen.add(id(code))
    glb = getattr(obj, "__globals__", {})
    found, stack = set(), [code]
    while stack:
        c = stack.pop()
        stack.extend(k for k in c.co_consts if inspect.iscode(k))  # lambdas, inner functions
        if "dl" in c.co_varnames:  # handed the `dl` fixture: runs commands with it
            found.add("multiproc")
        for name in c.co_names:
            if name in ("subprocess", "multiprocessing"):  # also imported inside a function
                found.add("multiproc")
            target = glb.get(name)
            if target is None:
                continue
            module = getattr(target, "__name__", "") if inspect.ismodule(target) \
                else getattr(target, "__module__", "") or ""
            if module.startswith(_LAUNCH_MODULES) or (module == "conftest"
                                                      and name in _LAUNCH_HELPERS):
                found.add("multiproc")
            elif inspect.ismodule(target) and module.startswith(_COMMAND_MODULES) \
                    and "main" in c.co_names:
                found.add("integration")
            elif inspect.isfunction(target) and not module.startswith(("deeplab", "mxnet")):
                found |= _reaches(target, seen)  # a helper of the test module or conftest
    return found


def _tier(item):
    funcs = [getattr(item, "function", None)]
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    for name in item.fixturenames:  # the fixtures of the tests, not pytest's own
        funcs.extend(d.func for d in defs.get(name, ())
                     if not d.func.__module__.startswith(("_pytest", "pytest"))
                     and d.func is not _unit_tier_starts_no_process.__wrapped__)
    found, seen = set(), set()
    for f in funcs:
        if f is not None:
            found |= _reaches(f, seen)
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "dl" in item.fixturenames or params.get("num_workers", 0) > 0:  # loader processes
        found.add("multiproc")
    return "multiproc" if "multiproc" in found else \
        "integration" if "integration" in found else "unit"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Marks each test `multiproc` if it (or a fixture or test-module helper it uses) starts
    processes, `integration` if it runs a whole command in-process, else `unit`; a test already
    carrying a tier marker keeps it."""
    for item in items:
        if not any(item.get_closest_marker(m) for m in _TIER_MARKERS):
            item.add_marker(getattr(pytest.mark, _tier(item)))


_started = []


@pytest.fixture(autouse=True)
def _unit_tier_starts_no_process(request, monkeypatch):
    """A test in the `unit` or `integration` tier must not start processes (fork, or a
    subprocess of Python or a launcher): if it does, it fails, naming what to change."""
    tier = next((m for m in ("unit", "integration") if request.node.get_closest_marker(m)), None)
    if tier is None:
        yield
        return
    del _started[:]
    real_fork, real_execute = os.fork, subprocess.Popen._execute_child

    def fork():
        _started.append("os.fork (e.g. loader processes)")
        return real_fork()

    def execute(self, args, executable, *rest, **kw):
        argv = [args] if isinstance(args, (str, bytes)) else list(args)
        program = os.path.basename(str(executable or argv[0]))
        if program.startswith(("python", "deeplab", "horovodrun", "mpirun", "sshd", "ssh")):
            _started.append(" ".join(map(str, argv))[:200])
        return real_execute(self, args, executable, *rest, **kw)

    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.setattr(subprocess.Popen, "_execute_child", execute)
    yield
    if _started:
        pytest.fail("marked `%s` (in-process) but started processes: %s; mark it `multiproc` "
                    "or extend the tier rule in tests/conftest.py (_LAUNCH_HELPERS, "
                    "_LAUNCH_MODULES)" % (tier, "; ".join(_started[:3])))
