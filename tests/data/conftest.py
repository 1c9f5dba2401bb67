"""Builds tiny VOC 2012 / SBD directory trees in the real file formats for the data tests.

Every image is a flat colour and every mask a rectangle of one class on background with a 255
frame, so a test can tell from the pixels which file a sample came from: VOC files use
VOC_COLOUR / VOC_CLASS, SBD files SBD_COLOUR / SBD_CLASS.
"""
import os

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image

from deeplab.data import voc_palette

VOC_COLOUR = (200, 40, 40)  # RGB
SBD_COLOUR = (40, 40, 200)
VOC_CLASS = 15  # person; its palette colour is (192, 128, 128)
SBD_CLASS = 7
IMAGE_HW = (20, 28)


def make_mask(cls, hw=IMAGE_HW):
    mask = np.zeros(hw, np.uint8)
    mask[4:12, 6:18] = cls
    mask[3, 5:19] = mask[12, 5:19] = 255
    return mask


def write_jpg(path, rgb, hw=IMAGE_HW):
    image = np.empty(hw + (3,), np.uint8)
    image[:] = rgb
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, image[..., ::-1])


def write_png(path, mask):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    png = Image.fromarray(mask, mode="P")
    png.putpalette(voc_palette())
    png.save(path)


def write_mat(path, mask):
    """Writes an SBD-style cls .mat: a 1x1 struct GTcls with Boundaries, Segmentation, ..."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    present = np.unique(mask[(mask > 0) & (mask < 255)]).astype(np.uint8).reshape(-1, 1)
    boundaries = np.empty((20, 1), dtype=object)
    for i in range(20):
        boundaries[i, 0] = np.zeros((0, 0), np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Boundaries": boundaries, "Segmentation": mask,
                                      "CategoriesPresent": present}})


def write_list(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(i + "\n" for i in ids))


class Tree:
    """Paths of a generated tree (see build_tree) and the pixel values its files hold."""

    voc_colour, sbd_colour, voc_class, sbd_class = VOC_COLOUR, SBD_COLOUR, VOC_CLASS, SBD_CLASS

    def __init__(self, root, voc, sbd):
        self.root, self.voc, self.sbd = str(root), voc, sbd

    def voc_image(self, i):
        return os.path.join(self.voc, "JPEGImages", i + ".jpg")

    def voc_mask(self, i):
        return os.path.join(self.voc, "SegmentationClass", i + ".png")

    def voc_list(self, split):
        return os.path.join(self.voc, "ImageSets", "Segmentation", split + ".txt")

    def sbd_image(self, i):
        return os.path.join(self.sbd, "img", i + ".jpg")

    def sbd_mask(self, i):
        return os.path.join(self.sbd, "cls", i + ".mat")


def build_tree(root, voc_train, voc_val, sbd_train=(), sbd_val=(), gluoncv_layout=False):
    """Writes VOC 2012 and (if any SBD ids) SBD under `root`; returns a Tree.

    gluoncv_layout=True uses GluonCV's folder names (VOC2012/, VOCaug/dataset/) and also writes
    the trainval.txt that GluonCV's download script adds to SBD.
    """
    voc = os.path.join(str(root), "VOC2012" if gluoncv_layout else "VOCdevkit/VOC2012")
    sbd = os.path.join(str(root),
                       "VOCaug/dataset" if gluoncv_layout else "benchmark_RELEASE/dataset")
    tree = Tree(root, voc, sbd)
    for i in list(voc_train) + list(voc_val):
        write_jpg(tree.voc_image(i), VOC_COLOUR)
        write_png(tree.voc_mask(i), make_mask(VOC_CLASS))
    write_list(tree.voc_list("train"), voc_train)
    write_list(tree.voc_list("val"), voc_val)
    if sbd_train or sbd_val:
        for i in list(sbd_train) + list(sbd_val):
            write_jpg(tree.sbd_image(i), SBD_COLOUR)
            write_mat(tree.sbd_mask(i), make_mask(SBD_CLASS))
        write_list(os.path.join(sbd, "train.txt"), sbd_train)
        write_list(os.path.join(sbd, "val.txt"), sbd_val)
        if gluoncv_layout:
            write_list(os.path.join(sbd, "trainval.txt"), list(sbd_train) + list(sbd_val))
    return tree


@pytest.fixture
def voc_tree(tmp_path):
    """A small official-layout tree: VOC train a,b,c; VOC val v1,v2; SBD train b,s1,s2,v1;
    SBD val s3,v2,s1 (s1 listed twice, v1/v2 are VOC val ids that SBD also lists)."""
    return build_tree(tmp_path, voc_train=["a", "b", "c"], voc_val=["v1", "v2"],
                      sbd_train=["b", "s1", "s2", "v1"], sbd_val=["s3", "v2", "s1"])


@pytest.fixture
def tree_builder():
    return build_tree


@pytest.fixture
def tree_files():
    """The file writers, for tests that corrupt or replace single files."""
    return {"jpg": write_jpg, "png": write_png, "mat": write_mat, "list": write_list,
            "mask": make_mask, "palette": voc_palette}


# Cityscapes: label ids drawn into the generated labelIds masks and the train ids they map to
# (255: ignored). 7 road, 26 car, 24 person are evaluated classes; 0 unlabeled, 9 parking and
# 1 ego vehicle are not.
CITYSCAPES_IDS = {7: 0, 26: 13, 24: 11, 0: 255, 9: 255, 1: 255}
CITYSCAPES_HW = (16, 32)  # Cityscapes' 1:2 aspect, small


def cityscapes_label_ids(seed, hw=CITYSCAPES_HW):
    """A labelIds mask of horizontal bands of the ids in CITYSCAPES_IDS, shifted by `seed`."""
    ids = np.array(sorted(CITYSCAPES_IDS), np.uint8)
    rows = (np.arange(hw[0]) * len(ids) // hw[0] + seed) % len(ids)
    return np.repeat(ids[rows][:, None], hw[1], axis=1)


def build_cityscapes_tree(root, cities=None, hw=CITYSCAPES_HW):
    """Writes Cityscapes' official layout under `root`:
    leftImg8bit/SPLIT/CITY/CITY_000000_0000NN_leftImg8bit.png (RGB) and
    gtFine/SPLIT/CITY/..._gtFine_labelIds.png (greyscale label ids), plus the _color.png and
    _instanceIds.png files of the real archive (which the dataset must skip).
    Returns {split: [(image path, mask path, label ids array), ...]} in sorted order."""
    cities = cities or {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}}
    out = {}
    seed = 0
    for split, per_city in cities.items():
        out[split] = []
        for city, count in sorted(per_city.items()):
            for i in range(count):
                stem = "%s_000000_%06d" % (city, 19 + i)
                image_path = os.path.join(str(root), "leftImg8bit", split, city,
                                          stem + "_leftImg8bit.png")
                mask_dir = os.path.join(str(root), "gtFine", split, city)
                os.makedirs(os.path.dirname(image_path), exist_ok=True)
                os.makedirs(mask_dir, exist_ok=True)
                rgb = np.zeros(hw + (3,), np.uint8)
                rgb[:] = (10 * seed, 100, 200)
                Image.fromarray(rgb).save(image_path)
                ids = cityscapes_label_ids(seed, hw)
                mask_path = os.path.join(mask_dir, stem + "_gtFine_labelIds.png")
                Image.fromarray(ids, mode="L").save(mask_path)
                Image.fromarray(rgb).save(os.path.join(mask_dir, stem + "_gtFine_color.png"))
                Image.fromarray(ids.astype(np.uint16) * 1000).save(  # 16-bit, as the real ones
                    os.path.join(mask_dir, stem + "_gtFine_instanceIds.png"))
                out[split].append((image_path, mask_path, ids))
                seed += 1
    return out


@pytest.fixture
def cityscapes_tree(tmp_path):
    """(root, files): a Cityscapes tree with train aachen x2, bochum x1 and val frankfurt x2."""
    root = tmp_path / "cityscapes"
    return str(root), build_cityscapes_tree(root)


FOLDER_CLASSES = ["background", "cat", "dog"]
FOLDER_HW = (12, 18)


def folder_mask(cls, hw=FOLDER_HW):
    """Background with a block of class `cls` and a row of 255 (ignored)."""
    mask = np.zeros(hw, np.uint8)
    mask[2:8, 3:12] = cls
    mask[-1, :] = 255
    return mask


def build_folder_tree(root, splits=None, img_dir="images", ann_dir="masks",
                      img_suffix=".jpg", seg_map_suffix=".png", greyscale=False):
    """Writes ROOT/IMG_DIR/SPLIT/NAME+img_suffix and ROOT/ANN_DIR/SPLIT/NAME+seg_map_suffix for
    `splits` ({split: [name, ...]}, a name may hold a sub-folder), each mask folder_mask(class
    1 + i % 2) as a palette PNG (or greyscale). Returns {split: {name: mask}}."""
    splits = splits or {"train": ["t0", "t1", "sub/t2"], "val": ["v0", "v1"]}
    out = {}
    for split, names in splits.items():
        out[split] = {}
        for i, name in enumerate(names):
            mask = folder_mask(1 + i % 2)
            image = os.path.join(str(root), img_dir, split, name + img_suffix)
            write_jpg(image, (30 * i, 60, 90), FOLDER_HW)  # OpenCV picks the format by suffix
            path = os.path.join(str(root), ann_dir, split, name + seg_map_suffix)
            if greyscale:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.fromarray(mask, mode="L").save(path)
            else:
                write_png(path, mask)
            out[split][name] = mask
    return out


@pytest.fixture
def folder_tree(tmp_path):
    """(root, masks): images/{train,val}/ and masks/{train,val}/, train holding t0, t1 and
    sub/t2, val v0 and v1."""
    root = tmp_path / "mydata"
    return str(root), build_folder_tree(root)
