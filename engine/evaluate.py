"""Evaluation on full images: optional multi-scale + flip inference, one confusion matrix summed
over workers, scores computed and written by the main worker.

    deeplab eval CONFIG --checkpoint PATH --out results.json [--set key=value ...]
"""
import argparse
import contextlib
import os

import mxnet as mx
import numpy as np

from deeplab import dist
from deeplab.config import add_set_argument, eval_stride, load_config
from deeplab.data import EvalTransform, eval_samples, eval_shard
from deeplab.metrics import confusion_matrix, scores

from deeplab.logger import run_logger
from deeplab.utils import write_json

from .build import build_dataset, build_model

__all__ = ["predict", "evaluate", "parse_args", "main"]


def predict(net, image, scales=(1.0,), flip=False):
    """Class probabilities (1, C, H, W) for a normalised image (1, 3, H, W).

    Softmax outputs at each scale (and of the mirrored image) are resized back to H x W and
    averaged, as in DeepLabV3 §4.3's multi-scale inference.
    """
    _, _, h, w = image.shape
    total = 0
    for s in scales:
        x = image
        if s != 1.0:
            x = mx.nd.contrib.BilinearResize2D(image, height=max(1, int(round(h * s))),
                                               width=max(1, int(round(w * s))))
        inputs = [x, x.flip(axis=3)] if flip else [x]
        for i, inp in enumerate(inputs):
            prob = mx.nd.softmax(net(inp), axis=1)
            if i == 1:
                prob = prob.flip(axis=3)
            if s != 1.0:
                prob = mx.nd.contrib.BilinearResize2D(prob, height=h, width=w)
            total = total + prob
    return total


def evaluate(net, dataset, cfg, ctx):
    """COLLECTIVE. Confusion matrix of `net` on `dataset`, summed over workers.

    Each worker takes its shard of the images (no padding, no duplicates).
    Returns:
        (int64 confusion matrix, number of images evaluated by all workers).
    """
    e = cfg["eval"]
    num_classes = cfg["model"]["num_classes"]
    conf = np.zeros((num_classes, num_classes), np.int64)
    indices = eval_shard(len(dataset), dist.rank(), dist.size())
    # Images differ in size (new shapes to compile) and workers finish their shares at different
    # times: each image, and the wait for the others, may take 4x a training step's allowance.
    samples = eval_samples(dataset, EvalTransform(), indices,
                           num_workers=cfg["data"]["num_workers"])
    with contextlib.closing(samples), \
            dist.Watchdog(4 * cfg["dist"]["stall_timeout"]) as watchdog:
        for n, (_, image, mask) in enumerate(samples, 1):
            prob = predict(net, image.as_in_context(ctx), e["scales"], e["flip"])
            pred = prob.argmax(axis=1)[0].asnumpy().astype(np.int64)
            conf += confusion_matrix(pred, mask, num_classes)
            watchdog.beat("evaluation image %d of %d" % (n, len(indices)))
        counts = dist.allreduce_sum(np.concatenate([conf.ravel(), [len(indices)]]))
    return counts[:-1].reshape(num_classes, num_classes), int(counts[-1])


def results_dict(conf, num_images, dataset, cfg, output_stride, checkpoint):
    """The results JSON: scores, the confusion matrix and what produced them."""
    res = scores(conf)
    res.update(class_names=list(dataset.class_names), confusion_matrix=conf.tolist(),
               num_images=num_images, output_stride=output_stride,
               scales=list(cfg["eval"]["scales"]), flip=cfg["eval"]["flip"],
               checkpoint=checkpoint)
    return res


def format_results(res):
    return "pixAcc %.4f  mIoU %.4f  (%d images, output stride %d, scales %s%s)" % (
        res["pixAcc"], res["mIoU"], res["num_images"], res["output_stride"],
        ",".join("%g" % s for s in res["scales"]), ", flip" if res["flip"] else "")


def run_evaluation(net, cfg, ctx, output_stride, checkpoint, out=None, log=None):
    """COLLECTIVE. Evaluates on the val split; the main worker logs and writes `out`."""
    log = log or run_logger()
    dataset = build_dataset(cfg, "val")
    if cfg["train"]["hybridize"]:
        net.hybridize()
    conf, n = evaluate(net, dataset, cfg, ctx)
    res = results_dict(conf, n, dataset, cfg, output_stride, checkpoint)
    log.info(format_results(res))
    if out and dist.is_main():
        write_json(out, res)
    return res


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="deeplab eval", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config (the model and data sections are used)")
    p.add_argument("--checkpoint", required=True,
                   help="a .params file: final.params or checkpoints/iter_*.params")
    p.add_argument("--out", default=None, help="where to write the results JSON")
    add_set_argument(p, example="eval.output_stride=8")
    return p.parse_args(argv)


def main(args):
    cfg = load_config(args.config, args.overrides)
    dist.init(cfg["dist"]["backend"])
    ctx = dist.context()
    stride = eval_stride(cfg)
    # The checkpoint replaces every parameter, so the backbone file is not read.
    net = build_model(cfg, ctx, output_stride=stride, params=args.checkpoint, load_backbone=False)
    if args.out and dist.is_main():
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    return run_evaluation(net, cfg, ctx, stride, os.path.abspath(args.checkpoint), args.out)
