"""`deeplab fetch`: downloads the backbones' ImageNet weights (MXNet/GluonCV model zoo) and
PASCAL VOC 2012 + SBD, each checked against its published sha1.

    deeplab fetch backbone resnet50_v2 [--root DIR]  # prints DIR/resnet50_v2-<hash>.params
    deeplab fetch voc --root /data/voc [--keep-archives]
    deeplab fetch cityscapes [--root /data/cityscapes]   # what to download, then unzips it

A download is written to `FILE.part` and continued with an HTTP Range request when rerun after
an interruption; a finished file is checked before it is used and deleted if its sha1 is wrong.
The config value `model.backbone_params: zoo:NAME` names the same file (`resolve_params`).

Every URL and checksum is in TABLE. `$DEEPLAB_FETCH_MIRROR` replaces the base URL of every row
and keeps the path below it (MIRROR/VOCtrainval_11-May-2012.tar, MIRROR/benchmark.tgz,
MIRROR/gluon/models/NAME-<hash>.zip); the model-zoo rows also honour `$MXNET_GLUON_REPO`, the
variable MXNet and GluonCV read. Tests serve small files from a local mirror and replace the
rows' sha1 (monkeypatch.setitem(TABLE, name, TABLE[name]._replace(sha1=...))).
"""
import argparse
import collections
import contextlib
import errno
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib

from deeplab.data.voc import SBD_DIRS, VOC_DIRS
from deeplab.errors import UserError
from deeplab.utils import atomic_write

try:
    import fcntl
except ImportError:  # not POSIX: downloads run unlocked
    fcntl = None

__all__ = ["TABLE", "Remote", "FetchError", "MIRROR_ENV", "ZOO_PREFIX", "VOC_PARTS",
           "CITYSCAPES_PARTS", "backbone_names", "cityscapes_instructions", "default_root",
           "download", "fetch_backbone", "fetch_cityscapes", "fetch_voc",
           "resolve_params", "sha1_of", "parse_args", "main"]

MIRROR_ENV = "DEEPLAB_FETCH_MIRROR"
ZOO_PREFIX = "zoo:"
CHUNK = 1 << 20
TIMEOUT = 60  # seconds without a byte before a connection counts as lost


class FetchError(UserError):
    """A download that failed (HTTP error, wrong checksum, full disk) or an unknown name."""


class Remote(collections.namedtuple("Remote", "kind base path sha1")):
    """One file to download: its URL is `base` + `path`, where `path` may hold `{short_hash}`
    (the first 8 digits of `sha1`, as in model-zoo file names). `sha1` is the published sum of
    the file we keep: the archive for datasets, the `.params` inside the zip for backbones (the
    zoo publishes no sum for its zips)."""

    def url(self):
        """The URL, with the base replaced by $DEEPLAB_FETCH_MIRROR (or, for the model zoo,
        $MXNET_GLUON_REPO) when set."""
        base = (os.environ.get(MIRROR_ENV)
                or (self.kind == "backbone" and os.environ.get("MXNET_GLUON_REPO"))
                or self.base)
        return base.rstrip("/") + "/" + self.path.format(short_hash=self.sha1[:8])

    @property
    def file_name(self):
        return os.path.basename(self.path.format(short_hash=self.sha1[:8]))


def _zoo_rows():
    """Backbone name -> Remote, for every backbone of model/backbone.py with model-zoo weights.

    The sums and URL conventions are read from the installed MXNet and GluonCV model stores (what
    their own `get_model_file` checks and downloads), not copied here.
    """
    from gluoncv.model_zoo import model_store as gluoncv_store
    from mxnet.gluon.model_zoo import model_store as mxnet_store

    from deeplab.model.backbone import BACKBONES

    rows = {}
    for name in BACKBONES:
        # MXNet's Gluon model zoo first (its resnet*_v2 are what our v2 backbones load; GluonCV
        # lists the same sums); GluonCV's table adds the v1b/v1c/v1d/v1s family.
        for store in (mxnet_store, gluoncv_store):
            if name in store._model_sha1:
                # '{repo_url}gluon/models/{file_name}.zip' -> 'gluon/models/NAME-{short_hash}.zip'
                path = store._url_format.format(repo_url="", file_name=name + "-{short_hash}")
                rows[name] = Remote("backbone", store.apache_repo_url, path,
                                    store._model_sha1[name])
                break
    return rows


