"""Training configuration: a fixed schema of keys with types, ranges, defaults and meanings, YAML
files that set some of them (optionally on top of a `_base_` file), and `key=value` overrides
from the command line (`--set`).

Plain nested dicts, no registry: every key a recipe may set is listed in SCHEMA below, so a typo
fails with the list of valid keys instead of being silently ignored. docs/configuration.md is
generated from SCHEMA (scripts/config_docs.py).
"""
import collections
import copy
import os
import re

import yaml

from deeplab.errors import ConfigError

__all__ = ["SCHEMA", "Key", "ConfigError", "load_config", "parse_override", "dump_config",
           "add_set_argument", "eval_stride", "flat_items"]


class Key(collections.namedtuple("Key", "tag default doc lo hi lo_open hi_open")):
    """One config key: a type tag, its default, what it means, and an optional numeric range.

    Type tags: "int", "float", "bool", "str", "path" (str or null), "floats" / "ints" / "strs"
    (non-empty lists), "colours" (a non-empty list of [r, g, b] integers), "octal" (a permission
    mask, kept as a string such as '027'), "choice:a|b" (one of the listed values), "?int" /
    "?float" / "?strs" / "?colours" (the type or null).
    The range [lo, hi] applies to numbers and to each item of a list; lo_open / hi_open exclude
    the bound.
    """


def K(tag, default, doc, lo=None, hi=None, lo_open=False, hi_open=False):
    return Key(tag, default, doc, lo, hi, lo_open, hi_open)


# Horovod's cycle for CPU workers without synchronized BN (dist.horovod_cycle_time: null);
# measured with benchmarks/run_all.py's scaling runs (docs/distributed.md).
CPU_CYCLE_TIME_MS = 25.0

