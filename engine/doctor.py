"""`deeplab doctor`: what a cluster run needs, printed and checked against each other.

    deeplab doctor [CONFIG] [--workers N] [--set KEY=VALUE ...] [--json]

Each check is one line, `ok`, `warn` or `FAIL` first (with --json, one JSON report instead):

    mxnet      MXNet's version, build features (mxnet.runtime.Features) and libmxnet.so's path
    kernels    the GPU architectures libmxnet.so carries: cubins (sm_XY) and PTX
    gpus       the visible GPUs: name, memory, compute capability (NVML, else nvidia-smi)
    gpu        per kind of visible GPU: whether this MXNet build has kernels it can run
    horovod    Horovod's version and what it was built with (MXNet, Gloo, MPI, NCCL)

and with CONFIG (the same CONFIG and --set as the training run):

    config                 the config and its overrides load
    dataset                data.name / data.root: the train and val datasets, their sizes
    model.backbone_params  the file exists; zoo:NAME: found in MXNet's cache (never downloaded)
    model.params           the file exists
    batch                  train.batch_size against the number of workers (--workers N, else
                           one per visible GPU)
    cycle                  the negotiation cycle Horovod workers of this config start with
                           (dist.horovod_cycle_time, HOROVOD_CYCLE_TIME)

Exit code 0 when no check failed (warnings allowed), 6 when one did (EXIT_CHECK_FAILED: its own
code, as 1 means a bug), 2 for bad flags.

The GPU code in libmxnet.so is read by deeplab.cudabin. What the doctor asks of the machine
(MXNet, its library, the GPUs, Horovod) goes through a `Probes` object that `run_checks` and
`main` take: tests describe another machine by passing their own.
"""
import argparse
import collections
import concurrent.futures
import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

from deeplab import nvml
from deeplab.cudabin import describe_kernels, library_archs, runs_on, supported_text
from deeplab.nvml import GPU
from deeplab.errors import UserError

__all__ = ["Check", "GPU", "Probes", "NGC_HINT", "gpu_list", "horovod_info", "mxnet_info",
           "run_checks", "format_text", "report", "parse_args", "main"]

OK, WARN, FAIL = "ok", "warn", "FAIL"

# Where to go when the installed MXNet has no kernels for a GPU: the CUDA 11.2 wheel stops at
# sm_86; NVIDIA's NGC MXNet containers (MXNet 1.9.1 on CUDA 12) run Hopper and newer.
NGC_IMAGE = ("the image built on NVIDIA's NGC MXNet container (docker build -f k8s/Dockerfile "
             "--build-arg BASE=ngc -t IMAGE .; see docs/kubernetes.md)")
NGC_HINT = "use " + NGC_IMAGE
GPU_WHEEL = "mxnet-cu112==1.9.1 (DEEPLAB_VARIANT=gpu bash scripts/setup_env.sh)"
GPU_WHEEL_MAJORS = (5, 6, 7, 8)  # its cubins: sm_50, 60, 70, 80, 86; no PTX

Check = collections.namedtuple("Check", "name status message notes data")
Check.__doc__ = """One finding: its name, OK / WARN / FAIL, a one-line message, further lines
(notes) and the facts behind it for the JSON report (data, a dict)."""

def _check(name, status, message, notes=(), /, **data):
    return Check(name, status, message, list(notes), data)


# --- probes ----------------------------------------------------------------------------------

def mxnet_info():
    """MXNet in this process: {'version', 'library' (libmxnet.so's path), 'features' (name ->
    built)}, or {'error': ...} when it cannot be imported (a CUDA build without a driver)."""
    try:
        import mxnet
        from mxnet import runtime
        from mxnet.base import _LIB
    except Exception as err:  # noqa: B902 - OSError for a missing libcuda.so.1, ImportError, ...
        return {"error": "%s: %s" % (type(err).__name__, err)}
    features = {name: bool(f.enabled) for name, f in runtime.Features().items()}
    return {"version": mxnet.__version__, "library": os.path.realpath(_LIB._name),
            "features": features}


def find_library():
    """libmxnet.so's path without importing MXNet (which fails for a CUDA build where no driver
    is installed): $MXNET_LIBRARY_PATH, else the one in the mxnet package; None if not found."""
    env = os.environ.get("MXNET_LIBRARY_PATH")
    if env and os.path.isfile(env):
        return env
    spec = importlib.util.find_spec("mxnet")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "libmxnet.so")
        if os.path.isfile(path):
            return path
    return None


