"""The folder dataset (data.name: folder): images and masks paired by name in two folders,
splits as sub-folders or list files, class names and colours from the config, and the errors
for bad trees."""
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ROOT, TINY
from deeplab.build import build_dataset, dataset_classes
from deeplab.config import load_config
from deeplab.data import DatasetError, FolderSegmentation, voc_palette
from deeplab.errors import ConfigError

from .conftest import FOLDER_CLASSES, build_folder_tree, folder_mask, write_list


def folder_config(tmp_path, root, *overrides, num_classes=None, **data):
    """The tiny model on the folder dataset at `root`: a config file of its own that, unlike
    configs/tiny_synthetic.yaml, leaves model.num_classes unset unless `num_classes`."""
    model = {"name": "deeplabv3_tiny_v2", "output_stride": 8, "head_channels": 16}
    if num_classes is not None:
        model["num_classes"] = num_classes
    d = {"name": "folder", "root": str(root), "classes": FOLDER_CLASSES,
         "train_split": "train", "val_split": "val", "crop_size": 16, "num_workers": 0}
    d.update(data)
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump({"model": model, "data": d}))
    return load_config(str(path), list(overrides))


def test_sub_folder_splits_pair_images_and_masks_recursively(tmp_path, folder_tree):
    root, masks = folder_tree
    cfg = folder_config(tmp_path, root)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert train.ids == ["sub/t2", "t0", "t1"] and val.ids == ["v0", "v1"]
    assert train.class_names == FOLDER_CLASSES and train.num_classes == 3
    for ds, split in ((train, "train"), (val, "val")):
        for i, name in enumerate(ds.ids):
            image, mask = ds.load(i)
            assert image.shape == (12, 18, 3) and image.dtype == np.uint8
            np.testing.assert_array_equal(mask, masks[split][name])
            assert ds.image_paths[i] == os.path.join(root, "images", split, name + ".jpg")


def test_list_file_splits_and_other_folders_and_suffixes(tmp_path):
    root = tmp_path / "d"
    masks = build_folder_tree(root, {"all": ["a", "b", "c"]}, img_dir="img", ann_dir="ann",
                              img_suffix=".png", seg_map_suffix="_seg.png", greyscale=True)
    write_list(str(root / "splits" / "train.txt"), ["all/c", "all/a", "", "all/a"])
    write_list(str(root / "splits" / "val.txt"), ["all/b"])
    cfg = folder_config(tmp_path, root, train_split="splits/train.txt",
                        val_split="splits/val.txt",
                        folder={"img_dir": "img", "ann_dir": "ann", "img_suffix": ".png",
                                "seg_map_suffix": "_seg.png"})
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert train.ids == ["all/c", "all/a"] and val.ids == ["all/b"]  # the list's order, once
    np.testing.assert_array_equal(train.load(0)[1], masks["all"]["c"])
    assert train.mask_paths[1] == os.path.join(str(root), "ann", "all", "a_seg.png")


def test_num_classes_is_taken_from_the_classes_and_a_mismatch_is_a_config_error(
        tmp_path, folder_tree):
    root, _ = folder_tree
    assert folder_config(tmp_path, root)["model"]["num_classes"] == 3
    assert folder_config(tmp_path, root, num_classes=3)["model"]["num_classes"] == 3
    with pytest.raises(ConfigError) as err:
        folder_config(tmp_path, root, num_classes=5)
    assert "model.num_classes is 5 but data.classes names 3 classes" in str(err.value)
    with pytest.raises(ConfigError) as err:
        folder_config(tmp_path, root, "model.num_classes=4")
    assert "model.num_classes is 4" in str(err.value) and "--set" not in str(err.value)


