"""Training: SGD with momentum and poly learning rate by iteration, softmax cross-entropy over the
labelled pixels of the global batch, periodic checkpoints, evaluation at the end.

    deeplab train CONFIG --workdir DIR [--set KEY=VALUE ...] [--resume] [--no-eval]

Writes DIR/config.yaml (resolved), DIR/train.log, DIR/checkpoints/, DIR/final.params and
DIR/results.json (same fields as `deeplab eval`).

Three layers, read top-down: `train_step` (forward, backward, the step's one allreduce, update),
`train` (the loop: asks the checkpointer whether to save and the meter whether to log) and
`prepare` (pre-flight checks, the run directory, the checkpoint to resume from).
"""
import argparse
import collections
import contextlib
import os
import signal
import threading
import time

import mxnet as mx
import numpy as np
from mxnet import autograd

from deeplab import dist
from deeplab.checkpoint import Checkpointer, assert_finite, save_params
from deeplab.config import add_set_argument, dump_config, eval_stride, load_config
from deeplab.data import GlobalBatchSampler, TrainTransform, train_batches
from deeplab.errors import Preempted, TrainingDiverged
from deeplab.logger import format_duration, run_logger
from deeplab.metrics import IGNORE_LABEL
from deeplab.workdir import WorkdirLock, check_resume, check_workdir
from gluoncv.utils import LRScheduler

from .build import bn_mode, build_dataset, build_model, on_main, uses_sync_bn
from .evaluate import run_evaluation

__all__ = ["cross_entropy_sum", "poly_schedule", "make_optimizer_params", "train_step", "train",
           "prepare", "parse_args", "main"]


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


StepResult = collections.namedtuple("StepResult", "loss count stop diverged")


def train_step(net, trainer, data, label, ctx, lr, stop=False, diverged=False):
    """COLLECTIVE. One SGD step on this worker's slice of the global batch.

    The step's one allreduce carries the global count of labelled pixels, and every worker's
    votes to stop (SIGTERM) and that its previous loss was not finite, so that all workers take
    the same decision after the same step. When any worker saw a non-finite loss the step is
    skipped (no update with poisoned parameters).

    The loss is divided by the global count before backward, so the gradients leaving each
    worker are already the global mean's share, O(1): a sum over a 513x513 crop's pixels would
    reach ~1e5, past float16's range, before fp16 compression casts them. Summed over workers,
    the shares give the mean over the global batch's labelled pixels, as one process computes.

    Returns:
        StepResult: loss (NDArray, this worker's summed loss), count (global labelled pixels),
        stop and diverged (whether any worker voted so).
    """
    local = float((label != IGNORE_LABEL).sum().asscalar())  # on the host, before the copy
    count, stops, bad = dist.allreduce_sum(np.array([local, float(stop), float(diverged)]),
                                           name="train.step")
    if bad:
        return StepResult(None, count, stops > 0, True)
    data, label = data.as_in_context(ctx), label.as_in_context(ctx)
    trainer.set_learning_rate(lr)
    with autograd.record():
        loss = cross_entropy_sum(mx.nd, net(data), label)
        share = loss / max(count, 1.0)
    share.backward()
    trainer.step(1.0)
    return StepResult(loss, count, stops > 0, False)


class Meter:
    """Loss, throughput and ETA over each logging interval; logs every `every` iterations on the
    main worker (the logger is silent elsewhere)."""

    def __init__(self, log, start, total, every, batch_size):
        self.log, self.total, self.every, self.batch = log, total, every, batch_size
        self.start_iter, self.t0 = start, time.time()
        self._reset()

    def _reset(self):
        self.tic, self.loss, self.count, self.steps = time.time(), 0.0, 0.0, 0

    def update(self, result):
        self.loss, self.count = self.loss + result.loss, self.count + result.count
        self.steps += 1

    def due(self, done):
        return done % self.every == 0 or done == self.total

    def write(self, done, lr):
        """COLLECTIVE (the interval's loss is summed over workers)."""
        loss = dist.allreduce_sum([self.loss.asscalar()], name="train.log")[0]
        now = time.time()
        rate = (done - self.start_iter) / max(now - self.t0, 1e-9)
        self.log.info("iter %d/%d  loss %.4f  lr %.3g  %.1f img/s  elapsed %s  eta %s",
                      done, self.total, loss / max(self.count, 1.0), lr,
                      self.steps * self.batch / max(now - self.tic, 1e-9),
                      format_duration(now - self.t0),
                      format_duration((self.total - done) / max(rate, 1e-9)))
        self._reset()


