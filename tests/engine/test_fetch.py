"""`deeplab fetch` against a local mirror: a threaded HTTP server on 127.0.0.1 serving small
generated files under their real names, with the checksums TABLE expects replaced by theirs."""
import hashlib
import io
import os
import re
import shutil
import tarfile
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import scipy.io
from PIL import Image

from deeplab import cli, fetch
from deeplab.data import get_dataset


class Mirror:
    """Files by URL path, the requests received (path, Range header), and paths whose next
    response is cut after a number of bytes (a dropped connection)."""

    def __init__(self, url):
        self.url, self.files, self.requests, self.cut = url, {}, [], {}


def _handler(mirror):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            rng = self.headers.get("Range")
            mirror.requests.append((self.path, rng))
            data = mirror.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = int(re.match(r"bytes=(\d+)-$", rng).group(1)) if rng else 0
            if start >= len(data) > 0:
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % len(data))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range",
                                 "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            if self.path in mirror.cut:
                body = body[:mirror.cut.pop(self.path)]
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture
def mirror(monkeypatch):
    """A running local mirror, set as $DEEPLAB_FETCH_MIRROR; stopped at the end of the test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), None)
    m = Mirror("http://127.0.0.1:%d/" % server.server_address[1])
    server.RequestHandlerClass = _handler(m)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    monkeypatch.setenv(fetch.MIRROR_ENV, m.url)
    monkeypatch.delenv("MXNET_GLUON_REPO", raising=False)
    yield m
    server.shutdown()
    server.server_close()
    thread.join()


def serve_backbone(mirror, monkeypatch, name, params):
    """Serves `params` as the zoo's zip of backbone `name`, its sha1 put into TABLE; returns the
    file name the cache should hold and the URL path."""
    sha1 = hashlib.sha1(params).hexdigest()
    monkeypatch.setitem(fetch.TABLE, name, fetch.TABLE[name]._replace(sha1=sha1))
    stem = "%s-%s" % (name, sha1[:8])
    path = "/gluon/models/%s.zip" % stem
    mirror.files[path] = zip_bytes(stem + ".params", params)
    return stem + ".params", path


def zip_bytes(member, data):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, data)
    return buf.getvalue()


def serve_dataset(mirror, monkeypatch, key, data):
    monkeypatch.setitem(fetch.TABLE, key,
                        fetch.TABLE[key]._replace(sha1=hashlib.sha1(data).hexdigest()))
    path = "/" + fetch.TABLE[key].file_name
    mirror.files[path] = data
    return path


def tar_bytes(files, mode):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def jpg(colour):
    buf = io.BytesIO()
    Image.new("RGB", (10, 8), colour).save(buf, "JPEG")
    return buf.getvalue()


def mask(cls):
    m = np.zeros((8, 10), np.uint8)
    m[2:6, 3:7] = cls
    return m


def png(cls):
    buf = io.BytesIO()
    Image.fromarray(mask(cls), mode="L").save(buf, "PNG")
    return buf.getvalue()


def mat(cls):
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"GTcls": {"Segmentation": mask(cls)}})
    return buf.getvalue()


def voc_archives():
    """A VOC tar (train a, val v) and an SBD tgz (train s, val v) with the real inner layout."""
    voc = "VOCdevkit/VOC2012/"
    sbd = "benchmark_RELEASE/dataset/"
    voc_tar = tar_bytes({
        voc + "JPEGImages/a.jpg": jpg((200, 40, 40)), voc + "JPEGImages/v.jpg": jpg((0, 0, 0)),
        voc + "SegmentationClass/a.png": png(15), voc + "SegmentationClass/v.png": png(3),
        voc + "ImageSets/Segmentation/train.txt": b"a\n",
        voc + "ImageSets/Segmentation/val.txt": b"v\n",
    }, "w")
    sbd_tgz = tar_bytes({
        sbd + "img/s.jpg": jpg((40, 40, 200)), sbd + "cls/s.mat": mat(7),
        sbd + "train.txt": b"s\n", sbd + "val.txt": b"v\n",
        "benchmark_RELEASE/README": b"not extracted into the dataset folder\n",
    }, "w:gz")
    return voc_tar, sbd_tgz


def test_table_follows_the_zoo_conventions_and_the_mirror_replaces_only_the_base(monkeypatch):
    from gluoncv.model_zoo import model_store as gluoncv_store
    from mxnet.gluon.model_zoo import model_store as mxnet_store

    monkeypatch.delenv(fetch.MIRROR_ENV, raising=False)
    monkeypatch.delenv("MXNET_GLUON_REPO", raising=False)
    for name, store in [("resnet50_v2", mxnet_store), ("resnet101_v2", mxnet_store),
                        ("resnet50_v1s", gluoncv_store), ("resnet101_v1s", gluoncv_store)]:
        row = fetch.TABLE[name]
        assert row.sha1 == store._model_sha1[name]
        file_name = "%s-%s" % (name, store.short_hash(name))
        assert row.url() == store._url_format.format(repo_url=store.apache_repo_url,
                                                     file_name=file_name)
    assert "tiny_v2" not in fetch.backbone_names()
    monkeypatch.setenv(fetch.MIRROR_ENV, "http://mirror.example/x")
    assert fetch.TABLE["sbd"].url() == "http://mirror.example/x/benchmark.tgz"
    assert fetch.TABLE["resnet50_v2"].url().startswith("http://mirror.example/x/gluon/models/")


def test_backbone_download_then_cache_hit_without_a_request(mirror, monkeypatch, tmp_path,
                                                             capsys):
    name, path = serve_backbone(mirror, monkeypatch, "resnet50_v2", b"weights" * 1000)
    got = fetch.fetch_backbone("resnet50_v2", root=str(tmp_path))
    assert got == str(tmp_path / name)
    assert open(got, "rb").read() == b"weights" * 1000
    assert sorted(os.listdir(tmp_path)) == [name]  # no zip, .part or temporary file left
    assert mirror.requests == [(path, None)]
    assert "\r" not in capsys.readouterr().err  # no progress line when stderr is not a TTY

    assert fetch.resolve_params("zoo:resnet50_v2", root=str(tmp_path)) == got
    assert fetch.fetch_backbone("resnet50_v2", root=str(tmp_path)) == got
    assert len(mirror.requests) == 1
    assert fetch.resolve_params("/models/own.params") == "/models/own.params"
    assert fetch.resolve_params(None) is None


def test_cli_prints_the_path_under_mxnet_home(mirror, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    name, _ = serve_backbone(mirror, monkeypatch, "resnet101_v1s", b"v1s weights")
    assert cli.main(["fetch", "backbone", "resnet101_v1s"]) == 0
    assert capsys.readouterr().out == str(tmp_path / "models" / name) + "\n"


def test_sha1_mismatch_is_refused_and_the_file_removed(mirror, monkeypatch, tmp_path):
    name, path = serve_backbone(mirror, monkeypatch, "resnet50_v2", b"published weights")
    good = mirror.files[path]
    mirror.files[path] = zip_bytes(name, b"tampered weights")
    with pytest.raises(fetch.FetchError, match=r"has sha1 .*expected .*deleted it") as err:
        fetch.fetch_backbone("resnet50_v2", root=str(tmp_path))
    assert mirror.url in str(err.value) and "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []

    # A dataset archive is checked before extraction and deleted likewise.
    serve_dataset(mirror, monkeypatch, "voc2012", b"the published tarball")
    mirror.files["/VOCtrainval_11-May-2012.tar"] = b"a corrupted tarball!!"
    with pytest.raises(fetch.FetchError, match=r"VOCtrainval_11-May-2012.tar.part \(from "):
        fetch.fetch_voc(str(tmp_path))
    assert os.listdir(tmp_path) == []

    mirror.files[path] = good  # the rerun the message asks for
    assert fetch.fetch_backbone("resnet50_v2", root=str(tmp_path))


def test_interrupted_download_resumes_with_a_range_request(mirror, monkeypatch, tmp_path):
    params = os.urandom(300000)
    name, path = serve_backbone(mirror, monkeypatch, "resnet101_v2", params)
    mirror.cut[path] = 100000
    with pytest.raises(fetch.FetchError, match="connection closed after 100000 of .*rerun"):
        fetch.fetch_backbone("resnet101_v2", root=str(tmp_path))
    part = tmp_path / (fetch.TABLE["resnet101_v2"].file_name + ".part")
    assert part.stat().st_size == 100000

    got = fetch.fetch_backbone("resnet101_v2", root=str(tmp_path))
    assert open(got, "rb").read() == params
    assert mirror.requests == [(path, None), (path, "bytes=100000-")]
    assert sorted(os.listdir(tmp_path)) == [name]


def test_a_part_holding_the_whole_file_is_finished_without_downloading_again(
        mirror, monkeypatch, tmp_path):
    data = b"complete archive"
    path = serve_dataset(mirror, monkeypatch, "sbd", data)
    (tmp_path / "benchmark.tgz.part").write_bytes(data)
    assert fetch.download(mirror.url + path[1:], str(tmp_path / "benchmark.tgz"),
                          fetch.TABLE["sbd"].sha1)
    assert mirror.requests == [(path, "bytes=%d-" % len(data))]  # answered 416
    assert os.listdir(tmp_path) == ["benchmark.tgz"]


def test_too_little_disk_space_is_refused_before_writing(mirror, monkeypatch, tmp_path):
    serve_dataset(mirror, monkeypatch, "voc2012", b"x" * 5000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=100))
    with pytest.raises(fetch.FetchError, match=r"^disk full: http://127.0.0.1:\d+/VOCtrainval_"
                                               r"11-May-2012.tar needs 5000 bytes in .*, 100 "
                                               r"bytes free$"):
        fetch.fetch_voc(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_voc_and_sbd_extract_to_the_layout_the_dataset_reads(mirror, monkeypatch, tmp_path):
    voc_tar, sbd_tgz = voc_archives()
    serve_dataset(mirror, monkeypatch, "voc2012", voc_tar)
    serve_dataset(mirror, monkeypatch, "sbd", sbd_tgz)
    root = tmp_path / "voc"
    report = fetch.fetch_voc(str(root), keep_archives=True)
    assert report[:2] == ["voc2012: extracted to %s" % (root / "VOCdevkit/VOC2012"),
                          "sbd: extracted to %s" % (root / "benchmark_RELEASE")]
    ds = get_dataset("voc", root=str(root), split="trainaug")
    assert ds.ids == ["a", "s"]  # SBD's val id v is VOC val: left out
    image, m = ds.load(1)
    assert image.shape == (8, 10, 3) and m.max() == 7
    assert sorted(os.listdir(root)) == ["VOCdevkit", "VOCtrainval_11-May-2012.tar",
                                        "benchmark.tgz", "benchmark_RELEASE"]
    assert len(mirror.requests) == 2

    # Everything in place: nothing is read or downloaded, only reported.
    assert fetch.fetch_voc(str(root))[:2] == [
        "voc2012: in place at %s" % (root / "VOCdevkit/VOC2012"),
        "sbd: in place at %s" % (root / "benchmark_RELEASE/dataset")]
    assert len(mirror.requests) == 2

    # A kept archive is checked and used instead of downloading, then deleted.
    shutil.rmtree(root / "VOCdevkit")
    fetch.fetch_voc(str(root))
    assert len(mirror.requests) == 2
    assert get_dataset("voc", root=str(root), split="val").ids == ["v"]
    assert not (root / "VOCtrainval_11-May-2012.tar").exists()


def test_unknown_backbone_lists_the_valid_names(capsys):
    assert cli.main(["fetch", "backbone", "tiny_v2", "--root", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "'tiny_v2'" in err and "resnet50_v2" in err and "resnet101_v1s" in err
    with pytest.raises(fetch.FetchError,
                       match=r"model.backbone_params zoo:resnet9: .* valid: .*zoo:resnet50_v2"):
        fetch.resolve_params("zoo:resnet9")


def test_http_404_is_one_line_naming_the_url(mirror, tmp_path, capsys):
    assert cli.main(["fetch", "voc", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("deeplab fetch: error: GET %sVOCtrainval_11-May-2012.tar: HTTP 404 Not "
                       "Found" % mirror.url)
    assert err[:-1] == ["downloading %sVOCtrainval_11-May-2012.tar" % mirror.url]
    assert os.listdir(tmp_path) == []


def _zip_tree(src, folder, archive):
    """Zips src/folder as Cityscapes' archives hold it (folder/..., README, license.txt)."""
    with zipfile.ZipFile(archive, "w") as z:
        for dirpath, _, names in os.walk(os.path.join(src, folder)):
            for name in names:
                path = os.path.join(dirpath, name)
                z.write(path, os.path.relpath(path, src))
        z.writestr("README", "Cityscapes")
        z.writestr("license.txt", "terms")


