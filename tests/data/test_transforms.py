"""TrainTransform / EvalTransform: determinism in (seed, epoch, index), geometry, padding, flips."""
import numpy as np
import pytest

from deeplab.data import EvalTransform, TrainTransform

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _sample(h=40, w=52, seed=0):
    """An image whose pixels are all distinct-ish and a mask with a few classes."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2] = 3
    mask[:, : w // 3] = 7
    mask[h - 3:] = 255
    return image, mask


def _reference_normalise(image):
    return ((image.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_pure_function_of_seed_epoch_index():
    image, mask = _sample()
    transform = TrainTransform(32, seed=5)
    first = transform(image, mask, epoch=2, index=11)
    # Another instance, after unrelated calls, gives the same result.
    other = TrainTransform(32, seed=5)
    other(image, mask, 0, 0)
    assert _same(first, other(image, mask, 2, 11))
    assert not _same(first, transform(image, mask, 3, 11))
    assert not _same(first, transform(image, mask, 2, 12))
    assert not _same(first, TrainTransform(32, seed=6)(image, mask, 2, 11))


def test_global_random_state_is_neither_used_nor_changed():
    image, mask = _sample()
    transform = TrainTransform(32, seed=0)
    np.random.seed(1)
    a = transform(image, mask, 0, 3)
    after_a = np.random.random()
    np.random.seed(2)
    b = transform(image, mask, 0, 3)
    np.random.seed(1)
    assert np.random.random() == after_a  # the transform drew nothing from the global RNG
    assert _same(a, b)


@pytest.mark.parametrize("crop", [32, (24, 40), (64, 17)])
def test_output_shapes_and_dtypes(crop):
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
    image, mask = _sample()
    for index in range(5):
        data, label = TrainTransform(crop, seed=0)(image, mask, 0, index)
        assert data.shape == (3, crop_h, crop_w) and data.dtype == np.float32
        assert label.shape == (crop_h, crop_w) and label.dtype == np.float32
        assert data.flags.c_contiguous and label.flags.c_contiguous
        # Nearest-neighbour resizing never invents labels.
        assert set(np.unique(label).tolist()) <= {0.0, 3.0, 7.0, 255.0}


def test_padding_is_mean_colour_and_ignore():
    image, mask = _sample(h=10, w=12)
    transform = TrainTransform((30, 40), seed=0, scale_range=(1.0, 1.0), flip=False)
    data, label = transform(image, mask, 0, 0)
    # The image sits at the top left; everything else is padding.
    assert np.array_equal(label[:10, :12], mask.astype(np.float32))
    assert (label[10:] == 255).all() and (label[:, 12:] == 255).all()
    assert (data[:, 10:] == 0).all() and (data[:, :, 12:] == 0).all()
    np.testing.assert_allclose(data[:, :10, :12], _reference_normalise(image), atol=1e-5)


def test_padding_with_random_scale():
    image, mask = _sample(h=10, w=12)
    transform = TrainTransform(48, seed=0, flip=False)  # scale 0.5..2: at most 20x24 of image
    heights = set()
    for index in range(20):
        data, label = transform(image, mask, 0, index)
        rows = np.flatnonzero((label != 255).any(axis=1) | (data != 0).any(axis=(0, 2)))
        valid_h = rows.max() + 1
        heights.add(valid_h)
        assert 5 <= valid_h <= 20
        assert (label[valid_h:] == 255).all() and (data[:, valid_h:] == 0).all()
    assert len(heights) > 3  # the scale really varies


def test_flip_happens_for_some_indices_only():
    image, mask = _sample()
    flipping = TrainTransform((40, 52), seed=0, scale_range=(1.0, 1.0))
    plain = TrainTransform((40, 52), seed=0, scale_range=(1.0, 1.0), flip=False)
    flipped = 0
    for index in range(20):
        data, label = flipping(image, mask, 0, index)
        ref_data, ref_label = plain(image, mask, 0, index)
        np.testing.assert_allclose(ref_data, _reference_normalise(image), atol=1e-5)
        if np.array_equal(label, ref_label):
            assert np.array_equal(data, ref_data)
        else:
            assert np.array_equal(label, ref_label[:, ::-1])
            assert np.array_equal(data, ref_data[:, :, ::-1])
            flipped += 1
    assert 0 < flipped < 20


def test_random_crop_moves_over_a_large_image():
    image, mask = _sample(h=60, w=80)
    transform = TrainTransform(16, seed=0, scale_range=(1.0, 1.0), flip=False)
    full = _reference_normalise(image)
    origins = set()
    for index in range(10):
        data, _ = transform(image, mask, 0, index)
        # Locate the crop in the full image by its top-left pixel.
        hits = np.argwhere(np.all(np.abs(full - data[:, :1, :1]) < 1e-5, axis=0))
        found = [(y, x) for y, x in hits
                 if y + 16 <= 60 and x + 16 <= 80
                 and np.allclose(full[:, y:y + 16, x:x + 16], data, atol=1e-5)]
        assert len(found) == 1
        origins.add(found[0])
    assert len(origins) > 5


def test_eval_transform_normalises_full_image():
    image, _ = _sample(h=33, w=47)
    out = EvalTransform()(image)
    assert out.shape == (3, 33, 47) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, _reference_normalise(image), atol=1e-5)
    custom = EvalTransform(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image)
    np.testing.assert_allclose(custom, image.transpose(2, 0, 1) / 127.5 - 1, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(crop_size=0), dict(crop_size=(32,)), dict(crop_size="big"),
    dict(scale_range=(2.0, 1.0)), dict(scale_range=(0.0, 1.0)),
    dict(mean=(0.5, 0.5)), dict(std=(0.2, 0.0, 0.2)), dict(seed=-1),
])
def test_bad_arguments(kwargs):
    args = dict(crop_size=32, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError):
        TrainTransform(**args)


def test_bad_epoch_or_index():
    image, mask = _sample()
    with pytest.raises(ValueError, match="epoch"):
        TrainTransform(32, seed=0)(image, mask, -1, 0)