@pytest.mark.parametrize("overrides, words", [
    (["data.classes=null"], ["data.name is folder but data.classes is not set"]),
    (["data.classes=[bg,cat,bg]"], ["data.classes names bg more than once"]),
    (["data.classes=[bg]"], ["data.classes names 1 classes; expected 2 to 254"]),
    (["data.classes=[bg,1]"], ["data.classes must be a non-empty list of names"]),
    (["data.palette=[[0,0,0],[255,0,0]]"], ["data.palette has 2 colours", "3 classes"]),
    (["data.palette=[[0,0,0],[255,0,0],[0,0,256]]"], ["data.palette", "[0, 255]", "256"]),
    (["data.palette=[[0,0],[255,0,0],[0,0,0]]"], ["data.palette", "[r, g, b]"]),
])
def test_bad_classes_and_palettes_name_the_key(tmp_path, folder_tree, overrides, words):
    with pytest.raises(ConfigError) as err:
        folder_config(tmp_path, folder_tree[0], *overrides)
    for w in words:
        assert w in str(err.value)


def test_classes_with_another_dataset_are_refused():
    with pytest.raises(ConfigError) as err:
        load_config(TINY, ["data.classes=[a,b,c,d,e]"])
    assert "data.classes is read by the folder dataset only" in str(err.value)


def test_palette_and_names_come_from_the_config(tmp_path, folder_tree):
    root, _ = folder_tree
    colours = [[0, 0, 0], [250, 10, 10], [10, 250, 10]]
    cfg = folder_config(tmp_path, root, palette=colours)
    ds = build_dataset(cfg, "val")
    names, palette = dataset_classes(cfg)
    assert names == ds.class_names == FOLDER_CLASSES
    assert palette == ds.palette and len(palette) == 3 * 256
    assert palette[:9] == [0, 0, 0, 250, 10, 10, 10, 250, 10]
    assert palette[9:] == voc_palette()[9:]
    # Without data.palette: VOC's colours.
    assert build_dataset(folder_config(tmp_path, root), "val").palette == voc_palette()


def test_a_label_outside_the_classes_names_the_mask(tmp_path, folder_tree):
    root, _ = folder_tree
    path = os.path.join(root, "masks", "val", "v1.png")
    mask = folder_mask(2)
    mask[0, 0] = 3  # classes are 0, 1, 2
    Image.fromarray(mask, mode="L").save(path)
    ds = build_dataset(folder_config(tmp_path, root), "val")
    ds.load(0)
    with pytest.raises(DatasetError) as err:
        ds.load(1)
    assert path in str(err.value) and "label values 3" in str(err.value)
    assert "0..2 or 255" in str(err.value)


def test_check_data_finds_a_bad_mask_before_training_and_the_docs_say_to_run_it(
        tmp_path, folder_tree, capsys):
    """Training meets a mask's bad labels only when it reads that mask, mid-run: docs/datasets.md
    tells folder-dataset users to run `deeplab check-data CONFIG` first, which names it."""
    from deeplab import cli

    root, _ = folder_tree
    path = os.path.join(root, "masks", "train", "sub", "t2.png")
    mask = folder_mask(2)
    mask[0, 0] = 3  # classes are 0, 1, 2
    Image.fromarray(mask, mode="L").save(path)
    folder_config(tmp_path, root)
    assert cli.main(["check-data", str(tmp_path / "folder.yaml")]) == 2
    err = capsys.readouterr().err
    assert "deeplab check-data: mask %s holds label values 3" % path in err
    text = open(os.path.join(ROOT, "docs", "datasets.md")).read()
    folder = text[text.index("## Your own data"):text.index("## Cityscapes")]
    assert "Run `deeplab check-data CONFIG` before the first training run" in folder


def test_missing_mask_names_the_image_and_the_mask_in_the_pre_flight(tmp_path, folder_tree):
    root, _ = folder_tree
    os.remove(os.path.join(root, "masks", "train", "sub", "t2.png"))
    with pytest.raises(DatasetError) as err:
        build_dataset(folder_config(tmp_path, root), "train")
    assert os.path.join(root, "images", "train", "sub", "t2.jpg") in str(err.value)
    assert os.path.join(root, "masks", "train", "sub", "t2.png") in str(err.value)


