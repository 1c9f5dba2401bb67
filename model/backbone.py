"""ResNet backbones with atrous convolution for a chosen output stride (DeepLabV3 §3.1-3.2).

The networks themselves are GluonCV's: pre-activation ResNet v2 (`gluoncv.model_zoo.resnet`,
the same structure and parameter names as Gluon's model zoo `resnet50_v2`, whose weights the
seed project used) and the ResNetV1b family (`gluoncv.model_zoo.resnetv1b`, v1b/v1c/v1d). What
they lack is written here: GluonCV's ResNetV2 has no dilation at all, and ResNetV1b only offers
`dilated=True` (output stride 8, no multi-grid, first block of each stage undilated). So we build
the stock network and turn the strided convolutions of the last stages into atrous ones in place
(`make_atrous`), the way torchvision's `replace_stride_with_dilation` does at construction.
"""
from mxnet.gluon import nn
from gluoncv.model_zoo import resnet as gcv_resnet
from gluoncv.model_zoo import resnetv1b as gcv_resnetv1b

__all__ = ["Backbone", "BACKBONES", "CLASSIFIER_KEYS", "get_backbone", "make_atrous"]

# Names of the ImageNet classifier in backbone params files (structured and legacy), which a
# Backbone leaves out.
CLASSIFIER_KEYS = ("output.", "fc.", "dense0_")


class Backbone(nn.HybridBlock):
    """Runs a ResNet's stem and four stages and returns the last stage's feature map.

    The children keep the names they have in the GluonCV/model-zoo network, so a classification
    params file (e.g. `resnet50_v2-ecdde353.params`) loads onto this block directly; only the
    classifier (`output.*` / `fc.*`) is left out.

    Args:
        children: (name, block) pairs in execution order.
        out_channels: channels of the returned feature map.
        output_stride: input size / feature size.
        legacy_prefix: the wrapped network's name prefix, used to read legacy params files whose
            keys are prefix-stripped parameter names instead of structured names.
    """

    def __init__(self, children, out_channels, output_stride, legacy_prefix, **kwargs):
        super().__init__(**kwargs)
        for name, block in children:
            setattr(self, name, block)  # registers the child under its model-zoo name
        self.out_channels = out_channels
        self.output_stride = output_stride
        self.legacy_prefix = legacy_prefix

    def hybrid_forward(self, F, x):
        for block in self._children.values():
            x = block(x)
        return x


def walk_blocks(block):
    """`block` and every block below it, parents before children."""
    yield block
    for child in block._children.values():
        yield from walk_blocks(child)


def make_atrous(stages, output_stride, multi_grid=(1, 2, 4)):
    """Replaces strides by dilation in the last stages so the features have `output_stride`.

    DeepLabV3 §3.1: once the network reaches the target output stride, later stages keep their
    resolution and dilate their 3x3 convolutions by the stride they gave up. §3.2 (Multi-Grid):
    the blocks of the last stage use rate * multi_grid[i]. As in the paper ("rates = 2 * (1, 2, 4)
    in block4"), every block of a dilated stage gets its stage rate, the first included.

    Args:
        stages: the four residual stages; stage k (k >= 1) halves the resolution in its first block.
        output_stride: 8, 16 or 32.
        multi_grid: unit rates for the blocks of the last stage (cycled if it has more blocks).
    """
    if output_stride not in (8, 16, 32):
        raise ValueError("output_stride must be one of 8, 16, 32; got %r" % (output_stride,))
    # Stride before the stages is 4 (stem conv + max pool); stages 2..4 each halve it.
    stride, rate = 4, 1
    for k, stage in enumerate(stages):
        blocks = list(stage._children.values())
        if k > 0:
            if stride * 2 > output_stride:
                rate *= 2
                _remove_stride(blocks[0])
            else:
                stride *= 2
        last = k == len(stages) - 1
        for i, block in enumerate(blocks):
            unit = multi_grid[i % len(multi_grid)] if last else 1
            _set_rate(block, rate * unit)


def _remove_stride(block):
    for b in walk_blocks(block):
        if isinstance(b, nn.Conv2D) and b._kwargs["stride"] != (1, 1):
            b._kwargs["stride"] = (1, 1)
        elif isinstance(b, (nn.AvgPool2D, nn.MaxPool2D)) and b._kwargs["stride"] != (1, 1):
            # ResNet-D's average-pooling shortcut: a stride-1 1x1 pool is the identity.
            b._kwargs.update(stride=(1, 1), kernel=(1, 1))


