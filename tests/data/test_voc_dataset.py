"""VOC 2012 / SBD: split composition, file formats and the errors for bad data trees."""
import os

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image

from deeplab.data import DatasetError, VOC_CLASSES, VOCSegmentation, get_dataset

def test_train_and_val_follow_voc_lists(voc_tree):
    train = get_dataset("voc", split="train", root=voc_tree.root)
    val = get_dataset("voc", split="val", root=voc_tree.root)
    assert train.ids == ["a", "b", "c"]
    assert val.ids == ["v1", "v2"]
    assert train.num_classes == 21 and len(train.class_names) == 21
    assert train.class_names[0] == "background" and train.class_names[15] == "person"
    assert list(VOC_CLASSES) == train.class_names


def test_trainaug_is_union_minus_voc_val(voc_tree):
    ds = get_dataset("voc", split="trainaug", root=voc_tree.root)
    # SBD train {b,s1,s2,v1} | SBD val {s3,v2,s1} | VOC train {a,b,c}, minus VOC val {v1,v2}.
    assert ds.ids == ["a", "b", "c", "s1", "s2", "s3"]
    assert len(ds) == 6


def test_trainaug_prefers_voc_annotation_and_image(voc_tree):
    ds = VOCSegmentation(voc_tree.root, split="trainaug")
    by_id = dict(zip(ds.ids, range(len(ds))))
    # b is in both VOC train and SBD train: VOC's PNG and JPEG win.
    image, mask = ds.load(by_id["b"])
    assert set(np.unique(mask)) == {0, voc_tree.voc_class, 255}
    assert np.abs(image.astype(int) - voc_tree.voc_colour).max() <= 3
    assert ds.mask_paths[by_id["b"]] == voc_tree.voc_mask("b")
    # s1 only exists in SBD: its .mat and SBD's image are used.
    image, mask = ds.load(by_id["s1"])
    assert set(np.unique(mask)) == {0, voc_tree.sbd_class, 255}
    assert np.abs(image.astype(int) - voc_tree.sbd_colour).max() <= 3
    assert ds.image_paths[by_id["s1"]] == voc_tree.sbd_image("s1")


def test_voc_load_returns_palette_indices_not_colours(voc_tree):
    ds = VOCSegmentation(voc_tree.root, split="val")
    image, mask = ds.load(0)
    assert image.dtype == np.uint8 and image.shape == (20, 28, 3)
    assert mask.dtype == np.uint8 and mask.shape == (20, 28)
    assert set(np.unique(mask)) == {0, voc_tree.voc_class, 255}
    assert mask[8, 10] == voc_tree.voc_class
    # The file holds the index; reading it as a colour image gives the palette colour instead.
    bgr = cv2.imread(voc_tree.voc_mask("v1"))
    assert tuple(bgr[8, 10][::-1]) == (192, 128, 128)
    # RGB order: the JPEG was written as RGB (200, 40, 40).
    assert np.abs(image[0, 0].astype(int) - voc_tree.voc_colour).max() <= 3


def test_generated_mat_has_real_sbd_layout(voc_tree):
    mat = scipy.io.loadmat(voc_tree.sbd_mask("s1"))
    seg = mat["GTcls"][0]["Segmentation"][0]
    assert seg.dtype == np.uint8 and seg.shape == (20, 28)
    assert set(mat["GTcls"].dtype.names) == {"Boundaries", "Segmentation", "CategoriesPresent"}


def test_gluoncv_layout_is_accepted(tmp_path, tree_builder):
    tree = tree_builder(tmp_path, ["a"], ["v"], ["s"], ["t"], gluoncv_layout=True)
    assert VOCSegmentation(tree.root, "trainaug").ids == ["a", "s", "t"]


def test_trainaug_excludes_voc_val_leaked_by_gluoncv(tmp_path, tree_builder):
    # SBD's train list contains "v1", a VOC12 val image.
    tree = tree_builder(tmp_path, voc_train=["a"], voc_val=["v1", "v2"],
                        sbd_train=["s1", "v1"], sbd_val=["s2"], gluoncv_layout=True)
    ours = VOCSegmentation(tree.root, "trainaug")
    assert "v1" not in ours.ids
    assert ours.ids == ["a", "s1", "s2"]

    # GluonCV's pascal_aug 'train' split reads SBD's trainval list wholesale: it trains on v1.
    from gluoncv.data import VOCAugSegmentation

    theirs = VOCAugSegmentation(root=tree.root, split="train")
    theirs_ids = [os.path.splitext(os.path.basename(p))[0] for p in theirs.images]
    assert "v1" in theirs_ids
    assert "a" not in theirs_ids  # and it misses VOC train images that SBD lacks


