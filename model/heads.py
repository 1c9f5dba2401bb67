"""Decode heads: ASPP (DeepLabV3 §3.3) and Vortex Pooling (Xie et al. 2018).

Both are a set of parallel branches over the backbone's features, concatenated and projected
by a 1x1 conv + BN + ReLU, then classified by a 1x1 conv. The base class owns the projection and
the classifier (as mmsegmentation's BaseDecodeHead does); a head adds only its branches.
"""
from mxnet.gluon import nn

__all__ = ["DecodeHead", "ASPPHead", "VortexHead", "HEADS", "ConvBNReLU", "ImagePooling",
           "box_average", "POOL_PADDING"]


class ConvBNReLU(nn.HybridSequential):
    """Conv (no bias) -> norm -> ReLU, with in_channels given so nothing is deferred."""

    def __init__(self, in_channels, channels, kernel_size=1, dilation=1, norm_layer=nn.BatchNorm,
                 norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        pad = dilation * (kernel_size - 1) // 2
        with self.name_scope():
            self.add(nn.Conv2D(channels, kernel_size, padding=pad, dilation=dilation,
                               use_bias=False, in_channels=in_channels))
            self.add(norm_layer(in_channels=channels, **(norm_kwargs or {})))
            self.add(nn.Activation("relu"))


class ImagePooling(nn.HybridBlock):
    """Image-level features (DeepLabV3 §3.3): global average pooling, 1x1 conv + BN + ReLU,
    broadcast back to the feature map's size (bilinear upsampling of a 1x1 map is a broadcast)."""

    def __init__(self, in_channels, channels, norm_layer=nn.BatchNorm, norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.pool = nn.GlobalAvgPool2D()
            self.conv = ConvBNReLU(in_channels, channels, 1, norm_layer=norm_layer,
                                   norm_kwargs=norm_kwargs)

    def hybrid_forward(self, F, x):
        y = self.conv(self.pool(x))
        return F.broadcast_like(y, x, lhs_axes=(2, 3), rhs_axes=(2, 3))


class DecodeHead(nn.HybridBlock):
    """Parallel branches -> concat -> 1x1 projection (+BN+ReLU) -> dropout -> 1x1 classifier.

    Args:
        in_channels: channels of the backbone features.
        channels: channels of every branch and of the projection (256 in the paper).
        num_classes: classifier outputs.
        dropout: dropout rate before the classifier (the paper uses none; note that dropout masks
            depend on how a batch is split, so it breaks exact N-worker == 1-worker equality).
        norm_layer, norm_kwargs: normalisation layer class and its arguments.
    """

    def __init__(self, in_channels, channels, num_classes, dropout=0.0, norm_layer=nn.BatchNorm,
                 norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self._norm = dict(norm_layer=norm_layer, norm_kwargs=norm_kwargs)
        with self.name_scope():
            self.branches = nn.HybridSequential(prefix="branches_")
            with self.branches.name_scope():
                for branch in self.build_branches():
                    self.branches.add(branch)
            n = len(self.branches)
            self.project = ConvBNReLU(n * channels, channels, 1, **self._norm)
            self.dropout = nn.Dropout(dropout) if dropout > 0 else None
            self.classifier = nn.Conv2D(num_classes, 1, in_channels=channels)

    def build_branches(self):
        """Returns the list of branch blocks, each mapping in_channels -> channels."""
        raise NotImplementedError

    def branch_inputs(self, F, x):
        """What each branch reads: the features themselves unless a head says otherwise."""
        return [x] * len(self.branches)

    def hybrid_forward(self, F, x):
        x = F.concat(*[branch(inp) for branch, inp in zip(self.branches,
                                                          self.branch_inputs(F, x))], dim=1)
        x = self.project(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.classifier(x)


class ASPPHead(DecodeHead):
    """Atrous Spatial Pyramid Pooling (DeepLabV3 §3.3): a 1x1 conv, three 3x3 atrous convs and
    image pooling. Rates are (6, 12, 18) at output stride 16 and doubled at output stride 8."""

    def __init__(self, in_channels, channels, num_classes, rates=(6, 12, 18), **kwargs):
        self.rates = tuple(rates)
        super().__init__(in_channels, channels, num_classes, **kwargs)

    def build_branches(self):
        c_in, c = self.in_channels, self.channels
        return ([ConvBNReLU(c_in, c, 1, **self._norm)]
                + [ConvBNReLU(c_in, c, 3, dilation=r, **self._norm) for r in self.rates]
                + [ImagePooling(c_in, c, **self._norm)])


def _in_image_counts(F, x, axis, size):
    """Pixels of `x` inside each size-long window along `axis` (stride 1, centred), as a 1-D
    array: 1 + min(i, size // 2) + min(n - 1 - i, size // 2) at position i of n. Computed from
    the shape at run time, so one hybridized graph serves every input size."""
    r = size // 2
    i = F.contrib.arange_like(x, axis=axis)
    return 1 + F.minimum(i, r) + F.minimum(F.reverse(i, axis=0), r)


POOL_PADDING = ("exclude", "include")


def box_average(F, x, size, padding="exclude"):
    """Mean over each size x size window (stride 1, same output size, zero padding of size // 2).

    Args:
        padding: 'exclude' averages over the in-image part of the window (the average pooling
            of `count_include_pad=False`); 'include' divides every window's sum by size^2,
            counting the zero padding (`count_include_pad=True`, MXNet's and Gluon's
            `AvgPool2D` default, the seed network's pooling).

    Computed one axis at a time, as window averages of the explicitly zero-padded map (that is
    'include'), for 'exclude' scaled by size^2 over the window's in-image pixel count: exact,
    since both the window sum and the count factor over the two axes. The padding is an
    explicit `pad`, not the pooling's own: with a pad of half a large window (13 for 27, 27 for
    55), MKL-DNN leaves its vectorized kernel for a generic one (on the blocked layout the
    backbone hands over, its reference kernel), which made a whole training step 1.6x (output
    stride 16) to 3.5x (8) slower; a valid pooling took the vectorized kernel at every size
    measured. Size 3 (pad 1) keeps the direct pooling, also vectorized.
    benchmarks/vortex_pooling.py compares the formulations.
    """
    if padding not in POOL_PADDING:
        raise ValueError("pooling padding must be one of %s, got %r"
                         % (", ".join(POOL_PADDING), padding))
    if size <= 3:
        return F.Pooling(x, kernel=(size, size), stride=(1, 1), pad=(size // 2, size // 2),
                         pool_type="avg", count_include_pad=padding == "include")
    r = size // 2
    kw = dict(stride=(1, 1), pool_type="avg", pooling_convention="valid")
    y = F.pad(x, mode="constant", pad_width=(0, 0, 0, 0, r, r, 0, 0))
    y = F.Pooling(y, kernel=(size, 1), **kw)
    y = F.pad(y, mode="constant", pad_width=(0, 0, 0, 0, 0, 0, r, r))
    y = F.Pooling(y, kernel=(1, size), **kw)
    if padding == "include":
        return y
    counts = F.broadcast_mul(F.reshape(_in_image_counts(F, x, 2, size), (1, 1, -1, 1)),
                             F.reshape(_in_image_counts(F, x, 3, size), (1, 1, 1, -1)))
    return F.broadcast_mul(y, F.BlockGrad(float(size * size) / counts))


class VortexHead(DecodeHead):
    """Vortex Pooling (Xie et al., 2018, §3): image pooling, a 1x1 conv, and three branches of
    average pooling (sizes 3, 9, 27) each followed by a 3x3 atrous conv (rates 3, 9, 27), the
    module's parameters at output stride 16. At output stride 8 both scale by 2 (pool sizes
    rounded up to odd, so the pooled map stays centred), covering the same image extent.

    Args:
        pool_sizes: odd average-pooling sizes of the three branches.
        rates: atrous rates of their 3x3 convs.
        cascade: the paper's faster form (§3.3): the first map is pooled directly, each larger
            one is a 3x3 average, dilated by (k_next - k) / 2, of the previous pooled map, so a
            27x27 window costs 9 taps instead of 729. It equals direct pooling inside the image
            at output stride 16 but not near borders (zero padding) nor at output stride 8
            (overlapping windows), so it is a different model: train and evaluate with the same.
        pool_padding: 'exclude' (default) averages over the in-image part of each window;
            'include' counts the zero padding, as the seed network's `AvgPool2D` does (for
            weights trained that way). Near the borders of a 33x33 map a 27x27 window differs
            by up to 3.7x between the two. See box_average.
    """

    def __init__(self, in_channels, channels, num_classes, pool_sizes=(3, 9, 27),
                 rates=(3, 9, 27), cascade=False, pool_padding="exclude", **kwargs):
        if pool_padding not in POOL_PADDING:
            raise ValueError("vortex pool_padding must be one of %s, got %r"
                             % (", ".join(POOL_PADDING), pool_padding))
        self.pool_padding = pool_padding
        if len(pool_sizes) != len(rates):
            raise ValueError("vortex pool_sizes %r and rates %r must have the same length"
                             % (pool_sizes, rates))
        if any(k % 2 == 0 for k in pool_sizes) or list(pool_sizes) != sorted(pool_sizes):
            raise ValueError("vortex pool_sizes must be odd and increasing, got %r"
                             % (pool_sizes,))
        self.pool_sizes, self.rates, self.cascade = tuple(pool_sizes), tuple(rates), cascade
        super().__init__(in_channels, channels, num_classes, **kwargs)

    def build_branches(self):
        c_in, c = self.in_channels, self.channels
        return ([ImagePooling(c_in, c, **self._norm), ConvBNReLU(c_in, c, 1, **self._norm)]
                + [ConvBNReLU(c_in, c, 3, dilation=r, **self._norm) for r in self.rates])

    def branch_inputs(self, F, x):
        pooled, prev, prev_k = [], None, None
        for k in self.pool_sizes:
            if self.cascade and prev is not None:
                d = (k - prev_k) // 2
                weight = F.ones(shape=(self.in_channels, 1, 3, 3)) / 9.0
                prev = F.Convolution(prev, weight, kernel=(3, 3), dilate=(d, d), pad=(d, d),
                                     num_filter=self.in_channels, num_group=self.in_channels,
                                     no_bias=True)
            else:
                prev = box_average(F, x, k, self.pool_padding)
            prev_k = k
            pooled.append(prev)
        return [x, x] + pooled


def _odd(n):
    return n if n % 2 else n + 1


def _aspp(in_channels, channels, num_classes, output_stride, **kwargs):
    scale = 16 // output_stride if output_stride <= 16 else 1
    rates = kwargs.pop("rates", (6, 12, 18))
    return ASPPHead(in_channels, channels, num_classes, rates=[r * scale for r in rates], **kwargs)


def _vortex(in_channels, channels, num_classes, output_stride, **kwargs):
    scale = 16 // output_stride if output_stride <= 16 else 1
    pools = kwargs.pop("pool_sizes", (3, 9, 27))
    rates = kwargs.pop("rates", (3, 9, 27))
    return VortexHead(in_channels, channels, num_classes,
                      pool_sizes=[_odd(k * scale) for k in pools],
                      rates=[r * scale for r in rates], **kwargs)


# name -> builder(in_channels, channels, num_classes, output_stride, **kwargs); the rates given
# to a builder are those at output stride 16 and are scaled to the requested stride.
HEADS = {"aspp": _aspp, "vortex": _vortex}
