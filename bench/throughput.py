"""Training-throughput benchmark on synthetic data: images/s per worker and in total, the time of
each part of a step, peak memory, analytic FLOPs, and side-by-side comparisons in the same run.

    deeplab bench CONFIG [--set key=value ...] [--batch-per-worker B] [--crop N] [--steps 10]
                  [--warmup 2]
                  [--compare gluoncv,head,bn,hybridize] [--baseline ONE_WORKER.json]
                  [--out FILE.json] [--plot FILE.png] [--profile FILE.json]

Run it like training: alone (local backend) or on N workers with `deeplab launch horovod -np N
-- bench ...` / `deeplab launch ps --workers N -- bench ...`. The model, BN mode, hybridization,
loader processes and distributed settings come from CONFIG; the data are always the built-in
synthetic images (about crop-sized), decoded and augmented by the training pipeline, so the data
wait is real. `--batch-per-worker B` (older spelling `--batch`): images per worker per step
(default: train.batch_size / workers).

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
    amp        ours in mixed precision (MXNet AMP, as train.amp: float16 with loss scaling on
               GPUs, bfloat16 on CPUs). AMP patches MXNet's operators for the whole process, so
               this variant is built last, after the others have traced their graphs; it needs
               hybridized float32 networks (train.hybridize true, train.amp false).
"""
import argparse
import copy
import json
import os
import sys
import time
import warnings

import mxnet as mx
import numpy as np
from mxnet import autograd

from deeplab import dist
from deeplab.build import bn_mode, training_network
from deeplab.config import add_set_argument, load_config
from deeplab.data import GlobalBatchSampler, TrainTransform, get_dataset, train_batches
from deeplab.dist.runtime import start_workers, sync_bn_possible, uses_sync_bn
from deeplab.errors import UserError
from deeplab.logger import progress
from deeplab.metrics import IGNORE_LABEL
from deeplab.precision import amp_dtype, enable_amp
from deeplab.train import cross_entropy_sum, make_optimizer_params
from deeplab.utils import apply_umask, write_text

from .common import (check_counts, device_memory, format_flops, load_baseline, peak_rss_bytes,
                     report_header, setup_facts)
from .costs import count_costs

__all__ = ["parse_args", "main", "run_bench", "COMPARISONS", "PHASES"]

PHASES = ("data", "fwd_bwd", "comm", "update")
COMPARISONS = ("gluoncv", "head", "bn", "hybridize", "amp")


