"""deeplab.dist.trainer: the trainer's optimizer state saved from the host and resumed on each
worker's own device (the file format itself: tests/dist/test_trainer_state.py)."""
import mxnet as mx

from deeplab.dist import trainer_state
from deeplab.dist.trainer import make_trainer


def test_optimizer_states_are_saved_from_the_host_and_resumed_on_the_workers_device(tmp_path):
    """Stands in for GPUs with CPU device ids: states of a trainer on cpu(1) are saved as host
    arrays and resumed by a trainer on cpu(2) onto cpu(2), not onto the saving device."""
    def trainer_on(ctx):
        net = mx.gluon.nn.Dense(3, in_units=4)
        net.initialize(mx.init.One(), ctx=ctx)
        t = make_trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
        with mx.autograd.record():
            loss = net(mx.nd.ones((2, 4), ctx=ctx)).sum()
        loss.backward()
        t.step(1.0)
        return t

    saver = trainer_on(mx.cpu(1))
    path = str(tmp_path / "t.states")
    saver.save_states(path)
    with open(path, "rb") as f:
        _, states = trainer_state.loads(f.read())
    assert states and all(s.context == mx.cpu(0) for s in states.values())
    assert all(s.context == mx.cpu(1) for s in saver.trainer._updaters[0].states.values())
    loader = trainer_on(mx.cpu(2))
    loader.load_states(path)
    resumed = loader.trainer._updaters[0].states
    assert resumed and all(s.context == mx.cpu(2) for s in resumed.values())
    for i, s in resumed.items():
        assert (s.asnumpy() == states[i].asnumpy()).all()
