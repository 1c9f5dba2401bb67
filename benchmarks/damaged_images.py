"""What finding damaged (truncated) images costs, and which checks find them.

    .venv/bin/python benchmarks/damaged_images.py [--images 200] [--size 500 375] [--out J]

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
check to VOC trainaug's 10,582 samples: the per-sample cost measured here times their number
(VOC itself is not read: it is not on this machine), in one process, and halved for two
processes as a bound (that needs two idle cores). --out writes the figures as JSON
(benchmarks/results/damaged_images.json through benchmarks/run_all.py).
"""
import argparse
import datetime
import json
import os
import platform
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
    p.add_argument("--out", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    command = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
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
        cuts = detection(jpgs[0], folder)
        for cut, total, marker, pil, cv in cuts:
            print("  %7d/%7d  %-6s  %-10s  %-14s" % (cut, total, marker, pil, cv))
        marker_s = figures["whole + marker"] * TRAINAUG / 1000
        full = figures["sample (check-data)"] * TRAINAUG / 1000
        print("VOC trainaug (%d samples), extrapolated from the per-sample figures above: the "
              "marker alone %.1f s; a full check (deeplab check-data) %.0f s in one process, "
              "at best %.0f s in 2" % (TRAINAUG, marker_s, full, full / 2))
    if args.out:
        report = {
            "benchmark": "damaged_images",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "opencv": cv2.__version__,
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
            "command": command,
            "params": {"images": args.images, "size": list(args.size),
                       "mean_jpeg_kb": round(float(mean_kb), 1), "passes": 3},
            "per_image_ms": figures,
            "truncations": [{"bytes_kept": cut, "bytes": total, "marker": marker,
                             "pil_decode": pil, "opencv_refuses": cv}
                            for cut, total, marker, pil, cv in cuts],
            "extrapolation": {"samples": TRAINAUG, "what": "VOC trainaug, from the per-sample "
                              "figures measured here (VOC itself not read)",
                              "marker_s": marker_s, "full_check_1_process_s": full,
                              "full_check_2_processes_s_at_best": full / 2},
        }
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, allow_nan=False)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
