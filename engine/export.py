"""Export of the evaluation network for deployment: an MXNet symbol and parameters, optionally
an ONNX model.

    deeplab export CONFIG --checkpoint PARAMS|RUN_DIR --out PREFIX [--onnx] [--size H W]
                   [--set KEY=VALUE ...]

Writes PREFIX-symbol.json and PREFIX-0000.params (HybridBlock.export), which load with
`mx.gluon.SymbolBlock.imports(PREFIX-symbol.json, ['data'], PREFIX-0000.params)`, with
--onnx PREFIX.onnx, and PREFIX-preprocessing.json, what the graphs expect. The network is the
one `deeplab eval` runs: plain BN with the checkpoint's running statistics, the evaluation
output stride, logits (N, num_classes, H, W) at the input's size (no softmax).

The graphs' input is preprocessed outside them, as `deeplab predict` does (PREFIX-preprocessing
.json says the same): decode the image to RGB (not OpenCV's BGR), uint8 (H, W, 3); divide by
255 to [0, 1]; per channel subtract the ImageNet mean (0.485, 0.456, 0.406) and divide by the
ImageNet std (0.229, 0.224, 0.225); transpose to (3, H, W) and add the batch axis: float32
(1, 3, H, W), NCHW. The class of a pixel is the argmax of the logits over axis 1.
"""
import os
import shutil
import tempfile

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from deeplab.checkpoint import verify_ndarrays
from deeplab.config import eval_stride, load_config
from deeplab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from deeplab.errors import UserError
from deeplab.utils import (IncompleteWrite, apply_umask, check_written, disk_errors, fsync,
                           write_json)
from deeplab.workdir import resolve_checkpoint

from . import parsers
from .build import dataset_classes, evaluation_network

__all__ = ["StaticSizeNet", "export", "preprocessing", "parse_args", "main"]

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


