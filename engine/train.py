"""Training: SGD with momentum and poly learning rate by iteration, softmax cross-entropy over the
labelled pixels of the global batch, periodic checkpoints, evaluation at the end.

    deeplab train CONFIG --workdir DIR [--set key=value ...] [--resume]

Writes DIR/config.yaml (resolved), DIR/train.log, DIR/checkpoints/, DIR/final.params and
DIR/results.json (same fields as `deeplab eval`).
"""
import argparse
import os
import signal
import threading
import time

import mxnet as mx
import numpy as np
from mxnet import autograd

from deeplab import dist
from deeplab.checkpoint import Checkpointer, atomic_write
from deeplab.config import dump_config, load_config
from deeplab.data import GlobalBatchSampler, TrainTransform, train_batches
from deeplab.metrics import IGNORE_LABEL
from gluoncv.utils import LRScheduler

from .build import build_dataset, build_model, log, uses_sync_bn
from .evaluate import run_evaluation

__all__ = ["cross_entropy_sum", "parse_args", "main", "train"]


def cross_entropy_sum(F, logits, label):
    """Sum of softmax cross-entropy over the pixels whose label is not 255.

    The sum (not a per-worker mean) is what lets N workers reproduce one: the trainer divides
    the summed gradients by the number of labelled pixels in the whole global batch.
    """
    valid = label != IGNORE_LABEL
    logp = F.log_softmax(logits, axis=1)
    nll = -F.pick(logp, F.where(valid, label, F.zeros_like(label)), axis=1)
    return (nll * valid).sum()


def poly_schedule(cfg):
    """GluonCV's poly schedule queried by iteration t: lr = base * (1 - t / (T - 1)) ** power,
    so the last of T iterations runs at 0 (a single iteration runs at the base rate)."""
    t = cfg["train"]
    return LRScheduler(mode="poly", base_lr=t["lr"], niters=max(t["iterations"], 2),
                       power=t["lr_power"])


def make_optimizer_params(net, cfg):
    """SGD settings; weight decay on convolution weights only (not on BN parameters or biases,
    as in the reference TensorFlow implementation)."""
    for p in net.collect_params(".*_gamma|.*_beta|.*_bias").values():
        p.wd_mult = 0.0
    t = cfg["train"]
    return {"learning_rate": t["lr"], "momentum": t["momentum"], "wd": t["weight_decay"]}