class Variant:
    """A network, its trainer and loss, and the timings of its steps on this worker.

    per_batch: the loss is a mean, so the update divides by the images of the global batch
    (GluonCV's script), not by the labelled pixels (ours).
    """

    def __init__(self, name, description, net, trainer, loss, costs, label_fn=None,
                 per_batch=False, scale_loss=False):
        self.name, self.description = name, description
        self.net, self.trainer, self.loss = net, trainer, loss
        self.costs = costs
        self.label_fn = label_fn or (lambda label: label)
        self.per_batch = per_batch
        self.scale_loss = scale_loss  # float16 AMP: dynamic loss scaling
        self.times = []  # per timed step: [data, fwd_bwd, comm, update]
        # per timed step: [calls, seconds] of the in-layer collectives (synchronized BN) in
        # fwd_bwd, where the transport times them (MPI: dist.comm.transport_stats)
        self.in_layer = []
        self.device_peak = 0  # GPU bytes this process used, the most seen after a step


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
    net = training_network(cfg, ctx, seed=cfg["train"]["seed"], sync_bn=sync_bn)
    trainer = _trainer(net, make_optimizer_params(net, cfg), cfg, index)
    costs = _costs(net, cfg, crop, ctx)
    if hybridize:
        net.hybridize(static_alloc=not sync_bn)
    scale_loss = amp_dtype() == "float16"
    if scale_loss:
        from mxnet.contrib import amp

        amp.init_trainer(trainer.trainer)
    return Variant(name, description, net, trainer,
                   lambda out, label: cross_entropy_sum(mx.nd, out, label), costs,
                   scale_loss=scale_loss)


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
    if "bn" in compare and not sync_bn_possible(cfg, dist.backend()):
        raise UserError("--compare bn needs BN trained (train.freeze_bn false) and the local or "
                         "horovod backend (the parameter server keeps per-worker BN)")
    if "amp" in compare and (cfg["train"]["amp"] or not cfg["train"]["hybridize"]
                             or "hybridize" in compare or "gluoncv" in compare):
        raise UserError("--compare amp needs hybridized float32 networks (train.amp false, "
                        "train.hybridize true, and neither 'hybridize' nor 'gluoncv' in "
                        "--compare): AMP patches MXNet's operators for the whole process, so "
                        "any network running imperatively would turn mixed precision too")
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
    before = dist.comm.transport_stats()
    t2 = time.perf_counter()
    with autograd.record():
        loss = v.loss(v.net(data), label)
    if v.scale_loss:
        from mxnet.contrib import amp

        with amp.scale_loss(loss, v.trainer.trainer) as scaled:
            autograd.backward(scaled)
    else:
        loss.backward()
    mx.nd.waitall()
    t3 = time.perf_counter()
    if before is not None:
        after = dist.comm.transport_stats()
        v.last_in_layer = [after[0] - before[0], after[1] - before[1]]
    v.trainer.allreduce_grads()
    mx.nd.waitall()
    t4 = time.perf_counter()
    v.trainer.update(max(count, 1.0))
    mx.nd.waitall()
    t5 = time.perf_counter()
    return [t1 - t0, t3 - t2, (t2 - t1) + (t4 - t3), t5 - t4]


def batch_per_worker(cfg, batch):
    """--batch-per-worker, or train.batch_size shared among the workers."""
    if batch is not None:
        return batch
    if cfg["train"]["batch_size"] % dist.size():
        raise UserError("train.batch_size %d is not divisible by the %d workers; pass "
                        "--batch-per-worker (images per worker)"
                        % (cfg["train"]["batch_size"], dist.size()))
    return cfg["train"]["batch_size"] // dist.size()


