"""Decode heads: branch wiring (rates, pool sizes, channels) and output shapes."""
import mxnet as mx
import pytest
from mxnet.gluon import nn

import numpy as np

from deeplab.model import HEADS, ASPPHead, VortexHead
from deeplab.model.heads import box_average


def _blocks(block, kind):
    out = []
    def walk(b):
        if isinstance(b, kind):
            out.append(b)
        for c in b._children.values():
            walk(c)
    walk(block)
    return out


def _branch_rates(head):
    return [c._kwargs["dilate"][0] for c in _blocks(head.branches, nn.Conv2D)
            if c._kwargs["kernel"] == (3, 3)]


@pytest.mark.parametrize("output_stride, rates", [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_aspp_rates_double_at_output_stride_8(output_stride, rates):
    head = HEADS["aspp"](32, 8, 5, output_stride)
    assert isinstance(head, ASPPHead)
    assert _branch_rates(head) == rates
    # 1x1, three atrous 3x3, image pooling: five branches of `channels` each into the projection
    assert len(head.branches) == 5
    assert head.project[0]._in_channels == 5 * 8


@pytest.mark.parametrize("output_stride, pools, rates", [
    (16, [3, 9, 27], [3, 9, 27]),
    (8, [7, 19, 55], [6, 18, 54]),  # same image extent at twice the resolution, odd pools
])
def test_vortex_pool_sizes_and_rates(output_stride, pools, rates):
    head = HEADS["vortex"](32, 8, 5, output_stride)
    assert isinstance(head, VortexHead)
    assert list(head.pool_sizes) == pools
    assert _branch_rates(head) == rates
    assert len(head.branches) == 5
    assert head.project[0]._in_channels == 5 * 8


@pytest.mark.parametrize("name", ["aspp", "vortex"])
@pytest.mark.parametrize("size", [(1, 1), (5, 3), (9, 12)])
def test_head_keeps_spatial_size(name, size):
    head = HEADS[name](32, 8, 5, 16)
    head.initialize()
    x = mx.nd.random.normal(shape=(2, 32) + size)
    with mx.autograd.predict_mode():
        y = head(x)
    assert y.shape == (2, 5) + size


def test_image_pooling_branch_is_constant_over_space():
    head = HEADS["aspp"](16, 4, 3, 16)
    head.initialize()
    x = mx.nd.random.normal(shape=(1, 16, 6, 7))
    with mx.autograd.predict_mode():
        pooled = head.branches[-1](x).asnumpy()
    assert pooled.shape == (1, 4, 6, 7)
    assert (pooled == pooled[:, :, :1, :1]).all()


def test_vortex_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="same length"):
        VortexHead(8, 4, 3, pool_sizes=(3, 9), rates=(3, 9, 27))


@pytest.mark.parametrize("size", [3, 9, 27])
def test_box_average_equals_square_average_pooling(size):
    x = mx.nd.random.normal(shape=(1, 4, 30, 19))
    ref = mx.nd.Pooling(x, kernel=(size, size), stride=(1, 1), pad=(size // 2, size // 2),
                        pool_type="avg", count_include_pad=False)
    np.testing.assert_allclose(box_average(mx.nd, x, size).asnumpy(), ref.asnumpy(),
                               rtol=1e-5, atol=1e-6)


class _BoxAverage(nn.HybridBlock):
    def __init__(self, size, padding="exclude"):
        super().__init__()
        self.size, self.padding = size, padding

    def hybrid_forward(self, F, x):
        return box_average(F, x, self.size, self.padding)


def _value_and_grad(block, x, head_grad):
    x = x.copy()
    x.attach_grad()
    with mx.autograd.record():
        y = block(x)
    y.backward(head_grad)
    return y.asnumpy(), x.grad.asnumpy()


# The real sizes: a 513 crop gives a 33x33 map at output stride 16 (windows 3, 9, 27) and
# 65x65 at 8 (windows 7, 19, 55); odd, non-square and smaller-than-the-window maps besides.
_POOL_CASES = [
    (3, (2, 3, 33, 33)),
    (9, (1, 4, 33, 33)),
    (27, (1, 3, 33, 33)),
    (9, (1, 4, 33, 20)),
    (27, (1, 3, 24, 33)),  # window wider than the map
    (7, (1, 2, 65, 41)),
    (19, (2, 2, 17, 65)),
    (55, (1, 2, 65, 65)),
    (27, (1, 2, 5, 8)),  # window larger than the map in both axes
]


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("size, shape", _POOL_CASES)
def test_box_average_equals_average_pooling_without_padding_counted(size, shape, hybridize):
    """Forward and gradient equal nn.AvgPool2D(count_include_pad=False): the mean over the
    in-image part of each window, on odd and non-square maps, imperative and hybridized."""
    _check_box_average(size, shape, hybridize, "exclude")


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("size, shape", _POOL_CASES)
def test_box_average_include_equals_average_pooling_with_padding_counted(size, shape, hybridize):
    """padding='include' (the seed's AvgPool2D): forward and gradient equal
    nn.AvgPool2D(count_include_pad=True), every window's sum over size^2."""
    _check_box_average(size, shape, hybridize, "include")


def _check_box_average(size, shape, hybridize, padding):
    rng = np.random.RandomState(size)
    x = mx.nd.array(rng.standard_normal(shape))
    head_grad = mx.nd.array(rng.standard_normal(shape))
    direct = nn.AvgPool2D(pool_size=size, strides=1, padding=size // 2,
                          count_include_pad=padding == "include")
    ours = _BoxAverage(size, padding)
    if hybridize:
        direct.hybridize()
        ours.hybridize()
    y_ref, g_ref = _value_and_grad(direct, x, head_grad)
    y, g = _value_and_grad(ours, x, head_grad)
    assert y.shape == shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)


def test_vortex_pool_padding_include_is_the_seed_convention_and_differs_near_borders():
    """On a constant 33x33 map (a 513 crop at output stride 16) the 27x27 branch averages to the
    constant everywhere with 'exclude'; with 'include' a corner window holds 14x14 of its 729
    pixels: 3.7x lower."""
    x = mx.nd.ones((1, 4, 33, 33))
    exclude = HEADS["vortex"](4, 2, 3, 16)
    include = HEADS["vortex"](4, 2, 3, 16, pool_padding="include")
    assert (exclude.pool_padding, include.pool_padding) == ("exclude", "include")
    e = exclude.branch_inputs(mx.nd, x)[4].asnumpy()
    i = include.branch_inputs(mx.nd, x)[4].asnumpy()
    np.testing.assert_allclose(e, 1.0, rtol=1e-5)
    np.testing.assert_allclose(i[0, 0, 0, 0], 14 * 14 / 729.0, rtol=1e-5)
    np.testing.assert_allclose(e[0, 0, 0, 0] / i[0, 0, 0, 0], 729 / 196.0, rtol=1e-5)
    np.testing.assert_allclose(i[0, 0, 16, 16], 1.0, rtol=1e-5)  # the centre window is inside
    with pytest.raises(ValueError, match="pool_padding"):
        HEADS["vortex"](4, 2, 3, 16, pool_padding="same")


def test_vortex_pool_padding_reaches_the_head_through_get_model():
    from deeplab.model import get_model
    net = get_model("deeplabv3_tiny_v2", head="vortex", vortex_pool_padding="include",
                    num_classes=3, head_channels=4)
    assert net.head.pool_padding == "include"
    assert get_model("deeplabv3_tiny_v2", head="vortex", num_classes=3,
                     head_channels=4).head.pool_padding == "exclude"
    with pytest.raises(ValueError, match="vortex_pool_padding"):
        get_model("deeplabv3_tiny_v2", head="vortex", vortex_pool_padding="all")


def test_one_vortex_graph_serves_every_input_size():
    head = HEADS["vortex"](4, 2, 3, 8)
    head.initialize()
    head.hybridize()
    for size in [(65, 65), (33, 20), (7, 12)]:
        x = mx.nd.random.normal(shape=(1, 4) + size)
        with mx.autograd.predict_mode():
            assert head(x).shape == (1, 3) + size


def test_vortex_cascade_equals_direct_pooling_inside_the_image_at_os16():
    direct = HEADS["vortex"](4, 2, 3, 16)
    cascade = HEADS["vortex"](4, 2, 3, 16, cascade=True)
    x = mx.nd.random.normal(shape=(1, 4, 70, 64))
    d = [p.asnumpy() for p in direct.branch_inputs(mx.nd, x)]
    c = [p.asnumpy() for p in cascade.branch_inputs(mx.nd, x)]
    for k, a, b in zip((3, 9, 27), d[2:], c[2:]):
        m = k // 2  # away from the borders the dilated 3x3 averages tile the k x k window
        np.testing.assert_allclose(b[..., m:-m, m:-m], a[..., m:-m, m:-m], rtol=1e-4, atol=1e-5)
    assert not np.allclose(c[4], d[4], atol=1e-3)  # but near borders zero padding differs


def test_vortex_cascade_model_runs_and_is_refused_for_aspp():
    from deeplab.model import get_model
    net = get_model("deeplabv3_tiny_v2", head="vortex", vortex_cascade=True, output_stride=8,
                    num_classes=3, head_channels=4)
    net.hybridize()
    with mx.autograd.predict_mode():
        assert net(mx.nd.zeros((1, 3, 41, 30))).shape == (1, 3, 41, 30)
    with pytest.raises(ValueError, match="vortex"):
        get_model("deeplabv3_tiny_v2", head="aspp", vortex_cascade=True)
