"""What a run records besides its log, written by the main worker only:

- DIR/metrics.jsonl: one JSON object per log interval ({"kind": "train", "iter", "time",
  "loss", "lr", "img_s", "data_s", "eta_s", "mem", "pixAcc", "mIoU"}) and per evaluation
  ({"kind": "val", "iter", "time", "pixAcc", "mIoU", "num_images"}); `deeplab plot` reads it;
- DIR/tb/: the same scalars as TensorBoard events (tensorboardX), tagged "train/loss",
  "val/mIoU", ...;
- DIR/run.json: provenance (command line, start and end time, duration, versions, git commit,
  world size, backend) and how the run ended.

On --resume, records of iterations after the checkpoint (a stretch of the run that was lost)
are dropped from metrics.jsonl and TensorBoard, so every iteration appears once.
"""
import datetime
import json
import os
import subprocess
import sys
import time

from deeplab import dist
from deeplab.utils import write_json, write_text

__all__ = ["RunRecord", "RunInfo", "provenance", "memory_bytes"]


class RunRecord:
    """Appends metrics to DIR/metrics.jsonl and DIR/tb/ (main worker; no-op elsewhere).

    Args:
        workdir: the run directory.
        start_iter: the iteration training starts from; later records on disk are dropped.
    """

    def __init__(self, workdir, start_iter=0, main=None):
        self.main = dist.is_main() if main is None else main
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.main:
            return
        if os.path.exists(self.path):
            keep = []
            with open(self.path) as f:
                for line in f:
                    try:
                        if json.loads(line)["iter"] <= start_iter:
                            keep.append(line if line.endswith("\n") else line + "\n")
                    except (ValueError, KeyError, TypeError):
                        pass  # a line cut short by a killed run
            write_text(self.path, "".join(keep))
        from tensorboardX import SummaryWriter

        # purge_step: TensorBoard hides events at and after it from earlier writers.
        self._tb = SummaryWriter(os.path.join(workdir, "tb"),
                                 purge_step=start_iter + 1 if start_iter else None)

    def write(self, row):
        """Records one row (a dict with 'kind' and 'iter'; numbers become TensorBoard scalars)."""
        if not self.main:
            return
        row = dict(row, time=round(time.time(), 3))
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k not in ("kind", "iter", "time") and isinstance(v, (int, float)) \
                    and not isinstance(v, bool) and v is not None:
                self._tb.add_scalar("%s/%s" % (row["kind"], k), v, row["iter"])
        self._tb.flush()

    def close(self):
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _versions():
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in ("deeplab-dist", "mxnet", "mxnet-cu112", "gluoncv", "horovod", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def provenance(argv=None):
    """Where a run or result comes from: command, time, versions, commit, workers."""
    return {"command": " ".join(["deeplab"] + list(sys.argv[1:] if argv is None else argv)),
            "start": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": os.uname().nodename, "versions": _versions(), "git_commit": _git_commit(),
            "world_size": dist.size(), "backend": dist.backend()}


class RunInfo:
    """DIR/run.json: provenance at the start, then how and when the run ended."""

    def __init__(self, workdir, argv=None, **extra):
        self.path = os.path.join(workdir, "run.json")
        self.info = provenance(argv)
        self.info.update(extra)
        self._t0 = time.time()
        self.info["status"] = "running"
        if dist.is_main():
            write_json(self.path, self.info)

    def elapsed(self):
        return time.time() - self._t0

    def finish(self, status):
        self.info.update(status=status, end=datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"),
            duration_s=round(time.time() - self._t0, 1))
        if dist.is_main():
            write_json(self.path, self.info)


def memory_bytes(ctx):
    """Memory in use by this worker: on a GPU, what NVML says this process holds over every GPU,
    else (no NVML, or a container's PID namespace hides the process) the device's memory in use
    as MXNet reports it (other processes and MXNet's pool included); on the CPU, the process's
    resident set."""
    if ctx.device_type == "gpu":
        import mxnet as mx

        from deeplab import nvml

        used = nvml.process_memory(os.getpid())
        if used is not None:
            return used
        free, total = mx.context.gpu_memory_info(ctx.device_id)
        return total - free
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
