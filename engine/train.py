"""Training: SGD with momentum and poly learning rate by iteration, softmax cross-entropy over the
labelled pixels of the global batch, periodic checkpoints, evaluation at the end.

    deeplab train CONFIG --workdir DIR [--set KEY=VALUE ...] [--resume | --resume-if-exists]
                  [--allow-config-change] [--no-eval] [--quiet]

Writes DIR/config.yaml (resolved), DIR/train.log, DIR/checkpoints/, DIR/final.params and
DIR/results.json (same fields as `deeplab eval`).

Three layers, read top-down: `train_step` (forward, backward, the step's one allreduce, update),
`train` (the loop: asks the checkpointer whether to save and the meter whether to log) and
`prepare` (pre-flight checks, the run directory, the checkpoint to resume from).
"""
import collections
import contextlib
import json
import os
import signal
import threading
import time

import mxnet as mx
import numpy as np
from mxnet import autograd

from deeplab import dist
from deeplab.checkpoint import Checkpointer, save_params
from deeplab.config import dump_config, eval_stride, load_config
from deeplab.data import GlobalBatchSampler, TrainTransform, train_batches
from deeplab.dist.runtime import start_workers, uses_sync_bn
from deeplab.errors import ConfigError, Interrupted, Preempted, TrainingDiverged
from deeplab.logger import format_duration, run_logger
from deeplab.metrics import IGNORE_LABEL, confusion_nd, scores
from deeplab.precision import amp_dtype, enable_amp
from deeplab.record import RunInfo, RunRecord, memory_bytes
from deeplab.utils import apply_umask, write_json
from deeplab.workdir import WorkdirLock, check_resumable, check_resume, check_workdir
from gluoncv.utils import LRScheduler, LRSequential

from . import parsers
from .build import (bn_mode, build_dataset, copy_parameters, evaluation_network,
                    evaluation_network_of, training_network)
from .evaluate import evaluate, run_evaluation

__all__ = ["cross_entropy_sum", "poly_schedule", "make_optimizer_params", "train_step", "train",
           "prepare", "record_final", "parse_args", "main"]


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


StepResult = collections.namedtuple("StepResult", "loss count confusion stop diverged")


def train_step(net, trainer, data, label, ctx, lr, stop=None, diverged=False):
    """COLLECTIVE. One SGD step on this worker's slice of the global batch, on device `ctx` or
    split evenly over the devices of the list `ctx` (their gradients are summed in-process).

    The step's one allreduce carries the global count of labelled pixels, and every worker's
    votes to stop (`stop`: the signal it received, SIGTERM or SIGINT, or None) and that its
    previous loss was not finite, so that all workers take the same decision after the same
    step. When any worker saw a non-finite loss the step is skipped (no update with poisoned
    parameters).

    The loss is divided by the global count before backward, so the gradients leaving each
    worker are already the global mean's share, O(1): a sum over a 513x513 crop's pixels would
    reach ~1e5, past float16's range, before fp16 compression casts them. Summed over workers,
    the shares give the mean over the global batch's labelled pixels, as one process computes.

    Returns:
        StepResult: loss (NDArray, this worker's summed loss), count (global labelled pixels),
        confusion (NDArray of this worker's confusion counts, on its device), stop (None, or the
        signal a worker voted to stop for: SIGINT when any worker saw one, else SIGTERM) and
        diverged (whether any worker voted so).
    """
    local = float((label != IGNORE_LABEL).sum().asscalar())  # on the host, before the copy
    count, stops, bad, interrupts = dist.allreduce_sum(
        np.array([local, float(bool(stop)), float(diverged), float(stop == signal.SIGINT)]),
        name="train.step")
    stop = signal.SIGINT if interrupts else signal.SIGTERM if stops else None
    if bad:
        return StepResult(None, count, None, stop, True)
    ctxs = ctx if isinstance(ctx, (list, tuple)) else [ctx]
    datas = mx.gluon.utils.split_and_load(data, ctxs)
    labels = mx.gluon.utils.split_and_load(label, ctxs)
    trainer.set_learning_rate(lr)
    with autograd.record():
        logits = [net(x) for x in datas]
        losses = [cross_entropy_sum(mx.nd, z, y) for z, y in zip(logits, labels)]
        shares = [loss / max(count, 1.0) for loss in losses]
    if amp_dtype() == "float16":  # dynamic loss scaling: float16 gradients underflow
        from mxnet.contrib import amp

        with amp.scale_loss(shares, trainer.trainer) as scaled:
            autograd.backward(scaled)
    else:
        autograd.backward(shares)
    trainer.step(1.0)
    first = ctxs[0]
    loss = mx.nd.add_n(*[x.as_in_context(first) for x in losses])
    confusion = mx.nd.add_n(*[confusion_nd(z.detach(), y, z.shape[1]).as_in_context(first)
                              for z, y in zip(logits, labels)])
    return StepResult(loss, count, confusion, stop, False)


