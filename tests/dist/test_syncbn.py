"""SyncBatchNorm across worker processes equals BatchNorm on the concatenated batch of its group,
in both implementations (fused C++ kernels and composed MXNet operators), which also agree with
each other.

Each worker runs `syncbn_worker.py` on its slice of a fixed global batch under
`horovodrun --gloo` (2 and 3 workers; groups: 2 workers alone, 4 workers in pairs), and the
same under MPICH's `mpirun` with the statistics straight over MPI (dist/mpi.py),
imperatively and hybridized; the reference is MXNet's own BatchNorm in this process, on the
whole batch or on each group's part of it. Largest differences measured (float32, 1-4 workers,
either implementation): outputs 2.9e-6 absolute on values up to 16, input gradients 9.5e-7;
gamma/beta gradients 2.6e-5 absolute on values up to 25 (1e-6 of their scale); running
statistics 1.9e-6 on values up to 10; fused against composed, per worker: outputs and input
gradients 1.9e-6, gamma/beta gradient shares 3.5e-5, running statistics 1.9e-6. The tolerances
below leave a factor of about 3.
"""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from syncbn_worker import C, IMPLEMENTATIONS, global_inputs  # noqa: E402

BATCH = 6
TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-5, atol=1e-4)  # gamma/beta gradients: sums over the batch
STEPS = (0, 1)


def reference(gamma, beta, batch, lo, hi):
    """Plain BatchNorm on images lo..hi-1 of the global batch: the same outputs and statistics,
    one process."""
    layer = mx.gluon.nn.BatchNorm(in_channels=C, momentum=0.9)
    layer.initialize()
    layer.gamma.set_data(mx.nd.array(gamma))
    layer.beta.set_data(mx.nd.array(beta))
    out = {}
    for step in STEPS:
        x, w = global_inputs(batch, step)
        x = mx.nd.array(x[lo:hi])
        x.attach_grad()
        with mx.autograd.record():
            y = layer(x)
            loss = (y * mx.nd.array(w[lo:hi])).sum()
        loss.backward()
        out.update({"y%d" % step: y.asnumpy(), "gx%d" % step: x.grad.asnumpy(),
                    "ggamma%d" % step: layer.gamma.grad().asnumpy(),
                    "gbeta%d" % step: layer.beta.grad().asnumpy(),
                    "running_mean%d" % step: layer.running_mean.data().asnumpy(),
                    "running_var%d" % step: layer.running_var.data().asnumpy()})
    out["predict"] = layer(mx.nd.array(global_inputs(batch, 2)[0][lo:hi])).asnumpy()
    return out


def load_ranks(out_dir, workers, transport=None):
    ranks = [dict(np.load(os.path.join(out_dir, "rank%d.npz" % r))) for r in range(workers)]
    assert all(int(r["size"]) == workers for r in ranks)
    if transport is not None:  # the transport the test is about really ran
        assert all(str(r["transport"]) == transport for r in ranks)
    return ranks


def check_group(ranks, members, impl, batch):
    """The workers `members` (one group) against BatchNorm on their part of the batch."""
    per = batch // len(ranks)
    group = [ranks[m] for m in members]
    ref = reference(group[0][impl + ".gamma"], group[0][impl + ".beta"], batch,
                    members[0] * per, (members[-1] + 1) * per)

    def cat(key):
        return np.concatenate([r["%s.%s" % (impl, key)] for r in group])

    for step in STEPS:
        for key in ("y%d" % step, "gx%d" % step):  # concatenated slices = the group's batch
            np.testing.assert_allclose(cat(key), ref[key], err_msg="%s %s" % (impl, key), **TOL)
        for key in ("ggamma%d" % step, "gbeta%d" % step):  # shares sum to the group's gradient
            np.testing.assert_allclose(sum(r["%s.%s" % (impl, key)] for r in group), ref[key],
                                       err_msg="%s %s" % (impl, key), **GRAD_TOL)
        for key in ("running_mean%d" % step, "running_var%d" % step):  # the same in the group
            for r in group:
                np.testing.assert_allclose(r["%s.%s" % (impl, key)], ref[key],
                                           err_msg="%s %s" % (impl, key), **TOL)
            assert all(np.array_equal(r["%s.%s" % (impl, key)], group[0]["%s.%s" % (impl, key)])
                       for r in group), key
    np.testing.assert_allclose(cat("predict"), ref["predict"], err_msg=impl + " predict", **TOL)