# Every file `deeplab fetch` downloads, by name.
TABLE = {
    # PASCAL VOC 2012 trainval; holds VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets}.
    "voc2012": Remote("dataset", "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
                      "VOCtrainval_11-May-2012.tar", "4e443f8a2eca6b1dac8a6c57641b67dd40621a49"),
    # SBD (Hariharan et al., ICCV 2011); holds benchmark_RELEASE/dataset/{img,cls,*.txt}.
    "sbd": Remote("dataset",
                  "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
                  "semantic_contours/",
                  "benchmark.tgz", "7129e0a480c2d6afb02b517bb18ac54283bfaa35"),
    **_zoo_rows(),
}

# What `fetch voc` unpacks: the TABLE row, the folder moved from its archive into the root, and
# the folders (the layouts data/voc.py reads) any of which means it is already in place.
VOC_PARTS = (
    ("voc2012", "VOCdevkit/VOC2012", VOC_DIRS),
    ("sbd", "benchmark_RELEASE", SBD_DIRS),
)


def _mirror_hint():
    return "" if os.environ.get(MIRROR_ENV) else " (a mirror can be set with $%s)" % MIRROR_ENV


def _say(text):
    print(text, file=sys.stderr, flush=True)


def backbone_names():
    """The backbones with model-zoo weights, sorted."""
    return sorted(k for k, r in TABLE.items() if r.kind == "backbone")


def default_root():
    """Where MXNet and GluonCV keep model-zoo files: $MXNET_HOME/models (~/.mxnet/models)."""
    from mxnet.base import data_dir

    return os.path.join(os.path.expanduser(data_dir()), "models")


def sha1_of(path):
    """The sha1 of a file's bytes, as a hex string."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _mismatch(path, actual, expected, url):
    return FetchError("%s (from %s) has sha1 %s, expected %s; deleted it, rerun to download it "
                      "again" % (path, url, actual, expected))


def _os_error(err, action, path):
    """A FetchError for an OSError met while `action` `path`; a full disk says so."""
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return FetchError("disk full %s %s; free some space and rerun" % (action, path))
    return FetchError("%s %s: %s" % (action, path, err.strerror or err))


def _makedirs(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise _os_error(err, "creating", path) from None


@contextlib.contextmanager
def _locked(folder):
    """Holds an exclusive lock on `folder`, so two fetches into it (two jobs starting at once)
    take turns instead of writing the same `.part` file. Not reentrant: lock once per call."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say("waiting for another download into %s" % folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a file system without locks (some NFS setups): run unlocked
        yield
    finally:
        os.close(fd)


class _Progress:
    """Bytes received so far, redrawn on one stderr line at most 5 times a second; silent
    unless stderr is a terminal (logs get the start and end lines only)."""

    def __init__(self, name, total):
        self.name, self.total = name, total
        self.on = sys.stderr.isatty()
        self.last = 0.0

    def update(self, done, final=False):
        now = time.monotonic()
        if not self.on or (not final and now - self.last < 0.2):
            return
        self.last = now
        total = " / %s" % _size(self.total) if self.total else ""
        sys.stderr.write("\r  %s: %s%s%s" % (self.name, _size(done), total,
                                              "\n" if final else ""))
        sys.stderr.flush()


