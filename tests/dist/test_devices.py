"""One worker process driving several devices (dist.devices_per_worker): its batch is split
over them and their gradients summed in-process (MXNet's 'device' kvstore, or the parameter
server's local reduction before one push per worker), which is the same training as one device.

On CPU the devices are CPU device ids. Frozen BN only: MXNet's SyncBatchNorm across devices
(BN trained) deadlocks on CPU device ids, so it runs on GPUs only (scripts/gpu_smoke.sh).
"""
import pytest

from conftest import assert_params_close, ps

RUN = ["train.iterations=4", "data.synthetic.train_size=24", "data.synthetic.val_size=4",
       "data.num_workers=0", "train.batch_size=8", "train.log_every=1",
       "train.checkpoint_every=1000", "train.freeze_bn=true"]


def train(dl, workdir, launcher=(), overrides=()):
    return dl.deeplab(*launcher, "train", dl.TINY, "--workdir", workdir, "--no-eval",
                      *dl.sets(*RUN, *overrides), timeout=300).stdout


def test_two_devices_train_like_one(tmp_path, dl):
    one = train(dl, tmp_path / "one")
    assert "training on 1 worker(s) (dist.backend local), global batch 8, frozen BN\n" in one
    two = train(dl, tmp_path / "two", overrides=["dist.devices_per_worker=2"])
    assert "training on 1 worker(s) (dist.backend local), global batch 8, frozen BN, 2 devices " \
        "per worker (cpu(0), cpu(1))" in two
    assert_params_close(tmp_path / "one" / "final.params", tmp_path / "two" / "final.params",
                        rel=5e-6)


def test_parameter_server_workers_of_two_devices_train_like_one_device(tmp_path, dl):
    train(dl, tmp_path / "one")
    out = train(dl, tmp_path / "ps", ps(2, 1), ["dist.devices_per_worker=2"])
    assert "training on 2 worker(s) (dist.backend ps)" in out
    assert "frozen BN, 2 devices per worker (cpu(0), cpu(1))" in out
    assert_params_close(tmp_path / "one" / "final.params", tmp_path / "ps" / "final.params",
                        rel=5e-6)


@pytest.mark.parametrize("overrides, words", [
    (["train.freeze_bn=false"], ["devices_per_worker", "needs GPUs", "freeze_bn"]),
    (["dist.devices_per_worker=3"], ["train.batch_size (8)", "divisible"]),
])
def test_unsupported_device_setups_are_refused(tmp_path, dl, overrides, words):
    proc = dl.deeplab("train", dl.TINY, "--workdir", tmp_path / "x", "--no-eval",
                      *dl.sets(*RUN, "dist.devices_per_worker=2", *overrides), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout[-2000:]
    for w in words:
        assert w in proc.stdout, proc.stdout[-2000:]
