"""Inference throughput and latency (`deeplab bench --mode infer`): the network `deeplab eval`
runs (plain BN on running statistics, evaluation output stride, eval.scales and eval.flip) on
synthetic images of the crop's size, timed image batch by image batch on every worker.

Workers do not communicate while timing: each serves its own images, as replicas behind a load
balancer would; total images/s is the sum over workers. Latency is the wall time of one batch
from the normalised input on the host to the class probabilities on the device.
"""
import time

import mxnet as mx
import numpy as np

from deeplab import dist
from deeplab.build import evaluation_network
from deeplab.config import eval_stride
from deeplab.data import EvalTransform, get_dataset
from deeplab.evaluate import predict
from deeplab.logger import progress

from .common import (check_counts, format_flops, load_baseline, peak_rss_bytes, report_header,
                     setup_facts)
from .costs import count_costs

__all__ = ["run_infer", "format_infer_report"]

PERCENTILES = (50, 90, 99)


def _images(cfg, crop, batch, count):
    """`count` batches of `batch` normalised synthetic crop x crop images, on the host."""
    ds = get_dataset("synthetic", split="val", size=max(batch * count, 1),
                     num_classes=cfg["model"]["num_classes"], image_size=crop, seed=dist.rank())
    transform = EvalTransform()
    out = []
    for b in range(count):
        arrays = [transform(ds.load(b * batch + i)[0]) for i in range(batch)]
        out.append(mx.nd.array(np.stack(arrays), dtype=np.float32))
    return out


def _costs(net, cfg, crop, ctx):
    """Forward FLOPs of one image through every scale (and its mirror with eval.flip)."""
    e = cfg["eval"]
    total = 0.0
    for s in e["scales"]:
        side = max(8, int(round(crop * s)))
        total += count_costs(net, (1, 3, side, side), ctx=ctx)["forward_gflops_per_image"]
    return total * (2 if e["flip"] else 1)


def run_infer(cfg, batch=1, crop=None, steps=10, warmup=2, repeat=1, baseline=None,
              command=None, quiet=False):
    """COLLECTIVE (building the network and gathering the figures; not the timed loop).
    Returns the report on every worker."""
    crop = crop or cfg["data"]["crop_size"]
    check_counts(steps, warmup, batch, crop, repeat)
    facts = setup_facts(cfg, "infer", batch, crop)
    base = load_baseline(baseline, facts) if baseline else None
    ctx = dist.context()
    stride = eval_stride(cfg)
    net = evaluation_network(cfg, ctx, output_stride=stride, seed=cfg["train"]["seed"])
    gflops = _costs(net, cfg, crop, ctx)
    if cfg["train"]["hybridize"]:
        net.hybridize(static_alloc=True, static_shape=True)
    e = cfg["eval"]
    images = _images(cfg, crop, batch, min(steps, 8))
    for i in range(warmup):
        predict(net, images[i % len(images)].as_in_context(ctx), e["scales"],
                e["flip"]).wait_to_read()
    latency = []
    for i in progress(range(steps * repeat), steps * repeat, "bench inference", quiet):
        x = images[i % len(images)]
        tic = time.perf_counter()
        predict(net, x.as_in_context(ctx), e["scales"], e["flip"]).wait_to_read()
        latency.append(time.perf_counter() - tic)
    lat = dist.gather_rows(latency)  # (workers, steps * repeat)
    rss = dist.gather_rows([peak_rss_bytes()])
    per_worker = [{"rank": r, "images_per_s": batch / float(np.median(lat[r])),
                   "latency_s": {"p%d" % p: float(np.percentile(lat[r], p))
                                 for p in PERCENTILES},
                   "peak_rss_bytes": int(rss[r][0])} for r in range(dist.size())]
    repeats = []
    for chunk in np.array_split(np.arange(lat.shape[1]), repeat):
        rate = sum(batch / float(np.median(lat[r, chunk])) for r in range(dist.size()))
        repeats.append({"images_per_s": rate,
                        "latency_p50_s": float(np.percentile(lat[:, chunk], 50))})
    total = sum(w["images_per_s"] for w in per_worker)
    report = dict(report_header("infer", facts, command, batch, crop, warmup, steps, repeat), **{
        "model": dict(cfg["model"], output_stride=stride, scales=list(e["scales"]),
                      flip=e["flip"], hybridize=cfg["train"]["hybridize"],
                      forward_gflops_per_image=gflops),
        "images_per_s": total,
        "images_per_s_per_worker": total / dist.size(),
        "latency_s": {"p%d" % p: float(np.percentile(lat, p)) for p in PERCENTILES},
        "latency_s_all": [float(v) for v in lat.ravel()],
        "per_worker": per_worker,
        "repeats": repeats,
        "spread": {k: [min(r[k] for r in repeats), max(r[k] for r in repeats)]
                   for k in ("images_per_s", "latency_p50_s")},
        "achieved_gflops_per_s": gflops * total,
    })
    if base:
        one = base["variants"]["infer"]["images_per_s"]
        report["scaling"] = {"baseline": baseline, "baseline_backend": base["backend"],
                             "infer": {"images_per_s_1": one, "images_per_s_n": total,
                                       "efficiency": total / (dist.size() * one)}}
    # the same shape as a training report's variants, so a baseline can be either
    report["variants"] = [{"name": "infer", "images_per_s": total}]
    return report


def format_infer_report(r):
    m = r["model"]
    lines = ["deeplab bench --mode infer: %s, %d worker(s) (%s), batch %d, %dx%d images, output "
             "stride %d, scales %s%s; %d timed batches x %d repeat(s) after %d warm-up" % (
                 m["name"], r["workers"], r["backend"], r["batch_per_worker"], r["crop"],
                 r["crop"], m["output_stride"], ",".join("%g" % s for s in m["scales"]),
                 ", flip" if m["flip"] else "", r["steps"], r["repeat"], r["warmup"]),
             "model: %s/image (all scales)" % format_flops(m["forward_gflops_per_image"]),
             "images/s: %.2f total, %.2f per worker (repeats %.2f-%.2f)" % (
                 r["images_per_s"], r["images_per_s_per_worker"], *r["spread"]["images_per_s"]),
             "latency per batch: p50 %.4f s, p90 %.4f s, p99 %.4f s" % (
                 r["latency_s"]["p50"], r["latency_s"]["p90"], r["latency_s"]["p99"])]
    for w in r["per_worker"]:
        lines.append("  rank %d: %.2f images/s, p50 %.4f s, p99 %.4f s" % (
            w["rank"], w["images_per_s"], w["latency_s"]["p50"], w["latency_s"]["p99"]))
    if "scaling" in r:
        lines.append("scaling efficiency vs %s (1 worker): %.3f" % (
            r["scaling"]["baseline"], r["scaling"]["infer"]["efficiency"]))
    return "\n".join(lines)
