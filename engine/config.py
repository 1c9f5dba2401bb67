"""Training configuration: a fixed schema of keys with types and defaults, YAML files that set some
of them (optionally on top of a `_base_` file), and `key=value` overrides from the command line.

Plain nested dicts, no registry: every key a recipe may set is listed in SCHEMA below, so a typo
fails with the list of valid keys instead of being silently ignored.
"""
import copy
import os

import yaml

from deeplab.errors import ConfigError

__all__ = ["SCHEMA", "ConfigError", "load_config", "parse_override", "dump_config", "get"]




# type tags: "int", "float", "bool", "str", "path" (str or null), "floats" / "ints" (lists),
# "choice:a|b" (one of the listed strings), "?float" / "?int" (the type or null).
SCHEMA = {
    "model": {
        "name": ("str", "deeplabv3_resnet50_v2"),
        "head": ("choice:aspp|vortex", "aspp"),
        "output_stride": ("choice:8|16|32", 16),
        "num_classes": ("int", 21),
        "multi_grid": ("ints", [1, 2, 4]),
        "head_channels": ("int", 256),
        "dropout": ("float", 0.0),
        "vortex_cascade": ("bool", False),
        "backbone_params": ("path", None),
        "params": ("path", None),
    },
    "data": {
        "name": ("choice:voc|synthetic", "voc"),
        "root": ("path", None),
        "train_split": ("str", "trainaug"),
        "val_split": ("str", "val"),
        "crop_size": ("int", 513),
        "scale_range": ("floats", [0.5, 2.0]),
        "train_size": ("int", 64),
        "val_size": ("int", 16),
        "image_size": ("ints", [48, 96]),
        "num_workers": ("int", 2),
    },
    "train": {
        "iterations": ("int", 30000),
        "batch_size": ("int", 16),
        "lr": ("float", 0.007),
        "lr_power": ("float", 0.9),
        "momentum": ("float", 0.9),
        "weight_decay": ("float", 0.0002),
        "seed": ("int", 0),
        "freeze_bn": ("bool", False),
        "hybridize": ("bool", True),
        "checkpoint_every": ("int", 1000),
        "keep_checkpoints": ("int", 3),
        "log_every": ("int", 20),
    },
    "eval": {
        "output_stride": ("?int", None),
        "scales": ("floats", [1.0]),
        "flip": ("bool", False),
    },
    "dist": {
        "backend": ("choice:auto|local|horovod|ps", "auto"),
        "sync_bn": ("bool", True),
        "fp16_compression": ("bool", False),
        "num_groups": ("int", 0),
    },
}


def _defaults():
    return {sec: {k: copy.deepcopy(v[1]) for k, v in keys.items()} for sec, keys in SCHEMA.items()}


def _check(key, tag, value, source):
    """Returns `value` converted to the schema type of `key`, or raises ConfigError."""
    def fail(expected):
        raise ConfigError("%s: %s must be %s, got %r" % (source, key, expected, value))

    if tag.startswith("?"):
        return None if value is None else _check(key, tag[1:], value, source)
    if tag.startswith("choice:"):
        choices = tag[len("choice:"):].split("|")
        if str(value) not in choices or isinstance(value, bool):
            fail("one of %s" % ", ".join(choices))
        return int(value) if all(c.isdigit() for c in choices) else value
    if tag == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if tag == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if tag == "bool":
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if tag == "str":
        if not isinstance(value, str):
            fail("a string")
        return value
    if tag == "path":
        if value is not None and not isinstance(value, str):
            fail("a path (string) or null")
        return value
    if tag in ("floats", "ints"):
        item = "float" if tag == "floats" else "int"
        if not isinstance(value, (list, tuple)) or not value:
            fail("a non-empty list of %ss" % ("number" if item == "float" else "integer"))
        return [_check(key, item, v, source) for v in value]
    raise AssertionError("bad schema tag %r" % tag)


def _merge(cfg, data, source):
    """Sets the keys in `data` (a nested dict from YAML) on `cfg`, validating each."""
    if not isinstance(data, dict):
        raise ConfigError("%s: expected a mapping of sections (%s), got %r"
                          % (source, ", ".join(SCHEMA), data))
    for sec, keys in data.items():
        if sec not in SCHEMA:
            raise ConfigError("%s: unknown section %r; valid sections: %s"
                              % (source, sec, ", ".join(SCHEMA)))
        if not isinstance(keys, dict):
            raise ConfigError("%s: section %r must be a mapping of keys, got %r"
                              % (source, sec, keys))
        for k, v in keys.items():
            if k not in SCHEMA[sec]:
                raise ConfigError("%s: unknown key %s.%s; valid keys in %s: %s"
                                  % (source, sec, k, sec, ", ".join(SCHEMA[sec])))
            cfg[sec][k] = _check("%s.%s" % (sec, k), SCHEMA[sec][k][0], v, source)


def _read_yaml(path, seen=()):
    if not os.path.isfile(path):
        raise ConfigError("config file %s does not exist" % path)
    if os.path.abspath(path) in seen:
        raise ConfigError("config file %s includes itself through _base_" % path)
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
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
    """Splits 'section.key=value' into (section, key, value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError("override %r must look like section.key=value" % text)
    key, raw = text.split("=", 1)
    if key.count(".") != 1:
        raise ConfigError("override %r: the key must look like section.key (e.g. train.lr)"
                          % text)
    sec, k = key.split(".")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return sec, k, value


def load_config(path, overrides=()):
    """Resolves defaults <- `_base_` chain <- file <- overrides into one nested dict."""
    cfg = _defaults()
    for source, data in _read_yaml(path):
        _merge(cfg, data, source)
    for text in overrides:
        sec, k, v = parse_override(text)
        _merge(cfg, {sec: {k: v}}, "--set %s" % text)
    from deeplab.model import MODELS  # late: the schema itself does not need MXNet
    if cfg["model"]["name"] not in MODELS:
        raise ConfigError("%s: model.name %r is not a model; valid names: %s"
                          % (path, cfg["model"]["name"], ", ".join(MODELS)))
    return cfg


def dump_config(cfg, path):
    """Writes the resolved config as YAML (atomically)."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    os.replace(tmp, path)


def get(cfg, dotted):
    """cfg['a']['b'] for 'a.b'."""
    sec, k = dotted.split(".")
    return cfg[sec][k]
