"""Checks every sample of a config's datasets before training: each image and mask is read,
decoded and validated as training would (`SegmentationDataset.load`: truncated JPEGs and PNGs,
undecodable files, sizes, label values), in data.num_workers processes.

    deeplab check-data CONFIG [--split train val] [--set KEY=VALUE ...]

Prints one line per damaged sample naming its file, then how long the check took per image;
exits 2 if any sample is damaged. Training's pre-flight only checks that every file exists
(cheap on a network file system); a damaged file stops training when it is first read, with
the same line (docs/faults.md). A full check of VOC trainaug (10,582 images) costs about what
benchmarks/damaged_images.py prints.
"""
import argparse
import multiprocessing
import sys
import time

from deeplab.config import add_set_argument, load_config
from deeplab.errors import DatasetError

__all__ = ["check_dataset", "parse_args", "main"]


def _check(dataset, index):
    try:
        dataset.load(index)
        return None
    except DatasetError as err:
        return str(err)


_DATASET = None  # the dataset the forked checking processes read


def _check_forked(index):
    return _check(_DATASET, index)


def check_dataset(dataset, num_workers=0):
    """Loads every sample of `dataset`; returns the error message of each damaged one."""
    global _DATASET
    if num_workers == 0:
        found = [_check(dataset, i) for i in range(len(dataset))]
    else:
        _DATASET = dataset  # inherited by the forked processes: the dataset need not pickle
        try:
            with multiprocessing.get_context("fork").Pool(num_workers) as pool:
                found = list(pool.imap(_check_forked, range(len(dataset)), chunksize=8))
        finally:
            _DATASET = None
    return [message for message in found if message]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="deeplab check-data",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config (its data section is used)")
    p.add_argument("--split", nargs="+", choices=("train", "val"), default=["train", "val"],
                   help="which of the config's splits to check (default: both)")
    add_set_argument(p, example="data.root=~/data")
    return p.parse_args(argv)


def main(args):
    from deeplab.build import build_dataset

    cfg = load_config(args.config, args.overrides)
    damaged = total = 0
    for split in args.split:
        dataset = build_dataset(cfg, split)
        tic = time.monotonic()
        errors = check_dataset(dataset, cfg["data"]["num_workers"])
        seconds = time.monotonic() - tic
        for message in errors:
            print("deeplab check-data: %s" % message, file=sys.stderr)
        print("%s split: %d samples checked in %.1f s (%.2f ms per sample, %d processes): %s"
              % (split, len(dataset), seconds, 1000 * seconds / max(len(dataset), 1),
                 max(cfg["data"]["num_workers"], 1),
                 "%d damaged" % len(errors) if errors else "all intact"))
        damaged += len(errors)
        total += len(dataset)
    if damaged:
        raise DatasetError("%d of %d samples are damaged (listed above)" % (damaged, total))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
