"""get_model: names, arguments, any input size, hybridization, injected norm layer, params."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

from deeplab.model import MODELS, ParamsError, get_model
from deeplab.model.backbone import BACKBONES, get_backbone
from deeplab.model.params import describe_network

TINY = dict(num_classes=5, head_channels=8)


@pytest.mark.parametrize("head", ["aspp", "vortex"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_logits_match_any_input_size_and_hybridized_equals_imperative(head, output_stride):
    net = get_model("deeplabv3_tiny_v2", head=head, output_stride=output_stride, seed=1, **TINY)
    x = mx.nd.random.normal(shape=(2, 3, 37, 50))  # odd, non-square
    with mx.autograd.predict_mode():
        y = net(x).asnumpy()
        net.hybridize()
        y_h = net(x).asnumpy()
        y_other = net(mx.nd.random.normal(shape=(1, 3, 64, 33))).asnumpy()
    assert y.shape == (2, 5, 37, 50)
    assert y_other.shape == (1, 5, 64, 33)
    np.testing.assert_allclose(y_h, y, rtol=1e-5, atol=1e-5)


def test_all_parameters_have_shapes_after_get_model():
    net = get_model("deeplabv3_resnet50_v2", output_stride=16)
    for p in net.collect_params().values():
        assert p.shape and all(d > 0 for d in p.shape), p.name
        p.data()  # no deferred initialization left


def test_norm_layer_is_injected():
    class MyNorm(nn.BatchNorm):
        pass
    net = get_model("deeplabv3_tiny_v2", norm_layer=MyNorm, norm_kwargs={"momentum": 0.5}, **TINY)
    norms = []
    def walk(b):
        if isinstance(b, nn.BatchNorm):
            norms.append(b)
        for c in b._children.values():
            walk(c)
    walk(net)
    assert norms and all(type(n) is MyNorm for n in norms)
    assert all(n._kwargs["momentum"] == 0.5 for n in norms)


def test_seed_makes_initialization_repeatable():
    a = get_model("deeplabv3_tiny_v2", seed=3, **TINY)
    b = get_model("deeplabv3_tiny_v2", seed=3, **TINY)
    c = get_model("deeplabv3_tiny_v2", seed=4, **TINY)
    pa, pb, pc = (list(n.collect_params().values()) for n in (a, b, c))
    assert all((x.data() == y.data()).asnumpy().all() for x, y in zip(pa, pb))
    assert not all((x.data() == y.data()).asnumpy().all() for x, y in zip(pa, pc))


def test_whole_model_params_round_trip_and_os16_params_load_at_os8(tmp_path):
    src = get_model("deeplabv3_tiny_v2", head="vortex", output_stride=16, seed=5, **TINY)
    path = str(tmp_path / "model.params")
    src.save_parameters(path)
    dst = get_model("deeplabv3_tiny_v2", head="vortex", output_stride=8, params=path, **TINY)
    for (k, a), b in zip(src._collect_params_with_prefix().items(),
                         dst._collect_params_with_prefix().values()):
        assert (a.data() == b.data()).asnumpy().all(), k
    with pytest.raises(ParamsError, match="model.params"):
        get_model("deeplabv3_tiny_v2", head="aspp", params=path, **TINY)  # other head


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_parameter_names_tell_the_backbone(name):
    """describe_network reads a file's backbone from its key layout and unit counts (and stem)."""
    backbone = get_backbone(name)  # built, not initialized: the names and output channels
    shapes = {"backbone." + k: p.shape for k, p in backbone._collect_params_with_prefix().items()}
    assert describe_network(shapes) == "backbone " + name


def test_a_file_of_another_network_names_both_before_the_keys(tmp_path):
    """With no config beside it, a file of another backbone, head or class count says what it
    holds and what the config builds, not only which of 88 keys are missing."""
    src = get_model("deeplabv3_tiny_v2", head="aspp", num_classes=21, head_channels=8)
    arrays = {k: p.data() for k, p in src._collect_params_with_prefix().items()
              if not k.startswith("backbone.")}
    for k, p in get_backbone("resnet50_v1s")._collect_params_with_prefix().items():
        arrays["backbone." + k] = mx.nd.zeros((p.shape[0],) + (1,) * (len(p.shape) - 1))
    path = str(tmp_path / "other.params")
    mx.nd.save(path, arrays)
    with pytest.raises(ParamsError) as err:
        get_model("deeplabv3_tiny_v2", head="vortex", params=path, **TINY)
    message = str(err.value)
    assert message.startswith(
        "params file %s does not fit DeepLabV3: it holds a network with backbone "
        "resnet50_v1s, head aspp (8 channels), 21 classes; the config builds backbone tiny_v2, "
        "head vortex (8 channels), 5 classes; " % path)
    assert "missing: " in message  # the keys follow


def test_backbone_params_are_loaded(tmp_path):
    src = get_model("deeplabv3_tiny_v2", seed=7, **TINY)
    path = str(tmp_path / "backbone.params")
    src.backbone.save_parameters(path)
    dst = get_model("deeplabv3_tiny_v2", seed=8, backbone_params=path, **TINY)
    a = src.backbone.features[1].weight.data().asnumpy()
    np.testing.assert_array_equal(dst.backbone.features[1].weight.data().asnumpy(), a)


@pytest.mark.parametrize("kwargs, words", [
    (dict(name="deeplabv3_resnet42"), ["deeplabv3_resnet50_v2", "deeplabv3_resnet101_v1b"]),
    (dict(name="deeplabv3_tiny_v2", head="psp"), ["aspp", "vortex"]),
    (dict(name="deeplabv3_tiny_v2", output_stride=4), ["8, 16 or 32"]),
])
def test_bad_arguments_list_valid_values(kwargs, words):
    with pytest.raises(ValueError) as err:
        get_model(**kwargs)
    for w in words:
        assert w in str(err.value)


def test_model_names():
    assert {"deeplabv3_resnet50_v2", "deeplabv3_resnet101_v2", "deeplabv3_resnet101_v1b",
            "deeplabv3_tiny_v2"} <= set(MODELS)
