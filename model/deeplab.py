"""DeepLabV3 ("Rethinking Atrous Convolution for Semantic Image Segmentation", Chen et al. 2017)
with an ASPP or Vortex Pooling head, and `get_model`, the one way to build it."""
import mxnet as mx
from mxnet.gluon import nn

from .backbone import BACKBONES, CLASSIFIER_KEYS, get_backbone
from .heads import HEADS, POOL_PADDING
from .params import load_params

__all__ = ["DeepLabV3", "get_model", "MODELS"]

# Model names are "deeplabv3_" + a backbone name; the head is a keyword argument.
MODELS = sorted("deeplabv3_" + b for b in BACKBONES)


class DeepLabV3(nn.HybridBlock):
    """Backbone -> decode head -> logits bilinearly upsampled to the input's height and width.

    Any input size works (odd, non-square): the upsampling takes its size from the input, so the
    block hybridizes into one graph for all sizes.
    """

    def __init__(self, backbone, head, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.backbone = backbone
            self.head = head

    @property
    def output_stride(self):
        return self.backbone.output_stride

    @property
    def num_classes(self):
        return self.head.num_classes

    def hybrid_forward(self, F, x):
        logits = self.head(self.backbone(x))
        # align_corners=True as in the reference TensorFlow implementation.
        return F.contrib.BilinearResize2D(logits, like=x, mode="like", align_corners=True)


def get_model(name, head="aspp", output_stride=16, num_classes=21, multi_grid=(1, 2, 4),
              head_channels=256, dropout=0.0, vortex_cascade=False,
              vortex_pool_padding="exclude", norm_layer=nn.BatchNorm, norm_kwargs=None,
              backbone_params=None, params=None, ctx=None, seed=None):
    """Builds and fully initializes a DeepLabV3 model.

    Every parameter has its shape after this returns (a dummy forward resolves the few layers
    GluonCV leaves deferred), so the parameters can be broadcast or loaded at once.

    Args:
        name: one of MODELS, e.g. 'deeplabv3_resnet50_v2', 'deeplabv3_resnet101_v1b'.
        head: 'aspp' or 'vortex'.
        output_stride: 16 or 8 (32: no atrous convolution).
        num_classes: classifier outputs (21 for PASCAL VOC).
        multi_grid: unit rates of the last stage's blocks (§3.2).
        head_channels: channels of the head's branches (256 in the paper).
        dropout: dropout before the classifier (0: none, as in the paper).
        vortex_cascade: the Vortex head's cascaded pooling (see VortexHead).
        vortex_pool_padding: the Vortex head's average pooling near borders: 'exclude' the
            zero padding from each window's mean, or 'include' it (the seed network's
            convention; see VortexHead). The ASPP head has no such pooling and ignores it.
        norm_layer, norm_kwargs: normalisation layer and its arguments, e.g. a synchronized BN.
        backbone_params: a classification `.params` file for the backbone (e.g. Gluon model zoo
            `resnet50_v2-ecdde353.params`, GluonCV `resnet50_v1b-0ecdba34.params`).
        params: a `.params` file for the whole model (e.g. phase 1's final parameters).
        ctx: context or list of contexts (default: CPU).
        seed: if given, seeds MXNet's RNG before random initialization.
    """
    if not name.startswith("deeplabv3_") or name[len("deeplabv3_"):] not in BACKBONES:
        raise ValueError("unknown model %r; valid models: %s" % (name, ", ".join(MODELS)))
    if head not in HEADS:
        raise ValueError("unknown head %r; valid heads: %s" % (head, ", ".join(sorted(HEADS))))
    if output_stride not in (8, 16, 32):
        raise ValueError("output_stride must be 8, 16 or 32; got %r" % (output_stride,))
    if vortex_cascade and head != "vortex":
        raise ValueError("vortex_cascade applies to head 'vortex', not %r" % (head,))
    norm = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs)
    backbone = get_backbone(name[len("deeplabv3_"):], output_stride, multi_grid, **norm)
    if vortex_pool_padding not in POOL_PADDING:
        raise ValueError("vortex_pool_padding must be one of %s, got %r"
                         % (", ".join(POOL_PADDING), vortex_pool_padding))
    extra = {}
    if head == "vortex":
        extra = {"cascade": vortex_cascade, "pool_padding": vortex_pool_padding}
    decode = HEADS[head](backbone.out_channels, head_channels, num_classes, output_stride,
                         dropout=dropout, **extra, **norm)
    net = DeepLabV3(backbone, decode)

    ctx = ctx or mx.cpu()
    if seed is not None:
        mx.random.seed(seed)
    # He initialization for convolutions; BN layers keep their own (gamma 1, beta 0).
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2), ctx=ctx)
    # Training mode, not predict mode: an inference pass lets MKL-DNN (MXNet's CPU backend)
    # reorder convolution weights into its blocked layout in place, which code reading the raw
    # arrays (e.g. Horovod's broadcast) cannot handle. Nothing is recorded, so BN statistics
    # (updated in MXNet's backward pass) do not change. On every device: a norm layer that
    # synchronizes the devices of a process (MXNet's contrib SyncBatchNorm) waits for all.
    with mx.autograd.train_mode():
        for c in ctx if isinstance(ctx, (list, tuple)) else [ctx]:
            net(mx.nd.zeros((1, 3, 64, 64), ctx=c))
    if params:  # replaces every parameter: no need to read the backbone file
        load_params(net, params)
    elif backbone_params:
        load_params(backbone, backbone_params, ignore_extra=CLASSIFIER_KEYS)
    return net
