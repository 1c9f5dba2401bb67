"""Segmentation metrics from one confusion matrix.

The matrix holds additive counts, so workers sum theirs and one process computes the scores;
per-worker scores are never averaged.
"""
import numpy as np

__all__ = ["IGNORE_LABEL", "confusion_matrix", "confusion_nd", "scores"]

IGNORE_LABEL = 255


def confusion_matrix(pred, label, num_classes):
    """Counts pixels by (true class, predicted class), skipping label 255.

    Args:
        pred: integer array of predicted classes.
        label: integer array of the same shape with classes in [0, num_classes) or 255.
    Returns:
        int64 array (num_classes, num_classes); entry [i, j] counts pixels of class i predicted j.
    """
    pred = np.asarray(pred).ravel().astype(np.int64)
    label = np.asarray(label).ravel().astype(np.int64)
    if pred.shape != label.shape:
        raise ValueError("prediction has %d pixels, label %d" % (pred.size, label.size))
    keep = label != IGNORE_LABEL
    bad = keep & ((label < 0) | (label >= num_classes))
    if bad.any():
        raise ValueError("label values %s outside [0, %d) and not %d"
                         % (np.unique(label[bad])[:10].tolist(), num_classes, IGNORE_LABEL))
    idx = label[keep] * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def scores(conf):
    """pixAcc, mIoU, per-class IoU and per-class pixel accuracy from a confusion matrix.

    A class that appears neither in the labels nor in the predictions (union 0) has IoU None and
    does not count towards mIoU ("mIoU over classes present"). A class's pixel accuracy is the
    share of its labelled pixels predicted as it (None when no pixel is labelled so).
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    total = conf.sum()
    labelled = conf.sum(1)
    return {
        "pixAcc": float(tp.sum() / total) if total else 0.0,
        "mIoU": float(np.nanmean(iou)) if present.any() else 0.0,
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
        "per_class_acc": [float(t / n) if n else None for t, n in zip(tp, labelled)],
    }


def confusion_nd(logits, label, num_classes):
    """The confusion counts of a batch on its device, without a host round trip: a flat
    float32 NDArray of num_classes**2 counts, entry i * C + j for true class i predicted j.

    Pixels labelled 255 fall outside the histogram's range (255 * C + j >= C * C) and are not
    counted; class indices times C stay exact in float32.
    """
    import mxnet as mx

    pred = logits.argmax(axis=1)
    idx = label.astype("float32") * num_classes + pred
    c2 = num_classes * num_classes
    return mx.nd.histogram(idx.reshape(-1), bins=c2, range=(0, c2))[0].astype("float32")
