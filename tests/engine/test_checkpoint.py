"""Checkpoints: only complete ones count, old ones are pruned, a failed write keeps the old file,
damaged checkpoints are detected and skipped, non-finite parameters and a full disk are refused
with a clear error."""
import json
import logging
import os

import mxnet as mx
import numpy as np
import pytest

from conftest import PAGE, fill_leaving
from deeplab.checkpoint import Checkpointer
from deeplab.errors import CheckpointError, TrainingDiverged
from deeplab.utils import atomic_write


class _Net(mx.gluon.Block):
    """A real Gluon block with one parameter, `w` (saved under that name)."""

    def __init__(self, size=2, fill=1.0):
        super().__init__()
        self.w = self.params.get("w", shape=(size,), init=mx.init.Constant(fill))
        self.initialize()


class _Trainer:
    def save_states(self, path):
        with open(path, "wb") as f:
            f.write(b"states")


def test_latest_is_the_newest_complete_checkpoint_and_old_ones_are_pruned(tmp_path):
    ck = Checkpointer(str(tmp_path), keep=2)
    for it in (10, 20, 30):
        ck.save(it, _Net(), _Trainer(), {"train": {"iterations": 30}})
    assert ck.iterations() == [20, 30]
    assert not (tmp_path / "checkpoints" / "iter_0000010.params").exists()
    # a save that died before its .json: params on disk, but not a checkpoint
    (tmp_path / "checkpoints" / "iter_0000040.params").write_bytes(b"partial")
    latest = ck.latest()
    assert latest["iteration"] == 30
    assert latest["params"].endswith("iter_0000030.params")
    assert mx.nd.load(latest["params"])["w"].shape == (2,)
    with open(tmp_path / "checkpoints" / "iter_0000030.json") as f:
        assert json.load(f)["config"] == {"train": {"iterations": 30}}


def test_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "final.params"
    path.write_text("good")

    def dies(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), dies)
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["final.params"]


def _two_checkpoints(tmp_path, caplog):
    log = logging.getLogger("test-ckpt")
    ck = Checkpointer(str(tmp_path), keep=3, log=log)
    ck.save(10, _Net(fill=1.0), _Trainer(), {})
    ck.save(20, _Net(fill=2.0), _Trainer(), {})
    caplog.set_level(logging.WARNING, logger="test-ckpt")
    return ck


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "delete_states", "bad_json"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_intact_one(tmp_path, caplog,
                                                                          damage):
    ck = _two_checkpoints(tmp_path, caplog)
    stem = tmp_path / "checkpoints" / "iter_0000020"
    params = stem.with_suffix(".params")
    if damage == "truncate":
        params.write_bytes(params.read_bytes()[:-5])
    elif damage == "bitflip":
        data = bytearray(params.read_bytes())
        data[-3] ^= 0x10  # inside the array's values: MXNet itself would load it silently
        params.write_bytes(bytes(data))
    elif damage == "delete_states":
        os.remove(stem.with_suffix(".states"))
    else:
        stem.with_suffix(".json").write_text("{not json")
    latest = ck.latest()
    assert latest["iteration"] == 10
    assert mx.nd.load(latest["params"])["w"].asnumpy().tolist() == [1.0, 1.0]
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "skipping checkpoint 20" in warnings and "iter_0000020" in warnings
    assert "older checkpoint 10" in warnings


def test_every_checkpoint_damaged_is_an_error_naming_them(tmp_path, caplog):
    ck = _two_checkpoints(tmp_path, caplog)
    for it in (10, 20):
        p = tmp_path / "checkpoints" / ("iter_%07d.params" % it)
        p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(CheckpointError, match="no intact checkpoint.*iter_0000020.params.*"
                                              "iter_0000010.params"):
        ck.latest()


def test_non_finite_parameters_are_never_written(tmp_path):
    ck = Checkpointer(str(tmp_path))
    ck.save(10, _Net(), _Trainer(), {})
    bad = _Net()
    bad.w.data()[1] = float("nan")
    with pytest.raises(TrainingDiverged, match="non-finite parameters at iteration 20.*w"):
        ck.save(20, bad, _Trainer(), {})
    assert ck.iterations() == [10]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "iter_0000010.json", "iter_0000010.params", "iter_0000010.states"]


@pytest.fixture
def small_disk(tmpfs):
    """A 1 MiB tmpfs (root only): a real full disk, as MXNet's writer meets it."""
    return tmpfs(1 << 20)


def test_full_disk_names_the_path_leaves_no_partial_files_and_keeps_older_checkpoints(
        small_disk):
    ck = Checkpointer(str(small_disk))
    ck.save(10, _Net(), _Trainer(), {})
    big = _Net(size=400_000)  # 1.6 MB of float32: more than the disk
    with pytest.raises(CheckpointError) as err:
        ck.save(20, big, _Trainer(), {})
    msg = str(err.value)
    assert "iter_0000020.params" in msg and "disk is full" in msg
    assert sorted(os.listdir(small_disk / "checkpoints")) == [
        "iter_0000010.json", "iter_0000010.params", "iter_0000010.states"]
    assert ck.latest()["iteration"] == 10
    np.testing.assert_array_equal(mx.nd.load(ck.latest()["params"])["w"].asnumpy(), [1, 1])


BIG = 100_000  # float32 values: a 400,073-byte .params file, 98 pages


