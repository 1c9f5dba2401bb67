"""Dataset construction by name, as the config names them (`data.name`, `data.root`)."""
from deeplab.errors import ConfigError

from . import cityscapes, folder, synthetic, voc

# name -> (class, valid splits (None: any, the dataset checks), whether it reads files under
# data.root)
DATASETS = {
    "voc": (voc.VOCSegmentation, voc.SPLITS, True),
    "cityscapes": (cityscapes.CityscapesSegmentation, cityscapes.SPLITS, True),
    "folder": (folder.FolderSegmentation, None, True),
    "synthetic": (synthetic.SyntheticSegmentation, synthetic.SPLITS, False),
}


def get_dataset(name, split="train", root=None, **kwargs):
    """Builds dataset `name` for `split`.

    Args:
        name: 'voc' (splits train, val, trainaug), 'cityscapes' (train, val), 'folder' (a
            sub-folder or a .txt list file, see data/folder.py) or 'synthetic' (train, val).
        split: which split.
        root: data root for file-based datasets (config key data.root); unused by 'synthetic'.
        **kwargs: passed to the dataset class, e.g. size, num_classes, image_size and seed for
            'synthetic'; classes, palette, img_dir, ann_dir, img_suffix, seg_map_suffix for
            'folder'.

    Raises:
        ValueError: unknown name or split, or no root for a file-based dataset.
    """
    if name not in DATASETS:
        raise ValueError("unknown dataset %r; expected one of %s"
                         % (name, ", ".join(sorted(DATASETS))))
    cls, splits, needs_root = DATASETS[name]
    if splits is not None and split not in splits:
        raise ValueError("unknown split %r for dataset %r; expected one of %s"
                         % (split, name, ", ".join(splits)))
    if not needs_root:
        return cls(split=split, **kwargs)
    if root is None:
        raise ConfigError("dataset %r reads files: set data.root to the folder that holds them"
                         % name)
    return cls(root=root, split=split, **kwargs)


def class_table(name, num_classes, classes=None, palette=None):
    """The class names and palette (PIL's flat 256-colour list) of dataset `name`, without
    reading any file: what predictions are named and coloured with.

    Args:
        num_classes: the model's classes (used by 'synthetic', whose classes are generated).
        classes, palette: the 'folder' dataset's data.classes and data.palette.
    """
    if name == "voc":
        return list(voc.VOC_CLASSES), voc.voc_palette()
    if name == "cityscapes":
        return list(cityscapes.CITYSCAPES_CLASSES), cityscapes.cityscapes_palette()
    if name == "folder":
        return [str(c) for c in classes or ()], folder.make_palette(palette)
    if name == "synthetic":
        return synthetic.synthetic_class_names(num_classes), voc.voc_palette()
    raise ValueError("unknown dataset %r; expected one of %s"
                     % (name, ", ".join(sorted(DATASETS))))
