"""Config files, _base_ chains and overrides; bad keys and types name what was expected."""
import os

import pytest
import yaml

from conftest import ROOT, TINY
from deeplab.config import SCHEMA, ConfigError, dump_config, load_config

CONFIGS = os.path.join(ROOT, "configs")


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_shipped_configs_resolve_to_the_seed_recipes():
    p1 = load_config(os.path.join(CONFIGS, "deeplabv3_r50v2-os16_bs16_30k_trainaug_513.yaml"))
    p2 = load_config(os.path.join(CONFIGS,
                                  "deeplabv3_r50v2-os8_bs8_30k_trainaug_513_frozenbn.yaml"))
    assert (p1["model"]["output_stride"], p1["train"]["batch_size"], p1["train"]["freeze_bn"],
            p1["data"]["crop_size"], p1["train"]["lr"], p1["train"]["weight_decay"],
            p1["train"]["iterations"]) == (16, 16, False, 513, 0.007, 0.0002, 30000)
    assert (p2["model"]["output_stride"], p2["train"]["batch_size"], p2["train"]["freeze_bn"],
            p2["train"]["lr"], p2["train"]["iterations"], p2["eval"]["output_stride"]) == \
        (8, 8, True, 0.001, 30000, 8)
    assert p2["model"]["name"] == p1["model"]["name"] == "deeplabv3_resnet50_v2"
    v1 = load_config(os.path.join(CONFIGS, "vortex_r50v2-os16_bs16_30k_trainaug_513.yaml"))
    v2 = load_config(os.path.join(CONFIGS, "vortex_r50v2-os8_bs8_30k_trainaug_513_frozenbn.yaml"))
    assert v1["model"]["head"] == v2["model"]["head"] == "vortex"
    assert v2["train"]["freeze_bn"] and v2["model"]["output_stride"] == 8


def test_every_shipped_config_loads():
    names = [n for n in os.listdir(CONFIGS) if n.endswith(".yaml")]
    assert "tiny_synthetic.yaml" in names
    for n in names:
        load_config(os.path.join(CONFIGS, n))


def test_overrides_are_typed_and_win(tmp_path):
    path = _write(tmp_path, "c.yaml", {"train": {"lr": 0.1}})
    cfg = load_config(path, ["train.lr=0.5", "train.iterations=7", "eval.scales=[0.5,1.0]",
                             "train.freeze_bn=true", "data.root=/data/voc",
                             "model.output_stride=8"])
    assert cfg["train"]["lr"] == 0.5 and cfg["train"]["iterations"] == 7
    assert cfg["eval"]["scales"] == [0.5, 1.0] and cfg["train"]["freeze_bn"] is True
    assert cfg["data"]["root"] == "/data/voc" and cfg["model"]["output_stride"] == 8


def test_integer_accepted_where_a_float_is_expected(tmp_path):
    cfg = load_config(_write(tmp_path, "c.yaml", {"train": {"lr": 1}}))
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)


@pytest.mark.parametrize("data, words", [
    ({"train": {"learning_rate": 0.1}}, ["train.learning_rate", "lr", "c.yaml"]),
    ({"optim": {"lr": 0.1}}, ["optim", "model", "c.yaml"]),
    ({"train": {"iterations": "many"}}, ["train.iterations", "integer", "many"]),
    ({"train": {"iterations": 1.5}}, ["train.iterations", "integer"]),
    ({"train": {"freeze_bn": "yes please"}}, ["train.freeze_bn", "true or false"]),
    ({"model": {"head": "psp"}}, ["model.head", "aspp", "vortex"]),
    ({"model": {"output_stride": 4}}, ["model.output_stride", "8, 16, 32"]),
    ({"eval": {"scales": 1.0}}, ["eval.scales", "list"]),
    ({"train": 3}, ["train", "mapping"]),
])
def test_bad_config_names_the_key_and_what_was_expected(tmp_path, data, words):
    path = _write(tmp_path, "c.yaml", data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("override, words", [
    ("train.lrr=0.1", ["train.lrr", "valid keys"]),
    ("lr=0.1", ["section.key"]),
    ("train.lr", ["section.key=value"]),
    ("train.batch_size=abc", ["train.batch_size", "integer"]),
])
def test_bad_override(tmp_path, override, words):
    path = _write(tmp_path, "c.yaml", {})
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    for w in words:
        assert w in str(err.value)


def test_missing_file_invalid_yaml_and_base_cycle(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "bad.yaml", "train: [unclosed"))
    a = _write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="itself"):
        load_config(a)