@pytest.mark.parametrize("free_pages", [0, 49, 97], ids=["empty", "half", "all-but-the-last-page"])
def test_full_disk_at_any_moment_of_a_params_file_is_an_error_and_leaves_nothing_partial(
        small_disk, free_pages):
    """MXNet's writer reports a disk that fills mid-file, but not one that fills within its
    last buffer (flushed at close): `final.params` was renamed into place cut short (issue 19).
    Every moment must end the same way: the one-line error, no file, older files intact."""
    from deeplab.checkpoint import save_params

    save_params(_Net(fill=1.0), str(small_disk / "final.params"))  # an earlier, good file
    fill_leaving(str(small_disk), free_pages * PAGE)
    with pytest.raises(CheckpointError) as err:
        save_params(_Net(size=BIG, fill=2.0), str(small_disk / "final.params"))
    assert "cannot write %s: the disk is full" % (small_disk / "final.params") in str(err.value)
    assert sorted(os.listdir(small_disk)) == ["filler", "final.params"]  # no temporary left
    np.testing.assert_array_equal(
        mx.nd.load(str(small_disk / "final.params"))["w"].asnumpy(), [1, 1])


def test_checkpoint_whose_params_lose_their_last_page_is_not_a_checkpoint(small_disk):
    ck = Checkpointer(str(small_disk))
    ck.save(10, _Net(), _Trainer(), {})
    fill_leaving(str(small_disk), 97 * PAGE)
    with pytest.raises(CheckpointError, match="iter_0000020.params: the disk is full"):
        ck.save(20, _Net(size=BIG), _Trainer(), {})
    assert sorted(os.listdir(small_disk / "checkpoints")) == [
        "iter_0000010.json", "iter_0000010.params", "iter_0000010.states"]
    assert ck.latest()["iteration"] == 10


def _trained(net):
    """A real trainer of `net` (dist.make_trainer, SGD with momentum) after one step, so that
    its optimizer holds a state as large as the parameters."""
    from deeplab import dist

    trainer = dist.make_trainer(net.collect_params(), "sgd",
                                {"learning_rate": 0.1, "momentum": 0.9})
    with mx.autograd.record():
        loss = (net.w.data() ** 2).sum()
    loss.backward()
    trainer.step(1)
    return trainer


@pytest.mark.parametrize("moment", ["empty", "half", "all-but-the-last-page"])
def test_checkpoint_whose_states_meet_a_full_disk_is_the_full_disk_error(small_disk, tmp_path,
                                                                         moment):
    """The trainer's own writer (deeplab.dist.trainer_state, through DistTrainer.save_states)
    on a disk that fills while it writes the .states, at its first byte, midway or within its
    last page (where MXNet's writer says nothing): the documented full-disk error naming the
    file, as for the parameters, not a file that "did not reach the disk whole"; the .params
    goes with it, and the older checkpoint is intact and loads into a trainer."""
    from deeplab.dist import trainer_state

    small, big = _Net(), _Net(size=BIG)
    small_trainer, big_trainer = _trained(small), _trained(big)
    # How many pages the .params and .states of `big` take, written on a roomy disk.
    Checkpointer(str(tmp_path / "roomy")).save(20, big, big_trainer, {})
    stem = str(tmp_path / "roomy" / "checkpoints" / "iter_0000020")
    params, states = (-(-os.path.getsize(stem + ext) // PAGE) for ext in (".params", ".states"))
    assert states > 90, states  # momentum: as large as the parameters

    ck = Checkpointer(str(small_disk))
    ck.save(10, small, small_trainer, {})
    room = {"empty": 0, "half": states // 2}.get(moment, states - 1)  # pages of the .states
    fill_leaving(str(small_disk), (params + room) * PAGE)
    with pytest.raises(CheckpointError) as err:
        ck.save(20, big, big_trainer, {})
    assert "cannot write %s/checkpoints/iter_0000020.states: the disk is full (" % small_disk \
        in str(err.value), str(err.value)
    assert sorted(os.listdir(small_disk / "checkpoints")) == [
        "iter_0000010.json", "iter_0000010.params", "iter_0000010.states"]
    latest = ck.latest()
    assert latest["iteration"] == 10
    with open(latest["states"], "rb") as f:
        desc, saved = trainer_state.loads(f.read(), latest["states"])
    assert desc["class"] == "SGD" and len(saved) == 1
    small_trainer.load_states(latest["states"])  # resumable


def test_verified_write_catches_a_file_that_differs_from_what_was_meant(tmp_path):
    from deeplab.checkpoint import verify_ndarrays
    from deeplab.utils import IncompleteWrite

    arrays = {"a": mx.nd.arange(6).reshape((2, 3)), "b": mx.nd.ones((4,))}
    mx.nd.save(str(tmp_path / "x.params"), arrays)
    verify_ndarrays(str(tmp_path / "x.params"), arrays)  # the same: accepted
    for changed in ({"a": arrays["a"], "b": mx.nd.ones((4,)) * 2}, {"a": arrays["a"]}):
        with pytest.raises(IncompleteWrite):
            verify_ndarrays(str(tmp_path / "x.params"), changed)
    data = (tmp_path / "x.params").read_bytes()
    (tmp_path / "x.params").write_bytes(data[:-3])
    with pytest.raises(IncompleteWrite, match="unreadable after writing"):
        verify_ndarrays(str(tmp_path / "x.params"), arrays)
