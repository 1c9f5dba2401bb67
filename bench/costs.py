"""Analytic costs of a network: multiply-adds per image and parameter / gradient bytes.

Counted from the shapes one imperative forward pass sees, for any Gluon block (ours or GluonCV's),
so two networks are costed by the same rule:

- a convolution costs out_elements * (in_channels / groups) * kernel_h * kernel_w multiply-adds
  (dilation changes which inputs are read, not how many); a dense layer out_elements * in_units;
- everything else (BN, ReLU, pooling, resizing, the loss) is memory-bound and left out: a few
  percent of the arithmetic of a ResNet;
- FLOPs = 2 x multiply-adds; a training step costs about 3x the forward pass (forward, gradient
  of the input, gradient of the weights), the usual approximation (e.g. Kaplan et al. 2020, §2.1).
"""
import mxnet as mx
from mxnet.gluon import nn

from deeplab.model import walk_blocks

__all__ = ["count_costs", "TRAIN_FLOPS_PER_FORWARD"]

TRAIN_FLOPS_PER_FORWARD = 3.0


def count_costs(net, input_shape, ctx=None, fp16_gradients=False):
    """Costs of `net` on one input of `input_shape` (N, C, H, W); per image where it says so.

    Runs one imperative forward pass in training mode, not recorded (BN statistics change only
    in a recorded backward pass; a predict-mode pass would let MKL-DNN reorder the weights in
    place). Call on a block that is not hybridized (hooks do not fire inside a cached graph).
    With synchronized BN the pass communicates: every worker must call it, as for training.

    Returns a dict: forward_macs_per_image, forward_gflops_per_image, train_gflops_per_image,
    params (number of values), param_bytes, trainable_params, grad_bytes (the bytes allreduced
    per step: trainable values x 4, or x 2 with fp16 compression).
    """
    macs = [0]

    def conv_hook(block, inputs, output):
        out = output[0] if isinstance(output, (list, tuple)) else output
        w = block.weight.shape  # (out_channels, in_channels / groups, kh, kw)
        per_out = 1
        for d in w[1:]:
            per_out *= d
        macs[0] += out.size * per_out

    def dense_hook(block, inputs, output):
        macs[0] += output.size * block.weight.shape[1]

    handles = []
    for leaf in walk_blocks(net):
        if isinstance(leaf, nn.Conv2D):
            handles.append(leaf.register_forward_hook(conv_hook))
        elif isinstance(leaf, nn.Dense):
            handles.append(leaf.register_forward_hook(dense_hook))
    try:
        x = mx.nd.zeros(input_shape, ctx=ctx or mx.cpu())
        with mx.autograd.train_mode():
            net(x)
        mx.nd.waitall()
    finally:
        for h in handles:
            h.detach()
    params = net.collect_params()
    n_params = sum(_size(p.shape) for p in params.values())
    trainable = sum(_size(p.shape) for p in params.values() if p.grad_req != "null")
    per_image = macs[0] / input_shape[0]
    return {
        "forward_macs_per_image": int(per_image),
        "forward_gflops_per_image": 2.0 * per_image / 1e9,
        "train_gflops_per_image": TRAIN_FLOPS_PER_FORWARD * 2.0 * per_image / 1e9,
        "params": int(n_params),
        "param_bytes": int(4 * n_params),
        "trainable_params": int(trainable),
        "grad_bytes": int((2 if fp16_gradients else 4) * trainable),
    }


def _size(shape):
    n = 1
    for d in shape:
        n *= d
    return n
