"""Training data pipeline throughput: ours against GluonCV's VOC segmentation training transform,
in decoded + augmented samples per second of one loader process.

    .venv/bin/python benchmarks/data_pipeline.py [--images 64] [--crop 513] [--repeats 3]
        [--warmup 4] [--data VOC_ROOT] [--out FILE.json]

Pipelines, each producing a float32 (3, crop, crop) normalised image and a (crop, crop) label:

  ours     VOCSegmentation(root, "train").load(i) + TrainTransform(crop, seed=0,
           scale_range=(0.5, 2.0)), called through the loader's own `_train_sample`: OpenCV decode
           and resize, numpy normalisation.
  gluoncv  gluoncv.data.VOCSegmentation(root, split="train", mode="train", base_size=520,
           crop_size=crop, transform=ToTensor + Normalize)[i], as GluonCV's
           scripts/segmentation/train.py builds it: PIL decode, random flip, scale, pad, crop,
           Gaussian blur, then MXNet operators. Its outputs are NDArrays computed asynchronously,
           so both are fetched with `.asnumpy()`, which waits for them (and costs one copy).

Both read the same files: without --data, a VOC-layout folder of --images synthetic JPEGs of VOC's
sizes (500x375, every fourth 375x500; smooth colour regions plus texture; quality 90, ~95 KB) with
palette PNG masks (classes 0..20, 255 outlines), generated deterministically into a temporary
directory; with --data, the first --images samples of a real VOC 2012 'train' list (GluonCV's
'train' is VOC's trainval list, a superset: the script looks the same files up in it).

One process, one thread: OMP_NUM_THREADS=1 (unless already set) before MXNet loads, and
cv2.setNumThreads(1), as in a loader worker; MXNet's operators run on its engine thread while this
one waits for them. After --warmup samples per pipeline, --repeats passes over all images, the
pipelines alternating (order reversed every other repeat); reported: the median samples/s of each,
their ratio, and a decode-only pass of each (our dataset.load; GluonCV's PIL open + convert) that
splits the time per sample into decode and augment. Prints a table; --out writes JSON too.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / MXNet start their thread pools

import argparse  # noqa: E402
import collections  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import gluoncv  # noqa: E402
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
import PIL  # noqa: E402
from mxnet.gluon.data.vision import transforms as mx_transforms  # noqa: E402
from PIL import Image  # noqa: E402

from deeplab.data.loader import _train_sample  # noqa: E402
from deeplab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainTransform  # noqa: E402
from deeplab.data.voc import VOCSegmentation, voc_palette  # noqa: E402

cv2.setNumThreads(1)

SEED = 0
SCALE_RANGE = (0.5, 2.0)
GLUONCV_BASE_SIZE = 520  # GluonCV's train.py default for VOC


# ---- synthetic VOC folder ------------------------------------------------------------------

def _smooth_field(rng, h, w, cells):
    """Gaussian noise on a cells x cells grid, upsampled bicubically: blobs ~h/cells wide."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def synthetic_sample(rng, h, w):
    """An RGB uint8 image and its uint8 mask: 1-3 object classes as smooth blobs on background,
    5-pixel 255 outlines as in VOC, each class a colour with shading and fine texture (so the
    JPEG is about as large, and as costly to decode, as a VOC photo)."""
    mask = np.zeros((h, w), np.uint8)
    for cls in rng.choice(np.arange(1, 21), size=rng.integers(1, 4), replace=False):
        mask[_smooth_field(rng, h, w, 4) > 0.8] = cls
    kernel = np.ones((5, 5), np.uint8)
    outline = cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)
    colours = rng.uniform(30, 225, (21, 3)).astype(np.float32)
    texture = cv2.GaussianBlur(rng.normal(0, 40, (h, w, 3)).astype(np.float32), (0, 0), 0.6)
    image = colours[mask] + 30 * _smooth_field(rng, h, w, 8)[..., None] + texture
    mask[outline] = 255
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_synthetic_voc(root, n):
    """Writes n samples as ROOT/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation}
    with train.txt (read by ours) and trainval.txt (what GluonCV's split 'train' reads) both
    listing all of them."""
    voc = os.path.join(root, "VOC2012")
    dirs = {k: os.path.join(voc, k)
            for k in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(SEED)
    palette = voc_palette()
    ids = ["synth_%04d" % i for i in range(n)]
    for i, sample_id in enumerate(ids):
        h, w = (500, 375) if i % 4 == 3 else (375, 500)
        image, mask = synthetic_sample(rng, h, w)
        Image.fromarray(image).save(os.path.join(dirs["JPEGImages"], sample_id + ".jpg"),
                                    quality=90)
        png = Image.fromarray(mask)
        png.putpalette(palette)  # makes it a mode 'P' image, as VOC's masks are
        png.save(os.path.join(dirs["SegmentationClass"], sample_id + ".png"))
    for name in ("train.txt", "trainval.txt"):
        with open(os.path.join(dirs["ImageSets/Segmentation"], name), "w") as f:
            f.write("".join(sample_id + "\n" for sample_id in ids))


# ---- the two pipelines ---------------------------------------------------------------------

def check_voc_root(root):
    """GluonCV reads only ROOT/VOC2012/ and its trainval.txt: fail early, naming what is missing."""
    voc = os.path.join(root, "VOC2012")
    if not os.path.isdir(voc):
        sys.exit("--data %s: no VOC2012/ folder in it (GluonCV reads ROOT/VOC2012/...); pass the "
                 "folder that holds VOC2012/, e.g. VOCdevkit/ of the official archive" % root)
    trainval = os.path.join(voc, "ImageSets", "Segmentation", "trainval.txt")
    if not os.path.isfile(trainval):
        sys.exit("--data %s: %s is missing (GluonCV's split 'train' reads it)" % (root, trainval))


def gluoncv_indices(ours, theirs, n):
    """Indices into GluonCV's dataset of our first n samples, after checking that each points at
    the same image and mask files, so both pipelines decode exactly the same data."""
    where = {os.path.realpath(path): i for i, path in enumerate(theirs.images)}
    indices = []
    for image, mask in zip(ours.image_paths[:n], ours.mask_paths[:n]):
        i = where.get(os.path.realpath(image))
        if i is None:
            sys.exit("image %s of our 'train' split is not in GluonCV's (trainval) list" % image)
        if os.path.realpath(theirs.masks[i]) != os.path.realpath(mask):
            sys.exit("image %s: GluonCV reads mask %s, we read %s" % (image, theirs.masks[i], mask))
        indices.append(i)
    return indices


def build_pipelines(root, n, crop):
    """Returns {name: fn(epoch, k)} for the four passes over samples k = 0..n-1: the two
    pipelines, returning (image, label), and their decode-only parts, returning None."""
    ours = VOCSegmentation(root, split="train")
    if n > len(ours):
        sys.exit("--images %d: %s has only %d 'train' samples" % (n, root, len(ours)))
    transform = TrainTransform(crop, seed=SEED, scale_range=SCALE_RANGE)
    normalize = mx_transforms.Compose([mx_transforms.ToTensor(),
                                       mx_transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    theirs = gluoncv.data.VOCSegmentation(root=root, split="train", mode="train",
                                          transform=normalize, base_size=GLUONCV_BASE_SIZE,
                                          crop_size=crop)
    theirs_index = gluoncv_indices(ours, theirs, n)

    def ours_sample(epoch, k):
        return _train_sample(ours, transform, (epoch, k))

    def gluoncv_sample(epoch, k):
        image, label = theirs[theirs_index[k]]
        return image.asnumpy(), label.asnumpy()

    def ours_decode(epoch, k):
        ours.load(k)

    def gluoncv_decode(epoch, k):
        """The decoding part of GluonCV's __getitem__ (PIL decodes lazily: force the mask)."""
        i = theirs_index[k]
        Image.open(theirs.images[i]).convert("RGB")
        Image.open(theirs.masks[i]).load()

    return {"ours": ours_sample,
            "ours decode": ours_decode,
            "gluoncv": gluoncv_sample,
            "gluoncv decode": gluoncv_decode}


def timed_pass(fn, n, epoch):
    """Runs fn over samples 0..n-1; returns samples/s and a Counter of the outputs'
    (image shape, image dtype, label shape, label dtype), empty for decode-only passes."""
    signatures = collections.Counter()
    tic = time.perf_counter()
    for k in range(n):
        out = fn(epoch, k)
        if out is not None:
            image, label = out
            signatures[image.shape, str(image.dtype), label.shape, str(label.dtype)] += 1
    return n / (time.perf_counter() - tic), signatures


# ---- driver --------------------------------------------------------------------------------

def int_at_least(minimum):
    """An argparse type: an integer >= minimum."""
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError("must be an integer >= %d, got %s" % (minimum, text))
        return value
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int_at_least(1), default=64, help="samples per pass")
    p.add_argument("--crop", type=int_at_least(1), default=513)
    p.add_argument("--repeats", type=int_at_least(1), default=3, help="timed passes per pipeline")
    p.add_argument("--warmup", type=int_at_least(0), default=4,
                   help="untimed samples per pipeline before the passes")
    p.add_argument("--data", help="a real VOC root holding VOC2012/ (default: synthetic images)")
    p.add_argument("--out", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    args.command = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
    return args


def run(args, root):
    pipelines = build_pipelines(root, args.images, args.crop)
    random.seed(SEED)  # GluonCV draws its augmentation from the global `random`
    for fn in pipelines.values():
        for k in range(min(args.warmup, args.images)):
            fn(0, k)
    rates = {name: [] for name in pipelines}
    signatures = {name: collections.Counter() for name in pipelines}
    for r in range(args.repeats):
        names = list(pipelines) if r % 2 == 0 else list(pipelines)[::-1]
        for name in names:
            rate, sigs = timed_pass(pipelines[name], args.images, epoch=r + 1)
            rates[name].append(rate)
            signatures[name] += sigs
    return rates, signatures


def result(rates, decode_rates, signatures, args, name):
    """The JSON entry of one pipeline, after checking it produced what training consumes."""
    image_shape, label_shape = (3, args.crop, args.crop), (args.crop, args.crop)
    if len(signatures) != 1:
        sys.exit("%s produced outputs of several shapes or types: %s" % (name, dict(signatures)))
    (shape, image_dtype, label, label_dtype), = signatures
    if (shape, image_dtype, label) != (image_shape, "float32", label_shape):
        sys.exit("%s produced %s %s images and %s labels; expected float32 %s and %s"
                 % (name, image_dtype, shape, label, image_shape, label_shape))
    return {"samples_per_s": statistics.median(rates), "all": rates,
            "samples": sum(signatures.values()),
            "image_shape": list(image_shape), "image_dtype": image_dtype,
            "label_shape": list(label_shape), "label_dtype": label_dtype,
            "decode_samples_per_s": statistics.median(decode_rates), "decode_all": decode_rates}


def main(args):
    if args.data is not None:
        root = os.path.expanduser(args.data)
        check_voc_root(root)
        rates, signatures = run(args, root)
    else:
        with tempfile.TemporaryDirectory(prefix="voc_synthetic_") as root:
            write_synthetic_voc(root, args.images)
            rates, signatures = run(args, root)

    results = {name: result(rates[name], rates[name + " decode"], signatures[name], args, name)
               for name in ("ours", "gluoncv")}
    ratio = results["ours"]["samples_per_s"] / results["gluoncv"]["samples_per_s"]

    source = args.data or "synthetic VOC-size images (500x375, 375x500)"
    print("%d samples of %s, crop %d, 1 process / 1 thread, median of %d passes"
          % (args.images, source, args.crop, args.repeats))
    print("%-8s %10s %10s %10s %11s" % ("pipeline", "samples/s", "ms/sample", "decode ms",
                                        "augment ms"))
    for name, res in results.items():
        total, decode = 1e3 / res["samples_per_s"], 1e3 / res["decode_samples_per_s"]
        print("%-8s %10.1f %10.1f %10.1f %11.1f"
              % (name, res["samples_per_s"], total, decode, total - decode))
    print("ours / gluoncv = %.2fx (samples/s)" % ratio)

    if args.out:
        report = {
            "benchmark": "data_pipeline",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "mxnet": mx.__version__,
                        "gluoncv": gluoncv.__version__, "opencv": cv2.__version__,
                        "pillow": PIL.__version__},
            "command": args.command,
            "params": {"images": args.images, "crop": args.crop, "repeats": args.repeats,
                       "warmup": args.warmup, "data": args.data, "seed": SEED,
                       "scale_range": list(SCALE_RANGE), "gluoncv_base_size": GLUONCV_BASE_SIZE,
                       "gluoncv_sync": "asnumpy",
                       "omp_num_threads": os.environ["OMP_NUM_THREADS"],
                       "opencv_threads": cv2.getNumThreads()},
            "results": results,
            "ratio_ours_over_gluoncv": ratio,
        }
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, allow_nan=False)
            f.write("\n")


if __name__ == "__main__":
    main(parse_args())
