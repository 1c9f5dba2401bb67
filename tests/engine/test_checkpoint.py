"""Checkpoints: only complete ones count, old ones are pruned, a failed write keeps the old file."""
import json

import mxnet as mx
import pytest

from deeplab.checkpoint import Checkpointer, atomic_write


class _Net:
    def save_parameters(self, path):
        mx.nd.save(path, {"w": mx.nd.ones((2,))})


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