class StopRequest:
    """Records a SIGTERM (a preempted pod, `kill`, a launcher stopping its workers) so that
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


def train(cfg, workdir, resume_from=None, log=None):
    """COLLECTIVE. Trains as configured, from scratch or from the checkpoint metadata
    `resume_from` (see `prepare`); returns the trained network."""
    t = cfg["train"]
    log = log or run_logger()
    ctx = dist.context()
    ckpt = Checkpointer(workdir, every=t["checkpoint_every"], keep=t["keep_checkpoints"], log=log)
    net, trainer, start = build_training(cfg, ctx, resume_from, log)
    batches = training_batches(cfg, start)
    schedule, last = poly_schedule(cfg), None
    meter = Meter(log, start, t["iterations"], t["log_every"], t["batch_size"])
    stall = cfg["dist"]["stall_timeout"]  # the first step builds and compiles: allowed longer
    with contextlib.closing(batches), StopRequest() as stop, \
            dist.Watchdog(stall, first_timeout=4 * stall) as watchdog:
        for it, data, label in batches:
            r = train_step(net, trainer, data, label, ctx, schedule(it), stop.requested,
                           last is not None and not np.isfinite(last.loss.asscalar()))
            if r.diverged:
                raise TrainingDiverged("training diverged: non-finite loss at iteration %d; "
                                       "nothing non-finite was saved, the last checkpoint is "
                                       "intact; lower train.lr or check the data" % it)
            done, last = it + 1, r
            watchdog.beat("iteration %d" % done)
            meter.update(r)
            if meter.due(done):
                meter.write(done, schedule(it))
            if r.stop and done < t["iterations"]:
                ckpt.save(done, net, trainer, cfg)
                log.info("stopped by SIGTERM after iteration %d; checkpoint saved, continue "
                         "with --resume", done)
                raise Preempted("stopped by SIGTERM after iteration %d; continue with --resume"
                                % done)
            if ckpt.due(done, t["iterations"]):
                ckpt.save(done, net, trainer, cfg)
    ckpt.save(t["iterations"], net, trainer, cfg)  # checks the last loss's effect: finite
    if dist.is_main():
        save_params(net, os.path.join(workdir, "final.params"))
    return net


def training_batches(cfg, start):
    """This worker's slices of the global batches start, start + 1, ... (see train_batches)."""
    t, d = cfg["train"], cfg["data"]
    dataset = build_dataset(cfg, "train")
    transform = TrainTransform(d["crop_size"], seed=t["seed"], scale_range=tuple(d["scale_range"]))
    sampler = GlobalBatchSampler(len(dataset), t["batch_size"], seed=t["seed"])
    return train_batches(dataset, transform, sampler, start, t["iterations"], rank=dist.rank(),
                         world_size=dist.size(), num_workers=d["num_workers"])


def build_training(cfg, ctx, resume_from, log):
    """COLLECTIVE. The network, its distributed trainer and the first iteration to run.

    Horovod's order: build and fully initialize, broadcast worker 0's parameters (inside
    build_model; when resuming they are the checkpoint's), then the distributed trainer.
    """
    t = cfg["train"]
    net = build_model(cfg, ctx, params=resume_from["params"] if resume_from else None,
                      seed=t["seed"], training=True)
    trainer = dist.make_trainer(net.collect_params(), "sgd", make_optimizer_params(net, cfg),
                                fp16_compression=cfg["dist"]["fp16_compression"],
                                num_groups=cfg["dist"]["num_groups"])
    start = 0
    if resume_from:
        for warning in resume_from["warnings"]:
            log.warning(warning)
        trainer.load_states(resume_from["states"])
        start = resume_from["iteration"]
        log.info("resuming from %s at iteration %d", resume_from["params"], start)
    log.info("training on %d worker(s) (dist.backend %s), global batch %d, %s BN",
             dist.size(), dist.backend(), t["batch_size"], bn_mode(cfg))
    if t["hybridize"]:
        # MXNet's static allocation does not support custom operators (SyncBatchNorm's).
        net.hybridize(static_alloc=not uses_sync_bn(cfg))
    return net, trainer, start


def prepare(cfg, workdir, resume=False, allow_config_change=False):
    """COLLECTIVE. Pre-flight before anything is written, then the run directory.

    Checks (raising the same UserError on every worker): the run directory, the datasets and
    the parameter files the config names, and when resuming, that the newest intact checkpoint
    fits the config. Then the main worker writes DIR/config.yaml.

    Returns:
        the checkpoint metadata to resume from (or None), identical on every worker.
    """
    for split in ("train", "val"):  # every worker reads the data: every worker checks
        build_dataset(cfg, split)

    def check():
        check_workdir(workdir, resume)
        for key in ("params", "backbone_params"):
            path = cfg["model"][key]
            if path and not os.path.isfile(path):
                from deeplab.errors import ParamsError
                raise ParamsError("model.%s: %s does not exist" % (key, path))
        state = Checkpointer(workdir).latest() if resume else None
        if state is not None:
            check_resume(state.get("config"), cfg, state["iteration"], allow_config_change)
        return state

    return on_main(check, share=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="deeplab train", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config, e.g. configs/tiny_synthetic.yaml")
    p.add_argument("--workdir", required=True, help="run directory (config, checkpoints, results)")
    add_set_argument(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest intact checkpoint in --workdir")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept a config that changes the training (model, data, "
                        "batch, schedule, seed, BN mode) against the checkpoint's")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    return p.parse_args(argv)


def main(args):
    cfg = load_config(args.config, args.overrides)
    dist.init(cfg["dist"]["backend"])
    workdir = args.workdir
    resume_from = prepare(cfg, workdir, args.resume, args.allow_config_change)

    def lock_and_record():
        os.makedirs(workdir, exist_ok=True)
        lock = WorkdirLock(workdir).acquire()
        dump_config(cfg, os.path.join(workdir, "config.yaml"))
        return lock

    lock = on_main(lock_and_record)
    try:
        log = run_logger(os.path.join(workdir, "train.log"))
        train(cfg, workdir, resume_from, log)
        if args.no_eval:
            return None
        stride = eval_stride(cfg)
        final = os.path.join(workdir, "final.params")
        # The evaluation network: plain BatchNorm on the running statistics (the training one
        # may hold synchronized BN, a custom operator per layer), at the evaluation stride
        # (which changes dilations and head rates, not the parameters).
        net = build_model(cfg, dist.context(), output_stride=stride, params=final,
                          load_backbone=False)
        return run_evaluation(net, cfg, dist.context(), stride, os.path.abspath(final),
                              os.path.join(workdir, "results.json"), log=log)
    finally:
        if lock:
            lock.release()
