"""Small helpers shared across the package: atomic file writes, free local ports, and what the
process is waiting on (for the stall watchdog's message)."""
import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
import threading

__all__ = ["atomic_write", "fsync", "current_umask", "apply_umask", "disk_errors",
           "IncompleteWrite", "FULL_DISK_FREE", "check_written", "write_json", "write_text",
           "free_port", "positive_int", "waiting_on", "waits"]


def atomic_write(path, write, fileobj=False):
    """Calls `write`, then renames the result onto `path`.

    Readers see the old file or the whole new one, never a part: a process killed mid-write, or
    a full disk, leaves `path` as it was and no temporary file behind.

    The temporary file is created exclusively (O_EXCL, mode 0600, an unpredictable name) in
    `path`'s own directory, so a symlink or file planted under a guessable name is never
    followed or overwritten. With `fileobj`, `write(f)` gets a binary file object on the
    descriptor that created it, and the data, the fsync and the mode all go through that
    descriptor: the name is used again only by the rename, so nothing swapped in at the name
    meanwhile (a symlink) is ever followed. Without it, `write(tmp_path)` writes by name (for
    writers that take only a path, such as MXNet's), and the fsync and mode go through the name
    reopened with O_NOFOLLOW. Either way the file is flushed to disk (fsync: a full disk that
    only shows at write-back is reported here), given the mode the process's umask allows, and
    renamed only while the name still holds it; a name that no longer does is a WriteError.
    A full disk (or a file that `write` found did not reach the disk whole: IncompleteWrite) is
    raised as one WriteError naming `path`.
    """
    folder, name = os.path.split(os.path.abspath(path))
    with disk_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=".%s." % name, suffix=".tmp", dir=folder)
        try:
            if fileobj:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    write(f)
            else:
                os.close(fd)
                fd = -1
                write(tmp)
                fd = _reopen_nofollow(path, tmp)
            os.fsync(fd)
            os.fchmod(fd, 0o666 & ~current_umask())
            _check_same_file(path, tmp, fd)
            os.replace(tmp, path)
        finally:
            if fd >= 0:
                os.close(fd)
            if os.path.lexists(tmp):
                os.remove(tmp)


def _swapped(path, tmp):
    from deeplab.errors import WriteError

    return WriteError("cannot write %s: its temporary file %s was replaced while it was being "
                      "written (by another process?); %s was left as it was" % (path, tmp, path))


def _reopen_nofollow(path, tmp):
    """A descriptor on the file named `tmp`, which must not be a symlink."""
    try:
        return os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOENT):
            raise _swapped(path, tmp) from err
        raise


def _check_same_file(path, tmp, fd):
    """Raises WriteError unless the name `tmp` still holds the file open on `fd`."""
    try:
        named = os.lstat(tmp)
    except FileNotFoundError as err:
        raise _swapped(path, tmp) from err
    mine = os.fstat(fd)
    if (named.st_dev, named.st_ino) != (mine.st_dev, mine.st_ino):
        raise _swapped(path, tmp)


class IncompleteWrite(OSError):
    """A file read back after writing is not what was meant to be written."""


# A file found cut short on a disk with less than this free was cut short by the full disk.
FULL_DISK_FREE = 1 << 20


def check_written(path, check):
    """Runs `check(path)` on a file just written and flushed, which raises IncompleteWrite if
    the file is not what was meant to be written.

    MXNet's writer does not always report a disk that filled up (issue 19: within its last
    buffer it returned normally and left a prefix of the file), so the check is what finds it;
    a file found incomplete while less than FULL_DISK_FREE bytes are free is reported as the
    full disk that cut it short (ENOSPC), which `disk_errors` says in the documented one line
    (exit 2) rather than as a file that "did not reach the disk whole". Call it before the file
    is removed: its pages are what fills the disk.
    """
    try:
        check(path)
    except IncompleteWrite as err:
        if shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < FULL_DISK_FREE:
            raise OSError(errno.ENOSPC, "no space left on the device") from err
        raise


def _disk_full(err):
    return (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) \
        or "Write incomplete" in str(err)  # MXNet's FileStream on a full disk


@contextlib.contextmanager
def disk_errors(path):
    """Reports a full disk (or a file that did not reach the disk whole) met while writing
    `path` as one WriteError naming it; other errors pass unchanged."""
    try:
        yield
    except Exception as err:
        if not (_disk_full(err) or isinstance(err, IncompleteWrite)):
            raise
        from deeplab.errors import WriteError

        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        cause = "the disk is full" if _disk_full(err) else \
            "it did not reach the disk whole (%s)" % err
        raise WriteError("cannot write %s: %s (%.1f MB free); nothing partial was left, "
                         "earlier checkpoints are intact" % (path, cause, free / 2 ** 20)) \
            from err


def fsync(path):
    """Flushes a written file to disk; raises OSError (e.g. ENOSPC) if the disk refused it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask():
    """The process's umask, read without changing it (os.umask can only set it, and setting it
    for a moment would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: the racy way
    os.umask(mask)
    return mask


def apply_umask(cfg):
    """Sets the process's umask to the config's train.umask (default 027). Every command that
    writes (train, eval, predict, export, bench) calls it once its config is loaded and before it
    creates anything, so that what it leaves on a shared volume (a run, results, predictions, an
    export) is readable by the group only, whichever command wrote it."""
    os.umask(int(cfg["train"]["umask"], 8))


def write_text(path, text):
    """Writes `text` (UTF-8) to `path` atomically, through the temporary file's descriptor."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), fileobj=True)


def write_json(path, obj, indent=1):
    """Writes `obj` as JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def positive_int(text):
    """An argparse type: an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("expected an integer >= 1, got %r" % text)
    return value


def free_port(host="127.0.0.1"):
    """A TCP port on `host` that was free a moment ago (for loopback jobs and tests)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_WAITS = []  # describe() callables of the blocking waits in progress, innermost last
_WAITS_LOCK = threading.Lock()


@contextlib.contextmanager
def waiting_on(describe):
    """Marks a wait that may block for long (e.g. for the data loader's next sample):
    `describe()` says what is awaited, e.g. a file, for the stall watchdog's message. It is
    called from another thread, so it must only read."""
    with _WAITS_LOCK:
        _WAITS.append(describe)
    try:
        yield
    finally:
        with _WAITS_LOCK:
            _WAITS.remove(describe)


def waits():
    """What the process is waiting on now (see `waiting_on`), innermost last; a description that
    fails is left out."""
    with _WAITS_LOCK:
        describes = list(_WAITS)
    out = []
    for describe in describes:
        try:
            text = describe()
        except Exception:  # noqa: B902 - a message helper must never raise in the watchdog
            continue
        if text:
            out.append(text)
    return out
