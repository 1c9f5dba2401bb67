"""Mixed precision (train.amp): bfloat16 on the CPU (float16 with loss scaling on GPUs, not
runnable here), finite, really low precision, and N workers = 1 worker to bfloat16's precision.

Measured here after 4 steps (frozen BN, global batch 6): AMP vs float32 on 2 Horovod workers
differ by 1.4e-2 of an array's scale (bfloat16 keeps 8 significant bits); 1 process vs 2
Horovod workers, both with AMP, by 1.2e-2 (float32: 4e-7), asserted 5e-2. With synchronized BN
the network currently stays float32 (see docs/distributed.md).
"""
import mxnet as mx
import numpy as np

RUN = ["train.iterations=4", "data.synthetic.train_size=24", "data.synthetic.val_size=4",
       "train.batch_size=6", "train.log_every=1", "train.checkpoint_every=1000",
       "train.freeze_bn=true"]


def _worst(a, b):
    pa, pb = mx.nd.load(str(a)), mx.nd.load(str(b))
    assert sorted(pa) == sorted(pb)
    for k in pb:
        assert np.isfinite(pb[k].asnumpy()).all(), k
    return max(np.abs(pa[k].asnumpy() - pb[k].asnumpy()).max()
               / (np.abs(pa[k].asnumpy()).max() + 1e-12) for k in pa)


def test_bfloat16_amp_is_active_finite_and_the_same_on_1_and_2_workers(tmp_path, dl):
    def run(name, *extra, workers=None):
        launcher = ["launch", "horovod", "-np", str(workers), "--"] if workers else []
        out = dl.deeplab(*launcher, "train", dl.TINY, "--workdir", tmp_path / name, "--no-eval",
                         *dl.sets(*RUN, *extra), timeout=300).stdout
        return tmp_path / name / "final.params", out

    fp32, _ = run("fp32", workers=2)
    amp2, out = run("amp2", "train.amp=true", workers=2)
    amp1, _ = run("amp1", "train.amp=true")
    assert "mixed precision (bfloat16)" in out
    assert _worst(fp32, amp2) > 1e-3  # bfloat16 really ran
    assert _worst(amp1, amp2) <= 5e-2
