"""Checked loading of `.params` files onto a Gluon block.

MXNet's `load_parameters` stops at the first missing name and reports a shape mismatch as a bare
assertion; a user loading the wrong file wants every problem at once, with the file named.
"""
import os

import mxnet as mx

from deeplab.errors import ParamsError

__all__ = ["ParamsError", "load_params", "describe_network"]

# Residual units per stage -> depth, and the key layout -> the BACKBONES family.
_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
_TINY_UNITS = (1, 1, 1, 1)


def _backbone(shapes):
    """The BACKBONES name whose key layout and unit counts `shapes` ({name: shape} of a whole
    DeepLabV3's parameters) have, else a description by unit counts, else None."""
    units, layout = {}, None
    for k in shapes:
        parts = k.split(".")
        if len(parts) < 4 or parts[0] != "backbone":
            continue
        if parts[1] == "features" and parts[2] in ("5", "6", "7", "8") and parts[3].isdigit():
            layout, stage, unit = "v2", int(parts[2]) - 5, parts[3]  # model-zoo ResNetV2
        elif parts[1] in ("layer1", "layer2", "layer3", "layer4") and parts[2].isdigit():
            layout, stage, unit = "v1", int(parts[1][-1]) - 1, parts[2]  # GluonCV ResNetV1b
        else:
            continue
        units.setdefault(stage, set()).add(unit)
    if not units:
        return None
    counts = tuple(len(units.get(i, ())) for i in range(4))
    if layout == "v2" and counts == _TINY_UNITS:
        return "tiny_v2"
    depth = _DEPTHS.get(counts)
    if depth is None:
        return "a ResNet %s with %s residual units per stage" % (
            layout, "/".join(map(str, counts)))
    if layout == "v2":
        return depth + "_v2"
    stem = shapes.get("backbone.conv1.0.weight")
    if stem is None:
        return depth + "_v1b"
    if stem[0] == 64:
        return depth + "_v1s"
    return depth + ("_v1d" if "backbone.layer2.0.downsample.1.weight" in shapes else "_v1c")


def describe_network(shapes):
    """What a DeepLabV3's parameters ({name: shape}) say of its network: backbone, head kind
    and channels, number of classes, e.g. 'backbone resnet101_v2, head aspp (256 channels),
    21 classes'; None if they are not a DeepLabV3's. Read from the names and shapes only: the
    image-pooling branch comes last in ASPP and first in Vortex Pooling, the classes are the
    output channels of the head's last convolution."""
    parts = []
    backbone = _backbone(shapes)
    if backbone:
        parts.append("backbone " + backbone)
    branches = {int(k.split(".")[2]) for k in shapes
                if k.startswith("head.branches.") and k.split(".")[2].isdigit()}
    pooling = {int(k.split(".")[2]) for k in shapes
               if k.startswith("head.branches.") and k.split(".")[3:4] == ["conv"]}
    head = None
    if len(pooling) == 1 and len(branches) > 1:  # ImagePooling's keys: branches.N.conv.*
        head = {0: "vortex", max(branches): "aspp"}.get(pooling.pop())
    project = shapes.get("head.project.0.weight")
    if head or project:
        parts.append("head %s%s" % (head or "of unknown kind",
                                    " (%d channels)" % project[0] if project else ""))
    convs = [k for k in shapes if k.startswith("head.") and k.endswith(".weight")
             and len(shapes[k]) == 4]
    last = "head.classifier.weight" if "head.classifier.weight" in shapes else \
        (convs[-1] if convs else None)
    if last:
        parts.append("%d classes" % shapes[last][0])
    return ", ".join(parts) or None


def _format(names, limit=8):
    names = sorted(names)
    more = "" if len(names) <= limit else " ... (%d more)" % (len(names) - limit)
    return ", ".join(names[:limit]) + more


def _networks(loaded, params):
    """'it holds NETWORK, the config builds NETWORK; ' when both are DeepLabV3s that differ (a
    file of another network, its config not beside it), else ''."""
    held = describe_network({k: v.shape for k, v in loaded.items()})
    built = describe_network({k: p.shape for k, p in params.items()})
    if not held or not built or held == built:
        return ""
    return "it holds a network with %s; the config builds %s; " % (held, built)


def load_params(block, path, ignore_extra=()):
    """Loads `path` onto `block`'s already initialized parameters, or raises ParamsError.

    Accepts both structured names (`features.5.0.conv1.weight`, as written by
    `save_parameters`) and the legacy prefix-stripped names of older model-zoo files
    (`stage1_conv0_weight`), which are matched against `block.legacy_prefix` if the block has one.

    Args:
        block: an initialized HybridBlock (no deferred shapes).
        path: the `.params` file.
        ignore_extra: name prefixes that may be in the file but not in the block (e.g. the
            ImageNet classifier `output.` of a backbone file).
    """
    if not os.path.isfile(path):
        raise ParamsError("params file %s does not exist" % path)
    try:
        loaded = mx.nd.load(path)
    except mx.base.MXNetError as err:
        raise ParamsError("params file %s is not an MXNet .params file: %s"
                          % (path, str(err).splitlines()[0])) from None
    if not isinstance(loaded, dict):
        raise ParamsError("params file %s holds a list of arrays, not named parameters" % path)
    params = block._collect_params_with_prefix()
    if loaded and not any("." in k for k in loaded):
        prefix = getattr(block, "legacy_prefix", block.prefix)
        params = {p.name[len(prefix):]: p for p in block.collect_params().values()
                  if p.name.startswith(prefix)}
    missing = [k for k in params if k not in loaded]
    extra = [k for k in loaded if k not in params and not k.startswith(tuple(ignore_extra))]
    mismatched = ["%s (file %s, network %s)" % (k, loaded[k].shape, p.shape)
                  for k, p in params.items() if k in loaded and loaded[k].shape != p.shape]
    problems = []
    if missing:
        problems.append("%d missing: %s" % (len(missing), _format(missing)))
    if mismatched:
        problems.append("%d with another shape: %s" % (len(mismatched), _format(mismatched)))
    if extra:
        problems.append("%d not in the network: %s" % (len(extra), _format(extra)))
    if problems:
        raise ParamsError("params file %s does not fit %s: %s%s"
                          % (path, type(block).__name__, _networks(loaded, params),
                             "; ".join(problems)))
    for k, p in params.items():
        p.set_data(loaded[k].astype(p.dtype))

