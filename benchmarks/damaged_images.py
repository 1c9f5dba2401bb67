"""What finding damaged (truncated) images costs, and which checks find them.

    .venv/bin/python benchmarks/damaged_images.py [--images 200] [--size 500 375]

Writes --images JPEGs of VOC's typical size (500 x 375, quality 90, smooth random content:
~40-100 KB like VOC's photos) and PNG palette masks to a temporary folder (in the page cache,
so this measures CPU, not a disk), then prints, per image:

- tail: open, read the last 64 bytes, look for the end-of-image marker (what a pre-flight
  could afford on a network file system);
- whole + marker: read the whole file and `deeplab.data.base.image_damage` (what training's
  `read_image` adds before decoding);
- PIL decode: `Image.open(path).load()`, which raises on a truncated file;
- read_image: the check plus OpenCV's decode (what training pays per sample anyway);
- sample: read_image plus the PNG mask and its checks (what `deeplab check-data` does per
  sample), one process;

then, for one image cut at 10 points (10% ... 99% of its bytes, and just its last 2 bytes), which
checks report it: the end-of-image marker, PIL's decode, or OpenCV (which returns an image
without an error, "Premature end of JPEG file" on stderr); and the extrapolation of a full
check to VOC trainaug's 10,582 samples.
"""
import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np
from PIL import Image

from deeplab.data.base import image_damage, read_image, read_png_mask
from deeplab.data.voc import voc_palette

TRAINAUG = 10582


def write_samples(folder, n, size):
    rng = np.random.RandomState(0)
    w, h = size
    paths = []
    for i in range(n):
        small = rng.randint(0, 256, (h // 16, w // 16, 3)).astype(np.uint8)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image.astype(int) + rng.randint(-12, 13, image.shape), 0, 255)
        jpg = os.path.join(folder, "%05d.jpg" % i)
        cv2.imwrite(jpg, image.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4:h // 2, w // 4:w // 2] = 1 + i % 20
        png = os.path.join(folder, "%05d.png" % i)
        m = Image.fromarray(mask, mode="P")
        m.putpalette(voc_palette())
        m.save(png)
        paths.append((jpg, png))
    return paths


def tail(path):
    with open(path, "rb") as f:
        f.seek(-64, os.SEEK_END)
        return f.read().rstrip(b"\0").endswith(b"\xff\xd9")


def whole(path):
    with open(path, "rb") as f:
        return image_damage(f.read())


def pil_decode(path):
    with Image.open(path) as im:
        im.load()


def sample(pair):
    read_image(pair[0])
    read_png_mask(pair[1])


def per_image_ms(fn, items, reps=3):
    best = float("inf")
    for _ in range(reps):
        tic = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - tic)
    return 1000 * best / len(items)


def detection(path, folder):
    with open(path, "rb") as f:
        data = f.read()
    rows = []
    cuts = [int(len(data) * q) for q in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)]
    for cut in cuts + [len(data) - 2]:
        cut_path = os.path.join(folder, "cut.jpg")
        with open(cut_path, "wb") as f:
            f.write(data[:cut])
        marker = image_damage(data[:cut]) is not None
        try:
            pil_decode(cut_path)
            pil = False
        except OSError:
            pil = True
        decoded = cv2.imdecode(np.frombuffer(data[:cut], np.uint8), cv2.IMREAD_COLOR)
        rows.append((cut, len(data), marker, pil, decoded is None))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as folder:
        pairs = write_samples(folder, args.images, args.size)
        jpgs = [j for j, _ in pairs]
        mean_kb = np.mean([os.path.getsize(j) for j in jpgs]) / 1024
        print("%d JPEGs of %dx%d, %.0f KB on average; ms per image (best of 3 passes, one "
              "process):" % (len(jpgs), args.size[0], args.size[1], mean_kb))
        costs = [("tail (last 64 bytes)", tail, jpgs), ("whole + marker", whole, jpgs),
                 ("PIL decode", pil_decode, jpgs), ("read_image (marker + OpenCV)",
                                                      read_image, jpgs),
                 ("sample (check-data)", sample, pairs)]
        figures = {}
        for name, fn, items in costs:
            figures[name] = per_image_ms(fn, items)
            print("  %-30s %8.3f ms" % (name, figures[name]))
        print("truncated copies of %s: found by" % os.path.basename(jpgs[0]))
        print("  %15s  %-6s  %-10s  %-14s" % ("bytes kept", "marker", "PIL decode",
                                               "OpenCV refuses"))
        for cut, total, marker, pil, cv in detection(jpgs[0], folder):
            print("  %7d/%7d  %-6s  %-10s  %-14s" % (cut, total, marker, pil, cv))
        full = figures["sample (check-data)"] * TRAINAUG / 1000
        print("VOC trainaug (%d samples): the marker alone %.1f s; a full check (deeplab "
              "check-data) %.0f s in one process, %.0f s in 2" % (
                  TRAINAUG, figures["whole + marker"] * TRAINAUG / 1000, full, full / 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
