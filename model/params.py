"""Checked loading of `.params` files onto a Gluon block.

MXNet's `load_parameters` stops at the first missing name and reports a shape mismatch as a bare
assertion; a user loading the wrong file wants every problem at once, with the file named.
"""
import os

import mxnet as mx

from deeplab.errors import ParamsError

__all__ = ["ParamsError", "load_params"]




def _format(names, limit=8):
    names = sorted(names)
    more = "" if len(names) <= limit else " ... (%d more)" % (len(names) - limit)
    return ", ".join(names[:limit]) + more


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
        raise ParamsError("params file %s does not fit %s: %s"
                          % (path, type(block).__name__, "; ".join(problems)))
    for k, p in params.items():
        p.set_data(loaded[k].astype(p.dtype))