def test_cityscapes_says_what_to_download_and_where(tmp_path, capsys):
    assert cli.main(["fetch", "cityscapes"]) == 0
    out = capsys.readouterr().out
    for words in ("log in", "https://www.cityscapes-dataset.com/downloads/",
                  "gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip",
                  "leftImg8bit/{train,val}/CITY/*_leftImg8bit.png",
                  "gtFine/{train,val}/CITY/*_gtFine_labelIds.png", "data.root"):
        assert words in out
    # With an empty --root: exit 2, the instructions for that folder, one error line.
    root = str(tmp_path / "cs")
    assert cli.main(["fetch", "cityscapes", "--root", root]) == 2
    err = capsys.readouterr().err
    assert "deeplab fetch cityscapes --root %s" % root in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("deeplab fetch: error: cityscapes: gtFine_trainvaltest.zip and "
                           "leftImg8bit_trainvaltest.zip not found in %s" % root)


def test_cityscapes_archives_in_the_root_are_unzipped_to_the_layout_the_dataset_reads(
        tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location(  # tests/data's tree writers
        "data_trees", os.path.join(os.path.dirname(__file__), "..", "data", "conftest.py"))
    trees = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trees)
    src, root = str(tmp_path / "src"), str(tmp_path / "cs")
    trees.build_cityscapes_tree(src)
    os.makedirs(root)
    for archive, folder in (("gtFine_trainvaltest.zip", "gtFine"),
                            ("leftImg8bit_trainvaltest.zip", "leftImg8bit")):
        _zip_tree(src, folder, os.path.join(root, archive))
    assert cli.main(["fetch", "cityscapes", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "gtFine: extracted to %s" % os.path.join(root, "gtFine") in out
    assert len(get_dataset("cityscapes", split="train", root=root)) == 3
    assert len(get_dataset("cityscapes", split="val", root=root)) == 2
    assert sorted(n for n in os.listdir(root) if not n.startswith(".")) == [
        "gtFine", "gtFine_trainvaltest.zip", "leftImg8bit", "leftImg8bit_trainvaltest.zip"]
    # Again: both parts are in place and nothing is extracted.
    assert cli.main(["fetch", "cityscapes", "--root", root, "--delete-archives"]) == 0
    assert "leftImg8bit: in place" in capsys.readouterr().out


def test_cityscapes_archive_escaping_its_folder_or_damaged_is_refused(tmp_path, capsys):
    root = str(tmp_path / "cs")
    os.makedirs(root)
    with zipfile.ZipFile(os.path.join(root, "gtFine_trainvaltest.zip"), "w") as z:
        z.writestr("gtFine/train/x/a_gtFine_labelIds.png", b"")
        z.writestr("../evil.txt", b"boom")
    open(os.path.join(root, "leftImg8bit_trainvaltest.zip"), "wb").write(b"PK\x03\x04 cut")
    assert cli.main(["fetch", "cityscapes", "--root", root]) == 2
    assert "points outside the extraction folder" in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / "evil.txt"))
    assert not os.path.exists(os.path.join(root, "gtFine"))
    os.remove(os.path.join(root, "gtFine_trainvaltest.zip"))
    assert cli.main(["fetch", "cityscapes", "--root", root]) == 2
    err = capsys.readouterr().err
    # gtFine's archive is missing, but leftImg8bit's is tried first: the damaged one is named.
    assert "cannot extract %s" % os.path.join(root, "leftImg8bit_trainvaltest.zip") in err
