"""Metrics against an independent computation (scikit-learn)."""
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from deeplab.metrics import confusion_matrix, scores


def _random_case(seed, num_classes=6, shape=(4, 17, 23)):
    rng = np.random.RandomState(seed)
    label = rng.randint(0, num_classes, shape)
    label[rng.rand(*shape) < 0.1] = 255
    # predictions right 60% of the time, never predicting the last class
    pred = np.where(rng.rand(*shape) < 0.6, label, rng.randint(0, num_classes - 1, shape))
    pred[pred == 255] = 0
    return pred, label


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_and_scores_match_sklearn(seed):
    c = 6
    pred, label = _random_case(seed, c)
    conf = confusion_matrix(pred, label, c)
    keep = label.ravel() != 255
    y, p = label.ravel()[keep], pred.ravel()[keep]
    np.testing.assert_array_equal(conf, sk_confusion_matrix(y, p, labels=list(range(c))))
    res = scores(conf)
    assert res["pixAcc"] == pytest.approx(np.mean(y == p))
    iou = jaccard_score(y, p, labels=list(range(c)), average=None, zero_division=0)
    np.testing.assert_allclose(res["per_class_iou"], iou)
    assert res["mIoU"] == pytest.approx(iou.mean())


def test_miou_counts_only_classes_present():
    label = np.array([0, 0, 1, 1, 255])
    pred = np.array([0, 1, 1, 1, 2])  # class 2 predicted only on an ignored pixel; 3 absent
    res = scores(confusion_matrix(pred, label, 4))
    assert res["per_class_iou"][2] is None and res["per_class_iou"][3] is None
    assert res["per_class_iou"][0] == pytest.approx(1 / 2)
    assert res["per_class_iou"][1] == pytest.approx(2 / 3)
    assert res["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert res["pixAcc"] == pytest.approx(3 / 4)


def test_summed_matrices_equal_the_matrix_of_the_union():
    pred, label = _random_case(5)
    whole = confusion_matrix(pred, label, 6)
    parts = sum(confusion_matrix(pred[i], label[i], 6) for i in range(len(pred)))
    np.testing.assert_array_equal(whole, parts)


def test_bad_labels_are_reported():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.zeros(3), np.array([0, 7, 1]), 5)
    with pytest.raises(ValueError, match="pixels"):
        confusion_matrix(np.zeros(3), np.zeros(4), 5)


@pytest.mark.parametrize("seed", [0, 1])
def test_per_class_pixel_accuracy_is_sklearns_per_class_recall(seed):
    from sklearn.metrics import recall_score

    c = 6
    pred, label = _random_case(seed, c)
    keep = label.ravel() != 255
    y, p = label.ravel()[keep], pred.ravel()[keep]
    res = scores(confusion_matrix(pred, label, c))
    np.testing.assert_allclose(res["per_class_acc"],
                               recall_score(y, p, labels=list(range(c)), average=None))


def test_per_class_table_names_each_class_with_its_iou_and_accuracy():
    from deeplab.evaluate import format_class_table

    label = np.array([0, 0, 1, 1, 255])
    pred = np.array([0, 1, 1, 1, 2])
    res = scores(confusion_matrix(pred, label, 3))
    res["class_names"] = ["background", "square", "circle"]
    lines = format_class_table(res).splitlines()
    assert lines[0].split() == ["class", "IoU", "Acc"]
    assert lines[1].split() == ["background", "0.5000", "0.5000"]
    assert lines[2].split() == ["square", "0.6667", "1.0000"]
    assert lines[3].split() == ["circle", "-", "-"]  # never labelled, never predicted
    assert lines[4].split() == ["mean", "%.4f" % res["mIoU"], "%.4f" % res["pixAcc"]]


def test_docs_list_every_score_of_the_results_json():
    """docs/runs.md is where the results fields are listed (docs/results.md points there): it
    once lacked per_class_acc."""
    import os

    from conftest import ROOT

    text = open(os.path.join(ROOT, "docs", "runs.md")).read()
    missing = [k for k in scores(np.eye(3)) if "`%s`" % k not in text]
    assert not missing, "docs/runs.md does not list %s" % missing
    assert "[docs/runs.md](runs.md) lists the fields" in open(
        os.path.join(ROOT, "docs", "results.md")).read()
