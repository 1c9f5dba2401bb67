"""A procedurally generated segmentation dataset for tests, demos and smoke runs (no downloads).

Each sample is a pure function of (seed, split, index): a background (class 0) of random colour
and faint texture with 1-4 shapes (ellipses, rotated rectangles, triangles, star-shaped polygons)
of classes 1..C-1 drawn on it. Classes come in pairs sharing a base colour and differ by texture
(stripes vs. checks at a class-specific frequency and angle); with per-shape colour jitter and
per-pixel noise, a pixel's colour alone does not give its class (a classifier of pixel colours
gets about half of them, class-balanced, where 7x7 neighbourhoods give nearly all), yet a small
CNN learns the task in a few hundred steps. Like VOC's object outlines, a 2-pixel band around each
shape is labelled 255 (ignore).
"""
import numpy as np

from .base import IGNORE_LABEL, SegmentationDataset
from .voc import voc_palette

SPLITS = ("train", "val")
_SPLIT_CODES = {"train": 0, "val": 1}
# Seeds class appearance independently of the dataset seed, so that train and val (and datasets
# built with different seeds) pose the same recognition task.
_STYLE_SEED = 7919
_NOISE_STD = 8.0


def synthetic_class_names(num_classes):
    """The names of the synthetic classes: background, shape1, shape2, ..."""
    return ["background"] + ["shape%d" % c for c in range(1, num_classes)]


def _class_style(c):
    """Colour, texture kind, frequency (cycles/pixel), angle and contrast of class `c`.

    Classes come in pairs sharing one base colour (1 and 2, 3 and 4, ...) and differing in
    texture, so colour narrows a pixel's class down but only its neighbourhood decides it.
    """
    import colorsys

    # Golden-ratio hue steps keep the first few colour groups far apart on the colour wheel.
    group = (c + 1) // 2
    rgb = colorsys.hsv_to_rgb((group * 0.618034) % 1.0, 0.45 + 0.1 * (group % 3), 0.75)
    rng = np.random.default_rng([_STYLE_SEED, c])
    return {
        "colour": np.float32(rgb) * 255,
        "kind": c % 2 if c else 2,
        "freq": float(rng.uniform(0.1, 0.3)),
        "angle": float(rng.uniform(0.0, np.pi)),
        "contrast": rng.uniform(0.5, 1.0, size=3).astype(np.float32) * float(rng.uniform(30, 50)),
    }


def _texture(style, yy, xx, phase):
    """Pattern in [-1, 1] of shape (H, W) for one class, shifted by a per-shape phase."""
    cos, sin = np.cos(style["angle"]), np.sin(style["angle"])
    u = (xx * cos + yy * sin) * (2 * np.pi * style["freq"]) + phase
    if style["kind"] == 0:  # stripes
        return np.sin(u)
    v = (yy * cos - xx * sin) * (2 * np.pi * style["freq"]) + phase
    if style["kind"] == 1:  # checks
        return np.sign(np.sin(u) * np.sin(v))
    return np.sin(u) * np.sin(v)  # dots


