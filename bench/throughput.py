"""Training-throughput benchmark on synthetic data: images/s per worker and in total, the time of
each part of a step, peak memory, analytic FLOPs, and side-by-side comparisons in the same run.

    deeplab bench CONFIG [--set key=value ...] [--batch B] [--crop N] [--steps 10] [--warmup 2]
                  [--compare gluoncv,head,bn,hybridize] [--baseline ONE_WORKER.json]
                  [--out FILE.json] [--plot FILE.png] [--profile FILE.json]

Run it like training: alone (local backend) or on N workers with `deeplab launch horovod -np N
-- bench ...` / `deeplab launch ps --workers N -- bench ...`. The model, BN mode, hybridization,
loader processes and distributed settings come from CONFIG; the data are always the built-in
synthetic images (about crop-sized), decoded and augmented by the training pipeline, so the data
wait is real. `--batch` is per worker (default: train.batch_size / workers).

Each step is timed in four parts, with the engine drained between them so that each part is
charged its own work (training itself does not wait there, so a bench step is slightly slower
than a training step): data (next batch from the loader), fwd_bwd (forward, loss, backward;
synchronized BN's collectives included), comm (the labelled-pixel count and the gradient
allreduce / push-pull), update (the SGD update). After `--warmup` steps (graph construction,
MKL-DNN's first-call work), `--steps` steps are timed; variants run alternately, step by step, so
that they share the machine's state. Figures are medians; a worker's step is the slowest
worker's step (all wait for it). Scaling efficiency, with `--baseline` (the JSON of a one-worker
run with the same batch per worker and crop) = throughput(N) / (N x throughput(1)).

--compare adds variants to the configured network ("ours"), each with its own parameters and
trainer, timed in the same processes:
    gluoncv    GluonCV's own DeepLabV3 of the same depth (resnet50/101: its resnet*_v1s, output
               stride 8, aux head off), imperative as GluonCV's train.py runs it, and hybridized
               (static allocation) like ours; needs model.output_stride 8.
    head       the other decoder head (ASPP <-> Vortex Pooling).
    bn         synchronized BN <-> per-worker BN (MXNet's BatchNorm).
    hybridize  ours run imperatively (if the config hybridizes), the way the seed project had to.
"""
import argparse
import copy
import datetime
import json
import os
import platform
import resource
import sys
import time
import warnings

import mxnet as mx
import numpy as np
from mxnet import autograd

from deeplab import dist
from deeplab.build import build_model, bn_mode, uses_sync_bn
from deeplab.config import add_set_argument, load_config
from deeplab.errors import UserError
from deeplab.train import cross_entropy_sum, make_optimizer_params
from deeplab.utils import write_text
from deeplab.data import GlobalBatchSampler, TrainTransform, get_dataset, train_batches
from deeplab.metrics import IGNORE_LABEL

from .costs import count_costs

__all__ = ["parse_args", "main", "run_bench", "COMPARISONS", "PHASES"]

PHASES = ("data", "fwd_bwd", "comm", "update")
COMPARISONS = ("gluoncv", "head", "bn", "hybridize")


class Variant:
    """A network, its trainer and loss, and the timings of its steps on this worker.

    per_batch: the loss is a mean, so the update divides by the images of the global batch
    (GluonCV's script), not by the labelled pixels (ours).
    """

    def __init__(self, name, description, net, trainer, loss, costs, label_fn=None,
                 per_batch=False):
        self.name, self.description = name, description
        self.net, self.trainer, self.loss = net, trainer, loss
        self.costs = costs
        self.label_fn = label_fn or (lambda label: label)
        self.per_batch = per_batch
        self.times = []  # per timed step: [data, fwd_bwd, comm, update]


def _depth(model_name):
    for depth in (50, 101, 152):
        if "resnet%d_" % depth in model_name:
            return depth
    return None


def _trainer(net, optimizer_params, cfg, index):
    """COLLECTIVE. The backend's SGD trainer with the config's distributed settings; each
    variant names its allreduces apart."""
    d = cfg["dist"]
    return dist.make_trainer(net.collect_params(), "sgd", optimizer_params,
                             fp16_compression=d["fp16_compression"],
                             num_groups=d["num_groups"], prefix="bench%d." % index)


def _costs(net, cfg, crop, ctx):
    """COLLECTIVE (a forward pass, through synchronized BN if the network has it). The network's
    analytic costs; call before hybridizing."""
    return count_costs(net, (1, 3, crop, crop), ctx=ctx,
                       fp16_gradients=cfg["dist"]["fp16_compression"])


