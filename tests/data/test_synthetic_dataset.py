"""The generated dataset: determinism, value ranges, sizes, speed, and get_dataset's checks."""
import time

import numpy as np
import pytest

from deeplab.data import SyntheticSegmentation, get_dataset


def _synthetic(**kwargs):
    args = dict(split="train", size=24, num_classes=5, image_size=(24, 64), seed=0)
    args.update(kwargs)
    return get_dataset("synthetic", **args)


def test_same_seed_and_index_give_identical_samples():
    a, b = _synthetic(), _synthetic()
    for index in (0, 7, 23):
        image_a, mask_a = a.load(index)
        image_b, mask_b = b.load(index)
        assert np.array_equal(image_a, image_b) and np.array_equal(mask_a, mask_b)
    # Independent of access order and of the dataset's size.
    later = _synthetic(size=100)
    assert np.array_equal(later.load(7)[0], a.load(7)[0])


def test_different_seed_or_split_gives_different_samples():
    base = _synthetic()
    other_seed = _synthetic(seed=1)
    val = _synthetic(split="val")
    for index in range(5):
        image, _ = base.load(index)
        for other in (other_seed, val):
            other_image, _ = other.load(index)
            assert image.shape != other_image.shape or not np.array_equal(image, other_image)


def test_value_ranges_and_ignore_border():
    ds = _synthetic(size=40)
    seen, ignored = set(), []
    for index in range(len(ds)):
        image, mask = ds.load(index)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        values = set(np.unique(mask).tolist())
        assert values <= {0, 1, 2, 3, 4, 255}
        assert 255 in values and 0 in values
        assert values - {0, 255}, "every sample has at least one visible shape"
        seen |= values
        ignored.append((mask == 255).mean())
    assert seen == {0, 1, 2, 3, 4, 255}
    # The ignore band is a thin outline, not whole shapes (small images have relatively more).
    assert np.mean(ignored) < 0.15 and max(ignored) < 0.4


def test_ignore_band_separates_shapes_from_background():
    # A foreground pixel never touches a background pixel directly: the 255 band sits between.
    ds = _synthetic()
    for index in range(len(ds)):
        _, mask = ds.load(index)
        fg, bg = (mask > 0) & (mask < 255), mask == 0
        assert not (fg[:, 1:] & bg[:, :-1]).any() and not (fg[:, :-1] & bg[:, 1:]).any()
        assert not (fg[1:] & bg[:-1]).any() and not (fg[:-1] & bg[1:]).any()


def test_sizes_are_random_odd_and_non_square():
    ds = _synthetic(size=30, image_size=(24, 40))
    shapes = [ds.load(i)[0].shape[:2] for i in range(len(ds))]
    assert all(24 <= h <= 40 and 24 <= w <= 40 for h, w in shapes)
    assert any(h % 2 or w % 2 for h, w in shapes)
    assert any(h != w for h, w in shapes)
    assert len(set(shapes)) > 10
    fixed = _synthetic(image_size=33)
    assert {fixed.load(i)[0].shape[:2] for i in range(5)} == {(33, 33)}


def test_ids_and_metadata():
    ds = _synthetic(split="val", size=13)
    assert len(ds) == 13 and ds.ids[12] == "synthetic-val-000012"
    assert ds.num_classes == 5 and len(ds.class_names) == 5 and ds.class_names[0] == "background"
    default = get_dataset("synthetic")
    assert len(default) == 64 and default.num_classes == 21
    assert np.array_equal(ds.load(-1)[1], ds.load(12)[1])
    with pytest.raises(IndexError):
        ds.load(13)


def test_colour_alone_does_not_give_the_class_but_neighbourhoods_do():
    """Texture matters: a classifier of single pixel colours is far worse (class-balanced) than
    the same classifier given 7x7 neighbourhood statistics, which gets nearly everything right."""
    import cv2
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.tree import DecisionTreeClassifier

    def features(ds, patch):
        xs, ys = [], []
        rng = np.random.default_rng(0)
        for index in range(len(ds)):
            image, mask = ds.load(index)
            f = image.astype(np.float32)
            if patch:  # local mean, standard deviation and gradient energy
                mean = cv2.blur(f, (7, 7))
                std = np.sqrt(np.maximum(cv2.blur(f * f, (7, 7)) - mean * mean, 0))
                grey = f.mean(axis=2)
                dx = cv2.blur(np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0)), (7, 7))
                dy = cv2.blur(np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1)), (7, 7))
                f = np.concatenate([mean, std, dx[..., None], dy[..., None]], axis=2)
            # Pixels whose 7x7 window is one region, away from the ignore band.
            keep = np.flatnonzero(cv2.erode((mask != 255).astype(np.uint8),
                                            np.ones((7, 7), np.uint8)).ravel())
            keep = rng.choice(keep, min(300, keep.size), replace=False)
            xs.append(f.reshape(-1, f.shape[2])[keep])
            ys.append(mask.ravel()[keep])
        return np.concatenate(xs), np.concatenate(ys)

    train = _synthetic(size=60, num_classes=5)
    val = _synthetic(size=30, num_classes=5, split="val")
    scores = {}
    for patch in (False, True):
        clf = DecisionTreeClassifier(max_depth=12, random_state=0)
        clf.fit(*features(train, patch))
        x, y = features(val, patch)
        scores[patch] = balanced_accuracy_score(y, clf.predict(x))
    assert scores[True] > 0.95
    assert scores[False] < 0.8


def test_generation_is_fast():
    ds = _synthetic(size=30, image_size=96, num_classes=21)
    best = float("inf")
    for _ in range(3):  # best of three: robust to a busy machine
        start = time.perf_counter()
        for index in range(len(ds)):
            ds.load(index)
        best = min(best, (time.perf_counter() - start) / len(ds))
    assert best < 0.005


@pytest.mark.parametrize("kwargs", [
    dict(num_classes=1), dict(num_classes=255), dict(image_size=(40, 30)), dict(image_size=4),
    dict(size=-1), dict(seed=-3),
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SyntheticSegmentation(**kwargs)


def test_get_dataset_rejects_unknown_names_and_splits():
    with pytest.raises(ValueError) as err:
        get_dataset("ade20k")  # not a dataset here (cityscapes now is)
    assert "synthetic" in str(err.value) and "voc" in str(err.value)
    with pytest.raises(ValueError) as err:
        get_dataset("synthetic", split="trainaug")
    assert "train" in str(err.value) and "val" in str(err.value)
    with pytest.raises(ValueError) as err:
        get_dataset("voc", split="test", root="/data")
    assert "trainaug" in str(err.value)
    with pytest.raises(ValueError, match="data.root"):
        get_dataset("voc", split="train")
