"""SyncBatchNorm across worker processes equals BatchNorm on the concatenated batch.

Each worker runs `syncbn_worker.py` on its slice of a fixed global batch of 6 under
`horovodrun --gloo` (2 and 3 workers), imperatively and hybridized; the reference is MXNet's own
BatchNorm on the whole batch in this process. Largest differences measured (float32, 1-3
workers): outputs and input gradients 3.3e-6 absolute on values up to 16; gamma/beta gradients
2.5e-5 absolute on values up to 20 (1.3e-6 of their scale); running statistics 1.9e-6 on values
up to 10. The tolerances below leave a factor of 3-4.
"""
import os
import sys

import mxnet as mx
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from syncbn_worker import C, global_inputs  # noqa: E402

BATCH = 6
TOL = dict(rtol=1e-5, atol=1e-5)


def reference(gamma, beta):
    """Plain BatchNorm on the whole batch: the same outputs and statistics, one process."""
    layer = mx.gluon.nn.BatchNorm(in_channels=C, momentum=0.9)
    layer.initialize()
    layer.gamma.set_data(mx.nd.array(gamma))
    layer.beta.set_data(mx.nd.array(beta))
    out = {}
    for step in range(2):
        x, w = global_inputs(BATCH, step)
        x = mx.nd.array(x)
        x.attach_grad()
        with mx.autograd.record():
            y = layer(x)
            loss = (y * mx.nd.array(w)).sum()
        loss.backward()
        out.update({"y%d" % step: y.asnumpy(), "gx%d" % step: x.grad.asnumpy(),
                    "ggamma%d" % step: layer.gamma.grad().asnumpy(),
                    "gbeta%d" % step: layer.beta.grad().asnumpy(),
                    "running_mean%d" % step: layer.running_mean.data().asnumpy(),
                    "running_var%d" % step: layer.running_var.data().asnumpy()})
    out["predict"] = layer(mx.nd.array(global_inputs(BATCH, 2)[0])).asnumpy()
    return out


def check_against_reference(out_dir, workers):
    ranks = [dict(np.load(os.path.join(out_dir, "rank%d.npz" % r))) for r in range(workers)]
    assert all(int(r["size"]) == workers for r in ranks)
    ref = reference(ranks[0]["gamma"], ranks[0]["beta"])
    for step in range(2):
        for key in ("y%d" % step, "gx%d" % step):  # concatenated slices = the whole batch
            np.testing.assert_allclose(np.concatenate([r[key] for r in ranks]), ref[key],
                                       err_msg=key, **TOL)
        for key in ("ggamma%d" % step, "gbeta%d" % step):  # shares sum to the whole gradient
            np.testing.assert_allclose(sum(r[key] for r in ranks), ref[key], err_msg=key,
                                       rtol=1e-5, atol=1e-4)
        for key in ("running_mean%d" % step, "running_var%d" % step):  # identical everywhere
            for r in ranks:
                np.testing.assert_allclose(r[key], ref[key], err_msg=key, **TOL)
            assert all(np.array_equal(r[key], ranks[0][key]) for r in ranks), key
    np.testing.assert_allclose(np.concatenate([r["predict"] for r in ranks]), ref["predict"],
                               err_msg="predict", **TOL)


@pytest.mark.parametrize("hybridize", [False, True])
def test_single_process_equals_batchnorm(tmp_path, dl, hybridize):
    dl.run([sys.executable, os.path.join(HERE, "syncbn_worker.py"), str(tmp_path), str(BATCH),
            str(int(hybridize))])
    check_against_reference(tmp_path, 1)


@pytest.mark.parametrize("workers,hybridize", [(2, False), (2, True), (3, True)])
def test_workers_equal_batchnorm_on_concatenated_batch(tmp_path, dl, workers, hybridize):
    dl.run([os.path.join(dl.BIN, "horovodrun"), "-np", str(workers), "-H",
            "localhost:%d" % workers, "--gloo", sys.executable,
            os.path.join(HERE, "syncbn_worker.py"), str(tmp_path), str(BATCH),
            str(int(hybridize))], timeout=180)
    check_against_reference(tmp_path, workers)


def test_frozen_layer_is_plain_batchnorm():
    from deeplab.dist.syncbn import SyncBatchNorm
    x = mx.nd.array(global_inputs(BATCH, 0)[0])
    a = SyncBatchNorm(in_channels=C, use_global_stats=True)
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