def run_bench(cfg, batch=None, crop=None, steps=10, warmup=2, compare=(), baseline=None,
              profile=None, command=None, repeat=1, quiet=False):
    """COLLECTIVE. Runs the benchmark; returns the report (a JSON-able dict) on every worker.

    The timed steps run `repeat` times (after one warm-up); each figure is the median over all
    timed steps, and `repeats` / `spread` give each repeat's median and their min and max.
    """
    crop = crop or cfg["data"]["crop_size"]
    batch = batch_per_worker(cfg, batch)
    check_counts(steps, warmup, batch, crop, repeat)
    _check_compare(cfg, compare)
    facts = setup_facts(cfg, "train", batch, crop)
    base = load_baseline(baseline, facts) if baseline else None
    ctx = dist.context()
    if cfg["train"]["amp"]:
        enable_amp(ctx)
    variants = build_variants(cfg, ctx, crop, [c for c in compare if c != "amp"])
    count = len(variants) + ("amp" in compare)
    batches = _bench_data(cfg, crop, batch, (warmup + steps * repeat) * count)
    memory = {}

    def warm_up(v):  # one variant at a time: the first one's peak RSS is its own
        for _ in range(warmup):
            _step(v, batches, ctx)
        memory[v.name] = {"peak_rss_bytes": peak_rss_bytes(),
                          "device_bytes_in_use": device_memory(ctx)}

    for v in variants:
        warm_up(v)
    if "amp" in compare:  # last: the others' graphs are traced in float32 by now
        dtype = enable_amp(ctx)
        variants.append(_our_variant("ours-amp", "ours in mixed precision (AMP, %s)" % dtype,
                                     cfg, ctx, crop, uses_sync_bn(cfg), True, len(variants)))
        warm_up(variants[-1])
    profiling = profile and dist.is_main()
    if profiling:  # the configured network's timed steps only
        mx.profiler.set_config(profile_all=True, aggregate_stats=True, filename=profile)
        mx.profiler.set_state("run")
    for _ in progress(range(steps * repeat), steps * repeat, "bench steps", quiet):
        for v in variants:
            if profiling:
                mx.profiler.resume() if v is variants[0] else mx.profiler.pause()
            v.times.append(_step(v, batches, ctx))
            if getattr(v, "last_in_layer", None) is not None:
                v.in_layer.append(v.last_in_layer)
            v.device_peak = max(v.device_peak, device_memory(ctx) or 0)
    if profiling:
        mx.nd.waitall()
        mx.profiler.set_state("stop")
        mx.profiler.dump()
        table = mx.profiler.dumps(reset=True)
        with open(os.path.splitext(profile)[0] + ".txt", "w") as f:
            f.write(table)
    batches.close()

    report = dict(report_header("train", facts, command, batch, crop, warmup, steps, repeat), **{
        "global_batch": batch * dist.size(),
        "model": dict(cfg["model"], freeze_bn=cfg["train"]["freeze_bn"],
                      sync_bn=uses_sync_bn(cfg), bn_mode=bn_mode(cfg),
                      hybridize=cfg["train"]["hybridize"],
                      fp16_compression=cfg["dist"]["fp16_compression"], **variants[0].costs),
        "variants": [],
    })
    for v in variants:
        times = dist.gather_rows(v.times)  # (workers, steps, phases)
        step = times.sum(axis=2)  # (workers, steps)
        slowest = step.max(axis=0)
        step_s = float(np.median(slowest))
        mem = dist.gather_rows([memory[v.name]["peak_rss_bytes"]])
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
            "device_bytes_max_sampled": dist.gather_rows([v.device_peak]).max().item()
            if ctx.device_type == "gpu" else None,
            "costs": v.costs,
            "achieved_gflops_per_s": v.costs["train_gflops_per_image"] * batch
            * dist.size() / step_s,
        }
        entry["repeats"], entry["spread"] = _repeats(times, batch, repeat)
        if dist.comm.transport_stats() is not None:
            # every worker timed the same steps (zeros for a variant without synchronized BN)
            rows = dist.gather_rows(v.in_layer or [[0, 0.0]] * len(v.times))
            entry["in_layer_collectives"] = [
                {"rank": r, "calls_per_step": float(np.median(rows[r, :, 0])),
                 "s_per_step": float(np.median(rows[r, :, 1]))} for r in range(dist.size())]
        report["variants"].append(entry)
    ours = report["variants"][0]
    report["ratios"] = {"ours/" + e["name"]: ours["step_s"] / e["step_s"]
                        for e in report["variants"][1:]}
    if base:
        report["scaling"] = _scaling(report, base, baseline)
    return report


def _repeats(times, batch, repeat):
    """Per-repeat medians of a variant's (workers, steps, phases) times, and each figure's
    [min, max] over the repeats."""
    rows = []
    for chunk in np.array_split(np.arange(times.shape[1]), repeat):
        t = times[:, chunk]
        step = float(np.median(t.sum(axis=2).max(axis=0)))
        rows.append({"step_s": step, "images_per_s": batch * dist.size() / step,
                     "breakdown_s": {p: float(np.median(t[:, :, i]))
                                     for i, p in enumerate(PHASES)}})
    spread = {k: [min(r[k] for r in rows), max(r[k] for r in rows)]
              for k in ("step_s", "images_per_s")}
    spread.update({"breakdown_s." + p: [min(r["breakdown_s"][p] for r in rows),
                                        max(r["breakdown_s"][p] for r in rows)]
                   for p in PHASES})
    return rows, spread


