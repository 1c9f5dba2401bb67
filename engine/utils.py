"""Small helpers shared across the package: atomic file writes, free local ports, and what the
process is waiting on (for the stall watchdog's message)."""
import contextlib
import json
import os
import socket
import threading

__all__ = ["atomic_write", "write_json", "write_text", "free_port", "positive_int",
           "waiting_on", "waits"]


def atomic_write(path, write):
    """Calls `write(tmp_path)`, then renames the result onto `path`.

    Readers see the old file or the whole new one, never a part: a process killed mid-write, or
    a full disk, leaves `path` as it was and no temporary file behind.
    """
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


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
