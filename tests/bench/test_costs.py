"""Analytic costs: multiply-adds and bytes against hand computation."""
import pytest
from mxnet.gluon import nn

from deeplab.bench.costs import count_costs
from deeplab.model import get_model


def _net(*layers):
    net = nn.HybridSequential()
    net.add(*layers)
    net.initialize()
    return net


def test_convolutions_and_dense_layers_by_hand():
    net = _net(nn.Conv2D(4, 3, padding=1, in_channels=2),        # 8x8 out: 4*64 * 2*9
               nn.Conv2D(4, 3, padding=2, dilation=2, groups=2, in_channels=4),  # 4*64 * 2*9
               nn.Conv2D(6, 1, strides=2, in_channels=4),          # 6*16 * 4
               nn.BatchNorm(in_channels=6), nn.Activation("relu"),  # not counted
               nn.Flatten(), nn.Dense(5, in_units=96))             # 5 * 96
    macs = 4 * 64 * 2 * 9 + 4 * 64 * 2 * 9 + 6 * 16 * 4 + 5 * 96
    c = count_costs(net, (3, 2, 8, 8))
    assert c["forward_macs_per_image"] == macs
    assert c["forward_gflops_per_image"] == pytest.approx(2 * macs / 1e9)
    assert c["train_gflops_per_image"] == pytest.approx(6 * macs / 1e9)
    params = (4 * 2 * 9 + 4) + (4 * 2 * 9 + 4) + (6 * 4 + 6) + 4 * 6 + (5 * 96 + 5)
    assert c["params"] == params
    assert c["trainable_params"] == params - 2 * 6  # BN running mean and variance
    assert c["grad_bytes"] == 4 * (params - 12)
    assert count_costs(net, (1, 2, 8, 8), fp16_gradients=True)["grad_bytes"] == 2 * (params - 12)


def test_frozen_parameters_carry_no_gradient_bytes():
    net = _net(nn.Conv2D(4, 3, in_channels=2, use_bias=False), nn.BatchNorm(in_channels=4))
    for p in net.collect_params(".*gamma|.*beta").values():
        p.grad_req = "null"
    assert count_costs(net, (1, 2, 8, 8))["grad_bytes"] == 4 * 4 * 2 * 9


def test_deeplab_costs_follow_the_output_stride():
    """At output stride 8 the last two stages run at twice the resolution of OS16: more
    multiply-adds, the same parameters."""
    os16, os8 = (count_costs(get_model("deeplabv3_tiny_v2", output_stride=s, num_classes=5),
                             (1, 3, 64, 64)) for s in (16, 8))
    assert os8["forward_macs_per_image"] > os16["forward_macs_per_image"]
    assert os8["params"] == os16["params"]