class Meter:
    """Loss, training pixAcc/mIoU, throughput, data wait, memory and ETA over each logging
    interval; logs and records every `every` iterations (on the main worker: the logger and the
    record are silent elsewhere)."""

    def __init__(self, log, record, start, total, every, batch_size, ctx):
        self.log, self.record, self.ctx = log, record, ctx
        self.total, self.every, self.batch = total, every, batch_size
        self.start_iter, self.t0 = start, time.time()
        self._reset()

    def _reset(self):
        self.tic, self.loss, self.count, self.steps = time.time(), 0.0, 0.0, 0
        self.confusion, self.data_s = 0, 0.0

    def update(self, result, data_s):
        self.loss, self.count = self.loss + result.loss, self.count + result.count
        self.confusion = self.confusion + result.confusion
        self.steps += 1
        self.data_s += data_s

    def due(self, done):
        return done % self.every == 0 or done == self.total

    def write(self, done, lr):
        """COLLECTIVE (the interval's loss and confusion counts are summed over workers)."""
        sums = dist.allreduce_sum(np.concatenate([[self.loss.asscalar()],
                                                  self.confusion.asnumpy()]), name="train.log")
        c = int(round(np.sqrt(sums.size - 1)))
        s = scores(sums[1:].reshape(c, c))
        now = time.time()
        rate = (done - self.start_iter) / max(now - self.t0, 1e-9)
        row = {"kind": "train", "iter": done, "loss": sums[0] / max(self.count, 1.0), "lr": lr,
               "img_s": self.steps * self.batch / max(now - self.tic, 1e-9),
               "data_s": self.data_s / max(self.steps, 1),
               "eta_s": (self.total - done) / max(rate, 1e-9),
               "mem": memory_bytes(self.ctx), "pixAcc": s["pixAcc"], "mIoU": s["mIoU"]}
        self.log.info("iter %d/%d  loss %.4f  pixAcc %.4f  mIoU %.4f  lr %.3g  %.1f img/s  "
                      "data %.3fs  mem %.0fMB  elapsed %s  eta %s", done, self.total,
                      row["loss"], row["pixAcc"], row["mIoU"], lr, row["img_s"], row["data_s"],
                      row["mem"] / 2 ** 20, format_duration(now - self.t0),
                      format_duration(row["eta_s"]))
        self.record.write(row)
        self._reset()


