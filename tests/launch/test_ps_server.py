"""The parameter server's nodes unpickle nothing from the network: a worker (or anyone reaching a
server, ps-lite has no authentication) sending MXNet's set-optimizer command with a planted
pickle runs no code on our server, while MXNet's own server (plain `import mxnet`) runs it."""
import os
import subprocess
import sys

import pytest

from deeplab.launch.ps import node_env, role_command
from deeplab.utils import free_port

# A worker that sends command 0 (what kvstore.set_optimizer sends: a protocol-0 pickle) whose
# unpickling would create the file argv[1], then uses the store as usual.
SENDER = """
import pickle, sys
import mxnet as mx
from mxnet.base import py_str

class Planted:
    def __reduce__(self):
        return (open, (sys.argv[1], "w"))

kv = mx.kv.create("dist_sync")
kv._send_command_to_servers(0, py_str(pickle.dumps(Planted(), 0)))
kv.init(3, mx.nd.ones((2,)))
out = mx.nd.zeros((2,))
kv.pull(3, out=out)
assert out.asnumpy().tolist() == [1.0, 1.0]
kv._barrier()
"""


def run_job(tmp_path, dl, server_code):
    marker = tmp_path / "pwned"
    port, procs = free_port(), []
    try:
        for role, cmd in (("scheduler", server_code), ("server", server_code),
                          ("worker", [sys.executable, "-c", SENDER, str(marker)])):
            env = node_env(role, 1, 1, "127.0.0.1", port, environ=dl.environ())
            env["DMLC_NODE_HOST"] = "127.0.0.1"
            procs.append(subprocess.Popen(cmd, env=env, cwd=dl.ROOT, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return marker.exists(), outputs, [p.returncode for p in procs]


def test_our_server_refuses_a_pickled_command_and_keeps_serving(tmp_path, dl):
    assert "ps_server.main()" in role_command("server", [])[-1]  # what `deeplab launch ps` runs
    ran, outputs, codes = run_job(tmp_path, dl, role_command("server", []))
    assert codes == [0, 0, 0], "\n".join(o[-2000:] for o in outputs)
    assert not ran
    assert "refused command 0 from the network" in outputs[1]


def test_mxnets_own_server_would_run_it(tmp_path, dl):
    """The premise of the test above: the same job with MXNet's server runs the planted code."""
    ran, outputs, _ = run_job(tmp_path, dl, [sys.executable, "-c", "import mxnet"])
    assert ran, "\n".join(o[-2000:] for o in outputs)
