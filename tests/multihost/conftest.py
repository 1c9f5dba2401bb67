"""Emulated hosts for the multihost tests: the `cluster` fixture (scripts/cluster.py).

Each test gets its own cluster (distinct namespace names, so concurrent runs do not meet), torn
down afterwards with everything that ran on it; each job it starts carries MULTIHOST_TEST=<id>
in its environment (horovodrun passes it on to the workers it starts over ssh), and the
fixture kills whatever still carries it. The tests skip with one line where the cluster cannot
be built (not root, no network namespaces, no sshd).
"""
import importlib.util
import os
import subprocess
import sys
import uuid

import pytest

from conftest import ROOT, stop_started, worker_environ

MARK = "MULTIHOST_TEST"


def _cluster_module():
    spec = importlib.util.spec_from_file_location(
        "deeplab_cluster", os.path.join(ROOT, "scripts", "cluster.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cluster_module = _cluster_module()


class Hosts:
    """A cluster that is up, plus what the tests do with it."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.marker = uuid.uuid4().hex
        self.started = []

    def __getattr__(self, name):
        return getattr(self.cluster, name)

    def environ(self, **extra):
        return worker_environ(**{MARK: self.marker}, **extra)

    def deeplab(self, host, *args, timeout=300, check=True):
        """`deeplab ARGS...` run on `host`; the CompletedProcess (output merged, text)."""
        cmd = self.cluster.command(host, [sys.executable, "-m", "deeplab.cli"]
                                   + [str(a) for a in args])
        proc = subprocess.run(cmd, env=self.environ(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=ROOT)
        if check and proc.returncode != 0:
            pytest.fail("%s exited with %d:\n%s" % (" ".join(cmd), proc.returncode,
                                                       proc.stdout[-6000:]))
        return proc

    def start(self, host, *args):
        """Starts `deeplab ARGS...` on `host` in a session of its own; returns the Popen."""
        cmd = self.cluster.command(host, [sys.executable, "-m", "deeplab.cli"]
                                   + [str(a) for a in args])
        proc = subprocess.Popen(cmd, env=self.environ(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                start_new_session=True)
        self.started.append(proc)
        return proc

    def host_of(self, pid):
        """The host (node1, ...) whose namespace process `pid` runs in, or None."""
        try:
            mine = os.readlink("/proc/%d/ns/net" % pid)
        except OSError:
            return None
        for host in self.cluster.hosts:
            try:
                if os.stat("/run/netns/" + self.cluster.ns(host)).st_ino == \
                        int(mine.split("[")[1].rstrip("]")):
                    return host
            except OSError:
                continue
        return None


@pytest.fixture
def cluster(request):
    """cluster(n) -> Hosts: n emulated hosts node1..nodeN, up until the end of the test."""
    why = cluster_module.available()
    if why:
        pytest.skip(why)
    made = []

    def up(n):
        name = "dlt%d%s" % (os.getpid() % 100000, uuid.uuid4().hex[:4])
        hosts = Hosts(cluster_module.Cluster(n, name).up())
        made.append(hosts)
        return hosts
    yield up
    for hosts in made:
        try:
            stop_started(hosts.started, MARK, hosts.marker)
        finally:
            hosts.cluster.down()
