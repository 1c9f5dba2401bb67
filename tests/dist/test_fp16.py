"""Horovod's fp16 gradient compression trains like float32: the gradients that leave a worker
are already divided by the global labelled-pixel count, so they fit float16.

On 321-pixel crops the per-worker gradient of the summed loss reaches ~1e5 (past float16's
65504) and fp16 compression turned every parameter into NaN. Measured here after 4 steps on
2 workers: compressed vs uncompressed differ by at most 1.6e-3 of an array's scale, on BN betas
that start at 0 and so are made of rounded updates only (float16 keeps 11 significant bits, 5e-4
per step); asserted 5e-3, and above 0 (the compression really ran).
"""
import mxnet as mx
import numpy as np

RUN = ["train.iterations=4", "data.crop_size=321", "data.synthetic.image_size=[300,400]",
       "data.synthetic.train_size=8", "data.synthetic.val_size=2", "train.batch_size=4",
       "train.log_every=1", "train.checkpoint_every=1000"]


def test_fp16_compression_is_finite_and_close_to_float32(tmp_path, dl):
    for fp16 in ("false", "true"):
        out = dl.deeplab("launch", "horovod", "-np", "2", "--", "train", dl.TINY, "--workdir",
                         tmp_path / fp16, "--no-eval",
                         *dl.sets(*RUN, "dist.fp16_compression=" + fp16), timeout=300).stdout
        assert "training on 2 worker(s) (dist.backend horovod)" in out
    a = mx.nd.load(str(tmp_path / "false" / "final.params"))
    b = mx.nd.load(str(tmp_path / "true" / "final.params"))
    worst = 0.0
    for k in a:
        x, y = a[k].asnumpy(), b[k].asnumpy()
        assert np.isfinite(y).all(), k
        worst = max(worst, np.abs(x - y).max() / (np.abs(x).max() + 1e-12))
    print("fp16 vs float32: worst relative difference %.2e" % worst)
    assert 0 < worst <= 5e-3
