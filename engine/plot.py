"""Training curves of runs from their DIR/metrics.jsonl (loss, learning rate, and training and
validation mIoU against iteration, several runs drawn against each other), and the confusion
matrix of a results file.

    deeplab plot --workdir DIR [--workdir DIR2 ...] [--out curves.png]
    deeplab plot --confusion results.json [--out confusion.png]
"""
import argparse
import json
import os
import sys

from deeplab.errors import UserError, WorkdirError
from deeplab.utils import atomic_write

__all__ = ["read_metrics", "read_results", "plot_curves", "plot_confusion", "parse_args", "main"]


def read_metrics(workdir):
    """(train rows, val rows) of DIR/metrics.jsonl, in iteration order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise WorkdirError("%s does not exist: is %s a training run's directory (written by "
                           "deeplab train)?" % (path, workdir))
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass  # a line cut short by a killed run
    train = sorted((r for r in rows if r.get("kind") == "train"), key=lambda r: r["iter"])
    val = sorted((r for r in rows if r.get("kind") == "val"), key=lambda r: r["iter"])
    if not train and not val:
        raise WorkdirError("%s holds no metrics yet" % path)
    return train, val


def read_results(path):
    """The results dict of a `deeplab eval --out` / DIR/results.json file, checked to hold a
    square confusion matrix with one class name per row."""
    try:
        with open(path) as f:
            res = json.load(f)
        conf, names = res["confusion_matrix"], res["class_names"]
    except OSError as err:
        raise UserError("cannot read results file %s: %s" % (path, err.strerror)) from None
    except (ValueError, KeyError, TypeError):
        raise UserError("%s is not a results file of deeplab eval or train (expected JSON with "
                        "confusion_matrix and class_names)" % path) from None
    if not (isinstance(conf, list) and len(conf) == len(names)
            and all(isinstance(r, list) and len(r) == len(names) for r in conf)):
        raise UserError("%s: confusion_matrix is not %d x %d (one row and column per class "
                        "name)" % (path, len(names), len(names)))
    return res


def _save(fig, out):
    import matplotlib.pyplot as plt

    # A temporary name ends in .tmp-PID: matplotlib is told the format instead of guessing it.
    atomic_write(out, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs, out, title=""):
    """Writes a PNG with three panels: loss, lr, and mIoU (training intervals, validation).

    Args:
        runs: list of (label, train rows, val rows); one colour per run, labelled when there
            are several.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    several = len(runs) > 1
    for i, (label, train, val) in enumerate(runs):
        colour = "C%d" % (i % 10)
        name = (label + ": ") if several else ""
        its = [r["iter"] for r in train]
        axes[0].plot(its, [r["loss"] for r in train], color=colour, label=label)
        axes[1].plot(its, [r["lr"] for r in train], color=colour, label=label)
        axes[2].plot(its, [r["mIoU"] for r in train], color=colour, alpha=0.5,
                     label=name + "train (log intervals)")
        if val:
            axes[2].plot([r["iter"] for r in val], [r["mIoU"] for r in val], "o-",
                         color=colour, label=name + "val")
    axes[0].set_ylabel("loss (training, per labelled pixel)")
    axes[1].set_ylabel("learning rate")
    axes[2].set_ylabel("mIoU")
    axes[2].legend(fontsize=8)
    if several:
        axes[0].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, out)


def plot_confusion(res, out, title=""):
    """Writes a PNG of the confusion matrix of results dict `res`: rows are the true classes,
    columns the predicted ones, each row as shares of that class's labelled pixels (its
    diagonal entry is the class's pixel accuracy), with the class names on both axes."""
    import numpy as np

    plt = _pyplot()
    conf = np.asarray(res["confusion_matrix"], np.float64)
    names = res["class_names"]
    share = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    n = len(names)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=90, fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 30:  # the shares are readable on up to about 30 classes
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    ax.text(j, i, "%.2f" % share[i, j], ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's pixels")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="deeplab plot", description=__doc__.split("\n\n")[0],
        epilog="The default --out is DIR/curves.png for one run and DIR/confusion.png beside "
               "the results file; give --out when drawing several runs.")
    p.add_argument("--workdir", action="append", default=[], metavar="DIR",
                   help="a run directory (deeplab train --workdir); repeat it to draw several "
                        "runs against each other")
    p.add_argument("dirs", nargs="*", metavar="DIR",
                   help="deprecated spelling of --workdir DIR")
    p.add_argument("--confusion", metavar="RESULTS",
                   help="draw the confusion matrix of a results file (deeplab eval --out, "
                        "DIR/results.json) instead of curves")
    p.add_argument("--out", help="PNG to write")
    args = p.parse_args(argv)
    if args.dirs:
        print("deeplab plot: DIR without --workdir is deprecated; write --workdir %s"
              % " --workdir ".join(args.dirs), file=sys.stderr)
    args.workdirs = args.workdir + args.dirs
    if args.confusion and args.workdirs:
        p.error("give either --workdir (curves) or --confusion (a results file), not both")
    if not args.confusion and not args.workdirs:
        p.error("give --workdir DIR (curves of a run) or --confusion RESULTS")
    return args


def _labels(workdirs):
    """Short distinct labels of run directories: their names, or paths when names repeat."""
    names = [os.path.basename(os.path.normpath(d)) for d in workdirs]
    return names if len(set(names)) == len(names) else [os.path.normpath(d) for d in workdirs]


def main(args):
    if args.confusion:
        res = read_results(args.confusion)
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.confusion)),
                                       "confusion.png")
        plot_confusion(res, out, title="%s (mIoU %.4f, pixAcc %.4f)" % (
            os.path.abspath(args.confusion), res.get("mIoU", float("nan")),
            res.get("pixAcc", float("nan"))))
        print("wrote %s (%d classes)" % (out, len(res["class_names"])))
        return out
    if len(args.workdirs) > 1 and not args.out:
        raise UserError("drawing %d runs: give --out FILE.png for the comparison"
                        % len(args.workdirs))
    runs = [(label,) + read_metrics(d) for label, d in zip(_labels(args.workdirs),
                                                           args.workdirs)]
    out = args.out or os.path.join(args.workdirs[0], "curves.png")
    title = os.path.abspath(args.workdirs[0]) if len(runs) == 1 else "%d runs" % len(runs)
    plot_curves(runs, out, title=title)
    print("wrote %s (%s)" % (out, "; ".join(
        "%s%d training intervals, %d evaluations" % (label + ": " if len(runs) > 1 else "",
                                                     len(t), len(v)) for label, t, v in runs)))
    return out
