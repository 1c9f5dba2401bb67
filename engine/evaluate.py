"""Evaluation on full images: optional multi-scale + flip inference, one confusion matrix summed
over workers, scores computed and written by the main worker.

    deeplab eval CONFIG --checkpoint PARAMS|RUN_DIR [--out results.json] [--quiet]
                 [--set key=value ...]
"""
import contextlib
import os

import mxnet as mx
import numpy as np

from deeplab import dist
from deeplab.config import eval_stride, load_config
from deeplab.data import EvalTransform, eval_samples, eval_shard
from deeplab.logger import progress, run_logger
from deeplab.metrics import confusion_matrix, scores
from deeplab.record import provenance
from deeplab.utils import apply_umask, write_json

from deeplab.workdir import lock_if_run, resolve_checkpoint

from . import parsers
from .build import build_dataset, evaluation_network

__all__ = ["predict", "evaluate", "results_dict", "format_results", "format_class_table",
           "run_evaluation", "parse_args", "main"]


def predict(net, image, scales=(1.0,), flip=False, shapes=None):
    """Class probabilities (1, C, H, W) for a normalised image (1, 3, H, W).

    Softmax outputs at each scale (and of the mirrored image) are resized back to H x W and
    averaged, as in DeepLabV3 §4.3's multi-scale inference. `shapes`, a set, collects the input
    shapes the network was given.
    """
    _, _, h, w = image.shape
    total = 0
    for s in scales:
        x = image
        if s != 1.0:
            x = mx.nd.contrib.BilinearResize2D(image, height=max(1, int(round(h * s))),
                                               width=max(1, int(round(w * s))))
        inputs = [x, x.flip(axis=3)] if flip else [x]
        if shapes is not None:
            shapes.add(x.shape)
        for i, inp in enumerate(inputs):
            prob = mx.nd.softmax(net(inp), axis=1)
            if i == 1:
                prob = prob.flip(axis=3)
            if s != 1.0:
                prob = mx.nd.contrib.BilinearResize2D(prob, height=h, width=w)
            total = total + prob
    return total


def evaluate(net, dataset, cfg, ctx, watchdog=None, quiet=False, shapes=None):
    """COLLECTIVE. Confusion matrix of `net` on `dataset` (or its first eval.max_images images),
    summed over workers.

    Each worker takes its shard of the images (no padding, no duplicates).
    Args:
        watchdog: a dist.Watchdog to beat after each image (default: one of this evaluation's
            own, allowing 4x dist.stall_timeout per image and for the wait for the others).
        quiet: no progress bar.
        shapes: a set to collect this worker's network input shapes in.
    Returns:
        (int64 confusion matrix, number of images evaluated by all workers).
    """
    e = cfg["eval"]
    num_classes = cfg["model"]["num_classes"]
    conf = np.zeros((num_classes, num_classes), np.int64)
    n = len(dataset) if e["max_images"] is None else min(len(dataset), e["max_images"])
    indices = eval_shard(n, dist.rank(), dist.size())
    samples = eval_samples(dataset, EvalTransform(), indices,
                           num_workers=cfg["data"]["num_workers"])
    # Images differ in size (new shapes to compile) and workers finish their shares at different
    # times: each image, and the wait for the others, may take 4x a training step's allowance.
    own = None if watchdog else dist.Watchdog(4 * cfg["dist"]["stall_timeout"])
    with contextlib.closing(samples), own or contextlib.nullcontext():
        beat = (watchdog or own).beat
        for i, (_, image, mask) in enumerate(
                progress(samples, len(indices), "eval (rank 0's share)", quiet), 1):
            prob = predict(net, image.as_in_context(ctx), e["scales"], e["flip"], shapes)
            pred = prob.argmax(axis=1)[0].asnumpy().astype(np.int64)
            conf += confusion_matrix(pred, mask, num_classes)
            beat("evaluation image %d of %d" % (i, len(indices)))
        counts = dist.allreduce_sum(np.concatenate([conf.ravel(), [len(indices)]]),
                                    name="eval.counts")
    return counts[:-1].reshape(num_classes, num_classes), int(counts[-1])


def no_cudnn_autotune():
    """Turns cuDNN's convolution autotuning off for networks built from now on, unless the user
    set it: VOC's images differ in size, and with several scales nearly every image brings new
    shapes (results.json's input_shapes_per_worker counts them), each of which autotuning would
    benchmark (MXNet reads MXNET_CUDNN_AUTOTUNE_DEFAULT when an operator is created). No effect
    on the CPU."""
    os.environ.setdefault("MXNET_CUDNN_AUTOTUNE_DEFAULT", "0")


def results_dict(conf, num_images, dataset, cfg, output_stride, checkpoint):
    """The results JSON: scores, the confusion matrix and what produced them."""
    res = scores(conf)
    res.update(class_names=list(dataset.class_names), confusion_matrix=conf.tolist(),
               num_images=num_images, output_stride=output_stride,
               scales=list(cfg["eval"]["scales"]), flip=cfg["eval"]["flip"],
               checkpoint=checkpoint, run=provenance())
    return res