class PeriodicEvaluator:
    """Evaluation during training every `train.eval_every` iterations, on the evaluation
    network (plain BN, evaluation stride) holding the training network's current parameters;
    keeps DIR/best.params and DIR/best.json (iteration, mIoU, pixAcc) for the best mIoU so far,
    which a resumed run continues from."""

    def __init__(self, cfg, workdir, log, record):
        self.cfg, self.log, self.record = cfg, log, record
        self.every = cfg["train"]["eval_every"]
        self.best_path = os.path.join(workdir, "best.json")
        self.params_path = os.path.join(workdir, "best.params")
        self.net = self.dataset = None
        self.best = dist.on_main(self._read_best, share=True) if self.every else None

    def _read_best(self):
        try:
            with open(self.best_path) as f:
                return json.load(f)["mIoU"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def due(self, done, total):
        """Whether to evaluate after `done` iterations (the end has its own evaluation)."""
        return self.every > 0 and done % self.every == 0 and done < total

    def run(self, net, done, watchdog):
        """COLLECTIVE. Evaluates the network in training; returns the scores."""
        cfg, ctx = self.cfg, dist.context()
        if self.net is None:
            self.net = evaluation_network_of(cfg, net, ctx, output_stride=eval_stride(cfg))
            self.dataset = build_dataset(cfg, "val")
            if cfg["train"]["hybridize"]:
                self.net.hybridize()
        else:
            copy_parameters(net, self.net)
            dist.broadcast_parameters(self.net.collect_params())  # rank 0's BN statistics
        with watchdog.extend(4 * cfg["dist"]["stall_timeout"], "evaluation at iteration %d" % done):
            conf, n = evaluate(self.net, self.dataset, cfg, ctx, watchdog=watchdog, quiet=True)
        s = scores(conf)
        self.keep(self.net, done, s, n)
        return s

    def keep(self, net, done, s, n, final=False):
        """Logs and records the scores `s` of evaluation network `net` after `done` iterations
        (on `n` images); saves it as DIR/best.params and DIR/best.json when its mIoU is the best
        so far. `final`: the evaluation at the end of the run (logged by itself; it counts for
        the best only when periodic evaluation is on, the only time best.* is kept)."""
        best = self.every > 0 and (self.best is None or s["mIoU"] > self.best)
        if not final:
            self.log.info("val iter %d  pixAcc %.4f  mIoU %.4f  (%d images)%s", done,
                          s["pixAcc"], s["mIoU"], n, "  best so far" if best else "")
        elif best:
            self.log.info("the final evaluation is the best so far: best.params and best.json "
                          "now hold iteration %d", done)
        self.record.write({"kind": "val", "iter": done, "pixAcc": s["pixAcc"],
                           "mIoU": s["mIoU"], "num_images": n})
        if best:
            self.best = s["mIoU"]
            dist.on_main(lambda: (save_params(net, self.params_path),
                                  write_json(self.best_path, {"iteration": done,
                                                              "mIoU": s["mIoU"],
                                                              "pixAcc": s["pixAcc"],
                                                              "num_images": n})))


class StopRequest:
    """Records a SIGTERM (a preempted pod, `kill`, a launcher stopping its workers) or a SIGINT
    (Ctrl-C) so that training checkpoints and exits at the next step instead of dying mid-step.

    Used as a context manager around the training loop; the previous handlers are restored
    after. `signal` is the first signal received (None before), `time` when (wall clock). A
    second signal ends the process at once, without a checkpoint: a second SIGTERM by its
    default action, a second SIGINT as KeyboardInterrupt, which `deeplab train` reports in one
    line and records in run.json as killed (`ended_by`: "SIGINT twice", the launchers' words for
    the same). The KeyboardInterrupt leaving the loop after a first signal carries `ended_by`
    and `stop_time` for that record.

    Two signals that arrive while the main thread waits inside one C call (a step waiting for
    MXNet's engine) would run the Python handler once: Python keeps a flag per signal, not a
    count, and a second Ctrl-C would be lost. Its wakeup fd gets one byte per signal, so the
    handler counts them there: a second one that came before the handler could run is acted
    on as soon as it runs.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal = self.time = None
        self._previous = {}
        self._pipe = self._wakeup = None

    @property
    def requested(self):
        return self.signal is not None

    def _arrived(self):
        """The stop signals delivered since the last call, in order (the wakeup fd's bytes)."""
        data = b""
        while self._pipe:
            try:
                chunk = os.read(self._pipe[0], 256)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        return [signal.Signals(b) for b in data if b in self.SIGNALS]

    def _handle(self, signum, frame):
        arrived = self._arrived() or [signal.Signals(signum)]
        self.signal, self.time = arrived[0], time.time()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if len(arrived) > 1:  # a second one came before this handler could run
            if signal.SIGINT in arrived[1:]:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # its default action now: ended at once

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._pipe = os.pipe()
            for fd in self._pipe:
                os.set_blocking(fd, False)
            self._wakeup = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, exc_type, exc, tb):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        if self._pipe:
            signal.set_wakeup_fd(self._wakeup)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
        if isinstance(exc, KeyboardInterrupt) and self.signal is not None:
            exc.ended_by, exc.stop_time = "%s twice" % self.signal.name, self.time


def _signal_words(signum):
    return "SIGINT (Ctrl-C)" if signum == signal.SIGINT else "SIGTERM"


def train(cfg, workdir, resume_from=None, log=None, watchdog=None):
    """COLLECTIVE. Trains as configured, from scratch or from the checkpoint metadata
    `resume_from` (see `prepare`); returns the trained network.

    `watchdog`: the process's dist.Watchdog (see `main`); by default one of the training's own.
    """
    if watchdog is None:
        stall = cfg["dist"]["stall_timeout"]
        with dist.Watchdog(stall, first_timeout=4 * stall) as own:
            return train(cfg, workdir, resume_from, log, own)
    t = cfg["train"]
    log = log or run_logger()
    ctx = dist.contexts(cfg["dist"]["devices_per_worker"])
    stall = cfg["dist"]["stall_timeout"]
    with watchdog.extend(4 * stall, "building the network"):  # broadcasts the parameters
        net, trainer, start = build_training(cfg, ctx, resume_from, log)
    ckpt = Checkpointer(workdir, every=t["checkpoint_every"], keep=t["keep_checkpoints"], log=log)
    record = RunRecord(workdir, start)
    meter = Meter(log, record, start, t["iterations"], t["log_every"], t["batch_size"], ctx[0])
    evaluator = PeriodicEvaluator(cfg, workdir, log, record)
    schedule, batches, last = lr_schedule(cfg), timed(training_batches(cfg, start)), None
    watchdog.expect(4 * stall)  # the first step builds and compiles: allowed longer
    with contextlib.closing(batches), contextlib.closing(record), StopRequest() as stop:
        for data_s, (it, data, label) in batches:
            r = train_step(net, trainer, data, label, ctx, schedule(it), stop.signal,
                           last is not None and not np.isfinite(last.loss.asscalar()))
            if r.diverged:
                raise TrainingDiverged("training diverged: non-finite loss at iteration %d; "
                                       "nothing non-finite was saved, the last checkpoint is "
                                       "intact; lower train.lr or check the data" % it)
            done, last = it + 1, r
            watchdog.beat("iteration %d" % done)
            meter.update(r, data_s)
            if meter.due(done):
                meter.write(done, schedule(it))
            if r.stop and done < t["iterations"]:
                ckpt.save(done, net, trainer, cfg)
                # No worker exits before rank 0 has saved: a launcher that sees one worker end
                # may signal the others again, and must not catch rank 0 mid-write.
                dist.barrier()
                # Every worker stops here together (the vote): the backend can end in order, so
                # that the parameter server's servers and scheduler end with the workers
                # wherever they run, as after the last iteration.
                with watchdog.extend(stall, "the %s backend's shutdown" % dist.backend()):
                    dist.shutdown()
                log.info("stopped by %s after iteration %d; checkpoint saved, continue with "
                         "--resume", _signal_words(r.stop), done)
                stopped = (Interrupted if r.stop == signal.SIGINT else Preempted)(
                    "stopped by %s after iteration %d; continue with --resume"
                    % (_signal_words(r.stop), done))
                stopped.iteration = done  # its checkpoint, for run.json
                raise stopped
            if ckpt.due(done, t["iterations"]):
                ckpt.save(done, net, trainer, cfg)
            if evaluator.due(done, t["iterations"]):
                evaluator.run(net, done, watchdog)
    with watchdog.extend(stall, "the final checkpoint"):
        ckpt.save(t["iterations"], net, trainer, cfg)  # checks the last loss's effect: finite
    with watchdog.extend(stall, "saving final.params"):  # a failed save raises everywhere
        dist.on_main(lambda: save_params(net, os.path.join(workdir, "final.params")))
    return net


def lr_schedule(cfg):
    """Iteration -> learning rate: linear warmup over train.warmup_iters (from lr / warmup to
    lr), then GluonCV's poly schedule over the remaining iterations."""
    t = cfg["train"]
    w = t["warmup_iters"]
    if not w:
        return poly_schedule(cfg)
    return LRSequential([
        LRScheduler("linear", base_lr=t["lr"] / w, target_lr=t["lr"], niters=w),
        LRScheduler(mode="poly", base_lr=t["lr"], niters=max(t["iterations"] - w, 2),
                    power=t["lr_power"])])


def timed(iterable):
    """Yields (seconds spent waiting for the item, item)."""
    it = iter(iterable)
    try:
        while True:
            tic = time.time()
            try:
                item = next(it)
            except StopIteration:
                return
            yield time.time() - tic, item
    finally:
        close = getattr(it, "close", None)
        if close:
            close()


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
    training_network; when resuming they are the checkpoint's), then the distributed trainer.
    """
    t = cfg["train"]
    net = training_network(cfg, ctx, params=resume_from["params"] if resume_from else None,
                           seed=t["seed"])
    trainer = dist.make_trainer(net.collect_params(), "sgd", make_optimizer_params(net, cfg),
                                fp16_compression=cfg["dist"]["fp16_compression"],
                                num_groups=cfg["dist"]["num_groups"])
    if amp_dtype() == "float16":
        from mxnet.contrib import amp

        amp.init_trainer(trainer.trainer)
    start = 0
    if resume_from:
        for warning in resume_from["warnings"]:
            log.warning(warning)
        trainer.load_states(resume_from["states"])
        start = resume_from["iteration"]
        log.info("resuming from %s at iteration %d", resume_from["params"], start)
    log.info("training on %d worker(s) (dist.backend %s), global batch %d, %s BN%s%s%s",
             dist.size(), dist.backend(), t["batch_size"], bn_mode(cfg),
             ", mixed precision (%s)" % amp_dtype() if amp_dtype() else "",
             ", %d devices per worker (%s)" % (len(ctx), ", ".join(map(str, ctx)))
             if len(ctx) > 1 else "",
             "; BN statistics over %s" % dist.transport() if uses_sync_bn(cfg) else "")
    if t["hybridize"]:
        # MXNet's static allocation does not support custom operators (SyncBatchNorm's).
        net.hybridize(static_alloc=not uses_sync_bn(cfg))
    return net, trainer, start


def prepare(cfg, workdir, resume=False, allow_config_change=False):
    """COLLECTIVE. Pre-flight before anything is written, then the run directory.

    Checks (raising the same UserError on every worker): the run directory, the datasets and
    the parameter files the config names, and when resuming, that the newest intact checkpoint
    fits the config. `resume` is False, "required" (`--resume`: a directory without a
    checkpoint is an error) or "if-exists" (`--resume-if-exists`: it starts a new run); True
    means "required".

    Returns:
        the checkpoint metadata to resume from (or None), identical on every worker.
    """
    for split in ("train", "val"):  # every worker reads the data: every worker checks
        build_dataset(cfg, split)

    def check():
        batch, world = cfg["train"]["batch_size"], dist.size()
        if batch % world:  # else every worker fails at its first batch, the run dir written
            raise ConfigError("train.batch_size %d (the global batch) does not split over %d "
                              "workers: use a number of workers that divides it, or a "
                              "multiple of %d" % (batch, world, world))
        check_workdir(workdir, resume)
        for key in ("params", "backbone_params"):
            path = cfg["model"][key]
            if key == "backbone_params":
                from deeplab.fetch import resolve_params
                path = resolve_params(path)  # zoo:NAME: fetched now, before the run dir is written
            if path and not os.path.isfile(path):
                from deeplab.errors import ParamsError
                raise ParamsError("model.%s: %s does not exist" % (key, path))
        state = Checkpointer(workdir).latest() if resume else None
        check_resumable(workdir, state, required=resume and resume != "if-exists")
        if state is not None:
            check_resume(state.get("config"), cfg, state["iteration"], allow_config_change)
        return state

    return dist.on_main(check, share=True)


def record_final(cfg, workdir, net, res, log):
    """COLLECTIVE. The evaluation at the end of the run (results `res` of evaluation network
    `net`) as the last 'val' row of DIR/metrics.jsonl and TensorBoard, and, with periodic
    evaluation on, as DIR/best.params and DIR/best.json when it beats the evaluations before."""
    done = cfg["train"]["iterations"]
    with contextlib.closing(RunRecord(workdir, done)) as record:
        PeriodicEvaluator(cfg, workdir, log, record).keep(net, done, res, res["num_images"],
                                                          final=True)


def parse_args(argv=None):
    """The options (deeplab.parsers.train: parsed without importing MXNet)."""
    return parsers.train(argv)


def main(args):
    cfg = load_config(args.config, args.overrides)
    apply_umask(cfg)  # before anything of the run is created
    # One watchdog over every blocking phase of the process, each named in its line: start-up
    # (the backend's rendezvous, the pre-flight), the steps, evaluation, the final save and the
    # backend's shutdown (dist/watchdog.py).
    stall = cfg["dist"]["stall_timeout"]
    with dist.watched_command(stall) as watchdog:
        with watchdog.extend(4 * stall, "start-up"):
            lock, resume_from = start(cfg, args)
        results = run_training(cfg, args, lock, resume_from, watchdog)
    return results


def _checkpoints_since(workdir, stop_time):
    """For run.json after a stop: {"checkpoint_saved": the iteration of the checkpoint saved
    since the stop request at `stop_time` (wall clock; None: no request) or None,
    "newest_checkpoint": the iteration --resume continues from, or None}."""
    ckpt = Checkpointer(workdir)
    its = ckpt.iterations()
    saved = [it for it in its if stop_time is not None and
             os.path.getmtime(ckpt.stem(it) + ".json") >= stop_time]
    return {"checkpoint_saved": saved[-1] if saved else None,
            "newest_checkpoint": its[-1] if its else None}


def start(cfg, args):
    """COLLECTIVE. Starts the workers, checks the inputs and takes the run directory; returns
    (the lock on the run directory or None off the main worker, the checkpoint to resume)."""
    start_workers(cfg)
    if cfg["train"]["amp"]:
        enable_amp(dist.context())
    workdir = args.workdir
    resume_from = prepare(cfg, workdir, args.resume, args.allow_config_change)

    def lock_and_record():
        os.makedirs(workdir, exist_ok=True)
        lock = WorkdirLock(workdir).acquire()
        dump_config(cfg, os.path.join(workdir, "config.yaml"))
        return lock

    return dist.on_main(lock_and_record), resume_from


def run_training(cfg, args, lock, resume_from, watchdog):
    """COLLECTIVE. Training, then the final evaluation, recorded in the run directory."""
    workdir = args.workdir
    # Which transport carried synchronized BN's statistics (None: no synchronized BN).
    run = RunInfo(workdir, args.argv,
                  sync_bn_transport=dist.transport() if uses_sync_bn(cfg) else None)
    status = "failed"
    try:
        log = run_logger(os.path.join(workdir, "train.log"))
        m = cfg["model"]
        if cfg["data"]["name"] != "synthetic" and not (m["backbone_params"] or m["params"]
                                                       or resume_from):
            log.warning("WARNING: neither model.backbone_params nor model.params is set: the "
                        "backbone trains from random initialisation, far below the paper's "
                        "results (deeplab fetch backbone NAME downloads ImageNet weights)")
        try:
            train(cfg, workdir, resume_from, log, watchdog)
        except (TrainingDiverged, Preempted) as stopped:
            status = "diverged" if isinstance(stopped, TrainingDiverged) else \
                "interrupted" if isinstance(stopped, Interrupted) else "preempted"
            if isinstance(stopped, Preempted):  # the checkpoint of the stop was saved
                run.info.update(ended_by="SIGINT" if status == "interrupted" else "SIGTERM",
                                checkpoint_saved=stopped.iteration,
                                newest_checkpoint=stopped.iteration)
            raise
        except KeyboardInterrupt as err:  # Ctrl-C outside the loop, or a second one: at once
            status = "killed" if hasattr(err, "ended_by") else "interrupted"
            run.info.update(ended_by=getattr(err, "ended_by", "SIGINT"),
                            **_checkpoints_since(workdir, getattr(err, "stop_time", None)))
            err.saved_checkpoint = run.info["checkpoint_saved"]  # for the CLI's line
            raise
        results = None
        if not args.no_eval:
            stride = eval_stride(cfg)
            final = os.path.join(workdir, "final.params")
            # The evaluation network: plain BatchNorm on the running statistics (the training
            # one may hold synchronized BN, a custom operator per layer), at the evaluation
            # stride (which changes dilations and head rates, not the parameters).
            with watchdog.extend(4 * cfg["dist"]["stall_timeout"], "the final evaluation"):
                net = evaluation_network(cfg, dist.context(), output_stride=stride,
                                         params=final)
                results = run_evaluation(net, cfg, dist.context(), stride,
                                         os.path.abspath(final),
                                         os.path.join(workdir, "results.json"), log=log,
                                         quiet=args.quiet, watchdog=watchdog)
            record_final(cfg, workdir, net, results, log)
        status = "finished"
        log.info("done in %s; curves: deeplab plot --workdir %s", format_duration(
            run.elapsed()), workdir)
        return results
    finally:
        run.finish(status)
        if lock:
            lock.release()