def test_bad_trees_fail_naming_the_path_and_key(tmp_path, folder_tree):
    root, _ = folder_tree
    cases = [
        (dict(root=str(tmp_path / "nope")), ["data root", "nope", "data.root"]),
        (dict(folder={"img_dir": "pictures"}), ["pictures", "data.folder.img_dir"]),
        (dict(folder={"ann_dir": "labels"}), ["labels", "data.folder.ann_dir"]),
        (dict(train_split="test"), ["split 'test'", os.path.join("images", "test")]),
        (dict(train_split="lists/train.txt"), ["split list", "train.txt", "does not exist"]),
        (dict(folder={"img_suffix": ".jpeg"}), ["no image ending in '.jpeg'",
                                                "data.folder.img_suffix"]),
    ]
    for data, words in cases:
        with pytest.raises(DatasetError) as err:
            build_dataset(folder_config(tmp_path, data.pop("root", root), **data), "train")
        for w in words:
            assert w in str(err.value), (data, str(err.value))


def test_dataset_class_checks_its_arguments(folder_tree):
    root, _ = folder_tree
    with pytest.raises(DatasetError, match="at least 2"):
        FolderSegmentation(root, "val", ["only"])
    with pytest.raises(DatasetError, match="1 colours but data.classes names 3"):
        FolderSegmentation(root, "val", FOLDER_CLASSES, palette=[(1, 2, 3)])


@pytest.mark.multiproc  # loader processes (data.num_workers 2)
def test_deeplab_train_and_eval_run_on_a_folder_dataset(tmp_path, folder_tree):
    """`deeplab train` with the shipped loader processes (data.num_workers 2) on the folder
    dataset: the pre-flight, training and the final evaluation, whose results name the classes
    of data.classes."""
    import json

    import yaml

    from deeplab import cli

    root, _ = folder_tree
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "deeplabv3_tiny_v2", "output_stride": 8, "head_channels": 16},
        "data": {"name": "folder", "root": root, "classes": FOLDER_CLASSES,
                 "train_split": "train", "val_split": "val", "crop_size": 16},
        "train": {"iterations": 2, "batch_size": 2, "checkpoint_every": 2}}))
    workdir = tmp_path / "run"
    assert cli.main(["train", str(config), "--workdir", str(workdir), "--quiet"]) == 0
    res = json.loads((workdir / "results.json").read_text())
    assert res["class_names"] == FOLDER_CLASSES and res["num_images"] == 2
    assert np.array(res["confusion_matrix"]).shape == (3, 3)
    # Every labelled val pixel counted: the masks' 12x18 pixels minus their ignored row.
    assert np.array(res["confusion_matrix"]).sum() == 2 * 11 * 18
    saved = yaml.safe_load((workdir / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 3


def test_images_and_masks_in_one_folder_told_apart_by_suffix(tmp_path):
    root = tmp_path / "d"
    masks = build_folder_tree(root, {"all": ["a", "b"]}, img_dir="pairs", ann_dir="pairs",
                              img_suffix=".png", seg_map_suffix="_mask.png")
    ds = FolderSegmentation(str(root), "all", FOLDER_CLASSES, img_dir="pairs", ann_dir="pairs",
                            img_suffix=".png", seg_map_suffix="_mask.png")
    assert ds.ids == ["a", "b"]  # a_mask.png is no image
    np.testing.assert_array_equal(ds.load(1)[1], masks["all"]["b"])


def test_a_base_recipes_num_classes_gives_way_to_the_classes_of_the_file_on_top(
        tmp_path, folder_tree):
    """The docs' example: a folder config on top of the VOC recipe (num_classes: 21)."""
    root, _ = folder_tree
    config = tmp_path / "pets.yaml"
    config.write_text(yaml.safe_dump({
        "_base_": os.path.join(ROOT, "configs", "deeplabv3_r50v2-os16_bs16_30k_trainaug_513.yaml"),
        "data": {"name": "folder", "root": root, "classes": FOLDER_CLASSES,
                 "train_split": "train"}}))
    cfg = load_config(str(config))
    assert cfg["model"]["num_classes"] == 3 and cfg["model"]["name"] == "deeplabv3_resnet50_v2"
    assert len(build_dataset(cfg, "train")) == 3
    with pytest.raises(ConfigError, match="model.num_classes is 21 but data.classes names 3"):
        load_config(str(config), ["model.num_classes=21"])
