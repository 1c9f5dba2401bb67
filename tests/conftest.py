"""Shared helpers for tests that start worker processes (Horovod, the parameter server)."""
import os
import subprocess
import sys
import types

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TINY = os.path.join(ROOT, "configs", "tiny_synthetic.yaml")
BIN = os.path.dirname(sys.executable)


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


def sets(*overrides):
    """['--set', o1, '--set', o2, ...]"""
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture
def dl():
    """Helpers as a fixture: dl.run, dl.deeplab, dl.sets, dl.environ, dl.TINY, dl.ROOT, dl.BIN."""
    return types.SimpleNamespace(run=run, deeplab=deeplab, sets=sets, environ=worker_environ,
                                 TINY=TINY, ROOT=ROOT, BIN=BIN)
