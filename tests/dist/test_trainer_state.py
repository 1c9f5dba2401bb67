"""Optimizer states as data: saved and resumed bitwise without pickle, a planted pickle refused
without running, MXNet's own (pickled) files loaded only on the user's explicit opt-in, and the
collectives' broadcast encoding (`wire`) carrying data only."""
import pickle

import mxnet as mx
import numpy as np
import pytest

from deeplab.dist import trainer_state, wire
from deeplab.dist.trainer import make_trainer
from deeplab.errors import CheckpointError, ConfigError


class Planted:
    """A pickle that creates `path` when unpickled (as a planted `.states` would run code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class Scale(mx.gluon.Block):
    """x * weight + bias: elementwise, so that it runs in float16 on the CPU too."""

    def __init__(self, dtype):
        super().__init__()
        self.weight = self.params.get("weight", shape=(4,), dtype=dtype)
        self.bias = self.params.get("bias", shape=(4,), dtype=dtype)

    def forward(self, x):
        return x * self.weight.data(x.context) + self.bias.data(x.context)


def trained(ctx=mx.cpu(), steps=3, dtype="float32", **optimizer):
    """A DistTrainer (local backend) of a small net after `steps` SGD steps."""
    net = Scale(dtype)
    net.initialize(mx.init.Uniform(), ctx=ctx)
    params = {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4, **optimizer}
    t = make_trainer(net.collect_params(), "sgd", params)
    for step in range(steps):
        x = mx.nd.arange(8, ctx=ctx, dtype=dtype).reshape((2, 4)) / (step + 1)
        with mx.autograd.record():
            loss = (net(x) ** 2).sum()
        loss.backward()
        t.set_learning_rate(0.1 / (step + 1))
        t.step(2.0)
    return t, net


def flat(state):
    if state is None:
        return []
    if isinstance(state, mx.nd.NDArray):
        return [state]
    return [a for s in state for a in flat(s)]


@pytest.mark.parametrize("optimizer, dtype", [
    ({}, "float32"),  # momentum: one array per parameter
    ({"momentum": 0.0}, "float32"),  # plain SGD: no state (None)
    ({"multi_precision": True}, "float16"),  # (float32 master weights, momentum) tuples
])
def test_states_round_trip_bitwise_and_continue_like_the_original(tmp_path, optimizer, dtype):
    saver, net = trained(dtype=dtype, **optimizer)
    path = str(tmp_path / "iter.states")
    saver.save_states(path)
    with open(path, "rb") as f:
        assert not trainer_state.is_pickle(f.read())
    loader, other = trained(steps=1, dtype=dtype, **optimizer)
    for p, q in zip(other.collect_params().values(), net.collect_params().values()):
        p.set_data(q.data())  # the same weights: both continue from one point
    loader.load_states(path)
    a, b = saver.trainer._optimizer, loader.trainer._optimizer
    assert (a.num_update, a.lr, a.momentum, a.wd, a._index_update_count) == \
        (b.num_update, b.lr, b.momentum, b.wd, b._index_update_count)
    sa, sb = saver.trainer._updaters[0].states, loader.trainer._updaters[0].states
    assert sa.keys() == sb.keys()
    for i in sa:
        assert [type(s) for s in flat(sa[i])] == [type(s) for s in flat(sb[i])]
        for x, y in zip(flat(sa[i]), flat(sb[i])):
            assert x.dtype == y.dtype and (x.asnumpy() == y.asnumpy()).all()
    for t, n in ((saver, net), (loader, other)):  # one more step on each: the same weights
        with mx.autograd.record():
            loss = n(mx.nd.ones((2, 4), dtype=dtype)).sum()
        loss.backward()
        t.step(2.0)
    for p, q in zip(net.collect_params().values(), other.collect_params().values()):
        assert (p.data().asnumpy() == q.data().asnumpy()).all()


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.delenv(trainer_state.TRUST_PICKLE_ENV, raising=False)
    marker = tmp_path / "pwned"
    path = tmp_path / "iter_0000010.states"
    path.write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(CheckpointError) as err:
        trained(steps=1)[0].load_states(str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "pickled" in message
    assert trainer_state.TRUST_PICKLE_ENV in message
    assert not marker.exists()


def test_mxnet_pickled_states_load_only_with_the_opt_in(tmp_path, monkeypatch):
    saver, _ = trained()
    path = str(tmp_path / "old.states")
    saver.trainer.save_states(path)  # MXNet's own format: a pickle
    monkeypatch.delenv(trainer_state.TRUST_PICKLE_ENV, raising=False)
    with pytest.raises(CheckpointError, match="pickled"):
        trained(steps=1)[0].load_states(path)
    monkeypatch.setenv(trainer_state.TRUST_PICKLE_ENV, "1")
    loader, _ = trained(steps=1)
    loader.load_states(path)
    sa, sb = saver.trainer._updaters[0].states, loader.trainer._updaters[0].states
    assert sa.keys() == sb.keys()
    assert all((sa[i].asnumpy() == sb[i].asnumpy()).all() for i in sa)
    assert loader.trainer._optimizer.num_update == saver.trainer._optimizer.num_update


@pytest.mark.parametrize("content, words", [
    (b"", "not a trainer state file"),
    (b"garbage that is no NDArray file", "not a trainer state file"),
])
def test_damaged_states_are_one_line_checkpoint_errors(tmp_path, content, words):
    path = tmp_path / "bad.states"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=words) as err:
        trained(steps=1)[0].load_states(str(path))
    assert "\n" not in str(err.value)


def test_states_of_another_optimizer_are_refused(tmp_path):
    saver, _ = trained()
    path = str(tmp_path / "sgd.states")
    saver.save_states(path)
    net = mx.gluon.nn.Dense(3, in_units=4)
    net.initialize()
    adam = make_trainer(net.collect_params(), "adam", {"learning_rate": 0.1})
    with pytest.raises(CheckpointError, match="optimizer SGD, but the trainer uses Adam"):
        adam.load_states(path)


def test_wire_carries_plain_data_and_user_errors_only():
    value = {"iteration": 30, "lr": 0.5, "ok": True, "none": None, "paths": ("a", "b"),
             "list": [1, [2, 3]], "bytes": bytes(range(256)), 7: np.float64(0.25)}
    assert wire.decode(wire.encode(value)) == {**value, 7: 0.25}
    err = wire.decode(wire.encode(ConfigError("model.num_classes: expected an integer")))
    assert type(err) is ConfigError and str(err) == "model.num_classes: expected an integer"
    with pytest.raises(TypeError):
        wire.encode(object())
    with pytest.raises(ValueError):
        wire.decode(pickle.dumps(value))
