"""Config files, _base_ chains and overrides; bad keys and types name what was expected."""
import os

import pytest
import yaml

from deeplab.config import SCHEMA, ConfigError, dump_config, load_config

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
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
