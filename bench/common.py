"""What the training and inference benchmarks share: the report's header (machine facts, the
run's counts and setup), memory, baselines and FLOPs formatting."""
import datetime
import json
import os
import platform
import resource

import mxnet as mx

from deeplab import dist
from deeplab.build import bn_mode
from deeplab.config import eval_stride
from deeplab.errors import UserError
from deeplab.record import memory_bytes

__all__ = ["report_header", "machine", "peak_rss_bytes", "device_memory",
           "check_counts", "setup_facts", "bn_class", "precision", "load_baseline",
           "format_flops"]


def report_header(mode, facts, command, batch, crop, warmup, steps, repeat):
    """The keys every `deeplab bench` report starts with."""
    return {"benchmark": "deeplab bench", "mode": mode,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "machine": machine(), "backend": dist.backend(),
            "workers": dist.size(), "batch_per_worker": batch, "crop": crop, "warmup": warmup,
            "steps": steps, "repeat": repeat, "setup": facts}


def peak_rss_bytes():
    """This process's peak resident set so far: what a machine must have for the run. Training
    logs the current resident set instead (deeplab.record.memory_bytes on the CPU: its trend
    over a run); docs/benchmarks.md says how the two compare."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def device_memory(ctx):
    """GPU memory this process holds (training's figure, deeplab.record.memory_bytes), or None
    on the CPU."""
    return memory_bytes(ctx) if ctx.device_type == "gpu" else None


def machine():
    """The facts of this machine and process that figures depend on."""
    return {"hostname": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor(), "python": platform.python_version(),
            "mxnet": mx.__version__, "gpus": mx.context.num_gpus(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MXNET_CPU_WORKER_NTHREADS": os.environ.get("MXNET_CPU_WORKER_NTHREADS"),
            "HOROVOD_CYCLE_TIME": os.environ.get("HOROVOD_CYCLE_TIME")
            if dist.backend() == "horovod" else None}


def check_counts(steps, warmup, batch, crop, repeat):
    if steps < 1 or warmup < 1 or batch < 1 or crop < 8 or repeat < 1:
        raise UserError("need --steps >= 1, --warmup >= 1, --batch >= 1, --crop >= 8 and "
                        "--repeat >= 1")


def setup_facts(cfg, mode, batch, crop):
    """What a run's figures depend on besides the number of workers: a baseline must match."""
    return {"mode": mode, "model": cfg["model"]["name"], "head": cfg["model"]["head"],
            "output_stride": eval_stride(cfg) if mode == "infer"
            else cfg["model"]["output_stride"],
            "bn": bn_class(bn_mode(cfg)) if mode == "train" else "inference (running statistics)",
            "precision": precision(cfg, mode), "crop": crop, "batch_per_worker": batch}


def bn_class(mode):
    """BN modes that compute alike on one worker: 'plain' (one process) is what each worker of
    'per-worker' BN does; synchronized and frozen BN differ from both."""
    return "per-worker" if mode in ("plain", "per-worker") else mode


def precision(cfg, mode="train"):
    amp = cfg["train"]["amp"] and mode == "train"  # the inference bench runs float32
    return ", ".join(filter(None, ["mixed (AMP)" if amp else "float32",
                                   cfg["dist"]["fp16_compression"]
                                   and "fp16 gradient compression"]))


def load_baseline(path, facts):
    """A one-worker report to compute scaling efficiency against, refused (UserError naming
    each difference) unless it measured the same work per worker: network, head, output
    stride, BN mode, precision, crop and batch per worker."""
    try:
        with open(path) as f:
            base = json.load(f)
        base_variants = {e["name"]: e for e in base["variants"]}
        base_workers = base["workers"]
        theirs = base.get("setup") or _legacy_facts(base)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError("--baseline %s: not a `deeplab bench` JSON (%s)" % (path, err))
    if base_workers != 1:
        raise UserError("--baseline %s ran %d workers; it must be a one-worker run"
                        % (path, base_workers))
    if (theirs.get("batch_per_worker"), theirs.get("crop")) != (facts["batch_per_worker"],
                                                                facts["crop"]):
        raise UserError("--baseline %s ran batch %s per worker at crop %s; this run has batch "
                        "%d at crop %d: efficiency compares equal work per worker"
                        % (path, theirs.get("batch_per_worker"), theirs.get("crop"),
                           facts["batch_per_worker"], facts["crop"]))
    diff = ["%s %r (baseline) vs %r (this run)" % (k, theirs.get(k), v)
            for k, v in facts.items() if theirs.get(k) != v]
    if diff:
        raise UserError("--baseline %s measured other work: %s; efficiency would count the "
                        "difference as scaling loss (run the baseline with the same settings)"
                        % (path, "; ".join(diff)))
    return {"path": path, "variants": base_variants, "backend": base.get("backend"),
            "bn": theirs["bn"]}


def _legacy_facts(base):
    """The setup facts of a report written before reports recorded them."""
    m = base["model"]
    mode = "frozen" if m["freeze_bn"] else "synchronized" if m["sync_bn"] else "per-worker"
    return {"mode": "train", "model": m["name"], "head": m["head"],
            "output_stride": m["output_stride"], "bn": mode,
            "precision": "float32, fp16 gradient compression" if m.get("fp16_compression")
            else "float32", "crop": base["crop"], "batch_per_worker": base["batch_per_worker"]}


def format_flops(gflops):
    """'1.23 TFLOPs', '45.6 GFLOPs', '312 MFLOPs', '8.1 kFLOPs' for a count in GFLOPs."""
    flops = gflops * 1e9
    for unit, scale in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
        if flops >= scale:
            return "%.3g %s" % (flops / scale, unit)
    return "%.3g FLOPs" % flops