def _scaling(report, base, path):
    """Scaling efficiency of each variant against the one-worker baseline `base`."""
    out = {"baseline": os.path.abspath(path), "baseline_backend": base["backend"],
           "baseline_bn": base["bn"], "bn": report["setup"]["bn"]}
    for e in report["variants"]:
        if e["name"] in base["variants"]:
            one = base["variants"][e["name"]]["images_per_s"]
            out[e["name"]] = {"images_per_s_1": one, "images_per_s_n": e["images_per_s"],
                              "efficiency": e["images_per_s"] / (report["workers"] * one)}
    return out


def format_report(r):
    """A plain-text table of a report."""
    m = r["model"]
    repeat = r.get("repeat", 1)
    lines = ["deeplab bench: %s, %d worker(s) (%s, %s BN), %d image(s) per worker, crop %d, "
             "%d timed steps%s after %d warm-up" % (
                 m["name"], r["workers"], r["backend"], m.get("bn_mode", "?"),
                 r["batch_per_worker"], r["crop"], r["steps"],
                 " x %d repeats" % repeat if repeat > 1 else "", r["warmup"]),
             "model: %s/image forward, %s train; %.1fM parameters, %.1f MB of gradients per "
             "step" % (format_flops(m["forward_gflops_per_image"]),
                       format_flops(m["train_gflops_per_image"]), m["params"] / 1e6,
                       m["grad_bytes"] / 1e6),
             "",
             "%-20s %8s %8s %9s %8s %8s %8s %8s %10s" % (
                 "variant", "step s", "img/s", "img/s/wkr", "data", "fwd_bwd", "comm", "update",
                 "host RSS"),
             ]
    for e in r["variants"]:
        b = e["breakdown_s"]
        lines.append("%-20s %8.3f %8.2f %9.2f %8.3f %8.3f %8.3f %8.3f %8.0fMB" % (
            e["name"], e["step_s"], e["images_per_s"], e["images_per_s_per_worker"], b["data"],
            b["fwd_bwd"], b["comm"], b["update"], e["peak_rss_bytes"] / 2 ** 20))
    for e in r["variants"]:
        lines.append("  %-18s %s; %s/image fwd, %s/s achieved%s%s" % (
            e["name"], e["description"], format_flops(e["costs"]["forward_gflops_per_image"]),
            format_flops(e["achieved_gflops_per_s"]),
            "; step s over repeats %.3f-%.3f" % tuple(e["spread"]["step_s"])
            if repeat > 1 else "",
            "; GPU memory of this process %.0f MB" % (e["device_bytes_max_sampled"] / 2 ** 20)
            if e.get("device_bytes_max_sampled") else ""))
    for e in r["variants"]:
        if any(w["calls_per_step"] for w in e.get("in_layer_collectives", ())):
            lines.append("  %-18s in its synchronized BN collectives (MPI): %s" % (
                e["name"], ", ".join("rank %d %.3f s/step over %d calls" % (
                    w["rank"], w["s_per_step"], w["calls_per_step"])
                    for w in e["in_layer_collectives"])))
    if r["ratios"]:
        lines.append("")
        lines.append("step time ratios: " + ", ".join("%s %.3f" % kv
                                                      for kv in r["ratios"].items()))
    if "scaling" in r:
        s = r["scaling"]
        lines.append("scaling efficiency vs %s (1 worker, %s BN; this run %s BN): " % (
            s["baseline"], s.get("baseline_bn", "?"), s.get("bn", "?")) + ", ".join(
            "%s %.3f" % (k, v["efficiency"]) for k, v in s.items() if isinstance(v, dict)))
    return "\n".join(lines)