def test_dumped_config_reloads_identically(tmp_path):
    cfg = load_config(os.path.join(CONFIGS, "tiny_synthetic.yaml"), ["train.lr=0.25"])
    out = str(tmp_path / "resolved.yaml")
    dump_config(cfg, out)
    assert load_config(out) == cfg
    assert set(cfg) == set(SCHEMA)


def test_exponent_numbers_parse_in_files_and_overrides(tmp_path):
    path = _write(tmp_path, "c.yaml", "train:\n  lr: 1e-3\n  weight_decay: 2E-4\n")
    cfg = load_config(path, ["train.momentum=9e-1"])
    assert cfg["train"]["lr"] == 0.001 and cfg["train"]["weight_decay"] == 0.0002
    assert cfg["train"]["momentum"] == 0.9
    assert load_config(path, ["train.lr=1e-3"])["train"]["lr"] == 0.001


@pytest.mark.parametrize("override, words", [
    ("train.iterations=0", ["train.iterations", ">= 1", "0"]),
    ("train.iterations=-5", ["train.iterations", ">= 1"]),
    ("train.checkpoint_every=0", ["train.checkpoint_every", ">= 1"]),
    ("train.log_every=0", ["train.log_every", ">= 1"]),
    ("eval.scales=[0]", ["eval.scales", "> 0"]),
    ("eval.scales=[1.0,-0.5]", ["eval.scales", "> 0"]),
    ("model.dropout=1.0", ["model.dropout", "[0, 1)"]),
    ("train.momentum=-5", ["train.momentum", "[0, 1)"]),
    ("train.momentum=1", ["train.momentum", "[0, 1)"]),
    ("model.num_classes=1", ["model.num_classes", "[2, 254]"]),
    ("train.lr=0", ["train.lr", "> 0"]),
    ("data.num_workers=-1", ["data.num_workers", ">= 0"]),
    ("data.scale_range=[2.0,0.5]", ["data.scale_range", "low <= high"]),
    ("eval.output_stride=4", ["eval.output_stride", "8, 16, 32"]),
    ("data.synthetic.train_sizes=3", ["data.synthetic.train_sizes", "valid keys"]),
])
def test_values_out_of_range_are_refused_naming_the_key(tmp_path, override, words):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "c.yaml", {}), [override])
    for w in words:
        assert w in str(err.value), str(err.value)


def test_synthetic_keys_are_grouped(tmp_path):
    cfg = load_config(os.path.join(CONFIGS, "tiny_synthetic.yaml"),
                      ["data.synthetic.train_size=24", "data.synthetic.image_size=[32,40]"])
    assert cfg["data"]["synthetic"] == {"train_size": 24, "val_size": 48,
                                        "image_size": [32, 40]}
    with pytest.raises(ConfigError, match="unknown key data.train_size"):
        load_config(os.path.join(CONFIGS, "tiny_synthetic.yaml"), ["data.train_size=24"])


def test_set_is_repeatable_and_takes_several_pairs_in_every_command():
    import argparse

    from deeplab import bench, evaluate, train
    from deeplab.k8s import cli as k8s_cli

    argv = ["--set", "train.lr=0.1", "train.iterations=5", "--set", "eval.flip=true"]
    want = ["train.lr=0.1", "train.iterations=5", "eval.flip=true"]
    assert train.parse_args(["c.yaml", "--workdir", "w"] + argv).overrides == want
    assert evaluate.parse_args(["c.yaml", "--checkpoint", "p"] + argv).overrides == want
    assert bench.parse_args(["c.yaml"] + argv).overrides == want
    k8s = k8s_cli.parse_args(["render", "c.yaml", "--backend", "horovod", "--nodes", "1",
                              "--gpus-per-node", "1", "--image", "i", "--data-pvc", "p",
                              "--out", "o"] + argv)
    assert isinstance(k8s, argparse.Namespace) and k8s.overrides == want


def test_committed_configuration_page_is_current():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "config_docs.py"),
                           "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_key_has_a_meaning():
    from deeplab.config import flat_items

    for name, key in flat_items():
        assert key.doc and not key.doc.endswith("."), name


@pytest.mark.parametrize("value,want", [("'027'", "027"), ("027", "027"), ("'077'", "077"),
                                        ("'0022'", "022")])
def test_umask_is_an_octal_mask(value, want):
    assert load_config(TINY, ["train.umask=%s" % value])["train"]["umask"] == want


@pytest.mark.parametrize("value", ["'28'", "'abc'", "'1777'", "true"])
def test_a_bad_umask_names_the_key(value):
    with pytest.raises(ConfigError, match="train.umask must be an octal permission mask"):
        load_config(TINY, ["train.umask=%s" % value])
