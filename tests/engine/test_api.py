"""The Python API (`import deeplab`): cheap to import, loads a run directory or a params file,
segments numpy and PIL images with the numbers `deeplab predict` writes, and evaluates a folder
of images and masks as `deeplab eval` does."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import deeplab
from conftest import TINY, train_tiny
from deeplab import evaluate, predict
from deeplab.build import build_dataset
from deeplab.config import load_config
from deeplab.errors import ConfigError, ParamsError, UserError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 40-iteration run of the tiny config (4 synthetic val images)."""
    workdir = tmp_path_factory.mktemp("run")
    train_tiny(workdir, 40)
    return str(workdir)


def val_image(index):
    return build_dataset(load_config(TINY), "val").load(index)


def predicted_png(run_dir, tmp_path, image, overrides=()):
    """The class-index PNG `deeplab predict` writes for `image` (saved losslessly first)."""
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    Image.fromarray(image).save(str(src / "x.png"))
    out = tmp_path / "out"
    argv = [os.path.join(run_dir, "config.yaml"), str(src / "x.png"), "--checkpoint",
            os.path.join(run_dir, "final.params"), "--out", str(out), "--quiet"]
    predict.main(predict.parse_args(argv + (["--set"] + list(overrides) if overrides else [])))
    return np.asarray(Image.open(str(out / "x.png")))


def test_import_deeplab_does_not_import_mxnet():
    code = ("import sys, deeplab; assert 'mxnet' not in sys.modules, 'mxnet imported'; "
            "assert callable(deeplab.load) and 'mxnet' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("overrides", [(), ("eval.scales=[0.75,1.0]", "eval.flip=true",
                                            "eval.output_stride=16")])
def test_segment_gives_the_labels_deeplab_predict_writes(run_dir, tmp_path, overrides):
    image, _ = val_image(0)
    model = deeplab.load(run_dir, overrides=overrides)
    labels, probs = model.segment(image)
    expected = predicted_png(run_dir, tmp_path, image, overrides)
    assert len(np.unique(expected)) > 1  # a meaningful comparison, not one class
    assert labels.dtype == np.uint8 and labels.shape == image.shape[:2]
    np.testing.assert_array_equal(labels, expected)
    assert probs.dtype == np.float32 and probs.shape == (5,) + image.shape[:2]
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs.argmax(axis=0), labels)
    assert model.output_stride == (16 if overrides else 8)
    assert model.class_names == ["background", "shape1", "shape2", "shape3", "shape4"]


def test_pil_images_and_batches_of_mixed_sizes(run_dir):
    model = deeplab.load(run_dir)
    a, _ = val_image(1)
    b = np.ascontiguousarray(a[5:42, 7:60])  # another size
    c, _ = val_image(2)
    single = [model.segment(im) for im in (a, b, c)]
    batch = model.segment_batch([Image.fromarray(a), b, c], batch_size=2)
    assert len(batch) == 3
    for (labels, probs), (l1, p1) in zip(batch, single):
        np.testing.assert_array_equal(labels, l1)
        np.testing.assert_allclose(probs, p1, atol=1e-5)
    with pytest.raises(UserError, match=r"image 1: expected an RGB image.*shape \(4, 4\)"):
        model.segment_batch([a, np.zeros((4, 4), np.uint8)])
    with pytest.raises(UserError, match="float32"):
        model.segment(a.astype(np.float32))