def _smi_gpus():
    """GPUs as `nvidia-smi --query-gpu` lists them, or None without nvidia-smi. Drivers before
    510 know no compute_cap field: then the capability is None."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    for fields in ("index,name,memory.total,uuid,compute_cap", "index,name,memory.total,uuid"):
        try:
            proc = subprocess.run([exe, "--query-gpu=" + fields, "--format=csv,noheader,nounits"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode == 0:
            break
    else:
        return None
    gpus = []
    for row in csv.reader(proc.stdout.splitlines(), skipinitialspace=True):
        if len(row) < 4 or not row[0].strip().isdigit():
            continue
        cap = row[4].strip() if len(row) > 4 else ""
        capability = (tuple(int(x) for x in cap.split("."))
                      if re.fullmatch(r"\d+\.\d+", cap) else None)
        memory = int(row[2]) if row[2].strip().isdigit() else None
        gpus.append(GPU(int(row[0]), row[1].strip(), memory, capability, row[3].strip()))
    return gpus


def _visible(gpus):
    """The GPUs CUDA_VISIBLE_DEVICES leaves visible (indices or UUIDs; CUDA stops at the first
    entry that names no GPU)."""
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return gpus
    out = []
    for item in (s.strip() for s in spec.split(",")):
        match = [g for g in gpus if (str(g.index) == item if item.isdigit()
                                     else bool(item) and (g.uuid or "").startswith(item))]
        if not match:
            break
        out.append(match[0])
    return out


def gpu_list():
    """The GPUs this process can see: NVML's, else nvidia-smi's; [] when neither is there (no
    driver)."""
    gpus = nvml.gpus()
    if gpus is None:
        gpus = _smi_gpus()
    return _visible(gpus or [])


def gpu_sources():
    """Where the GPU probe looked, for the message when it found none."""
    driver = ("nvidia-ml-py finds no NVIDIA driver" if importlib.util.find_spec("pynvml")
              else "nvidia-ml-py not installed")
    smi = "nvidia-smi lists none" if shutil.which("nvidia-smi") else "nvidia-smi not on the PATH"
    hidden = ("; CUDA_VISIBLE_DEVICES=%r" % os.environ["CUDA_VISIBLE_DEVICES"]
              if "CUDA_VISIBLE_DEVICES" in os.environ else "")
    return "%s, %s%s" % (driver, smi, hidden)


# Run in a child process: a Horovod whose MXNet extension was built against another MXNet can
# crash the interpreter on import. Prints its findings before that import too.
_HOROVOD_PROBE = r"""
import json
report = {"installed": False}
try:
    import horovod
except ImportError as err:
    report["error"] = str(err)
else:
    report.update(installed=True, version=getattr(horovod, "__version__", "unknown"))
    print("DOCTOR " + json.dumps(report), flush=True)
    try:
        import horovod.mxnet as hvd
        report.update(mxnet=True, mpi=bool(hvd.mpi_built()), gloo=bool(hvd.gloo_built()),
                      nccl=int(hvd.nccl_built() or 0), cuda=bool(hvd.cuda_built()))
    except Exception as err:
        report.update(mxnet=False, mxnet_error="%s: %s" % (type(err).__name__, err))
        from horovod.common import util  # asks each extension that loads (None: none does)
        report.update(mpi=util.mpi_built(), gloo=util.gloo_built(), nccl=util.nccl_built())
if report.get("mpi"):  # the MPI library Horovod was built against, and mpi4py's
    import os, shutil, sys
    try:
        import mpi4py
        mpi4py.rc.initialize = mpi4py.rc.finalize = False
        from mpi4py import MPI
        report["mpi_library"] = " ".join(MPI.Get_library_version().splitlines()[0].split())
    except Exception as err:
        report["mpi4py_error"] = "%s: %s" % (type(err).__name__, err)
    beside = os.path.join(os.path.dirname(sys.executable), "mpirun")
    report["mpirun"] = beside if os.path.exists(beside) else shutil.which("mpirun")
