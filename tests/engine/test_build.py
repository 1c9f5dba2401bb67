"""engine/build.py: Horovod's negotiation cycle picked per config (the worker sets
HOROVOD_CYCLE_TIME before Horovod starts unless the environment already does)."""
import pytest

from conftest import TINY
from deeplab.build import horovod_cycle_time
from deeplab.config import CPU_CYCLE_TIME_MS, ConfigError, load_config


@pytest.mark.parametrize("overrides, gpus, expected", [
    ([], 0, 1.0),  # synchronized BN: each of its collectives waits about one cycle
    ([], 8, 0.1),  # ... and on GPU nodes the thread's share of a core is not missed
    (["dist.sync_bn=false"], 0, CPU_CYCLE_TIME_MS),  # CPU workers, a few collectives per step
    (["train.freeze_bn=true"], 0, CPU_CYCLE_TIME_MS),  # frozen BN: no BN collectives either
    (["dist.sync_bn=false"], 8, 1.0),  # GPUs: short steps, cores to spare
    (["dist.sync_bn=false", "dist.horovod_cycle_time=3.5"], 0, 3.5),  # the config wins
    (["dist.horovod_cycle_time=0.1"], 8, 0.1),
])
def test_cycle_time_follows_bn_mode_and_device(overrides, gpus, expected):
    assert horovod_cycle_time(load_config(TINY, overrides), gpus) == expected


def test_cycle_time_must_be_positive():
    with pytest.raises(ConfigError, match="dist.horovod_cycle_time"):
        load_config(TINY, ["dist.horovod_cycle_time=0"])


@pytest.mark.parametrize("overrides, momentum, padding", [
    ([], 0.9, "exclude"),  # the defaults: MXNet's BN momentum, the padding left out
    (["model.bn_momentum=0.9997", "model.vortex_pool_padding=include"], 0.9997, "include"),
])
def test_model_keys_reach_the_network(overrides, momentum, padding):
    """model.bn_momentum sets every BN layer's momentum; model.vortex_pool_padding the Vortex
    head's pooling."""
    import mxnet as mx
    from mxnet.gluon import nn
    from deeplab.build import build_model
    from deeplab.model import walk_blocks

    cfg = load_config(TINY, ["model.head=vortex"] + overrides)
    net = build_model(cfg, mx.cpu(), training=True, sync_bn=False)
    bns = [b for b in walk_blocks(net) if isinstance(b, nn.BatchNorm)]
    assert len(bns) > 10 and {b._kwargs["momentum"] for b in bns} == {momentum}
    assert net.head.pool_padding == padding


def test_model_keys_are_checked():
    with pytest.raises(ConfigError, match="model.vortex_pool_padding"):
        load_config(TINY, ["model.vortex_pool_padding=same"])
    with pytest.raises(ConfigError, match="model.bn_momentum"):
        load_config(TINY, ["model.bn_momentum=1"])
