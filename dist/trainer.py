"""The trainer of every backend, with one normalisation rule, and its optimizer state on disk.

`make_trainer` wraps the running backend's Gluon trainer (`comm.gluon_trainer`) in a
`DistTrainer`; the state is saved and resumed in the data-only format of `trainer_state` (the
file format; this module reads and writes it through the Gluon trainer's updaters, MXNet's
private `_updaters`, and places each array on its parameter's device).
"""
import os

import mxnet as mx

from . import comm, trainer_state

__all__ = ["DistTrainer", "make_trainer"]


class DistTrainer:
    """A Gluon trainer for the running backend, with one normalisation rule for all of them:
    `step(n)` applies (sum over workers of the local gradients) / n.

    Under Horovod the DistributedTrainer averages over workers, so n is divided by the world
    size; the parameter server and a single process sum, so n is used as is.
    """

    def __init__(self, trainer, divide_by):
        self.trainer, self._divide_by = trainer, divide_by

    def step(self, n):
        self.trainer.step(n / self._divide_by)

    def allreduce_grads(self):
        """COLLECTIVE. The first half of `step`: sums the gradients over workers (benchmarks time
        it apart from the update)."""
        self.trainer.allreduce_grads()

    def update(self, n):
        """The second half of `step`, after `allreduce_grads`: the optimizer update with the
        summed gradients divided by n."""
        self.trainer.update(n / self._divide_by)

    def set_learning_rate(self, lr):
        self.trainer.set_learning_rate(lr)

    def save_states(self, path):
        """Writes the optimizer state in the data-only format of `trainer_state` (call on the
        main worker), with every array copied to the CPU: saved from the host, the states load
        on the host and are then moved to each worker's own device (`load_states`), instead of
        every worker of a node opening a CUDA context on rank 0's GPU."""
        updater = self.trainer._updaters[0]  # the others hold the same states on their devices
        trainer_state.save(path, updater.optimizer, updater.states)

    def load_states(self, path):
        """COLLECTIVE. Worker 0 reads `path`; every worker receives its content and places each
        state array on the device of the parameter it belongs to. A pickled file (MXNet's own
        format) is refused on every worker unless worker 0 has
        trainer_state.TRUST_PICKLE_ENV=1 (for the user's own old runs)."""
        data, trust = None, False
        if comm.is_main():
            with open(path, "rb") as f:
                data = f.read()
            trust = os.environ.get(trainer_state.TRUST_PICKLE_ENV, "") == "1"
        data, trust = comm.broadcast((data, trust))
        t = self.trainer
        if not t._kv_initialized:
            t._init_kvstore()
        if t._params_to_init:
            t._init_params()
        if trust and trainer_state.is_pickle(data):
            _load_pickled_states(t, data)
        else:
            desc, states = trainer_state.loads(data, path)
            for u in t._updaters:
                trainer_state.apply_optimizer(u.optimizer, desc, path)
                u.states = dict(states)
                u.states_synced = dict.fromkeys(states, False)
        for u, ctx in zip(t._updaters, t._contexts):
            for i in list(u.states):
                u.states[i] = _map_arrays(u.states[i], lambda a, c=ctx: a.as_in_context(c))
                u.states_synced[i] = True


def _load_pickled_states(trainer, data):
    """MXNet's own `Trainer.load_states` (pickle: it runs whatever the file holds), for runs
    the user vouches for with trainer_state.TRUST_PICKLE_ENV=1."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "trainer.states")
        with open(local, "wb") as f:
            f.write(data)
        trainer.load_states(local)


def _map_arrays(state, fn):
    """`state` (an NDArray, None, or nested tuples/lists of them) with fn applied to arrays."""
    if isinstance(state, mx.nd.NDArray):
        return fn(state)
    if isinstance(state, (list, tuple)):
        return type(state)(_map_arrays(s, fn) for s in state)
    return state


def make_trainer(params, optimizer, optimizer_params, fp16_compression=False, num_groups=0,
                 prefix=None):
    """COLLECTIVE. The backend's trainer, wrapped in DistTrainer.

    Args:
        params: the network's ParameterDict, fully initialized and the same on every worker
            (`broadcast_parameters` first, as `deeplab.build.training_network` does).
        optimizer, optimizer_params: as for gluon.Trainer.
        fp16_compression: Horovod only: allreduce gradients in float16.
        num_groups: Horovod only: fuse gradients into this many grouped allreduces (0: off).
        prefix: Horovod only: names this trainer's allreduces (needed when one process runs
            several trainers, e.g. a benchmark comparing networks).
    """
    return DistTrainer(*comm.gluon_trainer(params, optimizer, optimizer_params,
                                           fp16_compression, num_groups, prefix))