print("DOCTOR " + json.dumps(report), flush=True)
"""


def horovod_info():
    """Horovod as this Python sees it: {'installed', 'version', 'mxnet' (its MXNet extension
    loads), 'mxnet_error', 'gloo', 'mpi', 'nccl' (NCCL's version code, 0 without), 'cuda'},
    and when built with MPI: 'mpi_library' (mpi4py's MPI_Get_library_version, first line) or
    'mpi4py_error', and 'mpirun' (its path, or None);
    None where no extension of Horovod loads to tell. Probed in a child process, so that a
    broken build cannot take the doctor down."""
    try:
        proc = subprocess.run([sys.executable, "-c", _HOROVOD_PROBE], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return {"installed": None, "error": "the probe importing horovod.mxnet hung (300 s)"}
    lines = [ln[len("DOCTOR "):] for ln in proc.stdout.splitlines() if ln.startswith("DOCTOR ")]
    info = json.loads(lines[-1]) if lines else {"installed": None}
    if proc.returncode != 0:
        how = ("was killed by signal %d" % -proc.returncode if proc.returncode < 0
               else "exited with %d" % proc.returncode)
        detail = (proc.stderr.strip().splitlines() or [""])[-1]
        error = "the probe importing horovod.mxnet %s%s" % (how, ": " + detail if detail else "")
        if info.get("installed"):
            info.update(mxnet=False, mxnet_error=error)
        else:
            info["error"] = error
    return info


class Probes:
    """What the doctor asks of this machine, one method per probe. `run_checks` and `main` take
    an instance; a test passes a subclass answering for the machine it describes."""

    def mxnet(self):
        """See mxnet_info."""
        return mxnet_info()

    def library(self, mx):
        """(path, other): the library whose GPU code is read (None if not found), and whether it
        is another file than the one MXNet loaded, whose build features then do not describe
        it. Here: MXNet's own libmxnet.so, found without importing MXNet if that fails."""
        return mx.get("library") or find_library(), False

    def gpus(self):
        """See gpu_list."""
        return gpu_list()

    def gpu_sources(self):
        """See gpu_sources."""
        return gpu_sources()

    def horovod(self):
        """See horovod_info."""
        return horovod_info()


# --- checks ----------------------------------------------------------------------------------

_KEY_FEATURES = ("CUDA", "CUDNN", "NCCL", "MKLDNN", "DIST_KVSTORE")
# What libmxnet.so of mxnet-cu112 links besides the driver (readelf -d: NEEDED).
_CUDA_LIBRARIES = ("libcudart", "libcudnn", "libcublas", "libcufft", "libcusolver", "libcurand",
                   "libnvrtc", "libnccl", "libnvToolsExt")


def _mxnet_check(mx):
    if "error" in mx:
        err = mx["error"]
        missing = re.search(r"(lib[\w+-]+)\.so[\w.]*: cannot open shared object", err)
        missing = missing.group(1) if missing else None
        if missing == "libcuda":
            hint = ("this is a CUDA build of MXNet, which needs the NVIDIA driver (libcuda.so.1), "
                    "present only where a GPU is attached: run the doctor on a GPU node, or "
                    "install the CPU build (mxnet==1.9.1) here")
        elif missing in _CUDA_LIBRARIES:
            hint = ("this is a CUDA build of MXNet: mxnet-cu112 needs CUDA 11.2, cuDNN 8 and "
                    "NCCL 2 on the library path (LD_LIBRARY_PATH), as the image of k8s/Dockerfile "
                    "has them")
        elif err.startswith("ModuleNotFoundError"):
            hint = "MXNet is not installed: bash scripts/setup_env.sh"
        else:
            hint = "reinstall it: bash scripts/setup_env.sh"
        return _check("mxnet", FAIL, "cannot import MXNet (%s): %s" % (err, hint), error=err)
    f = mx["features"]
    kind = "CUDA build" if f.get("CUDA") else "CPU build"
    notes = ["features: " + ", ".join("%s %s" % (k, "yes" if f.get(k) else "no")
                                      for k in _KEY_FEATURES),
             "built with: " + ", ".join(k for k, on in f.items() if on)]
    status, warning = OK, ""
    if mx["version"] != "1.9.1":
        status, warning = WARN, "; the project is tested with 1.9.1 (requirements/)"
    if f.get("CUDA") and not f.get("CUDNN"):
        status, warning = WARN, warning + "; built without cuDNN: convolutions run slowly"
    return _check("mxnet", status, "MXNet %s, %s, %s%s" % (mx["version"], kind, mx["library"],
                                                            warning),
                  notes, version=mx["version"], library=mx["library"], features=f)


def _kernels_check(path, mx, overridden):
    cuda = (mx.get("features") or {}).get("CUDA")
    if path is None:
        return None, _check("kernels", WARN, "not checked: libmxnet.so not found")
    try:
        kernels = library_archs(path)
    except OSError as err:
        status = FAIL if overridden else WARN
        return None, _check("kernels", status, "cannot read %s: %s" % (path, err.strerror or err),
                            library=path)
    data = dict(library=path, cubins=["sm_%d" % s for s in kernels.cubins],
                ptx=["compute_%d" % s for s in kernels.ptx], source=kernels.source)
    if not kernels.cubins and not kernels.ptx:
        if cuda and not overridden:
            return None, _check("kernels", WARN, "MXNet reports CUDA, but no GPU code was found "
                                "in %s; GPUs are not checked against it" % path, **data)
        return kernels, _check("kernels", OK, "CPU build: no GPU code in %s" % path, **data)
    via = ("by cuobjdump" if kernels.source == "cuobjdump"
           else "from its fat binary and ELF headers (cuobjdump is not on the PATH)")
    notes = [supported_text(kernels), "%s, read %s" % (path, via)]
    if cuda is False and not overridden:
        return kernels, _check("kernels", WARN, "%s, but MXNet reports no CUDA"
                               % describe_kernels(kernels), notes, **data)
    return kernels, _check("kernels", OK, describe_kernels(kernels), notes, **data)


def _gpu_label(group):
    indices = [g.index for g in group]
    if len(indices) == 1:
        which = "GPU %d" % indices[0]
    elif indices == list(range(indices[0], indices[-1] + 1)):
        which = "GPUs %d-%d" % (indices[0], indices[-1])
    else:
        which = "GPUs " + ", ".join(str(i) for i in indices)
    cap = group[0].capability
    return "%s (%s, compute capability %s)" % (which, group[0].name,
                                               "%d.%d" % cap if cap else "unknown")


def _gpu_checks(gpus, kernels, cuda_build):
    """One check per kind of GPU (name and capability): can this MXNet build run on it."""
    groups = collections.OrderedDict()
    for g in gpus:
        groups.setdefault((g.name, g.capability), []).append(g)
    checks = []
    for (name, cap), group in groups.items():
        label = _gpu_label(group)
        data = dict(gpus=[g.index for g in group], name=name,
                    compute_capability="%d.%d" % cap if cap else None)
        if cap is None:
            checks.append(_check("gpu", WARN, "%s: not checked, the driver does not report the "
                                 "compute capability" % label, **data))
        elif kernels is None:
            checks.append(_check("gpu", WARN, "%s: not checked, the GPU code of libmxnet.so is "
                                 "unknown" % label, **data))
        elif not kernels.cubins and not kernels.ptx and not cuda_build:
            hint = ("install the CUDA build, %s, or %s" % (GPU_WHEEL, NGC_IMAGE)
                    if cap[0] in GPU_WHEEL_MAJORS else NGC_HINT)
            checks.append(_check("gpu", FAIL, "%s: this MXNet is a CPU build, training would run "
                                 "on the CPU: %s" % (label, hint), **data))
        else:
            how = runs_on(cap, kernels)
            if how is None:
                oldest = min(kernels.cubins + kernels.ptx)
                wheel = GPU_WHEEL + " runs 5.x-8.x"
                if cap[0] * 10 + cap[1] < oldest:
                    hint = "this build needs compute capability %d.%d or newer" % (
                        oldest // 10, oldest % 10)
                    if cap[0] in GPU_WHEEL_MAJORS:
                        hint += "; " + wheel
                else:
                    hint = wheel if cap[0] in GPU_WHEEL_MAJORS else NGC_HINT
                checks.append(_check("gpu", FAIL, "%s cannot run this MXNet build (%s): %s"
                                     % (label, describe_kernels(kernels), hint), **data))
            elif how.startswith("compute_"):
                checks.append(_check(
                    "gpu", OK, "%s runs this build through PTX %s" % (label, how),
                    ["the driver compiles the kernels when a process starts (slow the first "
                     "time; cached in ~/.nv/ComputeCache up to $CUDA_CACHE_MAXSIZE bytes)"],
                    runs=how, **data))
            else:
                checks.append(_check("gpu", OK, "%s runs the %s kernels" % (label, how),
                                     runs=how, **data))
    return checks


def _nccl_version(code):
    if code >= 10000:  # NCCL 2.9 and newer: major * 10000 + minor * 100 + patch
        return "%d.%d.%d" % (code // 10000, code // 100 % 100, code % 100)
    return "%d.%d.%d" % (code // 1000, code // 100 % 10, code % 100)


def _horovod_check(info, gpus):
    if not info.get("installed"):
        why = info.get("error") or "not installed"
        return _check("horovod", WARN, "Horovod is not usable (%s): `deeplab launch horovod` "
                      "will not start; scripts/setup_env.sh builds it" % why, **info)
    def yes(key):
        value = info.get(key)
        return "unknown" if value is None else "yes" if value else "no"

    mpi = yes("mpi")
    if info.get("mpi") and info.get("mpi_library"):
        mpi += " (%s)" % info["mpi_library"]
    facts = "Horovod %s: MXNet %s, Gloo %s, MPI %s, NCCL %s" % (
        info.get("version"), yes("mxnet"), yes("gloo"), mpi,
        _nccl_version(info["nccl"]) if info.get("nccl") else yes("nccl"))
    problems = []
    if not info.get("mxnet"):
        problems.append("its MXNet extension does not load (%s): rebuild Horovod against this "
                        "MXNet with HOROVOD_WITH_MXNET=1 (scripts/setup_env.sh)"
                        % info.get("mxnet_error", "not built"))
    if info.get("gloo") is False and info.get("mpi") is False:
        problems.append("built with neither Gloo nor MPI: horovodrun cannot start workers")
    elif info.get("gloo") is False:
        problems.append("built without Gloo: launch with `deeplab launch horovod --mpi`")
    if info.get("mpi") and info.get("mpi4py_error"):
        problems.append("mpi4py does not load (%s): synchronized BN's statistics cannot go "
                        "over MPI (dist.sync_bn_transport mpi); scripts/setup_env.sh installs it"
                        % info["mpi4py_error"])
    elif info.get("mpi") and not info.get("mpirun"):
        problems.append("no mpirun beside this Python or on the PATH: `deeplab launch horovod "
                        "--mpi` cannot start workers (MPICH: requirements/mpi.txt)")
    if gpus and info.get("nccl") == 0:
        problems.append("built without NCCL: GPU gradients are reduced through host memory; "
                        "rebuild with HOROVOD_GPU_OPERATIONS=NCCL")
    if problems:
        return _check("horovod", WARN, "; ".join(problems), [facts], **info)
    return _check("horovod", OK, facts, **info)


def _dataset_check(cfg):
    from deeplab.build import build_dataset

    d = cfg["data"]
    files = d["name"] != "synthetic"
    splits = {"train": d["train_split"], "val": d["val_split"]} if files else {}
    sizes, errors = {}, []
    for split in ("train", "val"):
        try:
            sizes[split] = len(build_dataset(cfg, split))
        except (UserError, ValueError, OSError) as err:
            errors.append((split, str(err)))
    where = "%s at %s" % (d["name"], d["root"]) if files else d["name"]
    if errors:
        if len(errors) == 2 and errors[0][1] == errors[1][1]:
            text = errors[0][1]
        else:
            text = "; ".join("%s split%s: %s" % (split, " %r" % splits[split] if splits else "",
                                                 err) for split, err in errors)
        hint = {"voc": " (deeplab fetch voc --root DIR downloads VOC 2012 + SBD)",
                "cityscapes": " (deeplab fetch cityscapes says what to download and where)"
                }.get(d["name"], "")
        return _check("dataset", FAIL, "%s: %s%s" % (where, text, hint), sizes=sizes,
                      errors=dict(errors))
    names = {s: " (%s)" % splits[s] if splits else "" for s in ("train", "val")}
    return _check("dataset", OK, "%s: train%s %d images, val%s %d images"
                  % (where, names["train"], sizes["train"], names["val"], sizes["val"]),
                  sizes=sizes)


def _weights_check(key, value):
    name = "model." + key
    if value is None:
        return _check(name, OK, "none (random initialisation)" if key == "backbone_params"
                      else "none", value=None)
    if key == "backbone_params" and value.startswith("zoo:"):
        from deeplab import fetch

        backbone = value[len(fetch.ZOO_PREFIX):]
        if backbone not in fetch.backbone_names():
            valid = ", ".join(fetch.ZOO_PREFIX + n for n in fetch.backbone_names())
            return _check(name, FAIL, "%s: no model-zoo weights for backbone %r; valid: %s"
                          % (value, backbone, valid), value=value)
        row = fetch.TABLE[backbone]
        path = os.path.join(fetch.default_root(), "%s-%s.params" % (backbone, row.sha1[:8]))
        if not os.path.isfile(path):
            return _check(name, WARN, "%s is not in MXNet's cache (%s): the main worker downloads "
                          "it when training starts; where nodes have no internet access, run "
                          "`deeplab fetch backbone %s` first ($MXNET_HOME on shared storage) or "
                          "set a .params path" % (value, path, backbone), value=value, path=path,
                          cached=False)
        if fetch.sha1_of(path) != row.sha1:
            return _check(name, WARN, "%s: %s does not have the zoo's sha1 %s: training "
                          "downloads it again" % (value, path, row.sha1), value=value, path=path,
                          cached=False)
        return _check(name, OK, "%s: %s (sha1 checked)" % (value, path), value=value, path=path,
                      cached=True)
    if not os.path.isfile(value):
        return _check(name, FAIL, "%s does not exist%s" % (
            value, "" if os.path.isabs(value) else " (relative to %s)" % os.getcwd()),
            value=value)
    return _check(name, OK, "%s (%.1f MB)" % (value, os.path.getsize(value) / 1e6), value=value)


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def _batch_check(cfg, workers, gpus):
    from deeplab.dist.runtime import sync_bn_possible

    t, dist = cfg["train"], cfg["dist"]
    batch = t["batch_size"]
    counts = ", ".join(str(d) for d in _divisors(batch))
    if workers is None and not gpus:
        return _check("batch", OK, "global batch %d: runs on %s workers (train.batch_size must "
                      "be divisible by their number)" % (batch, counts), batch_size=batch)
    n, source = (workers, "--workers") if workers else (len(gpus), "one per visible GPU")
    if batch % n:
        return _check("batch", FAIL if workers else WARN,
                      "train.batch_size %d is not divisible by %d workers (%s): training refuses "
                      "it; use %s workers or another batch" % (batch, n, source, counts),
                      batch_size=batch, workers=n)
    per = batch // n
    notes = []
    status = OK
    # Synchronized when requested and possible under the config's backend (not the parameter
    # server); the launcher (Horovod or not) is not known here.
    if per == 1 and not t["freeze_bn"] and not (dist["sync_bn"]
                                                and sync_bn_possible(cfg, dist["backend"])):
        status = WARN
        notes.append("BN trained on 1 image per worker without synchronized BN: set "
                     "dist.sync_bn=true and run under Horovod")
    return _check("batch", status, "global batch %d on %d workers (%s): %d image%s each"
                  % (batch, n, source, per, "" if per == 1 else "s"), notes, batch_size=batch,
                  workers=n, per_worker=per)


def _gpus_check(gpus, cuda, sources):
    if not gpus:
        return _check("gpus", WARN if cuda else OK, "no GPU visible (%s)%s" % (
            sources(), ": this CUDA build of MXNet would train on the CPU" if cuda else ""),
            gpus=[])
    data = [dict(index=g.index, name=g.name, memory_mib=g.memory_mib, uuid=g.uuid,
                 compute_capability="%d.%d" % g.capability if g.capability else None)
            for g in gpus]
    notes = ["GPU %d: %s, %s MiB, compute capability %s" % (
        g.index, g.name, "?" if g.memory_mib is None else g.memory_mib,
        "%d.%d" % g.capability if g.capability else "unknown") for g in gpus]
    return _check("gpus", OK, "%d visible" % len(gpus), notes, gpus=data)


def run_checks(config=None, overrides=(), workers=None, probes=None):
    """Every check, in order; see the module docstring. Returns a list of Check.

    Args:
        probes: what to ask of the machine (default: Probes(), this machine).
    """
    probes = probes or Probes()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        # The Horovod probe, a child process that imports MXNet too, runs meanwhile.
        horovod = pool.submit(probes.horovod)
        mx = probes.mxnet()
        cuda = bool((mx.get("features") or {}).get("CUDA"))
        library, other = probes.library(mx)
        kernels, kernels_check = _kernels_check(library, mx, other)
        gpus = probes.gpus()
        checks = [_mxnet_check(mx), kernels_check, _gpus_check(gpus, cuda, probes.gpu_sources)]
        # MXNet's features describe the library it loaded, not another one read instead.
        checks += _gpu_checks(gpus, kernels, cuda and not other)
        checks.append(_horovod_check(horovod.result(), gpus))
    if config is not None:
        checks += _config_checks(config, overrides, workers, gpus, mx)
    return checks


def _config_checks(config, overrides, workers, gpus, mx):
    if "error" in mx:
        return [_check("config", WARN, "%s: not checked, MXNet cannot be imported" % config)]
    from deeplab.config import load_config

    try:
        cfg = load_config(config, overrides)
    except UserError as err:
        return [_check("config", FAIL, str(err))]
    m, t = cfg["model"], cfg["train"]
    checks = [_check("config", OK, "%s%s: %s (%s head, output stride %d), data %s, %d iterations"
                     % (config, " + %d override(s)" % len(overrides) if overrides else "",
                        m["name"], m["head"], m["output_stride"], cfg["data"]["name"],
                        t["iterations"]), config=config, overrides=list(overrides))]
    checks.append(_dataset_check(cfg))
    checks.append(_weights_check("backbone_params", m["backbone_params"]))
    checks.append(_weights_check("params", m["params"]))
    checks.append(_batch_check(cfg, workers, gpus))
    checks.append(_cycle_check(cfg, gpus))
    return checks


def _cycle_check(cfg, gpus):
    """The negotiation cycle Horovod workers of this config start with (dist/runtime.py)."""
    from deeplab.dist.runtime import horovod_cycle_time, sync_bn_requested

    ms = horovod_cycle_time(cfg, len(gpus))
    env = os.environ.get("HOROVOD_CYCLE_TIME")
    bn = "synchronized" if sync_bn_requested(cfg) else "unsynchronized"
    source = ("HOROVOD_CYCLE_TIME in this environment" if env else
              "dist.horovod_cycle_time" if cfg["dist"]["horovod_cycle_time"] is not None else
              "the default for %s BN on %s" % (bn, "GPUs" if gpus else "CPUs"))
    return _check("cycle", OK, "under Horovod, workers negotiate every %s ms (%s)"
                  % (env or "%g" % ms, source), cycle_ms=float(env) if env else ms)


def format_text(checks):
    """The checks as lines: STATUS  NAME: MESSAGE, notes indented below, a summary last."""
    lines = []
    for c in checks:
        lines.append("%-4s  %s: %s" % (c.status, c.name, c.message))
        lines.extend("      " + n for n in c.notes)
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    summary = "%d check%s failed" % (failed, "" if failed == 1 else "s") if failed else \
        "no check failed"
    lines.append("deeplab doctor: %s, %d warning%s" % (summary, warned, "" if warned == 1 else "s"))
    return "\n".join(lines)


def report(checks):
    """The checks as a JSON-serializable dict."""
    return {"ok": not any(c.status == FAIL for c in checks),
            "failed": sum(c.status == FAIL for c in checks),
            "warnings": sum(c.status == WARN for c in checks),
            "checks": [{"name": c.name, "status": c.status, "message": c.message,
                        "notes": c.notes, "data": c.data} for c in checks]}


def parse_args(argv=None):
    from deeplab.errors import EXIT_CHECK_FAILED, EXIT_USER_ERROR

    p = argparse.ArgumentParser(
        prog="deeplab doctor", description=__doc__.split("\n\n")[0],
        epilog="Exit code: 0 when no check failed (warnings allowed), %d when one did, %d for "
               "bad flags." % (EXIT_CHECK_FAILED, EXIT_USER_ERROR))
    p.add_argument("config", nargs="?", help="the training config to check, e.g. "
                   "configs/deeplabv3_r50v2-os16_bs16_30k_trainaug_513.yaml")
    p.add_argument("--workers", type=int, default=None,
                   help="number of workers the run will have (checks train.batch_size against "
                        "it; default: one per visible GPU)")
    p.add_argument("--json", action="store_true", help="print one JSON report instead of lines")
    from deeplab.config import add_set_argument
    add_set_argument(p, example="data.root=/data/voc")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be a positive integer")
    if args.overrides and args.config is None:
        p.error("--set needs a CONFIG")
    return args


def main(args, probes=None):
    """Runs the checks (asking `probes`, default this machine's) and prints them."""
    checks = run_checks(args.config, args.overrides, args.workers, probes)
    if args.json:
        print(json.dumps(report(checks), indent=2))
    else:
        print(format_text(checks))
    if any(c.status == FAIL for c in checks):
        from deeplab.errors import EXIT_CHECK_FAILED
        raise SystemExit(EXIT_CHECK_FAILED)
