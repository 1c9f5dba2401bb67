"""The parameter server across emulated hosts, each role started over ssh from node1 as
docs/distributed.md ("Several machines") shows: scheduler and one server on node1, one worker on
each of node2 and node3. Frozen BN (BN statistics are per worker under the parameter server):
the parameters equal one process's within test_equivalence's tolerance (5e-6 of an array's
scale)."""
import shlex
import subprocess
import sys

import pytest

from conftest import assert_params_close

pytestmark = pytest.mark.multihost

RUN = ["train.freeze_bn=true", "train.iterations=4", "data.synthetic.train_size=24",
       "data.synthetic.val_size=7", "data.num_workers=0", "train.batch_size=6",
       "train.log_every=1", "train.checkpoint_every=1000"]


def test_parameter_server_on_three_hosts_equals_one_process(tmp_path, dl, cluster):
    hosts = cluster(3)
    one, three = tmp_path / "one", tmp_path / "three"
    dl.deeplab("train", dl.TINY, "--workdir", one, "--no-eval", *dl.sets(*RUN), timeout=300)

    # ps-lite binds (ZeroMQ) to the scheduler's address and each node's DMLC_NODE_HOST: they
    # must be IP addresses, not host names.
    job = {"DMLC_PS_ROOT_URI": hosts.address("node1"), "DMLC_PS_ROOT_PORT": "9091", "DMLC_NUM_SERVER": "1",
           "DMLC_NUM_WORKER": "2", "OMP_NUM_THREADS": "1", "MULTIHOST_TEST": hosts.marker}
    cmd = [sys.executable, "-m", "deeplab.cli", "launch", "ps", "--", "train", dl.TINY,
           "--workdir", str(three), "--no-eval", *dl.sets(*RUN)]
    roles = [("node1", "scheduler"), ("node1", "server"), ("node2", "worker"),
             ("node3", "worker")]
    started = []
    for host, role in roles:
        remote = "cd %s && env %s %s" % (shlex.quote(dl.ROOT), " ".join(
            "%s=%s" % kv for kv in sorted({**job, "DMLC_ROLE": role,
                                             "DMLC_NODE_HOST": hosts.address(host)}.items())),
            " ".join(shlex.quote(c) for c in cmd))
        proc = hosts.cluster.popen("node1", ["ssh", host, remote], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        hosts.started.append(proc)
        started.append((host, role, proc))
    outputs = {}
    for host, role, proc in started:
        out, _ = proc.communicate(timeout=300)
        outputs[host, role] = out
        assert proc.returncode == 0, "%s on %s: %s" % (role, host, out[-3000:])
    log = (three / "train.log").read_text()
    assert "training on 2 worker(s) (dist.backend ps), global batch 6, frozen BN" in log, log
    for host in ("node2", "node3"):
        assert any("from %s" % hosts.address("node1") in line for line in hosts.logins(host))
    assert_params_close(one / "final.params", three / "final.params", rel=5e-6)


def test_deeplab_launch_ps_across_hosts_equals_one_process(tmp_path, dl, cluster):
    """`deeplab launch ps -H` from node1 places the nodes itself, as the issue's example: the
    scheduler and the server on node1 (--server-hosts), the workers on node2 and node3 (one
    slot each), every remote node started over ssh as a cluster node. The same parameters as
    one process."""
    hosts = cluster(3)
    one, three = tmp_path / "one", tmp_path / "three"
    dl.deeplab("train", dl.TINY, "--workdir", one, "--no-eval", *dl.sets(*RUN), timeout=300)
    proc = hosts.deeplab("node1", "launch", "ps", "--workers", "2", "--servers", "1",
                         "-H", "node2:1,node3:1", "--server-hosts", "node1", "--", "train", dl.TINY, "--workdir", three,
                         "--no-eval", *dl.sets(*RUN))
    log = (three / "train.log").read_text()
    assert "training on 2 worker(s) (dist.backend ps), global batch 6, frozen BN" in log, log
    for host in ("node2", "node3"):
        assert any("from %s" % hosts.address("node1") in line for line in hosts.logins(host))
    assert_params_close(one / "final.params", three / "final.params", rel=5e-6)
    assert "Traceback" not in proc.stdout
