"""Segmentation of image files: a class-index PNG and a colour overlay per image.

    deeplab predict CONFIG --checkpoint PARAMS|RUN_DIR --out DIR [--batch-per-call B]
                    [--quiet] INPUT... [--set KEY=VALUE ...]

INPUT: image files (.jpg, .jpeg, .png, .bmp) or folders of them (not searched recursively).
For each image writes DIR/<stem>.png, a palette PNG (the config's dataset's colours: VOC's,
Cityscapes', or data.palette for the folder dataset) whose pixel values are the predicted class
indices at the image's size, and DIR/<stem>_overlay.jpg, the image blended half and half with
those colours. Inference is `deeplab eval`'s: the evaluation output stride,
eval.scales and eval.flip. Under `deeplab launch` the images are split across the workers, and
each worker writes the files of its own share. DIR may not be an input folder or inside one: no
input is ever written over.
"""
import os
import time

import mxnet as mx
import numpy as np

from deeplab import dist
from deeplab.config import eval_stride, load_config
from deeplab.data import EvalTransform, eval_shard
from deeplab.data.base import read_image
from deeplab.errors import DatasetError, UserError
from deeplab.logger import format_duration, run_logger
from deeplab.utils import apply_umask, atomic_write
from deeplab.workdir import resolve_checkpoint

from . import parsers
from .build import dataset_classes, evaluation_network
from .evaluate import predict, progress

__all__ = ["IMAGE_EXTENSIONS", "collect_images", "check_out", "plan_batches", "segment",
           "write_outputs",
           "parse_args", "main"]

IMAGE_EXTENSIONS = parsers.IMAGE_EXTENSIONS
OVERLAY_ALPHA = 0.5  # weight of the class colours in the overlay


