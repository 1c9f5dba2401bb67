"""Dataset construction by name, as the config names them (`data.dataset`, `data.root`)."""
from deeplab.errors import ConfigError

from . import synthetic, voc

# name -> (class, valid splits, whether it reads files under data.root)
DATASETS = {
    "voc": (voc.VOCSegmentation, voc.SPLITS, True),
    "synthetic": (synthetic.SyntheticSegmentation, synthetic.SPLITS, False),
}


def get_dataset(name, split="train", root=None, **kwargs):
    """Builds dataset `name` for `split`.

    Args:
        name: 'voc' (splits train, val, trainaug) or 'synthetic' (splits train, val).
        split: which split.
        root: data root for file-based datasets (config key data.root); unused by 'synthetic'.
        **kwargs: passed to the dataset class, e.g. size, num_classes, image_size and seed for
            'synthetic'.

    Raises:
        ValueError: unknown name or split, or no root for a file-based dataset.
    """
    if name not in DATASETS:
        raise ValueError("unknown dataset %r; expected one of %s"
                         % (name, ", ".join(sorted(DATASETS))))
    cls, splits, needs_root = DATASETS[name]
    if split not in splits:
        raise ValueError("unknown split %r for dataset %r; expected one of %s"
                         % (split, name, ", ".join(splits)))
    if not needs_root:
        return cls(split=split, **kwargs)
    if root is None:
        raise ConfigError("dataset %r reads files: set data.root to the folder that holds them"
                         % name)
    return cls(root=root, split=split, **kwargs)
