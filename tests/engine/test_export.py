"""`deeplab export`: the MXNet symbol and the ONNX model compute the Gluon network's logits."""
import os

import mxnet as mx
import numpy as np
import pytest

from conftest import PAGE, TINY, fill_leaving, train_tiny
from deeplab import cli, export
from deeplab.build import evaluation_network
from deeplab.config import eval_stride, load_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("run"), 4)


def run_export(ckpt, prefix, extra=(), overrides=()):
    args = [TINY, "--checkpoint", ckpt, "--out", str(prefix)] + list(extra)
    if overrides:
        args += ["--set"] + list(overrides)
    return export.main(export.parse_args(args))


def gluon_logits(ckpt, x, overrides=()):
    """The logits of the evaluation network built as `deeplab eval` builds it."""
    cfg = load_config(TINY, list(overrides))
    net = evaluation_network(cfg, mx.cpu(), output_stride=eval_stride(cfg), params=ckpt)
    return net(mx.nd.array(x)).asnumpy()


def image(h, w, seed=0):
    return np.random.RandomState(seed).normal(size=(1, 3, h, w)).astype(np.float32)


def test_symbol_gives_the_gluon_logits_at_any_size(checkpoint, tmp_path):
    prefix = tmp_path / "out" / "tiny"
    overrides = ["eval.output_stride=16"]
    files = run_export(checkpoint, prefix, overrides=overrides)
    assert files == [str(prefix) + "-symbol.json", str(prefix) + "-0000.params",
                     str(prefix) + "-preprocessing.json"]
    assert sorted(os.listdir(tmp_path / "out")) == ["tiny-0000.params",
                                                    "tiny-preprocessing.json", "tiny-symbol.json"]
    net = mx.gluon.SymbolBlock.imports(str(prefix) + "-symbol.json", ["data"],
                                       str(prefix) + "-0000.params")
    # Traced at the crop size (64 x 64); the symbol takes any size, odd ones included.
    for h, w in ((64, 64), (37, 53)):
        x = image(h, w)
        got, want = net(mx.nd.array(x)).asnumpy(), gluon_logits(checkpoint, x, overrides)
        assert got.shape == (1, 5, h, w)
        assert np.abs(got - want).max() <= 1e-5
    # The evaluation stride is exported, not the model's 8: the logits differ from stride 8's.
    assert np.abs(got - gluon_logits(checkpoint, x)).max() > 1e-3


def reference_logits(path, x):
    """Runs an ONNX file with onnx's own reference evaluator (onnxruntime is not installable
    alongside MXNet 1.9.1's numpy)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(path)
    for node in model.graph.node:
        # The evaluator indexes Resize's optional roi even when it is the empty tensor mx.onnx
        # writes; roi only matters for tf_crop_and_resize, so leaving it out is equivalent.
        if node.op_type == "Resize":
            node.input[1] = ""
    return ReferenceEvaluator(model).run(None, {"data": x})[0]


@pytest.mark.parametrize("head", ["aspp", "vortex"])
def test_onnx_at_an_odd_static_size(head, checkpoint, tmp_path):
    onnx = pytest.importorskip("onnx")
    overrides = ["model.head=%s" % head]
    if head != "aspp":  # the trained checkpoint is an ASPP model
        cfg = load_config(TINY, overrides)
        checkpoint = str(tmp_path / "vortex.params")
        evaluation_network(cfg, mx.cpu(), seed=0).save_parameters(checkpoint)
    prefix = str(tmp_path / "tiny")
    files = run_export(checkpoint, prefix, ["--onnx", "--size", "19", "27"], overrides)
    assert files[-1] == prefix + ".onnx"
    model = onnx.load(prefix + ".onnx")
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 19, 27]
    x = image(19, 27, seed=1)
    got = reference_logits(prefix + ".onnx", x)
    assert got.shape == (1, 5, 19, 27)
    assert np.abs(got - gluon_logits(checkpoint, x, overrides)).max() <= 1e-4


def test_bad_output_prefix_and_checkpoint_fail_in_one_line(checkpoint, tmp_path, capsys):
    base = ["export", TINY, "--checkpoint", checkpoint, "--out"]
    assert cli.main(base + [str(tmp_path)]) == 2
    assert "expected a file name prefix" in capsys.readouterr().err
    missing = str(tmp_path / "none.params")
    assert cli.main(["export", TINY, "--checkpoint", missing, "--out",
                     str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "deeplab export: error: params file %s does not exist" % missing
    assert os.listdir(tmp_path) == []


def test_the_files_are_what_hybridblock_export_writes(checkpoint, tmp_path):
    """export() writes the graph and the parameters itself, to check each file before it is
    renamed into place: they are HybridBlock.export's, the symbol file byte for byte."""
    cfg = load_config(TINY)
    net = evaluation_network(cfg, mx.cpu(), output_stride=eval_stride(cfg), params=checkpoint)
    ours = export.export(net, str(tmp_path / "ours" / "tiny"), (64, 64))
    net.export(str(tmp_path / "gluon"), epoch=0)
    with open(ours[0], "rb") as a, open(str(tmp_path / "gluon-symbol.json"), "rb") as b:
        assert a.read() == b.read()
    got, want = mx.nd.load(ours[1]), mx.nd.load(str(tmp_path / "gluon-0000.params"))
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k].asnumpy(), want[k].asnumpy(), err_msg=k)
    assert sorted(os.listdir(tmp_path / "ours")) == ["tiny-0000.params", "tiny-symbol.json"]