def plot_report(r, path):
    """A PNG: each variant's step split into its parts, the spread of its step times, and the
    scaling efficiency when the run had a baseline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e["name"] for e in r["variants"]]
    panels = 3 if "scaling" in r else 2
    fig, axes = plt.subplots(1, panels, figsize=(max(5.0, 1.4 * len(names) + 2) * panels / 1.6,
                                                 4))
    ax = axes[0]
    bottom = np.zeros(len(names))
    for p in PHASES:
        vals = np.array([e["breakdown_s"][p] for e in r["variants"]])
        ax.bar(names, vals, bottom=bottom, label=p)
        bottom += vals
    for i, e in enumerate(r["variants"]):
        ax.text(i, bottom[i], "%.1f img/s" % e["images_per_s"], ha="center", va="bottom",
                fontsize=8)
    ax.set_ylabel("seconds per step (median)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.boxplot([e["step_s_all"] for e in r["variants"]], labels=names)
    ax.set_ylabel("step time, every timed step (s)")
    if "scaling" in r:
        ax = axes[2]
        eff = [r["scaling"][n]["efficiency"] if n in r["scaling"] else 0 for n in names]
        ax.bar(names, eff)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_ylabel("scaling efficiency vs 1 worker")
    fig.suptitle("%s, %d worker(s), batch %d/worker, crop %d" % (
        r["model"]["name"], r["workers"], r["batch_per_worker"], r["crop"]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="deeplab bench", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config, e.g. configs/deeplabv3_r50v2-os16_..._513.yaml")
    add_set_argument(p, example="model.head=vortex")
    p.add_argument("--mode", choices=("train", "infer"), default="train",
                   help="train: training steps (default); infer: the evaluation network's "
                        "images/s and latency (eval.scales, eval.flip, eval.output_stride)")
    # Per worker, unlike predict's --batch-per-call; --batch is the older spelling.
    p.add_argument("--batch-per-worker", "--batch", dest="batch", type=int, metavar="B",
                   help="images per worker per step (default: train.batch_size / workers; "
                        "--mode infer: 1)")
    p.add_argument("--crop", type=int, help="image size (default: data.crop_size)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (images with --mode "
                   "infer) per variant and repeat (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the timed steps R times: medians and their spread (default 1)")
    p.add_argument("--compare", default="", help="comma-separated: " + ", ".join(COMPARISONS))
    p.add_argument("--baseline", help="a one-worker run's JSON of the same setup: report "
                   "scaling efficiency (refused if network, head, stride, BN mode, precision, "
                   "crop or batch per worker differ)")
    p.add_argument("--out", help="write the report as JSON (main worker)")
    p.add_argument("--plot", help="write a PNG of the step breakdown, spread and efficiency "
                   "(main worker)")
    p.add_argument("--profile", help="MXNet profiler trace of the timed steps (main worker), "
                   "e.g. profile.json; per-operator totals go to profile.txt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv
    return args


def main(args):
    cfg = load_config(args.config, args.overrides)
    apply_umask(cfg)  # --out, --plot and --profile's files, as a run's
    start_workers(cfg)
    command = "deeplab bench " + " ".join(args.argv)
    if args.mode == "infer":
        from .infer import format_infer_report, run_infer

        if args.compare or args.profile or args.plot:
            raise UserError("--compare, --profile and --plot apply to --mode train")
        report = run_infer(cfg, batch=args.batch or 1, crop=args.crop, steps=args.steps,
                           warmup=args.warmup, repeat=args.repeat, baseline=args.baseline,
                           command=command, quiet=args.quiet)
        text = format_infer_report(report)
    else:
        compare = tuple(c.strip() for c in args.compare.split(",") if c.strip())
        report = run_bench(cfg, batch=args.batch, crop=args.crop, steps=args.steps,
                           warmup=args.warmup, compare=compare, baseline=args.baseline,
                           profile=args.profile, command=command, repeat=args.repeat,
                           quiet=args.quiet)
        text = format_report(report)
    if dist.is_main():
        print(text, flush=True)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            write_text(args.out, json.dumps(report, indent=1, allow_nan=False) + "\n")
        if args.plot:
            plot_report(report, args.plot)
    return report
