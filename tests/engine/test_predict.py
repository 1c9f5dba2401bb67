"""`deeplab predict` on the tiny model: the PNGs equal the network's argmax computed
independently, any image size, folders, batching with multi-scale + flip, bad inputs, and the
images split across Horovod workers."""
import os
import sys

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from conftest import TINY, train_tiny
from deeplab import cli, evaluate, predict
from deeplab.build import build_dataset, evaluation_network
from deeplab.config import eval_stride, load_config
from deeplab.data import EvalTransform, voc_palette
from deeplab.errors import DatasetError

FAST = ["data.num_workers=0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """final.params of a 40-iteration run: enough for predictions of several classes."""
    return train_tiny(tmp_path_factory.mktemp("run"), 40)


def synthetic_image(index, size=None):
    """A synthetic validation image (shapes the model was trained on), optionally its centre
    crop of size=(height, width) (a crop keeps the scale the model knows)."""
    image, _ = build_dataset(load_config(TINY), "val").load(index)
    if size is not None:
        top, left = (image.shape[0] - size[0]) // 2, (image.shape[1] - size[1]) // 2
        image = np.ascontiguousarray(image[top:top + size[0], left:left + size[1]])
    return image


def save_png(path, image):
    Image.fromarray(image).save(str(path))  # lossless: the command sees these exact pixels
    return str(path)


def run_predict(ckpt, out, inputs, extra=(), overrides=()):
    args = ([TINY] + [str(i) for i in inputs] + ["--checkpoint", ckpt, "--out", str(out)]
            + list(extra) + ["--set"] + FAST + list(overrides))
    return predict.main(predict.parse_args(args))


def expected_classes(ckpt, image, overrides=()):
    """Argmax of the logits of a network built here, as `deeplab eval` builds it."""
    cfg = load_config(TINY, list(FAST) + list(overrides))
    net = evaluation_network(cfg, mx.cpu(), output_stride=eval_stride(cfg), params=ckpt)
    x = mx.nd.array(EvalTransform()(image)[None])
    prob = evaluate.predict(net, x, cfg["eval"]["scales"], cfg["eval"]["flip"])
    return prob.argmax(axis=1)[0].asnumpy().astype(np.uint8)


def check_outputs(out, stem, image, expected):
    with Image.open(os.path.join(out, stem + ".png")) as png:
        assert png.mode == "P"
        assert png.size == (image.shape[1], image.shape[0])
        assert png.getpalette()[:3 * 256] == voc_palette()
        pred = np.asarray(png)
    np.testing.assert_array_equal(pred, expected)
    with Image.open(os.path.join(out, stem + "_overlay.jpg")) as overlay:
        assert overlay.format == "JPEG" and overlay.mode == "RGB"
        assert overlay.size == png.size


def test_png_is_the_networks_argmax_at_the_image_size(checkpoint, tmp_path):
    image = synthetic_image(0)
    odd = synthetic_image(1, size=(37, 53))
    inputs = [save_png(tmp_path / "a.png", image), save_png(tmp_path / "odd.png", odd)]
    res = run_predict(checkpoint, tmp_path / "out", inputs)
    assert res["images"] == 2
    for stem, im in (("a", image), ("odd", odd)):
        expected = expected_classes(checkpoint, im)
        assert len(np.unique(expected)) > 1  # a meaningful comparison, not one class
        check_outputs(tmp_path / "out", stem, im, expected)
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "a_overlay.jpg", "odd.png",
                                                    "odd_overlay.jpg"]


def test_folder_batched_multiscale_flip_and_eval_stride(checkpoint, tmp_path):
    # Three images of one size (a batch of 2 and one of 1) and one of another size.
    folder = tmp_path / "images"
    folder.mkdir()
    images = {"s%d" % i: synthetic_image(i, size=(41, 47)) for i in range(3)}
    images["big"] = synthetic_image(3)
    for stem, im in images.items():
        save_png(folder / (stem + ".png"), im)
    (folder / "notes.txt").write_text("not an image")
    overrides = ["eval.scales=[0.75,1.0]", "eval.flip=true", "eval.output_stride=16"]
    res = run_predict(checkpoint, tmp_path / "out", [folder], ["--batch", "2"], overrides)
    assert res["images"] == 4
    for stem, im in images.items():
        check_outputs(tmp_path / "out", stem, im, expected_classes(checkpoint, im, overrides))


def test_overlay_blends_image_and_class_colours(checkpoint, tmp_path):
    image = synthetic_image(2)
    run_predict(checkpoint, tmp_path / "out", [save_png(tmp_path / "in.png", image)])
    pred = np.asarray(Image.open(tmp_path / "out" / "in.png"))
    colours = np.array(voc_palette(), np.float32).reshape(-1, 3)[pred]
    overlay = np.asarray(Image.open(tmp_path / "out" / "in_overlay.jpg"), np.float32)
    blend = 0.5 * image + 0.5 * colours
    # JPEG's loss on these noisy images is about 4 grey levels; the plain image is ~50 away.
    assert np.abs(overlay - blend).mean() < 6
    assert np.abs(overlay - image).mean() > 30


def test_duplicate_stems_are_refused_naming_both(checkpoint, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    pa = save_png(a / "x.png", synthetic_image(0))
    pb = save_png(b / "x.jpg", synthetic_image(1))
    with pytest.raises(DatasetError) as err:
        run_predict(checkpoint, tmp_path / "out", [a, b])
    assert pa in str(err.value) and pb in str(err.value)
    assert not (tmp_path / "out").exists()
    # The same file named twice is predicted once.
    res = run_predict(checkpoint, tmp_path / "out", [pa, a])
    assert res["images"] == 1


def test_bad_inputs_fail_in_one_line(checkpoint, tmp_path, capsys):
    good = save_png(tmp_path / "good.png", synthetic_image(0))
    missing = str(tmp_path / "missing.jpg")
    base = ["predict", TINY, "--checkpoint", checkpoint, "--out", str(tmp_path / "out")]
    assert cli.main(base + [good, missing]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "deeplab predict: error: input %s does not exist" % missing
    (tmp_path / "empty").mkdir()
    assert cli.main(base + [str(tmp_path / "empty")]) == 2
    assert "holds no images" in capsys.readouterr().err
    no_ckpt = str(tmp_path / "none.params")
    assert cli.main(["predict", TINY, good, "--checkpoint", no_ckpt, "--out",
                     str(tmp_path / "out")]) == 2
    assert no_ckpt in capsys.readouterr().err


@pytest.mark.parametrize("where", ["the folder", "inside it", "a file's folder"])
def test_out_that_would_write_over_an_input_is_refused_and_nothing_changes(checkpoint, tmp_path,
                                                                          capsys, where):
    """Regression: --out equal to the input folder replaced the images with masks of the same
    name; a second run then failed on the masks."""
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = [save_png(folder / "a.png", synthetic_image(0)),
             save_png(folder / "b.png", synthetic_image(1))]
    before = {p: open(p, "rb").read() for p in paths}
    inputs, out = {"the folder": ([str(folder)], folder),
                   "inside it": ([str(folder)], folder / "masks"),
                   "a file's folder": (paths, str(folder) + "/./")}[where]
    assert cli.main(["predict", TINY, *inputs, "--checkpoint", checkpoint,
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("deeplab predict: error: --out ")
    assert ("input folder %s" % folder if where != "a file's folder"
            else "folder of the input %s" % paths[0]) in err
    assert sorted(os.listdir(folder)) == ["a.png", "b.png"]
    assert {p: open(p, "rb").read() for p in paths} == before


def test_out_as_an_input_files_folder_is_refused_and_the_users_png_kept(checkpoint, tmp_path,
                                                                        capsys, monkeypatch):
    """Regression: INPUT photos/a.jpg with --out photos silently replaced the user's own
    photos/a.png (not an input) with the mask of a.jpg. A folder inside it is fine."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(synthetic_image(0)).save(str(folder / "a.jpg"))
    mine = save_png(folder / "a.png", synthetic_image(1))  # the user's, not an input
    before = open(mine, "rb").read()
    monkeypatch.chdir(tmp_path)
    for out in ("photos", "photos/.", str(folder)):
        assert cli.main(["predict", TINY, "photos/a.jpg", "--checkpoint", checkpoint,
                         "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("deeplab predict: error: --out %s is the folder of the input "
                       "photos/a.jpg: the masks would be written among your files (and over any "
                       "named <stem>.png or <stem>_overlay.jpg); choose another folder" % out)
    assert open(mine, "rb").read() == before
    assert sorted(os.listdir(folder)) == ["a.jpg", "a.png"]
    assert cli.main(["predict", TINY, "photos/a.jpg", "--checkpoint", checkpoint, "--quiet",
                     "--out", "photos/masks"]) == 0
    assert sorted(os.listdir(folder / "masks")) == ["a.png", "a_overlay.jpg"]
    assert open(mine, "rb").read() == before


def test_progress_bar_only_on_a_terminal_and_not_quiet(checkpoint, tmp_path, capsys,
                                                       monkeypatch):
    image = save_png(tmp_path / "a.png", synthetic_image(0))
    bar = "predict (rank 0's share)"
    run_predict(checkpoint, tmp_path / "o1", [image])
    assert bar not in capsys.readouterr().err  # stderr is not a terminal here
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run_predict(checkpoint, tmp_path / "o2", [image], ["--quiet"])
    assert bar not in capsys.readouterr().err
    run_predict(checkpoint, tmp_path / "o3", [image])
    assert bar in capsys.readouterr().err


def test_images_split_across_horovod_workers(checkpoint, tmp_path, dl):
    folder = tmp_path / "images"
    folder.mkdir()
    images = {"i%d" % i: synthetic_image(i, size=(33 + 2 * (i % 2), 45)) for i in range(5)}
    for stem, im in images.items():
        save_png(folder / (stem + ".png"), im)
    out = tmp_path / "out"
    proc = dl.deeplab("launch", "horovod", "-np", "2", "--", "predict", TINY, folder,
                      "--checkpoint", checkpoint, "--out", out, "--batch", "2",
                      *dl.sets(*FAST), timeout=120)
    # The shares add up to the 5 images and together cover them: each is written once.
    summary = [line for line in proc.stdout.splitlines() if "segmentations" in line]
    assert len(summary) == 1 and "wrote 5 segmentations" in summary[0], proc.stdout
    assert "2 workers" in summary[0]
    assert sorted(os.listdir(out)) == sorted(
        name for stem in images for name in (stem + ".png", stem + "_overlay.jpg"))
    for stem, im in images.items():
        check_outputs(out, stem, im, expected_classes(checkpoint, im))


def test_masks_take_the_datasets_palette_when_it_has_one(checkpoint, tmp_path, monkeypatch):
    from deeplab import predict

    # The palette predict takes from the config's dataset (build.dataset_classes: VOC's for the
    # synthetic data, data.palette for a folder dataset), replaced by one of the test's.
    colours = [(0, 0, 0), (250, 10, 10), (10, 250, 10), (10, 10, 250), (200, 200, 0)]
    flat = [v for c in colours for v in c]
    real = predict.dataset_classes
    monkeypatch.setattr(predict, "dataset_classes",
                        lambda cfg: (real(cfg)[0], flat + [0] * (768 - len(flat))))
    image = save_png(tmp_path / "a.png", synthetic_image(0))
    run_predict(checkpoint, tmp_path / "out", [image])
    with Image.open(tmp_path / "out" / "a.png") as png:
        assert png.getpalette()[:15] == [v for c in colours for v in c]
        pred = np.asarray(png)
    with Image.open(tmp_path / "out" / "a_overlay.jpg") as overlay:
        blend = np.asarray(overlay, np.float32)
    def error(palette):
        colours = np.asarray(palette, np.float32).reshape(-1, 3)[pred]
        return np.abs(blend - (0.5 * synthetic_image(0) + 0.5 * colours)).mean()

    # The overlay blends the dataset's colours (JPEG leaves a few levels), not VOC's.
    assert error(colours) < 6 and error(voc_palette()) > 3 * error(colours)
