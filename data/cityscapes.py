"""Cityscapes fine annotations (the DeepLabV3 paper's second dataset), in the official layout
under the data root (`data.root`), as the cityscapesScripts and the download archives
leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip lay it out:

    ROOT/leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png
    ROOT/gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png

The labelIds PNGs hold Cityscapes' 34 label ids (0..33); training and evaluation use the 19
train ids of the benchmark, every other id becomes 255 (ignored), as cityscapesScripts'
labels.py defines them.
"""
import os

import numpy as np

from .base import DatasetError, SegmentationDataset, read_image, read_png_mask

__all__ = ["CITYSCAPES_CLASSES", "CityscapesSegmentation", "ID_TO_TRAIN_ID", "cityscapes_palette"]

SPLITS = ("train", "val")
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"

# (label id, train id, name, colour) of the 19 evaluated classes, from cityscapesScripts'
# helpers/labels.py; the other ids 0..33 (unlabeled, ego vehicle, ..., caravan, trailer) are
# ignored. Written out here: GluonCV's CitySegmentation reads its own folder layout and returns
# MXNet arrays, outside this package's dataset contract (data/base.py).
_TRAIN_LABELS = (
    (7, 0, "road", (128, 64, 128)),
    (8, 1, "sidewalk", (244, 35, 232)),
    (11, 2, "building", (70, 70, 70)),
    (12, 3, "wall", (102, 102, 156)),
    (13, 4, "fence", (190, 153, 153)),
    (17, 5, "pole", (153, 153, 153)),
    (19, 6, "traffic light", (250, 170, 30)),
    (20, 7, "traffic sign", (220, 220, 0)),
    (21, 8, "vegetation", (107, 142, 35)),
    (22, 9, "terrain", (152, 251, 152)),
    (23, 10, "sky", (70, 130, 180)),
    (24, 11, "person", (220, 20, 60)),
    (25, 12, "rider", (255, 0, 0)),
    (26, 13, "car", (0, 0, 142)),
    (27, 14, "truck", (0, 0, 70)),
    (28, 15, "bus", (0, 60, 100)),
    (31, 16, "train", (0, 80, 100)),
    (32, 17, "motorcycle", (0, 0, 230)),
    (33, 18, "bicycle", (119, 11, 32)),
)
NUM_LABEL_IDS = 34  # label ids 0..33 (license plate, -1, is never written to labelIds PNGs)

CITYSCAPES_CLASSES = tuple(name for _, _, name, _ in _TRAIN_LABELS)

# Lookup table label id -> train id (255: ignored), indexed by a mask's uint8 values.
ID_TO_TRAIN_ID = np.full(256, 255, np.uint8)
for _label_id, _train_id, _, _ in _TRAIN_LABELS:
    ID_TO_TRAIN_ID[_label_id] = _train_id


def cityscapes_palette():
    """Cityscapes' class colours (train ids 0..18), then black, as a flat [r, g, b, ...] list
    of 256 colours for PIL's `putpalette`."""
    palette = [0] * (3 * 256)
    for _, train_id, _, rgb in _TRAIN_LABELS:
        palette[3 * train_id:3 * train_id + 3] = list(rgb)
    return palette


class CityscapesSegmentation(SegmentationDataset):
    """Cityscapes `train` (2975 images) or `val` (500 images) with fine annotations, at train ids.

    Every image is paired with its labelIds mask at construction; the masks' values are checked
    (label ids 0..33) and mapped in `load`.

    Args:
        root: the folder holding leftImg8bit/ and gtFine/ (config key data.root).
        split: 'train' or 'val'.
    """

    num_classes = len(CITYSCAPES_CLASSES)

    def __init__(self, root, split="train"):
        if split not in SPLITS:
            raise ValueError("unknown Cityscapes split %r; expected one of %s"
                             % (split, ", ".join(SPLITS)))
        self.class_names = list(CITYSCAPES_CLASSES)
        self.palette = cityscapes_palette()
        root = os.path.expanduser(str(root))
        images = os.path.join(root, "leftImg8bit", split)
        masks = os.path.join(root, "gtFine", split)
        for path, archive in ((images, "leftImg8bit_trainvaltest.zip"),
                              (masks, "gtFine_trainvaltest.zip")):
            if not os.path.isdir(path):
                raise DatasetError(
                    "Cityscapes folder %s not found under data root %s (config key data.root): "
                    "unzip %s there (deeplab fetch cityscapes says where to get it)"
                    % (path, root, archive))
        self.root, self.split = root, split
        self.ids, self.image_paths, self.mask_paths = [], [], []
        for city in sorted(os.listdir(images)):
            city_dir = os.path.join(images, city)
            if not os.path.isdir(city_dir):
                continue
            mask_names = set(os.listdir(os.path.join(masks, city))) \
                if os.path.isdir(os.path.join(masks, city)) else set()
            for name in sorted(os.listdir(city_dir)):
                if not name.endswith(IMAGE_SUFFIX):
                    continue
                stem = name[:-len(IMAGE_SUFFIX)]
                mask_name = stem + MASK_SUFFIX
                if mask_name not in mask_names:
                    raise DatasetError("image %s has no fine annotation: %s does not exist"
                                       % (os.path.join(city_dir, name),
                                          os.path.join(masks, city, mask_name)))
                self.ids.append(stem)
                self.image_paths.append(os.path.join(city_dir, name))
                self.mask_paths.append(os.path.join(masks, city, mask_name))
        if not self.ids:
            raise DatasetError("no *%s image in the city folders of %s" % (IMAGE_SUFFIX, images))

    def _read(self, index):
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        ids = read_png_mask(mask_path)
        bad = (ids < 0) | (ids >= NUM_LABEL_IDS)
        if bad.any():
            shown = ", ".join(str(v) for v in np.unique(ids[bad])[:10].tolist())
            raise DatasetError("mask %s holds label ids %s; expected Cityscapes label ids "
                               "0..%d (a *_gtFine_labelIds.png, not a color or trainIds file?)"
                               % (mask_path, shown, NUM_LABEL_IDS - 1))
        return read_image(image_path), ID_TO_TRAIN_ID[ids], image_path, mask_path

    def __repr__(self):
        return "CityscapesSegmentation(root=%r, split=%r, %d samples)" % (
            self.root, self.split, len(self))