class StopRequest:
    """Records a SIGTERM (a preempted pod, `kill`, horovodrun stopping its workers) so that
    training checkpoints and exits at the next step instead of dying mid-step.

    Used as a context manager around the training loop; the previous handler is restored after.
    A second SIGTERM ends the process at once (the default action).
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(cfg, workdir, resume=False):
    """COLLECTIVE. Runs training as configured; returns the trained network."""
    t_cfg = cfg["train"]
    ctx = dist.context()
    main_worker = dist.is_main()
    log_path = os.path.join(workdir, "train.log") if main_worker else None
    ckpt = Checkpointer(workdir, keep=t_cfg["keep_checkpoints"])

    state = None
    if main_worker:
        state = ckpt.latest() if resume else None
        if not resume and ckpt.iterations():
            raise SystemExit("deeplab train: %s already holds checkpoints; pass --resume to "
                             "continue that run or choose another --workdir" % ckpt.dir)
    state = dist.broadcast(state)

    # Horovod's order: build and fully initialize, broadcast worker 0's parameters (inside
    # build_model; when resuming they are the checkpoint's), then the distributed trainer.
    net = build_model(cfg, ctx, params=state["params"] if state else None, seed=t_cfg["seed"],
                      training=True)
    d_cfg = cfg["dist"]
    trainer = dist.make_trainer(net.collect_params(), "sgd", make_optimizer_params(net, cfg),
                                fp16_compression=d_cfg["fp16_compression"],
                                num_groups=d_cfg["num_groups"])
    start = 0
    if state is not None:
        trainer.load_states(state["states"])
        start = state["iteration"]
        if main_worker:
            log("resuming from %s at iteration %d" % (state["params"], start), log_path)
    if main_worker:
        log("training on %d worker(s) (dist.backend %s), global batch %d, %s BN" % (
            dist.size(), dist.backend(), t_cfg["batch_size"],
            "frozen" if t_cfg["freeze_bn"] else "synchronized" if uses_sync_bn(cfg)
            else "per-worker" if dist.size() > 1 else "plain"), log_path)
    if t_cfg["hybridize"]:
        # MXNet's static allocation does not support custom operators (SyncBatchNorm's).
        net.hybridize(static_alloc=not uses_sync_bn(cfg))

    dataset = build_dataset(cfg, "train")
    transform = TrainTransform(cfg["data"]["crop_size"], seed=t_cfg["seed"],
                               scale_range=tuple(cfg["data"]["scale_range"]))
    sampler = GlobalBatchSampler(len(dataset), t_cfg["batch_size"], seed=t_cfg["seed"])
    schedule = poly_schedule(cfg)
    batches = train_batches(dataset, transform, sampler, start, t_cfg["iterations"],
                            rank=dist.rank(), world_size=dist.size(),
                            num_workers=cfg["data"]["num_workers"])
    tic, seen, loss_acc, count_acc = time.time(), 0, 0.0, 0.0
    with StopRequest() as stop:
        for it, data, label in batches:
            lr = schedule(it)
            trainer.set_learning_rate(lr)
            data, label = data.as_in_context(ctx), label.as_in_context(ctx)
            # One scalar allreduce per step: the global count of labelled pixels normalises the
            # gradient; the number of workers asked to stop makes all of them stop together.
            count, stopping = dist.allreduce_sum(np.array([
                (label != IGNORE_LABEL).sum().asscalar(), float(stop.requested)]))
            with autograd.record():
                loss = cross_entropy_sum(mx.nd, net(data), label)
            loss.backward()
            trainer.step(max(count, 1.0))
            loss_acc, count_acc = loss_acc + loss, count_acc + count
            seen += t_cfg["batch_size"]
            done = it + 1
            if done % t_cfg["log_every"] == 0 or done == t_cfg["iterations"]:
                total = dist.allreduce_sum(np.array([loss_acc.asscalar()]))[0]
                if main_worker:
                    log("iter %d/%d  loss %.4f  lr %.3g  %.1f img/s" % (
                        done, t_cfg["iterations"], total / max(count_acc, 1.0), lr,
                        seen / (time.time() - tic)), log_path)
                tic, seen, loss_acc, count_acc = time.time(), 0, 0.0, 0.0
            if stopping and done < t_cfg["iterations"]:
                mx.nd.waitall()
                if main_worker:
                    ckpt.save(done, net, trainer, cfg)
                    log("stopped by SIGTERM after iteration %d; checkpoint saved, continue with "
                        "--resume" % done, log_path)
                raise SystemExit(128 + signal.SIGTERM)
            if done % t_cfg["checkpoint_every"] == 0 and done < t_cfg["iterations"] \
                    and main_worker:
                ckpt.save(done, net, trainer, cfg)
    mx.nd.waitall()
    if main_worker:
        ckpt.save(t_cfg["iterations"], net, trainer, cfg)
        atomic_write(os.path.join(workdir, "final.params"), net.save_parameters)
    return net


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="deeplab train", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config, e.g. configs/tiny_synthetic.yaml")
    p.add_argument("--workdir", required=True, help="run directory (config, checkpoints, results)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.iterations=100 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --workdir")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    return p.parse_args(argv)


def main(args):
    cfg = load_config(args.config, args.overrides)
    dist.init(cfg["dist"]["backend"])
    if dist.is_main():
        os.makedirs(args.workdir, exist_ok=True)
        dump_config(cfg, os.path.join(args.workdir, "config.yaml"))
    dist.barrier()
    net = train(cfg, args.workdir, resume=args.resume)
    if args.no_eval:
        return None
    os_ = cfg["eval"]["output_stride"] or cfg["model"]["output_stride"]
    final = os.path.join(args.workdir, "final.params")
    if os_ != cfg["model"]["output_stride"]:
        # Another stride changes the graph (dilations, head rates), not the parameters.
        net = build_model(cfg, dist.context(), output_stride=os_, params=final, backbone_params="")
    return run_evaluation(net, cfg, dist.context(), os_, os.path.abspath(final),
                          os.path.join(args.workdir, "results.json"))