def _size(n):
    """A byte count for people: '512 bytes', '3.4 MB', '1.9 GB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale / 10:
            return "%.1f %s" % (n / scale, unit)
    return "%d bytes" % n


def _range_start(content_range):
    """The first byte of a `Content-Range: bytes START-END/TOTAL` header, or None."""
    try:
        unit, spec = content_range.split(None, 1)
        return int(spec.split("-", 1)[0]) if unit == "bytes" else None
    except (AttributeError, ValueError):
        return None


def _receive(response, url, part, offset):
    """Writes the body of `response` to `part`, appending at `offset` when the server sent the
    requested range, else from the start."""
    if response.status == 206:
        if _range_start(response.headers.get("Content-Range")) != offset:
            raise FetchError("GET %s: asked for bytes from %d, the server sent range %s; delete "
                             "%s and rerun" % (url, offset, response.headers.get("Content-Range"),
                                               part))
    else:
        offset = 0  # a server that ignores Range sends the whole file
    length = response.headers.get("Content-Length", "")
    length = int(length) if length.isdigit() else None
    total = None if length is None else offset + length
    if length is not None:  # refused before writing rather than failing at 90 %
        free = shutil.disk_usage(os.path.dirname(part)).free
        if length > free:
            raise FetchError("disk full: %s needs %s in %s, %s free"
                             % (url, _size(length), os.path.dirname(part), _size(free)))
    progress = _Progress(os.path.basename(part)[:-len(".part")], total)
    received = offset
    try:
        with open(part, "ab" if offset else "wb") as f:
            while True:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise FetchError("GET %s: connection lost after %d bytes (%s); rerun to "
                                     "resume" % (url, received, str(err) or type(err).__name__)) \
                        from None
                if not block:
                    break
                f.write(block)
                received += len(block)
                progress.update(received)
    except OSError as err:
        raise _os_error(err, "writing", part) from None
    progress.update(received, final=True)
    if total is not None and received < total:
        raise FetchError("GET %s: connection closed after %d of %d bytes; rerun to resume"
                         % (url, received, total))


def download(url, dest, sha1=None):
    """Downloads `url` to `dest` through `dest.part`, continuing a `.part` left by an
    interrupted run (HTTP Range). With `sha1`, the file is checked before it is renamed to
    `dest` and deleted if it does not match. Returns `dest`.

    Raises:
        FetchError: an HTTP or network error (the `.part` is kept for the next run), a wrong
            checksum (the file is deleted), a full disk.
    """
    part = dest + ".part"
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "deeplab-fetch"})
    if offset:
        request.add_header("Range", "bytes=%d-" % offset)
    _say("downloading %s%s" % (url, " (resuming after %d bytes)" % offset if offset else ""))
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as err:
        err.close()
        if not (err.code == 416 and offset):
            raise FetchError("GET %s: HTTP %d %s%s" % (url, err.code, err.reason, _mirror_hint())) \
                from None
        # Range not satisfiable: the .part already holds the whole file (a run stopped between
        # the last byte and the rename); the checksum below tells whether it is the right one.
        response = None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise FetchError("GET %s: %s%s" % (url, reason, _mirror_hint())) from None
    if response is not None:
        with response:
            _receive(response, url, part, offset)
    if sha1:
        actual = sha1_of(part)
        if actual != sha1:
            os.remove(part)
            raise _mismatch(part, actual, sha1, url)
    os.replace(part, dest)
    return dest


def _backbone_row(name):
    row = TABLE.get(name)
    if row is None or row.kind != "backbone":
        raise FetchError("no model-zoo weights for backbone %r; valid names: %s"
                         % (name, ", ".join(backbone_names())))
    return row


def _unzip_checked(archive, member, dest, sha1, url):
    """Extracts `member` of zip `archive` to `dest` if its sha1 matches, else deletes the zip."""
    def write(out):
        digest = hashlib.sha1()
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src:
            for block in iter(lambda: src.read(CHUNK), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha1:
            os.remove(archive)
            raise _mismatch("%s in %s" % (member, archive), digest.hexdigest(), sha1, url)

    try:
        atomic_write(dest, write, fileobj=True)
    except (zipfile.BadZipFile, KeyError, EOFError, zlib.error) as err:
        os.remove(archive)
        raise FetchError("%s (from %s) is not a zip holding %s (%s); deleted it, rerun to "
                         "download it again" % (archive, url, member, err)) from None
    except OSError as err:
        raise _os_error(err, "writing", dest) from None


def fetch_backbone(name, root=None):
    """The model zoo's ImageNet weights of backbone `name`, as MXNet/GluonCV store them:
    ROOT/NAME-<first 8 digits of sha1>.params, downloaded unless already there with the right
    sha1. Returns the path.

    Args:
        name: a backbone of model/backbone.py with zoo weights (see `backbone_names()`).
        root: the folder of model files (default: `default_root()`, MXNet's cache).
    """
    row = _backbone_row(name)
    root = os.path.abspath(os.path.expanduser(root or default_root()))
    _makedirs(root)
    stem = "%s-%s" % (name, row.sha1[:8])
    params = os.path.join(root, stem + ".params")
    archive = os.path.join(root, row.file_name)
    url = row.url()
    with _locked(root):
        if os.path.isfile(params):
            if sha1_of(params) == row.sha1:
                return params
            _say("%s does not have the zoo's sha1 %s; downloading it again" % (params, row.sha1))
            os.remove(params)
        if not os.path.isfile(archive):  # a zip kept by a run that failed while unzipping
            download(url, archive)
        _unzip_checked(archive, stem + ".params", params, row.sha1, url)
        os.remove(archive)
    return params


def resolve_params(value, root=None):
    """The local file a `model.backbone_params` value names.

    `zoo:NAME` is the model-zoo weights of backbone NAME: the cached file under `root` (default
    MXNet's cache, $MXNET_HOME/models) if its sha1 checks, else downloaded (see
    `fetch_backbone`). Any other value (a path, or None) is returned as given.
    """
    if not isinstance(value, str) or not value.startswith(ZOO_PREFIX):
        return value
    name = value[len(ZOO_PREFIX):]
    if name not in backbone_names():
        raise FetchError("model.backbone_params %s: no model-zoo weights for backbone %r; valid: "
                         "%s" % (value, name, ", ".join(ZOO_PREFIX + n for n in backbone_names())))
    return fetch_backbone(name, root)


def _safe_member(member, folder, archive):
    """Whether `member` lies in `folder` of the archive and is a plain file or directory;
    raises for a name that would escape the extraction folder."""
    name = member.name[2:] if member.name.startswith("./") else member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise FetchError("%s: member %r points outside the extraction folder; not extracted"
                         % (archive, member.name))
    inside = name.rstrip("/") == folder or name.startswith(folder + "/")
    return inside and (member.isfile() or member.isdir())


def _extract(archive, folder, root):
    """Extracts `folder` of tar `archive` and moves it to ROOT/folder in one rename, so that an
    interrupted extraction never leaves a half-filled folder where data/voc.py looks."""
    tmp = os.path.join(root, ".%s.extracting" % os.path.basename(archive))
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
    # Python's "data" filter (3.11.4+) also drops setuid bits and the like.
    options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    _say("extracting %s" % archive)
    try:
        os.makedirs(tmp)
        found = []

        def members(tar):
            for member in tar:
                if _safe_member(member, folder, archive):
                    found.append(member.name)
                    yield member

        with tarfile.open(archive, "r|*") as tar:  # streamed: one pass through a .tgz
            tar.extractall(tmp, members=members(tar), **options)
        if not found:
            raise FetchError("%s has no folder %s/" % (archive, folder))
        target = os.path.join(root, folder)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(os.path.join(tmp, folder), target)
    except tarfile.TarError as err:
        raise FetchError("cannot extract %s: %s" % (archive, err)) from None
    except OSError as err:
        raise _os_error(err, "extracting %s into" % archive, root) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch_voc(root, keep_archives=False):
    """PASCAL VOC 2012 trainval and SBD under `root`, in the official layout data/voc.py reads:
    ROOT/VOCdevkit/VOC2012 and ROOT/benchmark_RELEASE/dataset (splits train, val, trainaug).

    Each part already in place (either layout data/voc.py accepts) is left alone; otherwise its
    archive is downloaded (or a complete one found in ROOT is used), checked, extracted, and
    deleted unless `keep_archives`. Returns one line per part saying what was done.
    """
    root = os.path.abspath(os.path.expanduser(root))
    _makedirs(root)
    report = []
    with _locked(root):
        for key, folder, layouts in VOC_PARTS:
            present = [os.path.join(root, d) for d in layouts
                       if os.path.isdir(os.path.join(root, d))]
            if present:
                report.append("%s: in place at %s" % (key, present[0]))
                continue
            row = TABLE[key]
            archive = os.path.join(root, row.file_name)
            url = row.url()
            if os.path.isfile(archive):  # kept by --keep-archives, or copied here by hand
                actual = sha1_of(archive)
                if actual != row.sha1:
                    os.remove(archive)
                    _say("%s has sha1 %s, expected %s; deleted it, downloading it again"
                         % (archive, actual, row.sha1))
            if not os.path.isfile(archive):
                download(url, archive, row.sha1)
            target = _extract(archive, folder, root)
            if not keep_archives:
                os.remove(archive)
            report.append("%s: extracted to %s" % (key, target))
    report.append("data.root: %s" % root)
    return report


# Cityscapes' archives (https://www.cityscapes-dataset.com/downloads/, behind a free login, so
# not downloadable here): the folder each holds, data/cityscapes.py's layout, and its size.
CITYSCAPES_URL = "https://www.cityscapes-dataset.com/downloads/"
CITYSCAPES_PARTS = (
    ("gtFine_trainvaltest.zip", "gtFine", "241 MB", "fine annotations"),
    ("leftImg8bit_trainvaltest.zip", "leftImg8bit", "11 GB", "left 8-bit images"),
)


def cityscapes_instructions(root=None):
    """What a Cityscapes user downloads and where it goes, as lines of text."""
    where = root or "DIR"
    lines = ["Cityscapes needs a (free) account: log in at %s and download" % CITYSCAPES_URL]
    lines += ["  %-30s %-7s %s" % (z, size, what) for z, _, size, what in CITYSCAPES_PARTS]
    lines += ["into %s, then run `deeplab fetch cityscapes --root %s` to unzip them (or unzip "
              "them there yourself), which gives" % (where, where),
              "  %s/leftImg8bit/{train,val}/CITY/*_leftImg8bit.png" % where,
              "  %s/gtFine/{train,val}/CITY/*_gtFine_labelIds.png" % where,
              "and train with --set data.root=%s (configs/*_cityscapes_*.yaml)." % where]
    return lines


def _part_in_place(root, folder):
    return all(os.path.isdir(os.path.join(root, folder, s)) for s in ("train", "val"))


def _unzip_folder(archive, folder, root):
    """Extracts `folder`/ of zip `archive` and moves it to ROOT/folder in one rename (an
    interrupted extraction never leaves a half-filled folder where the dataset looks)."""
    tmp = os.path.join(root, ".%s.extracting" % os.path.basename(archive))
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
    _say("extracting %s" % archive)
    try:
        os.makedirs(tmp)
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.startswith(folder + "/")]
            for name in z.namelist():
                if name.startswith("/") or ".." in name.split("/"):
                    raise FetchError("%s: member %r points outside the extraction folder; not "
                                     "extracted" % (archive, name))
            if not names:
                raise FetchError("%s has no folder %s/; is it Cityscapes' %s?"
                                 % (archive, folder, os.path.basename(archive)))
            z.extractall(tmp, members=names)
        target = os.path.join(root, folder)
        os.rename(os.path.join(tmp, folder), target)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise FetchError("cannot extract %s (incomplete download?): %s" % (archive, err)) \
            from None
    except OSError as err:
        raise _os_error(err, "extracting %s into" % archive, root) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch_cityscapes(root=None, keep_archives=True):
    """Cityscapes under `root` in the official layout data/cityscapes.py reads. Its archives
    need a login, so they are not downloaded: each part already in place is left alone, each
    archive found in ROOT is unzipped (and kept unless not `keep_archives`).

    Returns:
        lines saying what was done; without `root`, what to download and where.
    Raises:
        FetchError: a part is neither in place nor downloaded into ROOT (the message says
            which archive to download and where), or an archive cannot be extracted.
    """
    if root is None:
        return cityscapes_instructions()
    root = os.path.abspath(os.path.expanduser(root))
    _makedirs(root)
    report, missing = [], []
    with _locked(root):
        for archive_name, folder, _, _ in CITYSCAPES_PARTS:
            archive = os.path.join(root, archive_name)
            if _part_in_place(root, folder):
                report.append("%s: in place at %s" % (folder, os.path.join(root, folder)))
            elif os.path.exists(os.path.join(root, folder)):
                raise FetchError("%s exists but lacks train/ or val/; move it away and rerun to "
                                 "unzip %s again" % (os.path.join(root, folder), archive_name))
            elif os.path.isfile(archive):
                target = _unzip_folder(archive, folder, root)
                if not keep_archives:
                    os.remove(archive)
                report.append("%s: extracted to %s" % (folder, target))
            else:
                missing.append(archive_name)
    if missing:
        for line in cityscapes_instructions(root):
            _say(line)
        raise FetchError("cityscapes: %s not found in %s; download %s from %s (after logging "
                         "in) into that folder and rerun"
                         % (" and ".join(missing), root, "them" if len(missing) > 1 else "it",
                            CITYSCAPES_URL))
    report.append("data.root: %s" % root)
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="deeplab fetch", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", metavar="{backbone,voc,cityscapes}")
    sub.required = True
    b = sub.add_parser("backbone", help="a backbone's ImageNet weights from the model zoo; "
                                        "prints the file's path")
    b.add_argument("name", help="backbone name, e.g. resnet50_v2 or resnet101_v1s")
    b.add_argument("--root", default=None,
                   help="folder of model files (default: $MXNET_HOME/models, ~/.mxnet/models)")
    v = sub.add_parser("voc", help="VOC 2012 trainval + SBD, extracted for data.root")
    v.add_argument("--root", required=True, help="data root (the config's data.root)")
    v.add_argument("--keep-archives", action="store_true",
                   help="keep the .tar/.tgz after extraction (default: deleted)")
    c = sub.add_parser("cityscapes", help="says what to download from the Cityscapes site (it "
                                          "needs a login) and, with --root, unzips it there")
    c.add_argument("--root", default=None,
                   help="data root (the config's data.root) holding the downloaded zips")
    c.add_argument("--delete-archives", action="store_true",
                   help="delete the .zip files after extraction (default: kept)")
    return p.parse_args(argv)


def main(args):
    if args.what == "backbone":
        print(fetch_backbone(args.name, args.root))
    elif args.what == "cityscapes":
        for line in fetch_cityscapes(args.root, keep_archives=not args.delete_archives):
            print(line)
    else:
        for line in fetch_voc(args.root, args.keep_archives):
            print(line)