SCHEMA = {
    "model": {
        "name": K("str", "deeplabv3_resnet50_v2",
                  "network: deeplabv3_<backbone>, e.g. deeplabv3_resnet50_v2, "
                  "deeplabv3_resnet101_v1s, deeplabv3_tiny_v2 (tests)"),
        "head": K("choice:aspp|vortex", "aspp",
                  "decoder head: ASPP (DeepLabV3 §3.3) or Vortex Pooling"),
        "output_stride": K("choice:8|16|32", 16,
                           "input size / feature size; 16 and 8 are the paper's two phases"),
        "num_classes": K("int", 21, "classes including background (folder dataset: taken from "
                         "data.classes)", lo=2, hi=254),
        "multi_grid": K("ints", [1, 2, 4], "unit rates of the last ResNet block (§3.2)", lo=1),
        "head_channels": K("int", 256, "channels of each head branch", lo=1),
        "dropout": K("float", 0.0, "dropout before the classifier", lo=0, hi=1, hi_open=True),
        "vortex_cascade": K("bool", False,
                            "Vortex Pooling: cascade the poolings (cheaper, same receptive "
                            "fields)"),
        "vortex_pool_padding": K("choice:exclude|include", "exclude",
                                 "Vortex Pooling's average pooling near the borders: exclude "
                                 "the zero padding from each window's mean, or include it (the "
                                 "seed network's AvgPool2D, for weights trained that way); "
                                 "docs/model.md"),
        "bn_momentum": K("float", 0.9,
                         "BN running statistics: new = momentum * old + (1 - momentum) * batch "
                         "(MXNet's default; the paper's TensorFlow decay is 0.9997)",
                         lo=0, hi=1, hi_open=True),
        "backbone_params": K("path", None,
                             "ImageNet weights of the backbone: a .params file, or zoo:NAME "
                             "(e.g. zoo:resnet50_v2, fetched into MXNet's model cache: deeplab "
                             "fetch backbone); null: trains from random initialisation"),
        "params": K("path", None, "whole-model weights to start from (e.g. phase 1's result)"),
    },
    "data": {
        "name": K("choice:voc|cityscapes|folder|synthetic", "voc",
                  "dataset: VOC 2012 + SBD, Cityscapes (fine annotations, 19 classes), your own "
                  "images and masks in two folders (data.folder, data.classes), or the built-in "
                  "synthetic shapes"),
        "root": K("path", None, "dataset folder: voc: VOCdevkit/VOC2012 and SBD below it; "
                  "cityscapes: leftImg8bit/ and gtFine/ below it (deeplab fetch cityscapes); "
                  "folder: data.folder.img_dir and ann_dir below it"),
        "train_split": K("str", "trainaug", "training split: voc: train or trainaug; "
                         "cityscapes: train; folder: a sub-folder of img_dir and ann_dir, or a "
                         "list file ending in .txt (relative to data.root, one name per line)"),
        "val_split": K("str", "val", "validation split (as data.train_split; voc and "
                       "cityscapes: val)"),
        "classes": K("?strs", None, "folder: the class names, index 0 first (mask value i is "
                     "class i, 255 ignored); model.num_classes is taken from their number"),
        "palette": K("?colours", None, "folder: one [r, g, b] per class for the predicted "
                     "masks and overlays (null: VOC's colours)", lo=0, hi=255),
        "folder": {
            "img_dir": K("str", "images", "folder: the images' folder, relative to data.root"),
            "ann_dir": K("str", "masks", "folder: the masks' folder, relative to data.root "
                         "(palette or greyscale PNGs of class indices)"),
            "img_suffix": K("str", ".jpg", "folder: what image file names end with"),
            "seg_map_suffix": K("str", ".png", "folder: what a mask's file name ends with "
                                "(the image's name with img_suffix replaced)"),
        },
        "crop_size": K("int", 513, "training crop side in pixels", lo=8),
        "scale_range": K("floats", [0.5, 2.0], "random scaling range [low, high]", lo=0,
                         lo_open=True),
        "num_workers": K("int", 2, "loader processes per worker (0: decode in the worker)",
                         lo=0),
        "synthetic": {
            "train_size": K("int", 64, "synthetic training images", lo=1),
            "val_size": K("int", 16, "synthetic validation images", lo=1),
            "image_size": K("ints", [48, 96], "synthetic image size [height, width]", lo=8),
        },
    },
    "train": {
        "iterations": K("int", 30000, "training steps", lo=1),
        "batch_size": K("int", 16, "global batch (all workers together)", lo=1),
        "lr": K("float", 0.007, "base learning rate of the poly schedule", lo=0, lo_open=True),
        "lr_power": K("float", 0.9, "poly schedule power", lo=0),
        "warmup_iters": K("int", 0, "iterations of linear warmup (from lr / warmup_iters to lr) "
                          "before the poly schedule", lo=0),
        "momentum": K("float", 0.9, "SGD momentum", lo=0, hi=1, hi_open=True),
        "weight_decay": K("float", 0.0002, "L2 weight decay (convolution weights only)", lo=0),
        "seed": K("int", 0, "seed of initialisation, sampling and augmentation", lo=0),
        "freeze_bn": K("bool", False,
                       "BN frozen: running statistics, gamma and beta not updated (phase 2)"),
        "hybridize": K("bool", True, "compile the network with MXNet's hybridize"),
        "amp": K("bool", False, "automatic mixed precision (MXNet AMP): float16 with dynamic "
                 "loss scaling on GPUs, bfloat16 on the CPU"),
        "checkpoint_every": K("int", 1000, "iterations between checkpoints", lo=1),
        "keep_checkpoints": K("int", 3, "newest checkpoints kept", lo=1),
        "log_every": K("int", 20, "iterations between log lines", lo=1),
        "umask": K("octal", "027", "permission mask of what a run, eval, predict, export and "
                   "bench write (octal): '027' lets the group read the run directory and others "
                   "nothing, '022' everyone read"),
        "eval_every": K("int", 0, "iterations between evaluations during training, each "
                        "keeping DIR/best.params for the best mIoU (0: only at the end)", lo=0),
    },
    "eval": {
        "output_stride": K("?int", None, "output stride at evaluation (null: model's)"),
        "scales": K("floats", [1.0], "inference scales (averaged softmax)", lo=0, lo_open=True),
        "flip": K("bool", False, "also infer the mirrored image"),
        "max_images": K("?int", None, "evaluate on the first N validation images (null: all)",
                        lo=1),
    },
    "dist": {
        "backend": K("choice:auto|local|horovod|ps", "auto",
                     "auto: horovod under horovodrun, ps under DMLC_ROLE=worker, else local"),
        "sync_bn": K("bool", True, "synchronize BN statistics across Horovod workers"),
        "sync_bn_group": K("group", "all",
                           "workers whose batches synchronized BN normalises together: all, "
                           "node (those of one machine) or k (consecutive ranks; k divides the "
                           "number of workers)", lo=1),
        "sync_bn_transport": K("choice:auto|horovod|mpi", "auto",
                               "how synchronized BN's per-layer statistics travel: mpi "
                               "(straight over MPI, microseconds a call; workers launched with "
                               "deeplab launch horovod --mpi), horovod (Horovod's collectives, "
                               "about one negotiation cycle a call); auto: mpi when the workers "
                               "run under MPI, else horovod. Gradients always go through "
                               "Horovod"),
        "fp16_compression": K("bool", False, "Horovod: allreduce gradients in float16"),
        "num_groups": K("int", 0, "Horovod: gradients allreduced in this many groups (0: one call "
                        "per gradient, batched by Horovod's tensor fusion)",
                        lo=0),
        "horovod_cycle_time": K("?float", None,
                                "Horovod's negotiation cycle in ms (HOROVOD_CYCLE_TIME, when "
                                "set, wins); null: with synchronized BN 0.1 on GPUs, 1 on CPUs; "
                                "without it 1 on GPUs, %g on CPUs (measured: "
                                "docs/distributed.md)" % CPU_CYCLE_TIME_MS, lo=0, lo_open=True),
        "devices_per_worker": K("int", 1, "devices one worker process drives (a node's GPUs, "
                                "or CPU device ids on a CPU); its batch is split over them, "
                                "their gradients summed in-process and BN synchronized across "
                                "them (local and ps backends)", lo=1),
        "stall_timeout": K("float", 600.0,
                           "seconds without progress (a step, or the end of a phase) before "
                           "a worker exits as stalled (0: never); start-up, the first step "
                           "and evaluation get 4x", lo=0),
    },
}

