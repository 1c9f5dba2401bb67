"""Cityscapes in its official layout: images paired with their labelIds masks, label ids mapped
to the 19 train ids (the rest ignored), the recipe configs, and full-resolution evaluation at
output stride 8 and 16."""
import os

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, TINY
from deeplab import evaluate
from deeplab.build import dataset_classes, evaluation_network
from deeplab.config import load_config
from deeplab.data import (CITYSCAPES_CLASSES, IGNORE_LABEL, CityscapesSegmentation, DatasetError,
                          get_dataset)
from deeplab.data.cityscapes import ID_TO_TRAIN_ID

from .conftest import CITYSCAPES_IDS, build_cityscapes_tree

RECIPES = ["deeplabv3_r50v2-os16_bs8_90k_cityscapes_769.yaml",
           "deeplabv3_r50v2-os8_bs8_90k_cityscapes_769.yaml"]


def test_official_layout_pairs_every_image_with_its_label_ids(cityscapes_tree):
    root, files = cityscapes_tree
    for split in ("train", "val"):
        ds = get_dataset("cityscapes", split=split, root=root)
        assert ds.image_paths == [f[0] for f in files[split]]
        assert ds.mask_paths == [f[1] for f in files[split]]  # not _color or _instanceIds
    train = CityscapesSegmentation(root, "train")
    assert train.ids == ["aachen_000000_000019", "aachen_000000_000020", "bochum_000000_000019"]


def test_label_ids_become_train_ids_and_the_rest_is_ignored(cityscapes_tree):
    root, files = cityscapes_tree
    ds = CityscapesSegmentation(root, "val")
    for i, (_, _, ids) in enumerate(files["val"]):
        image, mask = ds.load(i)
        assert image.shape == ids.shape + (3,) and mask.dtype == np.uint8
        expected = np.vectorize(CITYSCAPES_IDS.get)(ids)
        np.testing.assert_array_equal(mask, expected)
        assert {0, 13, 11, IGNORE_LABEL} <= set(np.unique(mask).tolist())


def test_the_19_train_ids_follow_cityscapes_labels():
    mapped = {i: int(ID_TO_TRAIN_ID[i]) for i in range(34) if ID_TO_TRAIN_ID[i] != 255}
    assert mapped == {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                      23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    assert (ID_TO_TRAIN_ID[34:] == 255).all()
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[13] == "car"
    cfg = load_config(os.path.join(ROOT, "configs", RECIPES[0]))
    names, palette = dataset_classes(cfg)
    assert names == list(CITYSCAPES_CLASSES)
    assert palette[:6] == [128, 64, 128, 244, 35, 232]  # road, sidewalk


def test_errors_name_the_file_and_what_was_expected(cityscapes_tree, tmp_path):
    root, files = cityscapes_tree
    with pytest.raises(DatasetError) as err:
        CityscapesSegmentation(str(tmp_path / "nope"), "train")
    assert "leftImg8bit" in str(err.value) and "data.root" in str(err.value)
    assert "deeplab fetch cityscapes" in str(err.value)
    with pytest.raises(ValueError, match="expected one of train, val"):
        get_dataset("cityscapes", split="trainaug", root=root)
    # A labelIds mask holding a value that is no Cityscapes label id (a trainIds file would
    # hold 255; a colour file is refused as not an index image).
    _, mask_path, ids = files["val"][1]
    bad = ids.copy()
    bad[0, 0] = 40
    Image.fromarray(bad, mode="L").save(mask_path)
    ds = CityscapesSegmentation(root, "val")
    with pytest.raises(DatasetError) as err:
        ds.load(1)
    assert mask_path in str(err.value) and "label ids 40" in str(err.value)
    # An image without its annotation, found in the pre-flight.
    os.remove(files["train"][2][1])
    with pytest.raises(DatasetError) as err:
        CityscapesSegmentation(root, "train")
    assert files["train"][2][0] in str(err.value) and files["train"][2][1] in str(err.value)


def test_recipes_train_on_769_crops_and_evaluate_full_images_at_os16_and_os8():
    os16, os8 = (load_config(os.path.join(ROOT, "configs", name)) for name in RECIPES)
    for cfg, stride in ((os16, 16), (os8, 8)):
        assert cfg["data"]["name"] == "cityscapes" and cfg["model"]["num_classes"] == 19
        assert cfg["data"]["crop_size"] == 769 and cfg["data"]["train_split"] == "train"
        assert cfg["model"]["output_stride"] == stride == cfg["eval"]["output_stride"]
        assert cfg["train"]["batch_size"] == 8 and cfg["train"]["iterations"] == 90000


@pytest.mark.multiproc  # the recipe's loader processes (data.num_workers 2)
@pytest.mark.parametrize("stride", [16, 8])
def test_full_resolution_evaluation_counts_every_labelled_pixel(tmp_path, stride):
    """`deeplab eval` on a Cityscapes tree of 2:1 images: the network sees each whole image
    (no resizing or cropping) and the confusion matrix counts every pixel of the train ids."""
    root = tmp_path / "cs"
    files = build_cityscapes_tree(root, {"train": {"aachen": 1}, "val": {"lindau": 2}},
                                  hw=(64, 128))
    overrides = ["data.name=cityscapes", "data.root=%s" % root, "data.train_split=train",
                 "data.val_split=val", "model.num_classes=19", "eval.output_stride=%d" % stride]
    cfg = load_config(TINY, overrides)
    import mxnet as mx
    net = evaluation_network(cfg, mx.cpu(), seed=0)  # untrained: the counts do not depend on it
    params = str(tmp_path / "net.params")
    net.save_parameters(params)
    out = tmp_path / "results.json"
    res = evaluate.main(evaluate.parse_args([TINY, "--checkpoint", params, "--out", str(out),
                                             "--quiet", "--set"] + overrides))
    assert res["num_images"] == 2 and res["output_stride"] == stride
    assert res["class_names"] == list(CITYSCAPES_CLASSES)
    conf = np.array(res["confusion_matrix"])
    truth = np.concatenate([np.vectorize(CITYSCAPES_IDS.get)(ids).ravel()
                            for _, _, ids in files["val"]])
    assert conf.sum() == (truth != IGNORE_LABEL).sum()
    per_class = np.bincount(truth[truth != IGNORE_LABEL], minlength=19)
    np.testing.assert_array_equal(conf.sum(axis=1), per_class)
    assert res["input_shapes_per_worker"] == [1]  # one shape: the full 64x128 image
    assert os.path.isfile(str(out))