def test_load_a_params_file_with_its_config_or_the_one_of_its_run(run_dir, tmp_path):
    final = os.path.join(run_dir, "final.params")
    image, _ = val_image(0)
    reference = deeplab.load(run_dir).segment(image)[0]
    explicit = deeplab.load(final, config=TINY)
    assert explicit.checkpoint == final
    np.testing.assert_array_equal(explicit.segment(image)[0], reference)
    ckpts = [n for n in os.listdir(os.path.join(run_dir, "checkpoints"))
             if n.endswith(".params")]
    assert ckpts  # checkpoints/iter_*.params: config.yaml is found one level up
    model = deeplab.load(os.path.join(run_dir, "checkpoints", ckpts[0]))
    assert model.config["model"]["name"] == "deeplabv3_tiny_v2"
    # Errors, one line each.
    lone = tmp_path / "lone.params"
    lone.write_bytes(open(final, "rb").read())
    with pytest.raises(ConfigError, match="no config for .*lone.params: pass config="):
        deeplab.load(str(lone))
    with pytest.raises(ParamsError, match="does not exist"):
        deeplab.load(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ParamsError, match="is not a .params file"):
        deeplab.load(str(tmp_path / "notes.txt"), config=TINY)
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "checkpoints" / "iter_100.params").write_bytes(b"")
    with pytest.raises(ParamsError, match=r"has no final.params .*checkpoints/iter_100.params"):
        deeplab.load(str(unfinished))


def test_evaluate_a_folder_equals_deeplab_eval_on_the_same_images(run_dir, tmp_path):
    cfg = load_config(os.path.join(run_dir, "config.yaml"))
    val = build_dataset(cfg, "val")
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(len(val)):
        image, mask = val.load(i)
        Image.fromarray(image).save(str(images / ("%02d.png" % i)))  # lossless
        Image.fromarray(mask, mode="L").save(str(masks / ("%02d.png" % i)))
    model = deeplab.load(run_dir)
    res = model.evaluate(str(images), str(masks), img_suffix=".png")
    reference = evaluate.main(evaluate.parse_args(
        [os.path.join(run_dir, "config.yaml"), "--checkpoint",
         os.path.join(run_dir, "final.params"), "--quiet"]))
    assert res["num_images"] == reference["num_images"] == len(val) == 4
    assert res["confusion_matrix"] == reference["confusion_matrix"]
    assert res["mIoU"] == reference["mIoU"] and res["class_names"] == reference["class_names"]
    assert model.evaluate()["confusion_matrix"] == reference["confusion_matrix"]
    with pytest.raises(UserError, match="both images and masks"):
        model.evaluate(str(images))
    with pytest.raises(UserError, match="masks folder .*nowhere does not exist"):
        model.evaluate(str(images), str(tmp_path / "nowhere"))


def test_predict_and_the_api_name_and_colour_with_the_folder_datasets_classes(tmp_path):
    """A model trained on the folder dataset: predict's PNGs carry data.palette, the API gives
    data.classes and data.palette."""
    import mxnet as mx
    import yaml

    from deeplab.build import evaluation_network

    colours = [[0, 0, 0], [250, 10, 10], [10, 250, 10]]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "deeplabv3_tiny_v2", "output_stride": 8, "head_channels": 16},
        "data": {"name": "folder", "root": str(tmp_path / "unused"), "num_workers": 0,
                 "classes": ["background", "cat", "dog"], "palette": colours}}))
    cfg = load_config(str(config))
    assert cfg["model"]["num_classes"] == 3
    params = str(tmp_path / "final.params")
    evaluation_network(cfg, mx.cpu(), seed=0).save_parameters(params)
    image, _ = val_image(0)
    Image.fromarray(image).save(str(tmp_path / "x.png"))
    predict.main(predict.parse_args([str(config), str(tmp_path / "x.png"), "--checkpoint",
                                     params, "--out", str(tmp_path / "out"), "--quiet"]))
    with Image.open(str(tmp_path / "out" / "x.png")) as png:
        assert png.getpalette()[:9] == [c for rgb in colours for c in rgb]
        pred = np.asarray(png)
    model = deeplab.load(str(tmp_path))  # a run directory: config.yaml + final.params
    assert model.class_names == ["background", "cat", "dog"]
    assert model.palette[:9] == [c for rgb in colours for c in rgb]
    np.testing.assert_array_equal(model.segment(image)[0], pred)
