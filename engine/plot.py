"""Training curves of a run from its DIR/metrics.jsonl: loss, learning rate, and training and
validation mIoU against iteration.

    deeplab plot DIR [--out curves.png]
"""
import argparse
import json
import os

from deeplab.errors import WorkdirError

__all__ = ["read_metrics", "plot_curves", "parse_args", "main"]


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


def plot_curves(train, val, out, title=""):
    """Writes a PNG with three panels: loss, lr, and mIoU (training intervals, validation)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    its = [r["iter"] for r in train]
    axes[0].plot(its, [r["loss"] for r in train])
    axes[0].set_ylabel("loss (training, per labelled pixel)")
    axes[1].plot(its, [r["lr"] for r in train])
    axes[1].set_ylabel("learning rate")
    axes[2].plot(its, [r["mIoU"] for r in train], label="train (log intervals)")
    if val:
        axes[2].plot([r["iter"] for r in val], [r["mIoU"] for r in val], "o-", label="val")
    axes[2].set_ylabel("mIoU")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="deeplab plot", description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", help="a run directory (deeplab train --workdir)")
    p.add_argument("--out", help="PNG to write (default: DIR/curves.png)")
    return p.parse_args(argv)


def main(args):
    train, val = read_metrics(args.workdir)
    out = args.out or os.path.join(args.workdir, "curves.png")
    plot_curves(train, val, out, title=os.path.abspath(args.workdir))
    print("wrote %s (%d training intervals, %d evaluations)" % (out, len(train), len(val)))
    return out