def test_split_list_duplicates_and_blank_lines(voc_tree):
    with open(voc_tree.voc_list("train"), "w") as f:
        f.write("a\n\nb\na\n  c  \n")
    assert VOCSegmentation(voc_tree.root, "train").ids == ["a", "b", "c"]


# ---- bad inputs -------------------------------------------------------------------------------

def test_missing_root_names_path_key_and_layout(tmp_path):
    missing = str(tmp_path / "no-such-dir")
    with pytest.raises(DatasetError) as err:
        VOCSegmentation(missing, "train")
    message = str(err.value)
    assert missing in message and "data.root" in message and "VOCdevkit/VOC2012" in message


def test_root_without_voc_folder(tmp_path):
    with pytest.raises(DatasetError, match="VOCdevkit/VOC2012") as err:
        VOCSegmentation(str(tmp_path), "val")
    assert "data.root" in str(err.value)


def test_trainaug_without_sbd_names_expected_folders(tmp_path, tree_builder):
    tree = tree_builder(tmp_path, ["a"], ["v"])
    VOCSegmentation(tree.root, "train")  # VOC alone is enough for train/val
    with pytest.raises(DatasetError, match="benchmark_RELEASE/dataset"):
        VOCSegmentation(tree.root, "trainaug")


def test_missing_split_list(voc_tree):
    os.remove(voc_tree.voc_list("val"))
    with pytest.raises(DatasetError) as err:
        VOCSegmentation(voc_tree.root, "val")
    assert voc_tree.voc_list("val") in str(err.value)


def test_id_without_image(voc_tree):
    os.remove(voc_tree.voc_image("b"))
    with pytest.raises(DatasetError) as err:
        VOCSegmentation(voc_tree.root, "train")
    assert "sample b" in str(err.value) and voc_tree.voc_image("b") in str(err.value)


def test_id_without_mask(voc_tree):
    os.remove(voc_tree.voc_mask("c"))
    with pytest.raises(DatasetError) as err:
        VOCSegmentation(voc_tree.root, "train")
    assert "sample c" in str(err.value) and voc_tree.voc_mask("c") in str(err.value)


def test_sbd_id_without_mat(voc_tree):
    os.remove(voc_tree.sbd_mask("s3"))
    with pytest.raises(DatasetError) as err:
        VOCSegmentation(voc_tree.root, "trainaug")
    message = str(err.value)
    assert "sample s3 has no mask" in message
    assert voc_tree.sbd_mask("s3") in message and voc_tree.voc_mask("s3") in message


def test_sbd_id_without_image(voc_tree):
    os.remove(voc_tree.sbd_image("s2"))
    with pytest.raises(DatasetError) as err:
        VOCSegmentation(voc_tree.root, "trainaug")
    assert "sample s2" in str(err.value) and voc_tree.sbd_image("s2") in str(err.value)


def test_mask_size_mismatch_names_both_files_and_sizes(voc_tree, tree_files):
    tree_files["png"](voc_tree.voc_mask("a"), tree_files["mask"](1, hw=(21, 28)))
    ds = VOCSegmentation(voc_tree.root, "train")
    with pytest.raises(DatasetError) as err:
        ds.load(0)
    message = str(err.value)
    assert voc_tree.voc_mask("a") in message and voc_tree.voc_image("a") in message
    assert "21x28" in message and "20x28" in message


def test_label_out_of_range_names_file_and_value(voc_tree, tree_files):
    tree_files["png"](voc_tree.voc_mask("a"), tree_files["mask"](30))
    ds = VOCSegmentation(voc_tree.root, "train")
    with pytest.raises(DatasetError) as err:
        ds.load(0)
    assert voc_tree.voc_mask("a") in str(err.value) and "30" in str(err.value)
    ds.load(1)  # the other samples are fine


def test_sbd_label_out_of_range(voc_tree, tree_files):
    tree_files["mat"](voc_tree.sbd_mask("s2"), tree_files["mask"](21))
    ds = VOCSegmentation(voc_tree.root, "trainaug")
    with pytest.raises(DatasetError, match="21") as err:
        ds.load(ds.ids.index("s2"))
    assert voc_tree.sbd_mask("s2") in str(err.value)


def test_corrupt_image(voc_tree):
    with open(voc_tree.voc_image("a"), "wb") as f:
        f.write(b"this is not a jpeg")
    ds = VOCSegmentation(voc_tree.root, "train")  # contents are only read in load
    with pytest.raises(DatasetError) as err:
        ds.load(0)
    assert voc_tree.voc_image("a") in str(err.value)