def check_implementations_agree(ranks):
    for r in ranks:
        assert bool(r["fused.fused"]) and not bool(r["composed.fused"])
        for key in r:
            if not key.startswith("fused.") or key == "fused.fused":
                continue
            name = key.split(".", 1)[1]
            tol = GRAD_TOL if name.startswith(("ggamma", "gbeta")) else TOL
            np.testing.assert_allclose(r[key], r["composed." + name], err_msg=name, **tol)


def check(out_dir, workers, groups, batch=BATCH, transport=None):
    """`groups`: the expected partition of the ranks."""
    ranks = load_ranks(out_dir, workers, transport)
    for members in groups:
        for m in members:
            assert list(ranks[m]["group"]) == list(members)
        for impl in IMPLEMENTATIONS:
            check_group(ranks, members, impl, batch)
    check_implementations_agree(ranks)


def horovodrun(dl, workers, *args):
    dl.run([os.path.join(dl.BIN, "horovodrun"), "-np", str(workers), "-H",
            "localhost:%d" % workers, "--gloo", sys.executable,
            os.path.join(HERE, "syncbn_worker.py"), *map(str, args)], timeout=240)


@pytest.mark.parametrize("hybridize", [False, True])
def test_single_process_equals_batchnorm(tmp_path, dl, hybridize):
    dl.run([sys.executable, os.path.join(HERE, "syncbn_worker.py"), str(tmp_path), str(BATCH),
            str(int(hybridize))])
    check(tmp_path, 1, [[0]])


def mpirun(dl, workers, *args):
    """syncbn_worker.py on `workers` ranks under MPICH's mpirun, each through
    deeplab.launch.mpi_rank as `deeplab launch horovod --mpi` starts them."""
    worker = " ".join([sys.executable, os.path.join(HERE, "syncbn_worker.py"), *map(str, args)])
    dl.run([os.path.join(dl.BIN, "mpirun"), "-np", str(workers), sys.executable, "-m",
            "deeplab.launch.mpi_rank", worker], timeout=240)


@pytest.mark.parametrize("workers,hybridize", [(2, False), (2, True), (3, True)])
def test_workers_equal_batchnorm_on_concatenated_batch(tmp_path, dl, workers, hybridize):
    horovodrun(dl, workers, tmp_path, BATCH, int(hybridize))
    check(tmp_path, workers, [list(range(workers))], transport="horovod")


@pytest.mark.parametrize("workers,hybridize", [(2, False), (2, True), (3, True)])
def test_workers_equal_batchnorm_with_statistics_over_mpi(tmp_path, dl, workers, hybridize):
    mpirun(dl, workers, tmp_path, BATCH, int(hybridize), "all", "mpi")
    check(tmp_path, workers, [list(range(workers))], transport="mpi")


@pytest.mark.parametrize("workers,group,batch,partition", [
    (2, "1", BATCH, [[0], [1]]),  # alone: no communication
    (2, "node", BATCH, [[0, 1]]),  # MPI_Comm_split_type(SHARED): one machine, every worker
    (3, "node", 9, [[0, 1, 2]]),
    (4, "2", 8, [[0, 1], [2, 3]]),  # MPI_Comm_split by consecutive ranks
])
def test_groups_over_mpi_equal_batchnorm_on_each_groups_batch(tmp_path, dl, workers, group,
                                                             batch, partition):
    mpirun(dl, workers, tmp_path, batch, 1, group, "auto")  # auto: mpi under mpirun
    check(tmp_path, workers, partition, batch, transport="mpi")