def export(net, prefix, size, onnx=False):
    """Writes `net`'s graph and parameters under `prefix` (and PREFIX.onnx if `onnx`).

    What HybridBlock.export writes, written here so that each file can be checked against what
    was meant: every file goes into a private staging folder beside `prefix`, is flushed to disk,
    read back and compared (the symbol file with the graph's JSON, the parameters bit for bit
    with the network's: MXNet's writer can leave a short file on a full disk without an error),
    and only once all of them passed are they renamed into place, which takes no room on the
    disk. A full disk at any moment is then one WriteError naming the file, the documented
    full-disk error (`check_written`), and neither a PREFIX-* file of this export nor the
    staging folder is left; an earlier export at `prefix` is untouched.

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
    net.hybridize()
    net(mx.nd.zeros((1, 3, h, w)))  # traced: the graph HybridBlock.export writes
    # pylint: disable=protected-access - the graph and the values HybridBlock.export writes
    sym = net._cached_graph[1]
    graph = sym.tojson().encode("utf-8")  # what Symbol.save writes (amp casts removed)
    args, aux = set(sym.list_arguments()), set(sym.list_auxiliary_states())
    # arg:NAME / aux:NAME -> the parameter's value, as HybridBlock.export names them
    params = {("arg:%s" if p.name in args else "aux:%s") % p.name: p._reduce()
              for p in net.collect_params().values() if p.name in args | aux}
    staging = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(prefix))
    tmp = os.path.join(staging, "net")
    try:
        staged = [
            _stage(tmp + "-symbol.json", prefix + "-symbol.json",
                   lambda path: _write_bytes(path, graph),
                   lambda path: _same_bytes(path, graph)),
            _stage(tmp + "-0000.params", prefix + "-0000.params",
                   lambda path: mx.nd.save(path, params),
                   lambda path: verify_ndarrays(path, params))]
        if onnx:
            staged.append(_export_onnx(net, tmp, prefix, (h, w)))
        for src, dst in staged:
            os.replace(src, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [dst for _, dst in staged]


def _stage(src, dst, write, check):
    """Writes the staged file `src` with `write(src)`, flushes and checks it (`check(src)`
    raises IncompleteWrite for a file that is not what was meant); returns (src, dst). A full
    disk, reported by the writer or found by the check, is one WriteError naming `dst`."""
    with disk_errors(dst):
        write(src)
        fsync(src)
        check_written(src, check)
    return src, dst


def _write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _same_bytes(path, data):
    with open(path, "rb") as f:
        if f.read() != data:
            raise IncompleteWrite("%s differs from the graph written (%d bytes on disk, %d "
                                  "meant)" % (path, os.path.getsize(path), len(data)))


def _export_onnx(net, tmp, prefix, size):
    try:
        import onnx  # mx.onnx imports it lazily, with a less helpful message
        from google.protobuf.message import DecodeError
    except ImportError:
        raise UserError("--onnx needs the onnx package (pip install -r requirements/test.txt)") \
            from None
    static = StaticSizeNet(net, *size)
    sym = static(mx.sym.var(INPUT_NAME))
    params = {p.name: p.data() for p in static.collect_params().values()}

    def write(path):
        mx.onnx.export_model(sym, params, in_shapes=[(1, 3) + tuple(size)],
                             in_types=[np.float32], onnx_file_path=path)

    def check(path):  # written by protobuf through Python, whose writes report a full disk
        try:
            onnx.load(path)
        except DecodeError as err:  # a cut-short file does not parse
            raise IncompleteWrite("%s does not parse after writing: %s" % (path, err)) from None

    return _stage(tmp + ".onnx", prefix + ".onnx", write, check)


def preprocessing(cfg, size, class_names=None):
    """What the exported graphs expect and return (PREFIX-preprocessing.json): the steps from
    a decoded image to the input array, which are EvalTransform's, and how to read the output.

    Args:
        size: (height, width) the graphs were traced at (the ONNX model's only input size).
        class_names: the dataset's, if it could be read.
    """
    return {
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32",
                  "shape": ["N", 3, "H", "W"], "channel_order": "RGB",
                  "onnx_shape": [1, 3] + list(size)},
        "steps": [
            "decode the image to RGB uint8 (H, W, 3) (not BGR)",
            "divide by 255: float32 in [0, 1]",
            "per channel c: x[..., c] = (x[..., c] - mean[c]) / std[c]",
            "transpose to (3, H, W) and add the batch axis: (1, 3, H, W)",
        ],
        "scale": 1 / 255.0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "output": {"layout": "NCHW", "shape": ["N", cfg["model"]["num_classes"], "H", "W"],
                   "meaning": "logits (no softmax) at the input's size; the class of a pixel "
                              "is the argmax over axis 1"},
        "num_classes": cfg["model"]["num_classes"],
        "class_names": list(class_names) if class_names else None,
        "output_stride": eval_stride(cfg),
    }


def _class_names(cfg):
    """The dataset's class names, read from the config alone (build.dataset_classes, as predict
    names its outputs): an export is often made where the data is not."""
    return dataset_classes(cfg)[0] or None


def parse_args(argv=None):
    """The options (deeplab.parsers.export: parsed without importing MXNet)."""
    return parsers.export(argv)


def main(args):
    """Builds the evaluation network from the checkpoint and exports it; returns the files."""
    cfg = load_config(args.config, args.overrides)
    apply_umask(cfg)  # the exported files, as a run's
    prefix = _check_prefix(args.out)
    checkpoint = resolve_checkpoint(args.checkpoint, cfg)
    size = tuple(args.size) if args.size else (cfg["data"]["crop_size"],) * 2
    # The files do not depend on the device: build on the CPU, as a single process (no
    # dist.init: exporting is not a distributed job).
    net = evaluation_network(cfg, mx.cpu(), output_stride=eval_stride(cfg), params=checkpoint)
    files = export(net, prefix, size, onnx=args.onnx)
    write_json(prefix + "-preprocessing.json", preprocessing(cfg, size, _class_names(cfg)))
    files.insert(2, prefix + "-preprocessing.json")  # after the symbol's two files
    print("deeplab export: wrote %s (input %dx%d, output stride %d)"
          % (", ".join(files), size[0], size[1], eval_stride(cfg)))
    return files
