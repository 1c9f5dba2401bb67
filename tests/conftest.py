"""Shared helpers for tests that start worker processes (Horovod, the parameter server)."""
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


@pytest.fixture
def dl():
    """Helpers as a fixture: dl.run, dl.deeplab, dl.sets, dl.environ, dl.TINY, dl.ROOT, dl.BIN."""
    return types.SimpleNamespace(run=run, deeplab=deeplab, sets=sets, environ=worker_environ,
                                 TINY=TINY, ROOT=ROOT, BIN=BIN)