@pytest.mark.parametrize("workers,group,batch,partition", [
    (2, "1", BATCH, [[0], [1]]),  # alone: per-worker BN, no communication
    (2, "node", BATCH, [[0, 1]]),  # one machine: every worker
    (4, "2", 8, [[0, 1], [2, 3]]),  # Horovod process sets
])
def test_groups_equal_batchnorm_on_each_groups_batch(tmp_path, dl, workers, group, batch,
                                                    partition):
    horovodrun(dl, workers, tmp_path, batch, 1, group)
    check(tmp_path, workers, partition, batch)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_frozen_layer_is_plain_batchnorm(implementation):
    from deeplab.dist.syncbn import SyncBatchNorm
    x = mx.nd.array(global_inputs(BATCH, 0)[0])
    a = SyncBatchNorm(in_channels=C, use_global_stats=True, implementation=implementation)
    b = mx.gluon.nn.BatchNorm(in_channels=C, use_global_stats=True)
    for layer in (a, b):
        layer.initialize(mx.init.Normal(0.5))
    for pa, pb in zip(a.collect_params().values(), b.collect_params().values()):
        pb.set_data(pa.data())
    with mx.autograd.record():
        ya, yb = a(x), b(x)
    assert np.array_equal(ya.asnumpy(), yb.asnumpy())
    # Statistics frozen: no update.
    assert np.array_equal(a.running_mean.data().asnumpy(), b.running_mean.data().asnumpy())


@pytest.mark.parametrize("spec,world,hosts,expected", [
    ("all", 4, None, [[0, 1, 2, 3]]),
    (1, 3, None, [[0], [1], [2]]),
    (2, 4, None, [[0, 1], [2, 3]]),
    ("2", 6, None, [[0, 1], [2, 3], [4, 5]]),
    ("node", 5, ["a", "a", "b", "b", "b"], [[0, 1], [2, 3, 4]]),
    ("node", 4, ["b", "a", "b", "a"], [[0, 2], [1, 3]]),
])
def test_group_partitions(spec, world, hosts, expected):
    from deeplab.dist import comm
    assert comm.group_ranks(spec, world, hosts) == expected


@pytest.mark.parametrize("spec,message", [
    (3, "the 4 workers cannot be split into groups of 3"),
    (0, "groups of 0"),
    ("gpu", "expected 'all', 'node' or a number of workers"),
    (True, "expected 'all', 'node' or a number of workers"),
])
def test_bad_groups_say_what_is_valid(spec, message):
    from deeplab.dist import comm
    with pytest.raises(ValueError, match=message):
        comm.group_ranks(spec, 4)


def test_configure_on_one_process():
    from deeplab.dist import syncbn
    try:
        assert syncbn.configure_sync_bn("all") is None and syncbn.sync_bn_group() is None
        g = syncbn.configure_sync_bn(1)
        assert g.ranks == (0,) and g.size == 1 and syncbn.sync_bn_group() is g
        with pytest.raises(ValueError, match="cannot be split into groups of 2"):
            syncbn.configure_sync_bn(2)
    finally:
        syncbn.configure_sync_bn("all")


FALLBACK = """
import warnings
import mxnet as mx
import numpy as np
from deeplab.dist.syncbn import SyncBatchNorm
layer = SyncBatchNorm(in_channels=3)
layer.initialize()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with mx.autograd.record():
        y = layer(mx.nd.array(np.random.RandomState(0).randn(2, 3, 4, 4)))
    y.backward()
assert not layer.fused
assert any("falls back to composed MXNet operators" in str(w.message) for w in caught), caught
fused = SyncBatchNorm(in_channels=3, implementation="fused")
fused.initialize()
try:
    fused(mx.nd.ones((1, 3, 2, 2)))
except RuntimeError as err:
    assert "fused kernels are unavailable" in str(err), err
else:
    raise AssertionError("implementation='fused' without kernels did not raise")
print("fallback ok")
"""


def test_falls_back_to_composed_when_the_kernels_cannot_be_built(tmp_path, dl):
    out = dl.run([sys.executable, "-c", FALLBACK], DEEPLAB_CACHE=str(tmp_path),
                 CXX=str(tmp_path / "no-compiler")).stdout
    assert "fallback ok" in out
    assert not list(tmp_path.glob("ops/*.so"))


def test_kernels_build_once_into_the_cache(tmp_path):
    env = dict(os.environ, DEEPLAB_CACHE=str(tmp_path))
    cmd = [sys.executable, "-m", "deeplab.dist.fastbn"]
    first = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    path = first.stdout.strip()
    assert path.startswith(str(tmp_path / "ops")) and os.path.exists(path)
    mtime = os.path.getmtime(path)
    again = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    assert again.stdout.strip() == path and os.path.getmtime(path) == mtime
