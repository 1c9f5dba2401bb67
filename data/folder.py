"""Your own data, as mmsegmentation's CustomDataset reads it: images and masks in two folders,
paired by name, the mask's pixel values being class indices.

    ROOT/IMG_DIR/[SPLIT/]NAME IMG_SUFFIX         e.g. ROOT/images/train/0001.jpg
    ROOT/ANN_DIR/[SPLIT/]NAME SEG_MAP_SUFFIX     e.g. ROOT/masks/train/0001.png

A split is either a sub-folder of both folders (every image found below IMG_DIR/SPLIT, searched
recursively, needs its mask at the same relative place below ANN_DIR/SPLIT), or a list file
(a split ending in `.txt`, relative to ROOT) with one NAME per line, relative to IMG_DIR and
ANN_DIR and without suffix. Masks are palette or greyscale PNGs holding class indices
0 .. len(classes) - 1, and 255 for pixels to ignore.
"""
import os

from .base import DatasetError, SegmentationDataset, read_image, read_png_mask
from .voc import read_id_list, voc_palette

__all__ = ["FolderSegmentation", "make_palette"]


def make_palette(colours=None):
    """A flat [r, g, b, ...] list of 256 colours (PIL's `putpalette` format): `colours` (a list of
    (r, g, b)) for the first classes, VOC's colour map for the rest."""
    palette = voc_palette()
    for i, rgb in enumerate(colours or ()):
        palette[3 * i:3 * i + 3] = [int(c) for c in rgb]
    return palette


def _listing(folder, suffix, skip=None):
    """Relative names (suffix removed) of the files below `folder` ending in `suffix` but not in
    `skip` (the masks' suffix, when masks share the images' folder), sorted."""
    names = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel = os.path.relpath(dirpath, folder)
        for name in filenames:
            if skip and name.endswith(skip):
                continue
            if name.endswith(suffix) and len(name) > len(suffix):
                stem = name[:-len(suffix)]
                names.append(stem if rel == "." else os.path.join(rel, stem))
    return sorted(names)


class FolderSegmentation(SegmentationDataset):
    """Images and masks in two folders (see module docstring).

    All pairs are checked for existence at construction; their contents (and every mask label)
    are checked in `load`.

    Args:
        root: the data root (config key data.root).
        split: a sub-folder name of img_dir and ann_dir, or a list file ending in `.txt`
            (relative to root, or absolute); '.' takes the two folders themselves.
        classes: the class names, index 0 first (config key data.classes).
        palette: optional (r, g, b) per class (config key data.palette); default VOC's colours.
        img_dir, ann_dir: the image and mask folders, relative to root.
        img_suffix, seg_map_suffix: what image and mask file names end with.
    """

    def __init__(self, root, split, classes, palette=None, img_dir="images", ann_dir="masks",
                 img_suffix=".jpg", seg_map_suffix=".png"):
        if not classes or len(classes) < 2:
            raise DatasetError("the folder dataset needs data.classes: the names of at least 2 "
                               "classes, index 0 first")
        if palette is not None and len(palette) != len(classes):
            raise DatasetError("data.palette has %d colours but data.classes names %d classes; "
                               "give one [r, g, b] per class" % (len(palette), len(classes)))
        self.class_names = [str(c) for c in classes]
        self.num_classes = len(self.class_names)
        self.palette = make_palette(palette)
        root = os.path.expanduser(str(root))
        if not os.path.isdir(root):
            raise DatasetError("data root %s (config key data.root) does not exist; it should "
                               "contain %s/ and %s/ (data.folder.img_dir, data.folder.ann_dir)"
                               % (root, img_dir, ann_dir))
        self.root, self.split = root, split
        images, masks = os.path.join(root, img_dir), os.path.join(root, ann_dir)
        for path, key in ((images, "img_dir"), (masks, "ann_dir")):
            if not os.path.isdir(path):
                raise DatasetError("folder %s (config key data.folder.%s) does not exist"
                                   % (path, key))
        if split.endswith(".txt"):
            ids = list(dict.fromkeys(read_id_list(os.path.join(root, split))))
            if not ids:
                raise DatasetError("split list %s names no images" % os.path.join(root, split))
        else:
            images, masks = os.path.join(images, split), os.path.join(masks, split)
            if not os.path.isdir(images):
                raise DatasetError(
                    "split %r: folder %s does not exist; a split is a sub-folder of "
                    "data.folder.img_dir and data.folder.ann_dir, or a list file ending in .txt"
                    % (split, images))
            same = os.path.realpath(images) == os.path.realpath(masks)
            ids = _listing(images, img_suffix, seg_map_suffix if same else None)
            if not ids:
                raise DatasetError("split %r: no image ending in %r below %s "
                                   "(config key data.folder.img_suffix)"
                                   % (split, img_suffix, images))
        self.ids = ids
        self.image_paths = [os.path.join(images, i + img_suffix) for i in ids]
        self.mask_paths = [os.path.join(masks, i + seg_map_suffix) for i in ids]
        for sample_id, image, mask in zip(ids, self.image_paths, self.mask_paths):
            if not os.path.isfile(image):
                raise DatasetError("sample %s: image %s does not exist" % (sample_id, image))
            if not os.path.isfile(mask):
                raise DatasetError("sample %s: image %s has no mask: %s does not exist "
                                   "(config keys data.folder.ann_dir, seg_map_suffix)"
                                   % (sample_id, image, mask))

    def _read(self, index):
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        return read_image(image_path), read_png_mask(mask_path), image_path, mask_path

    def __repr__(self):
        return "FolderSegmentation(root=%r, split=%r, %d samples, %d classes)" % (
            self.root, self.split, len(self), self.num_classes)