def format_results(res):
    return "pixAcc %.4f  mIoU %.4f  (%d images, output stride %d, scales %s%s)" % (
        res["pixAcc"], res["mIoU"], res["num_images"], res["output_stride"],
        ",".join("%g" % s for s in res["scales"]), ", flip" if res["flip"] else "")


def format_class_table(res):
    """The per-class table of a results dict: class name, IoU and pixel accuracy per class
    ('-' for a class absent from the labels and predictions), then the mean row."""
    names = res["class_names"]
    width = max([len("class"), len("mean")] + [len(n) for n in names])
    row = "%-*s  %7s  %7s"

    def num(v):
        return "-" if v is None else "%.4f" % v

    lines = [row % (width, "class", "IoU", "Acc")]
    lines += [row % (width, name, num(iou), num(acc)) for name, iou, acc in
              zip(names, res["per_class_iou"], res["per_class_acc"])]
    lines.append(row % (width, "mean", num(res["mIoU"]), num(res["pixAcc"])))
    return "\n".join(lines)


def run_evaluation(net, cfg, ctx, output_stride, checkpoint, out=None, log=None, quiet=False,
                   watchdog=None):
    """COLLECTIVE. Evaluates on the val split; the main worker logs and writes `out`.
    `watchdog`: as for `evaluate`."""
    log = log or run_logger()
    no_cudnn_autotune()
    dataset = build_dataset(cfg, "val")
    if cfg["train"]["hybridize"]:
        net.hybridize()
    shapes = set()
    conf, n = evaluate(net, dataset, cfg, ctx, watchdog=watchdog, quiet=quiet, shapes=shapes)
    res = results_dict(conf, n, dataset, cfg, output_stride, checkpoint)
    # Each distinct input shape is a new graph for MXNet (and, with autotuning on, a cuDNN
    # benchmark of every convolution): recorded so that GPU users see what it would cost.
    res["input_shapes_per_worker"] = [int(c) for c in dist.gather_rows(
        [len(shapes)], name="eval.shapes")[:, 0]]
    log.info("per-class scores (Acc: the share of the class's labelled pixels predicted as "
             "it; mean row: mIoU and pixAcc):")
    for line in format_class_table(res).splitlines():
        log.info("  %s", line)
    log.info(format_results(res))
    log.info("evaluation fed the network %s distinct input shape(s) per worker (cuDNN "
             "autotuning, off during evaluation, would benchmark every convolution for each)",
             "/".join(map(str, res["input_shapes_per_worker"])))
    if out and dist.is_main():
        write_json(out, res)
    return res


def parse_args(argv=None):
    """The options (deeplab.parsers.evaluate: parsed without importing MXNet)."""
    return parsers.evaluate(argv)


def main(args):
    cfg = load_config(args.config, args.overrides)
    apply_umask(cfg)  # --out's directories and file, as a run's
    # One watchdog over every blocking phase, as in `deeplab train`: start-up (the backend's
    # rendezvous, the checkpoint's and the lock's verdicts shared from the main worker), the
    # evaluation (each image, the gathers of the counts and shapes) and the backend's shutdown,
    # which the parameter server would otherwise run at exit, unwatched: its barrier of every
    # node waits for good on a stopped scheduler (dist/watchdog.py).
    stall = cfg["dist"]["stall_timeout"]
    with dist.watched_command(stall) as watchdog:
        with watchdog.extend(4 * stall, "start-up"):
            lock = _start(cfg, args)
        try:
            with watchdog.extend(4 * stall, "the evaluation"):
                res = _run(cfg, args, watchdog)
        finally:
            if lock:
                lock.release()
    return res


def _start(cfg, args):
    """COLLECTIVE. Starts the workers and resolves the checkpoint (into args.checkpoint);
    returns the lock on the run directory of --out (see below) or None."""
    dist.init(cfg["dist"]["backend"])
    no_cudnn_autotune()
    args.checkpoint = dist.on_main(lambda: resolve_checkpoint(args.checkpoint, cfg), share=True)
    # --out inside a run directory (DIR/results.json): the run's lock, as a second run would
    # take it, so that a run still going is not overwritten and does not overwrite this.
    return dist.on_main(lambda: lock_if_run(os.path.dirname(os.path.abspath(args.out)))) \
        if args.out else None


def _run(cfg, args, watchdog):
    """COLLECTIVE. Builds the network from args.checkpoint and evaluates it; returns the
    results (written to args.out by the main worker)."""
    ctx = dist.context()
    stride = eval_stride(cfg)
    # The checkpoint replaces every parameter, so the backbone file is not read.
    net = evaluation_network(cfg, ctx, output_stride=stride, params=args.checkpoint)
    if args.out and dist.is_main():
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    return run_evaluation(net, cfg, ctx, stride, os.path.abspath(args.checkpoint), args.out,
                          quiet=args.quiet, watchdog=watchdog)