# eval.output_stride takes the same values as model.output_stride
_STRIDES = (8, 16, 32)

# YAML 1.1 (PyYAML) reads 1e-3 as a string: it wants a dot in floats. Recipes write 1e-3.
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads exponent-only numbers (1e-3, 2E4) as floats."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _yaml_load(text):
    return yaml.load(text, Loader=_Loader)


def _defaults(schema=SCHEMA):
    return {k: _defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default)
            for k, v in schema.items()}


def flat_items(schema=SCHEMA, prefix=""):
    """Yields (dotted key, Key) for every key of the schema, in order."""
    for k, v in schema.items():
        if isinstance(v, dict):
            yield from flat_items(v, prefix + k + ".")
        else:
            yield prefix + k, v


def _range_text(key):
    if key.lo is not None and key.hi is not None:
        return "in %s%g, %g%s" % ("(" if key.lo_open else "[", key.lo, key.hi,
                                  ")" if key.hi_open else "]")
    if key.lo is not None:
        return "%s %g" % (">" if key.lo_open else ">=", key.lo)
    return "%s %g" % ("<" if key.hi_open else "<=", key.hi)


def _in_range(key, x):
    if key.lo is not None and (x < key.lo or (key.lo_open and x == key.lo)):
        return False
    if key.hi is not None and (x > key.hi or (key.hi_open and x == key.hi)):
        return False
    return True


