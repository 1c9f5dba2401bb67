"""Elastic by restart: a run checkpointed on N workers resumes on M workers and reaches the
parameters of a run that never stopped, within the N-workers-equal-one tolerances of
test_equivalence.py (synchronized BN 2e-4, frozen BN 5e-6 of an array's scale).

The global batch, the data order and the schedule depend only on the config, never on the
number of workers, so a checkpoint is valid on any world size that divides the global batch.
"""
import os

import pytest

from conftest import assert_params_close, horovod, ps

COMMON = ["data.synthetic.train_size=24", "data.synthetic.val_size=7", "data.num_workers=0",
          "train.batch_size=6", "train.log_every=1"]

RUN = COMMON + ["train.iterations=6", "train.checkpoint_every=3", "train.keep_checkpoints=5"]


def train(dl, workdir, launcher, overrides=(), resume=False):
    args = list(launcher) + ["train", dl.TINY, "--workdir", workdir, "--no-eval"] + dl.sets(
        *RUN, *overrides) + (["--resume"] if resume else [])
    return dl.deeplab(*args, timeout=300).stdout


def stop_after(workdir, iteration):
    """Leaves `workdir` as a run stopped right after checkpoint `iteration`."""
    ckpt = workdir / "checkpoints"
    for name in os.listdir(ckpt):
        if int(name.split("_")[1].split(".")[0]) > iteration:
            os.remove(ckpt / name)
    os.remove(workdir / "final.params")


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (3, 2)])
def test_horovod_resume_on_another_number_of_workers(tmp_path, dl, before, after):
    train(dl, tmp_path / "straight", horovod(after))
    work = tmp_path / "elastic"
    first = train(dl, work, horovod(before))
    assert "training on %d worker(s) (dist.backend horovod)" % before in first
    stop_after(work, 3)
    out = train(dl, work, horovod(after), resume=True)
    assert "resuming from" in out and "training on %d worker(s)" % after in out
    assert "training on %d worker(s) (dist.backend horovod)" % after in out
    assert_params_close(tmp_path / "straight" / "final.params", work / "final.params",
                        rel=2e-4)


def test_parameter_server_run_resumes_on_one_process(tmp_path, dl):
    frozen = ["train.freeze_bn=true"]
    train(dl, tmp_path / "straight", [], frozen)
    work = tmp_path / "elastic"
    first = train(dl, work, ps(2, 1), frozen)
    assert "training on 2 worker(s) (dist.backend ps)" in first
    stop_after(work, 3)
    out = train(dl, work, [], frozen, resume=True)
    assert "resuming from" in out and "training on 1 worker(s) (dist.backend local)" in out
    assert_params_close(tmp_path / "straight" / "final.params", work / "final.params",
                        rel=5e-6)
