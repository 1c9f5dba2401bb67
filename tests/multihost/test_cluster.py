"""scripts/cluster.sh itself: hosts that resolve and reach each other over ssh, shaping and
cutting a link, and `down` leaving nothing (namespaces, /etc/netns entries, daemons, the state
directory), without touching this machine's own network."""
import os
import subprocess
import uuid

import pytest

from conftest import ROOT

pytestmark = pytest.mark.multihost

SCRIPT = os.path.join(ROOT, "scripts", "cluster.sh")


def sh(name, *args, check=True):
    proc = subprocess.run(["bash", SCRIPT, "--name", name, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout
    return proc


def machine_network():
    """This namespace's interfaces and addresses."""
    return subprocess.run(["ip", "-o", "addr"], stdout=subprocess.PIPE, text=True).stdout


def test_up_exec_shape_cut_down(cluster):
    cluster  # skips with one line without root, namespaces or sshd
    name = "dltc%s" % uuid.uuid4().hex[:6]
    before = machine_network()
    try:
        up = sh(name, "up", "3", "--rate", "1gbit").stdout
        assert "node1=10.77.0.1, node2=10.77.0.2, node3=10.77.0.3" in up
        # Each host has its own address, resolves the others and reaches them over ssh.
        out = sh(name, "exec", "node1", "ssh", "node3", "ip -o -4 addr show eth0").stdout
        assert "10.77.0.3/24" in out
        assert sh(name, "exec", "node2", "getent", "hosts", "node1").stdout.split()[0] \
            == "10.77.0.1"
        qdisc = sh(name, "exec", "node2", "tc", "qdisc", "show", "dev", "eth0").stdout
        assert "tbf" in qdisc and "rate 1Gbit" in qdisc
        sh(name, "shape", "node2", "--rate", "100mbit")
        assert "rate 100Mbit" in sh(name, "exec", "node2", "tc", "qdisc", "show", "dev",
                                    "eth0").stdout
        sh(name, "shape", "node2", "--cut")
        cut = sh(name, "exec", "node1", "ssh", "-o", "ConnectTimeout=2", "node2", "true",
                 check=False)
        assert cut.returncode != 0
        sh(name, "shape", "node2", "--restore")
        sh(name, "exec", "node1", "ssh", "node2", "true")
        assert machine_network() == before
    finally:
        sh(name, "down")
    sh(name, "down")  # idempotent
    listed = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True).stdout
    assert name not in listed
    assert not os.path.exists("/etc/netns") or \
        not [e for e in os.listdir("/etc/netns") if e.startswith(name)]
    assert not os.path.exists("/tmp/deeplab-cluster-%s" % name)
    sshd = subprocess.run(["ps", "-eo", "args"], stdout=subprocess.PIPE, text=True).stdout
    assert "deeplab-cluster-%s" % name not in sshd
    assert machine_network() == before
    bad = sh(name, "exec", "node1", "true", check=False)
    assert bad.returncode == 2 and "no cluster %s is up" % name in bad.stdout
