"""Training augmentation and evaluation preprocessing for (image, mask) pairs.

Training randomness is drawn from `np.random.default_rng([seed, epoch, index])` only, never from
global or per-process state: a sample's augmentation is then a pure function of (seed, epoch,
sample index), which is what lets any number of workers (loader processes or distributed ranks)
reproduce exactly the batches of a single process.
"""
import numbers

import numpy as np

from .base import IGNORE_LABEL

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _triple(values, name):
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (3,):
        raise ValueError("%s must have 3 values (R, G, B), got %r" % (name, values.tolist()))
    return values


def _normalizer(mean, std):
    """Returns (scale, shift) such that x * scale + shift == (x / 255 - mean) / std per channel."""
    mean, std = _triple(mean, "mean"), _triple(std, "std")
    if (std <= 0).any():
        raise ValueError("std values must be positive, got %r" % std.tolist())
    return 1.0 / (255.0 * std), -mean / std


def _to_chw(image, scale, shift):
    """Normalises an RGB uint8 (H, W, 3) image into a float32 (3, H, W) array."""
    out = image.astype(np.float32) * scale + shift
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _crop_size(crop_size):
    if isinstance(crop_size, numbers.Integral):
        crop_size = (crop_size, crop_size)
    try:
        h, w = (int(v) for v in crop_size)
    except (TypeError, ValueError):
        raise ValueError("crop_size must be an int or (height, width), got %r" % (crop_size,))
    if h <= 0 or w <= 0 or (h, w) != tuple(crop_size):
        raise ValueError("crop_size must hold positive integers, got %r" % (crop_size,))
    return h, w


def sample_rng(seed, epoch, index):
    """The random generator of one training sample: a pure function of its three arguments."""
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index)):
        if not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError("%s must be a non-negative integer, got %r" % (name, value))
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class TrainTransform:
    """DeepLabV3 training augmentation: random scale, pad, random crop, random flip, normalise.

    The image is resized bilinearly and the mask with nearest neighbour by one random factor;
    both are padded at the bottom and right up to the crop size (the image with the mean colour,
    i.e. 0 after normalisation, the mask with 255 = ignore), randomly cropped and, with
    probability 1/2, flipped left-right. Draws, in order: scale, crop top, crop left, flip.

    Args:
        crop_size: int or (height, width) of the output.
        seed: training seed; with (epoch, index) it fixes every random choice.
        scale_range: (lo, hi) of the uniform random scale factor.
        flip: whether to apply random horizontal flips.
        mean, std: per-channel RGB statistics of images scaled to [0, 1].
    """

    def __init__(self, crop_size, seed, scale_range=(0.5, 2.0), flip=True,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.crop_size = _crop_size(crop_size)
        if not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError("seed must be a non-negative integer, got %r" % (seed,))
        self.seed = int(seed)
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ValueError("scale_range must be (lo, hi) with 0 < lo <= hi, got %r"
                             % (scale_range,))
        self.scale_range = (lo, hi)
        self.flip = bool(flip)
        self._scale, self._shift = _normalizer(mean, std)

    def __call__(self, image, mask, epoch, index):
        """Augments one sample.

        Args:
            image: RGB uint8 (H, W, 3).
            mask: uint8 (H, W) class indices, 255 = ignore.
            epoch, index: with the seed, determine every random choice.

        Returns:
            (float32 (3, crop_h, crop_w) normalised image, float32 (crop_h, crop_w) labels).
        """
        import cv2

        rng = sample_rng(self.seed, epoch, index)
        crop_h, crop_w = self.crop_size
        scale = rng.uniform(*self.scale_range)
        h, w = image.shape[:2]
        new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        if (new_h, new_w) != (h, w):
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (new_w, new_h), interpolation=cv2.INTER_NEAREST)

        # Crop window in the padded frame (padding sits below and right of the image); only the
        # part of the window that overlaps the image is copied, the rest keeps the pad values.
        top = int(rng.integers(0, max(new_h, crop_h) - crop_h + 1))
        left = int(rng.integers(0, max(new_w, crop_w) - crop_w + 1))
        image = image[top:top + crop_h, left:left + crop_w]
        mask = mask[top:top + crop_h, left:left + crop_w]
        out_image = np.zeros((3, crop_h, crop_w), np.float32)  # 0 == mean colour once normalised
        out_label = np.full((crop_h, crop_w), IGNORE_LABEL, np.float32)
        h, w = mask.shape
        out_image[:, :h, :w] = _to_chw(image, self._scale, self._shift)
        out_label[:h, :w] = mask

        if self.flip and rng.random() < 0.5:
            out_image = np.ascontiguousarray(out_image[:, :, ::-1])
            out_label = np.ascontiguousarray(out_label[:, ::-1])
        return out_image, out_label

    def __repr__(self):
        return ("TrainTransform(crop_size=%s, seed=%d, scale_range=%s, flip=%s)"
                % (self.crop_size, self.seed, self.scale_range, self.flip))


class EvalTransform:
    """Evaluation preprocessing: normalise the full image, no resizing or cropping.

    Args:
        mean, std: per-channel RGB statistics of images scaled to [0, 1].
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self._scale, self._shift = _normalizer(mean, std)

    def __call__(self, image):
        """Returns the RGB uint8 (H, W, 3) `image` as a normalised float32 (3, H, W) array."""
        return _to_chw(image, self._scale, self._shift)