def _our_variant(name, description, cfg, ctx, crop, sync_bn, hybridize, index):
    """COLLECTIVE."""
    net = build_model(cfg, ctx, seed=cfg["train"]["seed"], training=True, sync_bn=sync_bn)
    trainer = _trainer(net, make_optimizer_params(net, cfg), cfg, index)
    costs = _costs(net, cfg, crop, ctx)
    if hybridize:
        net.hybridize(static_alloc=not sync_bn)
    return Variant(name, description, net, trainer,
                   lambda out, label: cross_entropy_sum(mx.nd, out, label), costs)


def _gluoncv_variant(name, description, cfg, ctx, crop, hybridize, index):
    """COLLECTIVE. GluonCV's DeepLabV3 as its scripts/segmentation/train.py trains it: aux off
    here, its MixSoftmaxCrossEntropyLoss (mean over labelled pixels, ignore label -1), SGD with
    the same settings; one step normalises by the batch, as that script does."""
    from gluoncv.loss import MixSoftmaxCrossEntropyLoss
    from gluoncv.model_zoo import DeepLabV3 as GluonCVDeepLabV3

    m = cfg["model"]
    mx.random.seed(cfg["train"]["seed"])
    with warnings.catch_warnings():  # its head initializes itself in the constructor
        warnings.simplefilter("ignore")
        net = GluonCVDeepLabV3(m["num_classes"], backbone="resnet%d" % _depth(m["name"]),
                               aux=False, pretrained_base=False, ctx=ctx, crop_size=crop)
        net.initialize(ctx=ctx)
    costs = _costs(net, cfg, crop, ctx)  # also resolves the deferred shapes
    dist.broadcast_parameters(net.collect_params())
    t = cfg["train"]
    trainer = _trainer(net, {"learning_rate": t["lr"], "momentum": t["momentum"],
                             "wd": t["weight_decay"]}, cfg, index)
    if hybridize:
        net.hybridize(static_alloc=True)
    criterion = MixSoftmaxCrossEntropyLoss(aux=False)

    def to_gluoncv(label):  # GluonCV's masks mark ignored pixels with -1, not 255
        return mx.nd.where(label == IGNORE_LABEL, -mx.nd.ones_like(label), label)

    return Variant(name, description, net, trainer,
                   lambda out, label: criterion(out[0], label), costs, label_fn=to_gluoncv,
                   per_batch=True)


def build_variants(cfg, ctx, crop, compare):
    """COLLECTIVE. The configured network ("ours") and the variants `compare` asks for."""
    sync = uses_sync_bn(cfg)
    hyb = cfg["train"]["hybridize"]
    bn_name = "%s BN" % bn_mode(cfg)
    m = cfg["model"]
    # (name, description, builder(name, description, index) -> Variant)
    specs = [("ours", "%s %s OS%d, %s, %s" % (m["name"], m["head"], m["output_stride"], bn_name,
                                              "hybridized" if hyb else "imperative"),
              lambda n, d, i: _our_variant(n, d, cfg, ctx, crop, sync, hyb, i))]
    if "gluoncv" in compare:
        specs.append(("gluoncv", "GluonCV DeepLabV3 resnet%d_v1s OS8, imperative (its train.py)"
                      % _depth(m["name"]),
                      lambda n, d, i: _gluoncv_variant(n, d, cfg, ctx, crop, False, i)))
        specs.append(("gluoncv-hybridized", "GluonCV DeepLabV3, hybridized (static alloc)",
                      lambda n, d, i: _gluoncv_variant(n, d, cfg, ctx, crop, True, i)))
    if "head" in compare:
        other = "vortex" if m["head"] == "aspp" else "aspp"
        c = copy.deepcopy(cfg)
        c["model"]["head"] = other
        c["model"]["vortex_cascade"] = m["vortex_cascade"] and other == "vortex"
        specs.append(("ours-" + other, "ours with the %s head" % other,
                      lambda n, d, i: _our_variant(n, d, c, ctx, crop, sync, hyb, i)))
    if "bn" in compare:
        specs.append(("ours-plainbn" if sync else "ours-syncbn", "ours with %s" % (
            "per-worker BN (MXNet BatchNorm)" if sync else "synchronized BN"),
            lambda n, d, i: _our_variant(n, d, cfg, ctx, crop, not sync, hyb, i)))
    if "hybridize" in compare:
        specs.append(("ours-imperative" if hyb else "ours-hybridized",
                      "ours %s" % ("imperative" if hyb else "hybridized"),
                      lambda n, d, i: _our_variant(n, d, cfg, ctx, crop, sync, not hyb, i)))
    return [build(name, description, i) for i, (name, description, build) in enumerate(specs)]