@pytest.mark.parametrize("moment", ["empty", "half", "all-but-the-last-page"])
def test_a_disk_that_fills_during_an_export_is_the_full_disk_error_and_leaves_nothing(
        checkpoint, tmp_path, tmpfs, capsys, moment):
    """`deeplab export` onto a disk that fills at the first byte, midway through the files, or
    within the last page of the parameters (where MXNet's writer returned without an error and
    left the file cut short, issue 19): the documented one-line full-disk error naming the
    file, exit 2, and neither a PREFIX-* file nor the staging folder left."""
    base = ["export", TINY, "--checkpoint", checkpoint, "--out"]
    assert cli.main(base + [str(tmp_path / "roomy" / "tiny")]) == 0
    names = ("tiny-symbol.json", "tiny-0000.params")  # written in this order
    pages = [-(-os.path.getsize(tmp_path / "roomy" / n) // PAGE) for n in names]
    room = {"empty": 0, "half": sum(pages) // 2}.get(moment, sum(pages) - 1)
    disk = tmpfs(4 << 20)
    (disk / "out").mkdir()
    fill_leaving(disk, room * PAGE)
    capsys.readouterr()
    assert cli.main(base + [str(disk / "out" / "tiny")]) == 2
    err = capsys.readouterr().err
    short = names[0] if room < pages[0] else names[1]
    assert err.startswith("deeplab export: error: cannot write %s: the disk is full (" % (
        disk / "out" / short)), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert os.listdir(disk / "out") == []  # no PREFIX-* file, no .export-* staging folder
    assert sorted(os.listdir(disk)) == ["filler", "out"]


def test_raw_pixels_through_the_documented_steps_give_predicts_classes(checkpoint, tmp_path):
    """A deployer who reads only PREFIX-preprocessing.json: uint8 RGB pixels through its steps
    into the exported symbol give the classes `deeplab predict` writes."""
    import json

    from PIL import Image

    from deeplab import predict
    from deeplab.build import build_dataset

    prefix = tmp_path / "exp" / "tiny"
    run_export(checkpoint, prefix)
    with open(str(prefix) + "-preprocessing.json") as f:
        pre = json.load(f)
    assert pre["input"]["channel_order"] == "RGB" and pre["input"]["layout"] == "NCHW"
    assert pre["class_names"] == list(build_dataset(load_config(TINY), "val").class_names)
    raw, _ = build_dataset(load_config(TINY), "val").load(0)  # uint8 RGB (H, W, 3)
    raw = np.ascontiguousarray(raw[:45, :51])  # an odd size, not the traced one
    path = tmp_path / "img.png"
    Image.fromarray(raw).save(str(path))
    # The documented steps, literally.
    x = raw.astype(np.float32) * pre["scale"]
    x = (x - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    x = x.transpose(2, 0, 1)[None].astype(pre["input"]["dtype"])
    net = mx.gluon.SymbolBlock.imports(str(prefix) + "-symbol.json", [pre["input"]["name"]],
                                       str(prefix) + "-0000.params")
    logits = net(mx.nd.array(x)).asnumpy()
    classes = logits.argmax(axis=1)[0]
    # The steps are predict's preprocessing: the same logits, not only the same argmax (a
    # barely trained model predicts nearly one class).
    from deeplab.data import EvalTransform

    assert np.abs(logits - gluon_logits(checkpoint, EvalTransform()(raw)[None])).max() <= 1e-5
    predict.main(predict.parse_args([TINY, str(path), "--checkpoint", checkpoint, "--out",
                                     str(tmp_path / "pred"), "--set", "data.num_workers=0"]))
    with Image.open(tmp_path / "pred" / "img.png") as png:
        np.testing.assert_array_equal(np.asarray(png), classes)


def test_class_names_come_from_the_config_where_the_data_is_not(checkpoint, tmp_path):
    """Exported on a machine without the dataset (a folder dataset whose root does not exist
    here), PREFIX-preprocessing.json still names the classes: they are the config's."""
    import json

    names = ["background", "road", "car", "tree", "sky"]
    prefix = tmp_path / "exp" / "tiny"
    run_export(checkpoint, prefix, overrides=[
        "data.name=folder", "data.root=%s" % (tmp_path / "not-here"),
        "data.classes=[%s]" % ",".join(names)])
    with open(str(prefix) + "-preprocessing.json") as f:
        assert json.load(f)["class_names"] == names