def _check(name, key, value, source, tag=None):
    """Returns `value` converted to the type of `key`, or raises ConfigError."""
    tag = tag or key.tag

    def fail(expected):
        raise ConfigError("%s: %s must be %s, got %r" % (source, name, expected, value))

    if tag.startswith("?"):
        return None if value is None else _check(name, key, value, source, tag[1:])
    if tag.startswith("choice:"):
        choices = tag[len("choice:"):].split("|")
        if str(value) not in choices or isinstance(value, bool):
            fail("one of %s" % ", ".join(choices))
        return int(value) if all(c.isdigit() for c in choices) else value
    if tag == "group":  # a name or a group size
        if value in ("all", "node"):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            fail("all, node or an integer")
        tag = "int"
    if tag == "octal":  # a permission mask: '027' (YAML 1.1 also reads an unquoted 027 as octal)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777:
            return "%03o" % value
        if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
            fail("an octal permission mask such as '027'")
        return value[-3:]
    if tag == "bool":
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if tag in ("str", "path"):
        if tag == "path" and value is None:
            return None
        if not isinstance(value, str):
            fail("a string" if tag == "str" else "a path (string) or null")
        return value
    if tag == "strs":
        if not isinstance(value, (list, tuple)) or not value \
                or not all(isinstance(v, str) and v for v in value):
            fail("a non-empty list of names (strings)")
        return list(value)
    if tag == "colours":
        if not isinstance(value, (list, tuple)) or not value:
            fail("a non-empty list of [r, g, b] colours")
        for v in value:
            if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(
                    isinstance(c, int) and not isinstance(c, bool) and _in_range(key, c)
                    for c in v):
                fail("a list of [r, g, b] colours with each value in [0, 255] (%r is not)"
                     % (v,))
        return [list(v) for v in value]
    if tag in ("floats", "ints"):
        item = tag[:-1]
        if not isinstance(value, (list, tuple)) or not value:
            fail("a non-empty list of %ss" % ("number" if item == "float" else "integer"))
        return [_check(name, key, v, source, item) for v in value]
    if tag == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
    elif tag == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        value = float(value)
    else:
        raise AssertionError("bad schema tag %r" % tag)
    if not _in_range(key, value):
        fail("a number %s" % _range_text(key))
    return value