def _check_compare(cfg, compare):
    unknown = [c for c in compare if c not in COMPARISONS]
    if unknown:
        raise UserError("--compare: unknown comparison %s; valid: %s"
                         % (", ".join(map(repr, unknown)), ", ".join(COMPARISONS)))
    m = cfg["model"]
    if "gluoncv" in compare:
        if m["output_stride"] != 8:
            raise UserError("--compare gluoncv needs model.output_stride 8 (GluonCV builds its "
                             "DeepLabV3 at output stride 8 only; got %d); at 16, compare "
                             "'hybridize'" % m["output_stride"])
        if _depth(m["name"]) not in (50, 101):
            raise UserError("--compare gluoncv needs a ResNet-50 or -101 model (GluonCV's "
                             "DeepLabV3 backbones); model.name is %r" % m["name"])
    if "bn" in compare and (cfg["train"]["freeze_bn"] or dist.backend() == "ps"):
        raise UserError("--compare bn needs BN trained (train.freeze_bn false) and the local or "
                         "horovod backend (the parameter server keeps per-worker BN)")
    if compare and dist.backend() == "ps":
        raise UserError("--compare runs several networks in one process, whose trainers would "
                         "share the parameter server's keys; compare under local or horovod")


def _bench_data(cfg, crop, batch, iterations):
    """The training pipeline on synthetic images of about the crop's size."""
    d, t = cfg["data"], cfg["train"]
    ds = get_dataset("synthetic", split="train", size=max(d["synthetic"]["train_size"], 2 * batch),
                     num_classes=cfg["model"]["num_classes"],
                     image_size=(max(8, crop * 3 // 4), max(8, crop)), seed=0)
    transform = TrainTransform(crop, seed=t["seed"], scale_range=tuple(d["scale_range"]))
    sampler = GlobalBatchSampler(len(ds), batch * dist.size(), seed=t["seed"])
    return train_batches(ds, transform, sampler, 0, iterations, rank=dist.rank(),
                         world_size=dist.size(), num_workers=d["num_workers"])


def _step(v, batches, ctx):
    """COLLECTIVE. One training step of variant `v`; returns the four phase times."""
    t0 = time.perf_counter()
    _, data, label = next(batches)
    data, label = data.as_in_context(ctx), v.label_fn(label.as_in_context(ctx))
    mx.nd.waitall()
    t1 = time.perf_counter()
    if v.per_batch:  # GluonCV's loss is a mean: its script steps by the batch size
        count = float(data.shape[0] * dist.size())
    else:  # as training does: the global count of labelled pixels
        count = dist.allreduce_sum(np.array([(label != IGNORE_LABEL).sum().asscalar()]))[0]
    t2 = time.perf_counter()
    with autograd.record():
        loss = v.loss(v.net(data), label)
    loss.backward()
    mx.nd.waitall()
    t3 = time.perf_counter()
    v.trainer.allreduce_grads()
    mx.nd.waitall()
    t4 = time.perf_counter()
    v.trainer.update(max(count, 1.0))
    mx.nd.waitall()
    t5 = time.perf_counter()
    return [t1 - t0, t3 - t2, (t2 - t1) + (t4 - t3), t5 - t4]


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _device_memory(ctx):
    if ctx.device_type != "gpu":
        return None
    free, total = mx.context.gpu_memory_info(ctx.device_id)
    return total - free


def _gather_rows(rows):
    """COLLECTIVE. Every worker's 2-D float array (same shape), as (workers, ...) on all."""
    rows = np.asarray(rows, dtype=np.float64)
    out = np.zeros((dist.size(),) + rows.shape)
    out[dist.rank()] = rows
    return dist.allreduce_sum(out)


def _machine():
    return {"hostname": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor(), "python": platform.python_version(),
            "mxnet": mx.__version__, "gpus": mx.context.num_gpus(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MXNET_CPU_WORKER_NTHREADS": os.environ.get("MXNET_CPU_WORKER_NTHREADS")}


def run_bench(cfg, batch=None, crop=None, steps=10, warmup=2, compare=(), baseline=None,
              profile=None, command=None):
    """COLLECTIVE. Runs the benchmark; returns the report (a JSON-able dict) on every worker."""
    crop = crop or cfg["data"]["crop_size"]
    if batch is None:
        if cfg["train"]["batch_size"] % dist.size():
            raise UserError("train.batch_size %d is not divisible by the %d workers; pass "
                             "--batch (images per worker)" % (cfg["train"]["batch_size"],
                                                              dist.size()))
        batch = cfg["train"]["batch_size"] // dist.size()
    if steps < 1 or warmup < 1 or batch < 1 or crop < 8:
        raise UserError("need --steps >= 1, --warmup >= 1, --batch >= 1 and --crop >= 8")
    _check_compare(cfg, compare)
    ctx = dist.context()
    variants = build_variants(cfg, ctx, crop, compare)

    batches = _bench_data(cfg, crop, batch, (warmup + steps) * len(variants))
    memory = {}
    for v in variants:  # warm-up one variant at a time: the first one's peak RSS is its own
        for _ in range(warmup):
            _step(v, batches, ctx)
        memory[v.name] = {"peak_rss_bytes": _peak_rss_bytes(),
                          "device_bytes_in_use": _device_memory(ctx)}
    profiling = profile and dist.is_main()
    if profiling:  # the configured network's timed steps only
        mx.profiler.set_config(profile_all=True, aggregate_stats=True, filename=profile)
        mx.profiler.set_state("run")
    for _ in range(steps):
        for v in variants:
            if profiling:
                mx.profiler.resume() if v is variants[0] else mx.profiler.pause()
            v.times.append(_step(v, batches, ctx))
    if profiling:
        mx.nd.waitall()
        mx.profiler.set_state("stop")
        mx.profiler.dump()
        table = mx.profiler.dumps(reset=True)
        with open(os.path.splitext(profile)[0] + ".txt", "w") as f:
            f.write(table)
    batches.close()

    report = {
        "benchmark": "deeplab bench",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": _machine(),
        "backend": dist.backend(),
        "workers": dist.size(),
        "batch_per_worker": batch,
        "global_batch": batch * dist.size(),
        "crop": crop,
        "warmup": warmup,
        "steps": steps,
        "model": dict(cfg["model"], freeze_bn=cfg["train"]["freeze_bn"],
                      sync_bn=uses_sync_bn(cfg), hybridize=cfg["train"]["hybridize"],
                      fp16_compression=cfg["dist"]["fp16_compression"], **variants[0].costs),
        "variants": [],
    }
    for v in variants:
        times = _gather_rows(v.times)  # (workers, steps, phases)
        step = times.sum(axis=2)  # (workers, steps)
        slowest = step.max(axis=0)
        step_s = float(np.median(slowest))
        mem = _gather_rows([memory[v.name]["peak_rss_bytes"]])
        entry = {
            "name": v.name,
            "description": v.description,
            "step_s": step_s,
            "images_per_s": batch * dist.size() / step_s,
            "images_per_s_per_worker": batch * dist.size() / step_s / dist.size(),
            "breakdown_s": {p: float(np.median(times[:, :, i])) for i, p in enumerate(PHASES)},
            "per_worker": [{"rank": r, "step_s": float(np.median(step[r])),
                            "images_per_s": batch / float(np.median(step[r])),
                            "breakdown_s": {p: float(np.median(times[r, :, i]))
                                            for i, p in enumerate(PHASES)},
                            "peak_rss_bytes": int(mem[r][0])}
                           for r in range(dist.size())],
            "step_s_all": [float(s) for s in slowest],
            "peak_rss_bytes": int(mem.max()),
            "device_bytes_in_use": memory[v.name]["device_bytes_in_use"],
            "costs": v.costs,
            "achieved_gflops_per_s": v.costs["train_gflops_per_image"] * batch
            * dist.size() / step_s,
        }
        report["variants"].append(entry)
    ours = report["variants"][0]
    report["ratios"] = {"ours/" + e["name"]: ours["step_s"] / e["step_s"]
                        for e in report["variants"][1:]}
    if baseline:
        report["scaling"] = _scaling(report, baseline)
    return report


def _scaling(report, path):
    """Scaling efficiency of each variant against a one-worker run's JSON."""
    try:
        with open(path) as f:
            base = json.load(f)
        base_variants = {e["name"]: e for e in base["variants"]}
        base_workers, base_batch, base_crop = (base["workers"], base["batch_per_worker"],
                                               base["crop"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError("--baseline %s: not a `deeplab bench` JSON (%s)" % (path, err))
    if base_workers != 1:
        raise UserError("--baseline %s ran %d workers; it must be a one-worker run"
                         % (path, base_workers))
    if (base_batch, base_crop) != (report["batch_per_worker"], report["crop"]):
        raise UserError("--baseline %s ran batch %d per worker at crop %d; this run has batch "
                         "%d at crop %d: efficiency compares equal work per worker"
                         % (path, base_batch, base_crop, report["batch_per_worker"],
                            report["crop"]))
    out = {"baseline": os.path.abspath(path), "baseline_backend": base.get("backend")}
    for e in report["variants"]:
        if e["name"] in base_variants:
            one = base_variants[e["name"]]["images_per_s"]
            out[e["name"]] = {"images_per_s_1": one, "images_per_s_n": e["images_per_s"],
                              "efficiency": e["images_per_s"] / (report["workers"] * one)}
    return out


def format_report(r):
    """A plain-text table of a report."""
    m = r["model"]
    lines = ["deeplab bench: %s, %d worker(s) (%s), %d image(s) per worker, crop %d, "
             "%d timed steps after %d warm-up" % (m["name"], r["workers"], r["backend"],
                                                 r["batch_per_worker"], r["crop"], r["steps"],
                                                 r["warmup"]),
             "model: %.1f GFLOPs/image forward, %.1f train; %.1fM parameters, %.1f MB of "
             "gradients per step" % (m["forward_gflops_per_image"], m["train_gflops_per_image"],
                                     m["params"] / 1e6, m["grad_bytes"] / 1e6),
             "",
             "%-20s %8s %8s %9s %8s %8s %8s %8s %9s" % (
                 "variant", "step s", "img/s", "img/s/wkr", "data", "fwd_bwd", "comm", "update",
                 "peak RSS"),
             ]
    for e in r["variants"]:
        b = e["breakdown_s"]
        lines.append("%-20s %8.3f %8.2f %9.2f %8.3f %8.3f %8.3f %8.3f %7.0fMB" % (
            e["name"], e["step_s"], e["images_per_s"], e["images_per_s_per_worker"], b["data"],
            b["fwd_bwd"], b["comm"], b["update"], e["peak_rss_bytes"] / 2 ** 20))
    for e in r["variants"]:
        lines.append("  %-18s %s; %.1f GFLOPs/image fwd, %.1f GFLOP/s achieved" % (
            e["name"], e["description"], e["costs"]["forward_gflops_per_image"],
            e["achieved_gflops_per_s"]))
    if r["ratios"]:
        lines.append("")
        lines.append("step time ratios: " + ", ".join("%s %.3f" % kv
                                                      for kv in r["ratios"].items()))
    if "scaling" in r:
        lines.append("scaling efficiency vs %s (1 worker): " % r["scaling"]["baseline"] + ", ".join(
            "%s %.3f" % (k, v["efficiency"]) for k, v in r["scaling"].items()
            if isinstance(v, dict)))
    return "\n".join(lines)


def plot_report(r, path):
    """A PNG of each variant's step time split into its parts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e["name"] for e in r["variants"]]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(names) + 2), 4))
    bottom = np.zeros(len(names))
    for p in PHASES:
        vals = np.array([e["breakdown_s"][p] for e in r["variants"]])
        ax.bar(names, vals, bottom=bottom, label=p)
        bottom += vals
    for i, e in enumerate(r["variants"]):
        ax.text(i, bottom[i], "%.1f img/s" % e["images_per_s"], ha="center", va="bottom",
                fontsize=8)
    ax.set_ylabel("seconds per step (median)")
    ax.set_title("%s, %d worker(s), batch %d/worker, crop %d" % (
        r["model"]["name"], r["workers"], r["batch_per_worker"], r["crop"]), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="deeplab bench", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config, e.g. configs/deeplabv3_r50v2-os16_..._513.yaml")
    add_set_argument(p, example="model.head=vortex")
    p.add_argument("--batch", type=int, help="images per worker (default: train.batch_size / "
                   "workers)")
    p.add_argument("--crop", type=int, help="crop size (default: data.crop_size)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--compare", default="", help="comma-separated: " + ", ".join(COMPARISONS))
    p.add_argument("--baseline", help="a one-worker run's JSON: report scaling efficiency")
    p.add_argument("--out", help="write the report as JSON (main worker)")
    p.add_argument("--plot", help="write a PNG of the step breakdown (main worker)")
    p.add_argument("--profile", help="MXNet profiler trace of the timed steps (main worker), "
                   "e.g. profile.json; per-operator totals go to profile.txt")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv
    return args


def main(args):
    cfg = load_config(args.config, args.overrides)
    dist.init(cfg["dist"]["backend"])
    compare = tuple(c.strip() for c in args.compare.split(",") if c.strip())
    report = run_bench(cfg, batch=args.batch, crop=args.crop, steps=args.steps,
                       warmup=args.warmup, compare=compare, baseline=args.baseline,
                       profile=args.profile, command="deeplab bench " + " ".join(args.argv))
    if dist.is_main():
        print(format_report(report), flush=True)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            write_text(args.out, json.dumps(report, indent=1, allow_nan=False) + "\n")
        if args.plot:
            plot_report(report, args.plot)
    return report

