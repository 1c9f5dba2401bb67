"""Datasets (VOC 2012 + SBD, Cityscapes, your own folders, synthetic shapes), augmentation,
deterministic batching and loaders for semantic segmentation.

    dataset = get_dataset('voc', split='trainaug', root=cfg.data.root)
    sampler = GlobalBatchSampler(len(dataset), batch_size, seed)
    for t, data, label in train_batches(dataset, TrainTransform(513, seed), sampler,
                                        start_iter, num_iters, rank, world_size, num_workers):
        ...
"""
from .base import IGNORE_LABEL, DatasetError, SegmentationDataset
from .cityscapes import CITYSCAPES_CLASSES, CityscapesSegmentation, cityscapes_palette
from .folder import FolderSegmentation, make_palette
from .loader import eval_samples, train_batches
from .registry import DATASETS, class_table, get_dataset
from .sampler import GlobalBatchSampler, eval_shard
from .synthetic import SyntheticSegmentation
from .transforms import EvalTransform, TrainTransform
from .voc import VOC_CLASSES, VOCSegmentation, voc_palette

__all__ = [
    "CITYSCAPES_CLASSES", "CityscapesSegmentation", "DATASETS", "DatasetError", "EvalTransform",
    "FolderSegmentation", "GlobalBatchSampler", "IGNORE_LABEL", "SegmentationDataset",
    "SyntheticSegmentation", "TrainTransform", "VOC_CLASSES", "VOCSegmentation", "class_table",
    "cityscapes_palette", "eval_samples", "eval_shard", "get_dataset", "make_palette",
    "train_batches", "voc_palette",
]
