"""Backbones: model-zoo weights load and reproduce the model zoo's features; atrous wiring."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn
from mxnet.gluon.model_zoo import vision

from deeplab.model import CLASSIFIER_KEYS, ParamsError, get_backbone, load_params, walk_blocks


def _randomize(net, seed=0):
    """Random values everywhere, BN running statistics included (zeros/ones would hide bugs)."""
    rng = np.random.RandomState(seed)
    for p in net.collect_params().values():
        v = rng.uniform(0.5, 1.5, p.shape) if "var" in p.name else rng.normal(0, 0.1, p.shape)
        p.set_data(mx.nd.array(v))


def _resolved(net, size=64):
    net.initialize()
    with mx.autograd.predict_mode():
        net(mx.nd.zeros((1, 3, size, size)))
    return net


@pytest.fixture(scope="module")
def zoo_resnet50_v2(tmp_path_factory):
    zoo = _resolved(vision.resnet50_v2())
    _randomize(zoo)
    path = str(tmp_path_factory.mktemp("zoo") / "resnet50_v2.params")
    zoo.save_parameters(path)
    return zoo, path


def _zoo_features(zoo, x):
    feats = zoo.features
    for i in range(len(feats) - 2):  # up to the post-activation BN + ReLU
        x = feats[i](x)
    return x


@pytest.mark.parametrize("legacy", [False, True])
def test_resnet50_v2_reproduces_model_zoo_features_at_os32(zoo_resnet50_v2, tmp_path, legacy):
    zoo, path = zoo_resnet50_v2
    if legacy:  # older model-zoo files: prefix-stripped names instead of structured ones
        path = str(tmp_path / "legacy.params")
        zoo.collect_params().save(path, strip_prefix=zoo.prefix)
    ours = _resolved(get_backbone("resnet50_v2", output_stride=32, multi_grid=(1,)))
    load_params(ours, path, ignore_extra=CLASSIFIER_KEYS)
    x = mx.nd.random.normal(shape=(2, 3, 96, 80))
    expected = _zoo_features(zoo, x).asnumpy()
    got = ours(x).asnumpy()
    assert got.shape == (2, 2048, 3, 3)
    np.testing.assert_array_equal(got, expected)


def test_params_file_with_missing_and_misshaped_arrays_is_rejected(zoo_resnet50_v2, tmp_path):
    _, path = zoo_resnet50_v2
    arrays = mx.nd.load(path)
    del arrays["features.5.0.conv1.weight"]
    arrays["features.6.1.bn2.gamma"] = mx.nd.zeros((7,))
    bad = str(tmp_path / "bad.params")
    mx.nd.save(bad, arrays)
    ours = _resolved(get_backbone("resnet50_v2"))
    with pytest.raises(ParamsError) as err:
        load_params(ours, bad, ignore_extra=CLASSIFIER_KEYS)
    msg = str(err.value)
    assert bad in msg
    assert "features.5.0.conv1.weight" in msg and "missing" in msg
    assert "features.6.1.bn2.gamma" in msg and "(7,)" in msg


def test_params_file_that_does_not_exist_or_is_not_params(tmp_path):
    ours = _resolved(get_backbone("tiny_v2"))
    with pytest.raises(ParamsError, match="does not exist"):
        load_params(ours, str(tmp_path / "nope.params"))
    junk = tmp_path / "junk.params"
    junk.write_bytes(b"not a params file")
    with pytest.raises(ParamsError, match="junk.params"):
        load_params(ours, str(junk))


def _convs(block):
    out = []
    def walk(b):
        if isinstance(b, nn.Conv2D):
            out.append(b)
        for c in b._children.values():
            walk(c)
    walk(block)
    return out


def _stage(backbone, k, v2=True):
    return backbone.features[4 + k] if v2 else getattr(backbone, "layer%d" % k)


def _rates_3x3(stage):
    return [c._kwargs["dilate"][0] for c in _convs(stage) if c._kwargs["kernel"] == (3, 3)]


def _strides(stage):
    return sorted({c._kwargs["stride"][0] for c in _convs(stage)})


@pytest.mark.parametrize("output_stride, stage3, stage4, strides3, strides4", [
    (32, [1] * 6, [1, 2, 4], [1, 2], [1, 2]),
    (16, [1] * 6, [2, 4, 8], [1, 2], [1]),        # DeepLabV3 §3.2: rates 2 * (1, 2, 4)
    (8, [2] * 6, [4, 8, 16], [1], [1]),           # the seed forgot to dilate this stage at OS8
])
def test_atrous_rates_and_strides_resnet50_v2(output_stride, stage3, stage4, strides3, strides4):
    b = get_backbone("resnet50_v2", output_stride=output_stride)
    assert _rates_3x3(_stage(b, 3)) == stage3
    assert _rates_3x3(_stage(b, 4)) == stage4
    assert _strides(_stage(b, 3)) == strides3
    assert _strides(_stage(b, 4)) == strides4
    for c in _convs(_stage(b, 4)):  # padding keeps the size: pad = rate for a 3x3
        if c._kwargs["kernel"] == (3, 3):
            assert c._kwargs["pad"] == c._kwargs["dilate"]


@pytest.mark.parametrize("name", ["resnet50_v1b", "resnet50_v1d"])
def test_atrous_rates_resnet_v1b_family(name):
    b = get_backbone(name, output_stride=8, multi_grid=(1, 2, 4))
    assert _rates_3x3(b.layer3) == [2] * 6
    assert _rates_3x3(b.layer4) == [4, 8, 16]
    assert _strides(b.layer3) == [1] and _strides(b.layer4) == [1]


@pytest.mark.parametrize("name", ["tiny_v2", "resnet50_v1d"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_map_size_follows_output_stride(name, output_stride):
    b = _resolved(get_backbone(name, output_stride=output_stride))
    x = mx.nd.zeros((1, 3, 128, 96))
    with mx.autograd.predict_mode():
        y = b(x)
    assert y.shape[2:] == (128 // output_stride, 96 // output_stride)
    assert y.shape[1] == b.out_channels


def test_unknown_backbone_lists_valid_ones():
    with pytest.raises(ValueError, match="resnet50_v2"):
        get_backbone("resnet51")
    with pytest.raises(ValueError, match="8, 16, 32"):
        get_backbone("tiny_v2", output_stride=4)


def test_resnet50_v1s_is_gluoncvs_deeplab_backbone(tmp_path):
    """GluonCV's DeepLabV3 runs resnet50_v1s dilated to output stride 8: its params file loads
    onto our v1s backbone, and the networks differ only in the dilation of each dilated stage's
    first block (GluonCV: 1 and 2; ours: the stage rate, as in the paper): given GluonCV's rates,
    ours computes GluonCV's features."""
    from gluoncv.model_zoo import resnet50_v1s
    theirs = _resolved(resnet50_v1s(dilated=True))
    _randomize(theirs)
    path = str(tmp_path / "resnet50_v1s.params")
    theirs.save_parameters(path)
    ours = get_backbone("resnet50_v1s", output_stride=8, multi_grid=(1,))
    their_convs = [b for b in walk_blocks(theirs) if isinstance(b, nn.Conv2D)]
    our_convs = [b for b in walk_blocks(ours) if isinstance(b, nn.Conv2D)]
    assert len(our_convs) == len(their_convs)
    differing = 0
    for o, t in zip(our_convs, their_convs):
        differing += o._kwargs["dilate"] != t._kwargs["dilate"]
        o._kwargs.update(dilate=t._kwargs["dilate"], pad=t._kwargs["pad"])
    assert differing == 2  # conv2 of layer3's and layer4's first blocks
    _resolved(ours)
    load_params(ours, path, ignore_extra=CLASSIFIER_KEYS)
    x = mx.nd.random.normal(shape=(1, 3, 64, 48))
    with mx.autograd.predict_mode():
        expected = theirs.layer4(theirs.layer3(theirs.layer2(theirs.layer1(theirs.maxpool(
            theirs.relu(theirs.bn1(theirs.conv1(x))))))))
        got = ours(x)
    assert got.shape == (1, 2048, 8, 6)
    np.testing.assert_allclose(got.asnumpy(), expected.asnumpy(), rtol=1e-4, atol=1e-4)


