"""Export of the evaluation network for deployment: an MXNet symbol and parameters, optionally
an ONNX model.

    deeplab export CONFIG --checkpoint PARAMS --out PREFIX [--onnx] [--size H W]
                   [--set KEY=VALUE ...]

Writes PREFIX-symbol.json and PREFIX-0000.params (HybridBlock.export), which load with
`mx.gluon.SymbolBlock.imports(PREFIX-symbol.json, ['data'], PREFIX-0000.params)`, and with
--onnx PREFIX.onnx. The network is the one `deeplab eval` runs: plain BN with the checkpoint's
running statistics, the evaluation output stride, logits (N, num_classes, H, W) at the input's
size (no softmax).
"""
import argparse
import os

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from deeplab.config import add_set_argument, eval_stride, load_config
from deeplab.errors import UserError
from deeplab.utils import positive_int

from .build import evaluation_network

__all__ = ["StaticSizeNet", "export", "parse_args", "main"]

# The single input of the exported graphs (HybridBlock.export names it so).
INPUT_NAME = "data"


class StaticSizeNet(nn.HybridBlock):
    """A DeepLabV3 network whose final upsampling goes to a fixed (height, width).

    The network itself upsamples to the size of its input (BilinearResize2D mode 'like'),
    which MXNet's ONNX converter does not translate; for an input of exactly (height, width)
    both compute the same logits. Shares the parameters (and their names) of `net`.
    """

    def __init__(self, net, height, width):
        super().__init__(prefix="")
        self.backbone, self.head = net.backbone, net.head
        self.height, self.width = height, width

    def hybrid_forward(self, F, x):
        logits = self.head(self.backbone(x))
        # align_corners=True, as DeepLabV3.hybrid_forward.
        return F.contrib.BilinearResize2D(logits, height=self.height, width=self.width,
                                          align_corners=True)


def _check_prefix(prefix):
    """The absolute output prefix, or UserError for a folder or an unusable location."""
    if not prefix or prefix.endswith(("/", os.sep)) or os.path.isdir(prefix):
        raise UserError("--out %s: expected a file name prefix such as exported/deeplab "
                        "(files PREFIX-symbol.json, PREFIX-0000.params), not a folder" % prefix)
    prefix = os.path.abspath(prefix)
    parent = os.path.dirname(prefix)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError("--out %s: %s is a file, not a folder" % (prefix, parent))
    return prefix


def _replace_into(tmp_prefix, prefix, suffixes):
    """Renames tmp_prefix+suffix onto prefix+suffix for each suffix, so that readers never see
    a partly written file."""
    for suffix in suffixes:
        os.replace(tmp_prefix + suffix, prefix + suffix)


def export(net, prefix, size, onnx=False):
    """Writes `net`'s graph and parameters under `prefix` (and PREFIX.onnx if `onnx`).

    Args:
        net: the evaluation network (plain BN), initialized on the CPU.
        prefix: output path prefix (absolute).
        size: (height, width) of the input the graphs are traced at; the ONNX model accepts
            only inputs of shape (1, 3, height, width).
        onnx: also write PREFIX.onnx (needs the `onnx` package).
    Returns:
        The list of files written.
    """
    h, w = size
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    tmp = "%s.tmp-%d" % (prefix, os.getpid())
    x = mx.nd.zeros((1, 3, h, w))
    written = []
    try:
        net.hybridize()
        net(x)  # HybridBlock.export needs a traced graph
        net.export(tmp, epoch=0)
        suffixes = ["-symbol.json", "-0000.params"]
        _replace_into(tmp, prefix, suffixes)
        written += [prefix + s for s in suffixes]
        if onnx:
            written.append(_export_onnx(net, tmp, prefix, (h, w)))
    finally:
        for suffix in ("-symbol.json", "-0000.params", ".onnx"):
            if os.path.exists(tmp + suffix):
                os.remove(tmp + suffix)
    return written


def _export_onnx(net, tmp, prefix, size):
    try:
        import onnx  # noqa: F401 - mx.onnx imports it lazily, with a less helpful message
    except ImportError:
        raise UserError("--onnx needs the onnx package (pip install -r requirements/test.txt)") \
            from None
    static = StaticSizeNet(net, *size)
    sym = static(mx.sym.var(INPUT_NAME))
    params = {p.name: p.data() for p in static.collect_params().values()}
    mx.onnx.export_model(sym, params, in_shapes=[(1, 3) + tuple(size)],
                         in_types=[np.float32], onnx_file_path=tmp + ".onnx")
    os.replace(tmp + ".onnx", prefix + ".onnx")
    return prefix + ".onnx"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="deeplab export", description=__doc__.split("\n\n")[0],
        epilog="PREFIX-symbol.json takes inputs of any size, like the Gluon network. ONNX needs "
               "static shapes: PREFIX.onnx takes exactly (1, 3, H, W) with H W from --size "
               "(default: the config's data.crop_size); resize or pad images to it.")
    p.add_argument("config", help="YAML config (the model and eval sections are used)")
    p.add_argument("--checkpoint", required=True,
                   help="a .params file: final.params or checkpoints/iter_*.params")
    p.add_argument("--out", required=True, metavar="PREFIX",
                   help="output prefix: writes PREFIX-symbol.json, PREFIX-0000.params "
                        "(and PREFIX.onnx)")
    p.add_argument("--onnx", action="store_true",
                   help="also write PREFIX.onnx (ONNX opset of mx.onnx; static input shape)")
    p.add_argument("--size", nargs=2, type=positive_int, metavar=("H", "W"), default=None,
                   help="input height and width the graphs are traced at and the fixed input "
                        "size of the ONNX model (default: data.crop_size square)")
    add_set_argument(p, example="eval.output_stride=8")
    return p.parse_args(argv)


def main(args):
    """Builds the evaluation network from the checkpoint and exports it; returns the files."""
    cfg = load_config(args.config, args.overrides)
    prefix = _check_prefix(args.out)
    size = tuple(args.size) if args.size else (cfg["data"]["crop_size"],) * 2
    # The files do not depend on the device: build on the CPU, as a single process (no
    # dist.init: exporting is not a distributed job).
    net = evaluation_network(cfg, mx.cpu(), output_stride=eval_stride(cfg),
                             params=args.checkpoint)
    files = export(net, prefix, size, onnx=args.onnx)
    print("deeplab export: wrote %s (input %dx%d, output stride %d)"
          % (", ".join(files), size[0], size[1], eval_stride(cfg)))
    return files