def _merge(cfg, data, source, schema=SCHEMA, prefix="", given=None, layer=0):
    """Sets the keys in `data` (a nested dict from YAML) on `cfg`, validating each; records in
    the dict `given`, if any, each key's dotted name -> `layer` (which file or override set it
    last)."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ConfigError("%s: %s must be a mapping of %s, got %r"
                          % (source, where, ", ".join(schema), data))
    for k, v in data.items():
        if k not in schema:
            if not prefix:
                raise ConfigError("%s: unknown section %r; valid sections: %s"
                                  % (source, k, ", ".join(schema)))
            raise ConfigError("%s: unknown key %s%s; valid keys in %s: %s"
                              % (source, prefix, k, where, ", ".join(schema)))
        if isinstance(schema[k], dict):
            if not isinstance(v, dict):
                raise ConfigError("%s: section %r must be a mapping of keys, got %r"
                                  % (source, prefix + k, v))
            _merge(cfg[k], v, source, schema[k], prefix + k + ".", given, layer)
        else:
            cfg[k] = _check(prefix + k, schema[k], v, source)
            if given is not None:
                given[prefix + k] = layer


def _read_yaml(path, seen=()):
    if not os.path.isfile(path):
        raise ConfigError("config file %s does not exist" % path)
    if os.path.abspath(path) in seen:
        raise ConfigError("config file %s includes itself through _base_" % path)
    with open(path) as f:
        try:
            data = _yaml_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError("config file %s is not valid YAML: %s" % (path, err)) from None
    if not isinstance(data, dict):
        raise ConfigError("config file %s: expected a mapping at the top level" % path)
    layers = []
    base = data.pop("_base_", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError("config file %s: _base_ must be a file name" % path)
        base_path = os.path.join(os.path.dirname(path), base)
        layers.extend(_read_yaml(base_path, seen + (os.path.abspath(path),)))
    layers.append((path, data))
    return layers


def parse_override(text):
    """Splits 'section.key=value' (or 'section.sub.key=value') into (['section', ..., 'key'],
    value parsed as YAML, exponents such as 1e-3 included)."""
    if "=" not in text:
        raise ConfigError("override %r must look like section.key=value" % text)
    key, raw = text.split("=", 1)
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError("override %r: the key must look like section.key (e.g. train.lr)"
                          % text)
    try:
        value = _yaml_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def _nest(parts, value):
    out = value
    for p in reversed(parts):
        out = {p: out}
    return out


def load_config(path, overrides=()):
    """Resolves defaults <- `_base_` chain <- file <- overrides into one nested dict; checks
    types, ranges and the relations between keys."""
    cfg = _defaults()
    given = {}
    layers = _read_yaml(path)
    for layer, (source, data) in enumerate(layers):
        _merge(cfg, data, source, given=given, layer=layer)
    for layer, text in enumerate(overrides, len(layers)):
        parts, v = parse_override(text)
        _merge(cfg, _nest(parts, v), "--set %s" % text, given=given, layer=layer)
    _check_classes(cfg, given, path)
    _check_relations(cfg, path)
    return cfg


def _check_classes(cfg, given, path):
    """data.classes and data.palette belong to the folder dataset, whose number of classes
    becomes model.num_classes. A model.num_classes set with data.classes or after it (in the
    same file, a file on top, or --set) must agree; one from a `_base_` below the file that sets
    data.classes (e.g. a VOC recipe's 21) is replaced."""
    d = cfg["data"]
    if d["name"] != "folder":
        for key in ("classes", "palette"):
            if d[key] is not None:
                raise ConfigError("%s: data.%s is read by the folder dataset only, but data.name "
                                  "is %s; remove it or set data.name: folder"
                                  % (path, key, d["name"]))
        return
    classes = d["classes"]
    if classes is None:
        raise ConfigError("%s: data.name is folder but data.classes is not set: list the class "
                          "names, index 0 first (e.g. data.classes: [background, cat, dog])"
                          % path)
    if len(classes) < 2 or len(classes) > SCHEMA["model"]["num_classes"].hi:
        raise ConfigError("%s: data.classes names %d classes; expected 2 to %d"
                          % (path, len(classes), SCHEMA["model"]["num_classes"].hi))
    if len(set(classes)) != len(classes):
        twice = sorted({c for c in classes if classes.count(c) > 1})
        raise ConfigError("%s: data.classes names %s more than once" % (path, ", ".join(twice)))
    if d["palette"] is not None and len(d["palette"]) != len(classes):
        raise ConfigError("%s: data.palette has %d colours but data.classes names %d classes; "
                          "give one [r, g, b] per class" % (path, len(d["palette"]), len(classes)))
    if given.get("model.num_classes", -1) >= given["data.classes"] \
            and cfg["model"]["num_classes"] != len(classes):
        raise ConfigError("%s: model.num_classes is %d but data.classes names %d classes (%s); "
                          "remove model.num_classes (it is taken from data.classes) or make "
                          "them agree" % (path, cfg["model"]["num_classes"], len(classes),
                                          ", ".join(classes)))
    cfg["model"]["num_classes"] = len(classes)


def _check_relations(cfg, path):
    from deeplab.model import MODELS  # late: the schema itself does not need MXNet
    if cfg["model"]["name"] not in MODELS:
        raise ConfigError("%s: model.name %r is not a model; valid names: %s"
                          % (path, cfg["model"]["name"], ", ".join(MODELS)))
    stride = cfg["eval"]["output_stride"]
    if stride is not None and stride not in _STRIDES:
        raise ConfigError("%s: eval.output_stride must be null or one of 8, 16, 32, got %r"
                          % (path, stride))
    t = cfg["train"]
    if t["warmup_iters"] >= t["iterations"]:
        raise ConfigError("%s: train.warmup_iters (%d) must be below train.iterations (%d)"
                          % (path, t["warmup_iters"], t["iterations"]))
    scale = cfg["data"]["scale_range"]
    if len(scale) != 2 or scale[0] > scale[1]:
        raise ConfigError("%s: data.scale_range must be [low, high] with low <= high, got %r"
                          % (path, cfg["data"]["scale_range"]))
    if len(cfg["data"]["synthetic"]["image_size"]) != 2:
        raise ConfigError("%s: data.synthetic.image_size must be [height, width], got %r"
                          % (path, cfg["data"]["synthetic"]["image_size"]))


def eval_stride(cfg):
    """The output stride evaluation runs at: eval.output_stride, else the model's."""
    return cfg["eval"]["output_stride"] or cfg["model"]["output_stride"]


def dump_config(cfg, path):
    """Writes the resolved config as YAML (atomically)."""
    from deeplab.utils import write_text
    write_text(path, yaml.safe_dump(cfg, sort_keys=False))


def add_set_argument(parser, example="train.iterations=100"):
    """The `--set KEY=VALUE [KEY=VALUE ...]` option, repeatable, shared by every command."""
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE",
                        help="override config keys, e.g. --set %s (several pairs and repeated "
                             "--set both work)" % example)
