"""Builds and loads the fused CPU kernels of synchronized BN (dist/csrc/syncbn_ops.cc).

The kernels are an MXNet extension library (`mx.library.load`, lib_api.h shipped in MXNet's
wheel): per-channel moments, the normalisation with its backward, and the combination of the
workers' moments, each one pass over the data with OpenMP. They are compiled once per machine
and source version into a cache folder (by scripts/setup_env.sh, or at first use), with
`-march=native`, so the cache key includes the CPU's instruction sets:

    python -m deeplab.dist.fastbn        # build now if needed; prints the library's path

Environment:
    DEEPLAB_CACHE        cache root (default ${XDG_CACHE_HOME:-~/.cache}/deeplab); the library
                         goes to $DEEPLAB_CACHE/ops/
    CXX                  the C++ compiler (default g++)
    DEEPLAB_FUSED_SYNC_BN=0   never load the library (SyncBatchNorm then composes MXNet
                         operators, several times slower on CPU)

`load()` never raises: when the library cannot be built or loaded it warns once and returns
False, and SyncBatchNorm falls back to its composed implementation.
"""
import contextlib
import fcntl
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import warnings

import mxnet as mx

__all__ = ["OPS", "available", "load", "library_path", "build"]

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "syncbn_ops.cc")
OPS = ("deeplab_bn_moments", "deeplab_bn_combine", "deeplab_bn_combine_grad",
       "deeplab_bn_normalize")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17",
         # Bind the library's references to its own copies of lib_api.cc's symbols: libmxnet.so
         # exports the same names, and once Horovod has loaded it into the global scope
         # (RTLD_GLOBAL) they would resolve to MXNet's copies, which crashes the loading.
         "-Wl,-Bsymbolic"]

_state = {"loaded": None, "error": None}  # loaded: None (not tried), True, False


def _mxnet_dir():
    return os.path.dirname(os.path.abspath(mx.__file__))


def _cpu_signature():
    """The CPU's model and instruction sets: a library built with -march=native runs only on
    CPUs that have its instruction sets."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return platform.machine() + "".join(lines)


def _cache_root():
    root = os.environ.get("DEEPLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "deeplab")
    return os.path.join(root, "ops")


def library_path():
    """Where the library for this source, MXNet, compiler and CPU is (built or not)."""
    h = hashlib.sha256()
    mxdir = _mxnet_dir()
    for path in (SOURCE, os.path.join(mxdir, "src", "lib_api.cc"),
                 os.path.join(mxdir, "include", "mxnet", "lib_api.h")):
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(" ".join([mx.__version__, os.environ.get("CXX", "g++"), *FLAGS,
                       _cpu_signature()]).encode())
    return os.path.join(_cache_root(), "deeplab_syncbn-%s.so" % h.hexdigest()[:16])


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on `path`.lock: workers starting together build the library once."""
    with open(path + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(path=None, verbose=False):
    """Compiles the library into `path` (default `library_path()`) unless it is there; returns
    the path. Raises RuntimeError with the compiler's output when compilation fails."""
    path = path or library_path()
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _locked(path):
        if os.path.exists(path):  # another worker built it while this one waited
            return path
        mxdir = _mxnet_dir()
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
        os.close(fd)
        cmd = [os.environ.get("CXX", "g++"), *FLAGS, SOURCE,
               os.path.join(mxdir, "src", "lib_api.cc"), "-I", os.path.join(mxdir, "include"),
               "-o", tmp]
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        except OSError as err:
            os.unlink(tmp)
            raise RuntimeError("cannot run the C++ compiler %r: %s" % (cmd[0], err)) from None
        if proc.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError("compiling %s failed (%s):\n%s"
                               % (SOURCE, " ".join(cmd), proc.stdout[-4000:]))
        os.replace(tmp, path)  # atomic: a reader sees no half-written library
    return path


def load():
    """Loads the library into MXNet (building it first if needed) once per process; True when
    its operators are available. On failure: one warning, False."""
    if _state["loaded"] is None:
        if os.environ.get("DEEPLAB_FUSED_SYNC_BN", "1") == "0":
            _state["loaded"], _state["error"] = False, "DEEPLAB_FUSED_SYNC_BN=0"
            return False
        try:
            mx.library.load(build(), verbose=False)
            missing = [op for op in OPS if not hasattr(mx.nd, op)]
            if missing:
                raise RuntimeError("the library registered no %s" % ", ".join(missing))
            _state["loaded"] = True
        except (RuntimeError, OSError, mx.MXNetError) as err:
            _state["loaded"], _state["error"] = False, str(err)
            warnings.warn("synchronized BN falls back to composed MXNet operators (several times "
                          "slower on CPU): its fused kernels are unavailable: %s" % err,
                          RuntimeWarning)
    return _state["loaded"]


def available():
    """Whether the fused operators are loaded (loading them if not tried yet)."""
    return load()


if __name__ == "__main__":
    try:
        print(build(verbose=True))
    except RuntimeError as err:
        print("deeplab.dist.fastbn: %s" % err, file=sys.stderr)
        sys.exit(1)