def _set_rate(block, rate):
    for b in walk_blocks(block):
        if isinstance(b, nn.Conv2D) and b._kwargs["kernel"] != (1, 1):
            kh, kw = b._kwargs["kernel"]
            b._kwargs["dilate"] = (rate, rate)
            b._kwargs["pad"] = (rate * (kh - 1) // 2, rate * (kw - 1) // 2)


def _resnet_v2(num_layers=None, layers=None, channels=None, basic=False):
    def build(norm_layer, norm_kwargs):
        if num_layers is not None:
            kind, lay, ch = gcv_resnet.resnet_spec[num_layers]
            block = gcv_resnet.BottleneckV2 if kind == "bottle_neck" else gcv_resnet.BasicBlockV2
        else:
            lay, ch = layers, channels
            block = gcv_resnet.BasicBlockV2 if basic else gcv_resnet.BottleneckV2
        net = gcv_resnet.ResNetV2(block, lay, ch, norm_layer=norm_layer, norm_kwargs=norm_kwargs)
        # features: [data bn, conv0, bn0, relu, pool, stage1..4, post bn, relu, gap, flatten]
        feats = net.features
        body = nn.HybridSequential(prefix="")
        n = len(feats)
        for i in range(n - 2):  # drop global pooling + flatten; keep the post-activation BN+ReLU
            body.add(feats[i])
        return [("features", body)], [feats[i] for i in range(5, 9)], ch[-1], net.prefix
    return build


def _resnet_v1b(num_layers, deep_stem=False, avg_down=False, stem_width=32):
    def build(norm_layer, norm_kwargs):
        ctor = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[num_layers]
        net = gcv_resnetv1b.ResNetV1b(gcv_resnetv1b.BottleneckV1b, ctor, norm_layer=norm_layer,
                                      norm_kwargs=norm_kwargs, deep_stem=deep_stem,
                                      avg_down=avg_down, stem_width=stem_width)
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        children = [(n, getattr(net, n)) for n in names]
        return children, [net.layer1, net.layer2, net.layer3, net.layer4], 2048, net.prefix
    return build


# name -> builder(norm_layer, norm_kwargs) -> (children, stages, out_channels, prefix) of the
# network at output stride 32.
BACKBONES = {
    "resnet50_v2": _resnet_v2(50),
    "resnet101_v2": _resnet_v2(101),
    "resnet152_v2": _resnet_v2(152),
    "resnet50_v1b": _resnet_v1b(50),
    "resnet101_v1b": _resnet_v1b(101),
    "resnet152_v1b": _resnet_v1b(152),
    "resnet50_v1c": _resnet_v1b(50, deep_stem=True),
    "resnet101_v1c": _resnet_v1b(101, deep_stem=True),
    "resnet50_v1d": _resnet_v1b(50, deep_stem=True, avg_down=True),
    "resnet101_v1d": _resnet_v1b(101, deep_stem=True, avg_down=True),
    # GluonCV's segmentation backbones (deep stem 64 wide): what its own DeepLabV3 builds.
    "resnet50_v1s": _resnet_v1b(50, deep_stem=True, stem_width=64),
    "resnet101_v1s": _resnet_v1b(101, deep_stem=True, stem_width=64),
    # A few thousand parameters: for tests and the synthetic demo, not for real data.
    "tiny_v2": _resnet_v2(layers=[1, 1, 1, 1], channels=[16, 16, 24, 32, 48], basic=True),
}


def get_backbone(name, output_stride=32, multi_grid=(1, 2, 4), norm_layer=nn.BatchNorm,
                 norm_kwargs=None):
    """Builds backbone `name` (a key of BACKBONES) dilated to `output_stride`."""
    if name not in BACKBONES:
        raise ValueError("unknown backbone %r; valid backbones: %s"
                         % (name, ", ".join(sorted(BACKBONES))))
    children, stages, out_channels, prefix = BACKBONES[name](norm_layer, norm_kwargs)
    make_atrous(stages, output_stride, multi_grid)
    return Backbone(children, out_channels, output_stride, prefix)