def _draw_shape(rng, h, w):
    """Returns a uint8 (H, W) map with 1 inside a random shape and 0 elsewhere."""
    import cv2

    canvas = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    r = rng.uniform(0.12, 0.35) * min(h, w)
    kind = rng.integers(4)
    if kind == 0:  # ellipse
        axes = (int(round(r)), int(round(r * rng.uniform(0.5, 1.0))))
        cv2.ellipse(canvas, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        return canvas
    if kind == 1:  # rotated rectangle
        size = (2 * r, 2 * r * rng.uniform(0.4, 1.0))
        points = cv2.boxPoints(((cx, cy), size, float(rng.uniform(0, 180))))
    else:  # triangle, or a star-shaped polygon with 5-8 corners
        n = 3 if kind == 2 else int(rng.integers(5, 9))
        # Evenly spaced corners with jitter: random angles often give needle-thin slivers that
        # are nothing but ignore border.
        angles = (rng.uniform(0, 2 * np.pi) + np.arange(n) * (2 * np.pi / n)
                  + rng.uniform(-0.25, 0.25, size=n) * (2 * np.pi / n))
        radii = r * rng.uniform(0.6, 1.0, size=n)
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    return canvas


class SyntheticSegmentation(SegmentationDataset):
    """Generated shapes-on-texture segmentation data (see module docstring).

    Args:
        split: 'train' or 'val'; the two give different samples for the same seed.
        size: number of samples.
        num_classes: classes including background (class 0); 2..255.
        image_size: (lo, hi) or an int; height and width are drawn independently in [lo, hi].
        seed: dataset seed; samples are a pure function of (seed, split, index).
    """

    def __init__(self, split="train", size=64, num_classes=21, image_size=(48, 96), seed=0):
        if split not in SPLITS:
            raise ValueError("unknown synthetic split %r; expected one of %s"
                             % (split, ", ".join(SPLITS)))
        if int(size) != size or size < 0:
            raise ValueError("synthetic dataset size must be a non-negative integer, got %r"
                             % (size,))
        if int(num_classes) != num_classes or not 2 <= num_classes < IGNORE_LABEL:
            raise ValueError("synthetic num_classes must be an integer in [2, %d), got %r"
                             % (IGNORE_LABEL, num_classes))
        lo, hi = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
        if int(lo) != lo or int(hi) != hi or not 8 <= lo <= hi:
            raise ValueError("synthetic image_size must be an int or (lo, hi) with 8 <= lo <= hi, "
                             "got %r" % (image_size,))
        if int(seed) != seed or seed < 0:
            raise ValueError("synthetic seed must be a non-negative integer, got %r" % (seed,))
        self.split = split
        self.seed = int(seed)
        self.image_size = (int(lo), int(hi))
        self.num_classes = int(num_classes)
        self.class_names = synthetic_class_names(self.num_classes)
        self.palette = voc_palette()
        self.ids = ["synthetic-%s-%06d" % (split, i) for i in range(int(size))]
        self._styles = [_class_style(c) for c in range(self.num_classes)]

    def _read(self, index):
        image, mask = self.generate(index)
        return image, mask, self.ids[index], self.ids[index]

    def generate(self, index):
        """Returns the (image, mask) of sample `index` without the checks `load` adds."""
        import cv2

        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
        lo, hi = self.image_size
        h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

        # Background: a random colour (so it can match any class's) with a brightness gradient
        # and the low-contrast class-0 texture.
        bg = self._styles[0]
        gradient = rng.uniform(-0.5, 0.5) * yy + rng.uniform(-0.5, 0.5) * xx
        texture = _texture(bg, yy, xx, rng.uniform(0, 2 * np.pi))
        image = (rng.uniform(50, 200, size=3).astype(np.float32) + gradient[..., None]
                 + 0.3 * bg["contrast"] * texture[..., None])
        mask = np.zeros((h, w), np.uint8)

        kernel = np.ones((3, 3), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            c = int(rng.integers(1, self.num_classes))
            style = self._styles[c]
            region = _draw_shape(rng, h, w)
            inside = region.astype(bool)
            pattern = _texture(style, yy[inside], xx[inside], rng.uniform(0, 2 * np.pi))
            colour = style["colour"] + rng.uniform(-20, 20, size=3)
            image[inside] = colour + pattern[:, None] * style["contrast"]
            mask[inside] = c
            # Later shapes overwrite earlier ones, borders included, so the ignore band follows
            # the visible outlines.
            border = cv2.dilate(region, kernel) != cv2.erode(region, kernel)
            mask[border] = IGNORE_LABEL

        image += _NOISE_STD * rng.standard_normal(size=image.shape, dtype=np.float32)
        return np.clip(image, 0, 255).astype(np.uint8), mask

    def __repr__(self):
        return ("SyntheticSegmentation(split=%r, size=%d, num_classes=%d, image_size=%s, seed=%d)"
                % (self.split, len(self), self.num_classes, self.image_size, self.seed))
