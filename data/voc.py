"""PASCAL VOC 2012 segmentation, optionally augmented with SBD (the 10,582-image `trainaug` set).

Expected layout under the data root (`data.root` in the config); both the official archive names
and GluonCV's download layout are accepted:

    ROOT/VOCdevkit/VOC2012/  or  ROOT/VOC2012/
        JPEGImages/<id>.jpg  SegmentationClass/<id>.png  ImageSets/Segmentation/{train,val}.txt
    ROOT/benchmark_RELEASE/dataset/  or  ROOT/VOCaug/dataset/        (only for split 'trainaug')
        img/<id>.jpg  cls/<id>.mat  train.txt  val.txt

`trainaug` is (SBD train + SBD val + VOC12 train) minus every VOC12 val id. SBD's own val list
overlaps VOC12 val, so taking SBD wholesale (as GluonCV's `VOCAugSegmentation` does) would train
on images the model is evaluated on.
"""
import os

from .base import DatasetError, SegmentationDataset, read_image, read_png_mask, read_sbd_mask

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

VOC_DIRS = ("VOCdevkit/VOC2012", "VOC2012")
SBD_DIRS = ("benchmark_RELEASE/dataset", "VOCaug/dataset")
SPLITS = ("train", "val", "trainaug")


def voc_palette():
    """VOC's colour map (class index bits interleaved over R, G, B) as a flat [r, g, b, ...]
    list of 256 colours, for PIL's `putpalette` when writing masks as VOC does."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _find_dir(root, candidates, what):
    """Returns the first existing `root/candidate`, or raises naming every place looked at."""
    for rel in candidates:
        path = os.path.join(root, rel)
        if os.path.isdir(path):
            return path
    raise DatasetError(
        "%s not found under data root %s (config key data.root): expected one of %s"
        % (what, root, ", ".join(os.path.join(root, rel) + "/" for rel in candidates)))


def read_id_list(path):
    """Reads a split file with one sample id per line; blank lines are skipped."""
    if not os.path.isfile(path):
        raise DatasetError("split list %s does not exist" % path)
    ids = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 1:
                raise DatasetError("split list %s line %d: expected one sample id, got %r"
                                   % (path, lineno, line.rstrip("\n")))
            ids.append(fields[0])
    return ids


def _unique(ids):
    """Drops repeated ids, keeping the first occurrence and the list's order."""
    return list(dict.fromkeys(ids))


class _Folder:
    """A directory whose file names are listed once, so membership tests do not stat each file
    (one listing is much cheaper than 20k stat calls on a network file system)."""

    def __init__(self, path):
        self.path = path
        self.names = set(os.listdir(path)) if os.path.isdir(path) else set()

    def file(self, name):
        return os.path.join(self.path, name)

    def require(self, sample_id, name, kind):
        """Returns the path of `name`, raising if this folder does not hold it."""
        if name not in self.names:
            raise DatasetError("sample %s: %s %s does not exist"
                               % (sample_id, kind, self.file(name)))
        return self.file(name)


class VOCSegmentation(SegmentationDataset):
    """VOC 2012 segmentation (`train`, `val`) or VOC 2012 + SBD (`trainaug`).

    All files are checked for existence at construction; their contents are read in `load`.

    Args:
        root: data root holding the VOC (and for `trainaug`, SBD) folders; see module docstring.
        split: 'train', 'val' or 'trainaug'.
    """

    num_classes = len(VOC_CLASSES)

    def __init__(self, root, split="train"):
        self.class_names = list(VOC_CLASSES)
        self.palette = voc_palette()
        if split not in SPLITS:
            raise ValueError("unknown VOC split %r; expected one of %s"
                             % (split, ", ".join(SPLITS)))
        root = os.path.expanduser(str(root))
        if not os.path.isdir(root):
            raise DatasetError(
                "data root %s (config key data.root) does not exist; it should contain %s "
                "and, for split 'trainaug', %s"
                % (root, " or ".join(d + "/" for d in VOC_DIRS),
                   " or ".join(d + "/" for d in SBD_DIRS)))
        self.root = root
        self.split = split
        voc_dir = _find_dir(root, VOC_DIRS, "VOC 2012")
        split_dir = os.path.join(voc_dir, "ImageSets", "Segmentation")
        voc_images = _Folder(os.path.join(voc_dir, "JPEGImages"))
        voc_masks = _Folder(os.path.join(voc_dir, "SegmentationClass"))

        if split in ("train", "val"):
            ids = _unique(read_id_list(os.path.join(split_dir, split + ".txt")))
        else:
            sbd_dir = _find_dir(root, SBD_DIRS, "SBD (needed for split 'trainaug')")
            sbd_images = _Folder(os.path.join(sbd_dir, "img"))
            sbd_masks = _Folder(os.path.join(sbd_dir, "cls"))
            candidates = set(read_id_list(os.path.join(sbd_dir, "train.txt")))
            candidates.update(read_id_list(os.path.join(sbd_dir, "val.txt")))
            candidates.update(read_id_list(os.path.join(split_dir, "train.txt")))
            val_ids = set(read_id_list(os.path.join(split_dir, "val.txt")))
            ids = sorted(candidates - val_ids)

        self.ids = ids
        self.image_paths = []
        self.mask_paths = []
        for sample_id in ids:
            png, mat = sample_id + ".png", sample_id + ".mat"
            if split != "trainaug" or png in voc_masks.names:
                # VOC's own annotation wins over SBD's for images that have both.
                mask = voc_masks.require(sample_id, png, "mask")
                image = voc_images.require(sample_id, sample_id + ".jpg", "image")
            elif mat in sbd_masks.names:
                mask = sbd_masks.file(mat)
                image = sbd_images.require(sample_id, sample_id + ".jpg", "SBD image")
            else:
                raise DatasetError("sample %s has no mask: neither %s nor %s exists"
                                   % (sample_id, voc_masks.file(png), sbd_masks.file(mat)))
            self.image_paths.append(image)
            self.mask_paths.append(mask)

    def _read(self, index):
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        image = read_image(image_path)
        if mask_path.endswith(".mat"):
            mask = read_sbd_mask(mask_path)
        else:
            mask = read_png_mask(mask_path)
        return image, mask, image_path, mask_path

    def __repr__(self):
        return "VOCSegmentation(root=%r, split=%r, %d samples)" % (self.root, self.split, len(self))