def test_corrupt_png_mask(voc_tree):
    with open(voc_tree.voc_mask("a"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError) as err:
        VOCSegmentation(voc_tree.root, "train").load(0)
    assert voc_tree.voc_mask("a") in str(err.value)


def test_colour_png_mask_is_rejected(voc_tree):
    rgb = np.array(Image.open(voc_tree.voc_mask("a")).convert("RGB"))
    Image.fromarray(rgb).save(voc_tree.voc_mask("a"))
    with pytest.raises(DatasetError, match="palette") as err:
        VOCSegmentation(voc_tree.root, "train").load(0)
    assert voc_tree.voc_mask("a") in str(err.value)


def test_mat_without_gtcls(voc_tree):
    scipy.io.savemat(voc_tree.sbd_mask("s1"), {"GTinst": {"Segmentation": np.zeros((2, 2))}})
    ds = VOCSegmentation(voc_tree.root, "trainaug")
    with pytest.raises(DatasetError, match="GTcls") as err:
        ds.load(ds.ids.index("s1"))
    assert voc_tree.sbd_mask("s1") in str(err.value)


def test_unknown_split():
    with pytest.raises(ValueError, match="trainaug"):
        VOCSegmentation("/nonexistent", "test")


def test_voc_palette_has_vocs_colours():
    from deeplab.data import voc_palette
    p = voc_palette()
    assert len(p) == 3 * 256
    colour = {i: tuple(p[3 * i:3 * i + 3]) for i in (0, 1, 15, 255)}
    assert colour == {0: (0, 0, 0), 1: (128, 0, 0), 15: (192, 128, 128), 255: (224, 224, 192)}


def _photo(path, hw=(60, 80)):
    """A JPEG with detail in every row, so that a cut anywhere loses pixels."""
    rng = np.random.RandomState(0)
    assert cv2.imwrite(path, rng.randint(0, 256, hw + (3,)).astype(np.uint8))
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_jpeg_is_an_error_naming_the_file(voc_tree, keep):
    """OpenCV decodes a truncated JPEG without an error (greying the rest); loading it must
    fail naming the file instead (issue 19, item 10)."""
    from deeplab.data.base import read_image

    path = voc_tree.voc_image("a")
    data = _photo(path)
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])
    assert cv2.imdecode(np.frombuffer(data[:int(len(data) * keep)], np.uint8),
                        cv2.IMREAD_COLOR) is not None  # what OpenCV alone would accept
    ds = VOCSegmentation(voc_tree.root, "train")
    with pytest.raises(DatasetError, match="image %s is damaged: truncated JPEG" % path):
        ds.load(ds.ids.index("a"))
    with pytest.raises(DatasetError, match="damaged"):
        read_image(path)


def test_whole_jpeg_with_zero_padding_and_whole_png_are_accepted(tmp_path):
    from deeplab.data.base import image_damage, read_image

    path = str(tmp_path / "x.jpg")
    data = _photo(path)
    with open(path, "ab") as f:
        f.write(b"\0" * 100)  # some cameras and tools pad after the end marker
    assert read_image(path).shape == (60, 80, 3)
    png = str(tmp_path / "x.png")
    assert cv2.imwrite(png, np.zeros((5, 6, 3), np.uint8))
    with open(png, "rb") as f:
        whole = f.read()
    assert image_damage(whole) is None and image_damage(data) is None
    assert "truncated PNG" in image_damage(whole[:-6])


def test_check_data_lists_every_damaged_sample_and_exits_2(voc_tree, dl):
    """`deeplab check-data` decodes every sample with the config's loader processes and names
    each damaged file; an intact tree passes."""
    config = ["--set", "data.name=voc", "data.root=%s" % voc_tree.root,
              "data.train_split=train", "model.num_classes=21"]
    ok = dl.deeplab("check-data", dl.TINY, *config)
    assert "train split: 3 samples checked" in ok.stdout and "all intact" in ok.stdout
    for name in ("a", "c"):
        path = voc_tree.voc_image(name)
        os.truncate(path, os.path.getsize(path) // 2)
    bad = dl.deeplab("check-data", dl.TINY, *config, check=False)
    assert bad.returncode == 2, bad.stdout
    for name in ("a", "c"):
        assert "deeplab check-data: image %s is damaged: truncated JPEG" \
            % voc_tree.voc_image(name) in bad.stdout
    assert "deeplab check-data: error: 2 of 5 samples are damaged" in bad.stdout
    assert "Traceback" not in bad.stdout