def _image_size(path):
    """(height, width) from the file's header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError) as err:
        raise DatasetError("cannot read image %s: %s" % (path, err)) from None
    return h, w


def collect_images(inputs):
    """The images named by `inputs` (files, or folders whose image files are taken), sorted by
    size then path, as (path, stem, height, width) tuples.

    Raises:
        DatasetError: an input is missing, a file is not an image of IMAGE_EXTENSIONS or cannot
            be read, a folder holds no image, or two different files share a stem (their
            outputs would overwrite each other).
    """
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if n.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(item, n)))
            if not found:
                raise DatasetError("input folder %s holds no images (%s)"
                                   % (item, ", ".join(IMAGE_EXTENSIONS)))
            paths += found
        elif os.path.isfile(item):
            if not item.lower().endswith(IMAGE_EXTENSIONS):
                raise DatasetError("input %s is not an image file (%s)"
                                   % (item, ", ".join(IMAGE_EXTENSIONS)))
            paths.append(item)
        else:
            raise DatasetError("input %s does not exist" % item)
    by_stem, seen = {}, set()
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:  # the same file named twice (e.g. alone and through its folder)
            continue
        seen.add(real)
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in by_stem:
            raise DatasetError("inputs %s and %s have the same name %r: both would be written "
                               "to %s.png; rename one or predict them separately"
                               % (by_stem[stem], path, stem, stem))
        by_stem[stem] = path
    images = [(path, stem) + _image_size(path) for stem, path in by_stem.items()]
    # Sorted by size, so that a worker's contiguous share has long runs of one size to batch.
    return sorted(images, key=lambda im: (im[2], im[3], im[0]))


def plan_batches(images, batch_size):
    """Splits `images` (sorted by size) into lists of at most `batch_size` images of one size.

    Every image of a batch has the same height and width, so a batch is one (B, 3, H, W)
    array; multi-scale and flip inference then resize and mirror the whole batch at once.
    """
    batches = []
    for im in images:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and last[0][2:] == im[2:]:
            last.append(im)
        else:
            batches.append([im])
    return batches


def segment(net, images, ctx, scales=(1.0,), flip=False, transform=None):
    """Predicted class indices for RGB uint8 images of one size.

    Args:
        images: list of (H, W, 3) arrays, all the same size.
    Returns:
        uint8 (B, H, W) class indices (argmax of the averaged softmax, see evaluate.predict).
    """
    transform = transform or EvalTransform()
    data = mx.nd.array(np.stack([transform(im) for im in images]), ctx=ctx)
    prob = predict(net, data, scales, flip)
    return prob.argmax(axis=1).asnumpy().astype(np.uint8)


def write_outputs(out_dir, stem, image, pred, palette):
    """Writes out_dir/<stem>.png (class indices, palette mode) and out_dir/<stem>_overlay.jpg.

    Each file is written atomically (a reader sees it whole or not at all).
    """
    from PIL import Image

    mask = Image.fromarray(pred, mode="P")
    mask.putpalette(palette)
    colours = np.asarray(palette, np.float32).reshape(-1, 3)[pred]
    blend = (1 - OVERLAY_ALPHA) * image.astype(np.float32) + OVERLAY_ALPHA * colours
    overlay = Image.fromarray(np.clip(np.round(blend), 0, 255).astype(np.uint8), mode="RGB")
    # Temporary names end in .tmp: PIL is told the format instead of guessing it.
    atomic_write(os.path.join(out_dir, stem + ".png"), lambda p: mask.save(p, format="PNG"))
    # Full-resolution colour (no 4:2:0 subsampling): class boundaries stay sharp.
    atomic_write(os.path.join(out_dir, stem + "_overlay.jpg"),
                 lambda p: overlay.save(p, format="JPEG", quality=90, subsampling=0))


def check_out(out, inputs, images):
    """Raises UserError if writing the outputs of `images` into folder `out` could replace a
    file of the user's: `out` is one of the input folders or inside one, the folder of an input
    file (where a file of the user's may carry an output's name: photos/a.png beside the input
    photos/a.jpg), or an output name is an input file. A folder inside an input file's folder
    (photos/masks for photos/a.jpg) is allowed: nothing of the inputs' is collected from it.

    Args:
        inputs: the INPUT arguments (files and folders); images: collect_images(inputs).
    """
    real_out = os.path.realpath(out)
    for item in inputs:
        if os.path.isdir(item):
            folder = os.path.realpath(item)
            if real_out == folder or real_out.startswith(folder.rstrip(os.sep) + os.sep):
                raise UserError("--out %s is %s input folder %s: the masks would be written "
                                "among the images (and over those named <stem>.png); choose "
                                "a folder outside the inputs"
                                % (out, "the" if real_out == folder else "inside the", item))
        elif real_out == os.path.realpath(os.path.dirname(item) or "."):
            raise UserError("--out %s is the folder of the input %s: the masks would be written "
                            "among your files (and over any named <stem>.png or "
                            "<stem>_overlay.jpg); choose another folder" % (out, item))
    real_inputs = {os.path.realpath(path): path for path, *_ in images}
    for _, stem, *_ in images:
        for name in (stem + ".png", stem + "_overlay.jpg"):
            hit = real_inputs.get(os.path.join(real_out, name))
            if hit:
                raise UserError("--out %s: writing %s would replace the input image %s; "
                                "choose another --out folder" % (out, name, hit))


def _check_paths(args, cfg):
    """Inputs, output folder and checkpoint file as the main worker sees them (raises
    UserError)."""
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError("--out %s is a file; expected a folder for the outputs" % args.out)
    images = collect_images(args.inputs)
    check_out(args.out, args.inputs, images)
    return images, resolve_checkpoint(args.checkpoint, cfg)


def _predictions(net, batches, ctx, e):
    """Yields (stem, RGB image, uint8 class indices) for each image of `batches`, in order.

    Args:
        batches: lists of (path, stem, height, width) of one size (see plan_batches).
        e: the config's eval section (scales, flip).
    """
    transform = EvalTransform()
    for batch in batches:
        pixels = [read_image(path) for path, *_ in batch]
        for (path, _, h, w), im in zip(batch, pixels):
            if im.shape[:2] != (h, w):
                raise DatasetError("image %s decodes to %dx%d pixels but its header says %dx%d"
                                   % (path, im.shape[0], im.shape[1], h, w))
        preds = segment(net, pixels, ctx, e["scales"], e["flip"], transform)
        for (_, stem, _, _), im, pred in zip(batch, pixels, preds):
            yield stem, im, pred


def parse_args(argv=None):
    """The options (deeplab.parsers.predict: parsed without importing MXNet)."""
    return parsers.predict(argv)


def main(args):
    """COLLECTIVE. Predicts this worker's share of the images; rank 0 logs a summary.

    Returns:
        {'images': number written by all workers, 'out': the output folder}.
    """
    cfg = load_config(args.config, args.overrides)
    apply_umask(cfg)  # the output folder and its images, as a run's
    dist.init(cfg["dist"]["backend"])
    log = run_logger()
    images, args.checkpoint = dist.on_main(lambda: _check_paths(args, cfg), share=True)
    ctx = dist.context()
    stride = eval_stride(cfg)
    # The checkpoint replaces every parameter, so the backbone file is not read.
    net = evaluation_network(cfg, ctx, output_stride=stride, params=args.checkpoint)
    if cfg["train"]["hybridize"]:
        net.hybridize()
    os.makedirs(args.out, exist_ok=True)  # by every worker: hosts need not share a file system
    mine = [images[i] for i in eval_shard(len(images), dist.rank(), dist.size())]
    start = time.monotonic()
    results = _predictions(net, plan_batches(mine, args.batch), ctx, cfg["eval"])
    palette = dataset_classes(cfg)[1]  # from the config: the data need not be here
    # A worker that stops would leave the others waiting in the final sum forever; the stall
    # allowance per image is evaluation's (new shapes compile, shares finish at different times).
    with dist.Watchdog(4 * cfg["dist"]["stall_timeout"]) as watchdog:
        for i, (stem, image, pred) in enumerate(
                progress(results, len(mine), "predict (rank 0's share)", args.quiet), 1):
            write_outputs(args.out, stem, image, pred, palette)
            watchdog.beat("image %d of %d" % (i, len(mine)))
        total = int(dist.allreduce_sum([len(mine)], name="predict.count")[0])
    e = cfg["eval"]
    log.info("wrote %d segmentations and overlays to %s in %s (%d worker%s, output stride %d, "
             "scales %s%s)", total, os.path.abspath(args.out),
             format_duration(time.monotonic() - start), dist.size(),
             "s" if dist.size() > 1 else "", stride, ",".join("%g" % s for s in e["scales"]),
             ", flip" if e["flip"] else "")
    return {"images": total, "out": os.path.abspath(args.out)}
