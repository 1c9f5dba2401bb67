"""engine/build.py: the config's model keys reach the network it builds."""
import pytest

from conftest import TINY
from deeplab.config import ConfigError, load_config


@pytest.mark.parametrize("overrides, momentum, padding", [
    ([], 0.9, "exclude"),  # the defaults: MXNet's BN momentum, the padding left out
    (["model.bn_momentum=0.9997", "model.vortex_pool_padding=include"], 0.9997, "include"),
])
def test_model_keys_reach_the_network(overrides, momentum, padding):
    """model.bn_momentum sets every BN layer's momentum; model.vortex_pool_padding the Vortex
    head's pooling."""
    import mxnet as mx
    from mxnet.gluon import nn
    from deeplab.build import training_network
    from deeplab.model import walk_blocks

    cfg = load_config(TINY, ["model.head=vortex"] + overrides)
    net = training_network(cfg, mx.cpu(), sync_bn=False)
    bns = [b for b in walk_blocks(net) if isinstance(b, nn.BatchNorm)]
    assert len(bns) > 10 and {b._kwargs["momentum"] for b in bns} == {momentum}
    assert net.head.pool_padding == padding


def test_model_keys_are_checked():
    with pytest.raises(ConfigError, match="model.vortex_pool_padding"):
        load_config(TINY, ["model.vortex_pool_padding=same"])
    with pytest.raises(ConfigError, match="model.bn_momentum"):
        load_config(TINY, ["model.bn_momentum=1"])
