"""Training and evaluation input pipelines: decode + augment in worker processes, batch in order.

Work is split per sample: worker processes (forked, so the dataset and transform need not be
picklable) run `dataset.load` and the transform and send numpy arrays back; the caller's process
reassembles them in order and builds NDArrays. Workers never touch MXNet, so forking after MXNet
(or Horovod) has started its threads is safe. Because every random choice is a function of
(seed, epoch, index), the output does not depend on `num_workers`.

An exception in a worker is re-raised in the caller with its type and message unchanged (the
worker's traceback is attached as the cause); a worker that dies (e.g. killed for memory) raises
RuntimeError instead of hanging the job.
"""
import contextlib
import functools
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import sys
import traceback

import numpy as np


def train_batches(dataset, transform, sampler, start_iter, num_iters, rank=0, world_size=1,
                  num_workers=0):
    """Yields `(t, data, label)` for t in [start_iter, num_iters): this rank's slice of batch t.

    Args:
        dataset: a SegmentationDataset.
        transform: TrainTransform-like, `transform(image, mask, epoch, index) -> (image, label)`.
        sampler: GlobalBatchSampler defining the global batches.
        start_iter, num_iters: iteration range; resuming at start_iter replays nothing.
        rank, world_size: this worker's slice of each global batch.
        num_workers: loader processes; 0 decodes in the calling process.

    Yields:
        t, data mx.nd.NDArray (b, 3, H, W) float32, label mx.nd.NDArray (b, H, W) float32, with
        b = batch_size / world_size.
    """
    _check_workers(num_workers)
    if start_iter < 0:
        raise ValueError("start_iter must be >= 0, got %r" % (start_iter,))
    if len(dataset) != sampler.num_samples:
        raise ValueError("the sampler was built for %d samples but the dataset has %d"
                         % (sampler.num_samples, len(dataset)))
    # Checked here, not in the generator, so that a bad world size fails at the call.
    per_rank = len(sampler.shard(sampler.batch(start_iter), rank, world_size))

    def items():
        for t in range(start_iter, num_iters):
            for epoch, index in sampler.shard(sampler.batch(t), rank, world_size):
                yield epoch, index

    def batches():
        import mxnet as mx

        samples = _ordered_map(functools.partial(_train_sample, dataset, transform), items(),
                               num_workers, max_pending=max(2 * per_rank, 4 * num_workers))
        try:
            for t in range(start_iter, num_iters):
                images, labels = zip(*(next(samples) for _ in range(per_rank)))
                yield (t, mx.nd.array(np.stack(images), dtype=np.float32),
                       mx.nd.array(np.stack(labels), dtype=np.float32))
        finally:
            samples.close()  # stops the worker processes when the caller stops early

    return batches()


def eval_samples(dataset, transform, indices, num_workers=0):
    """Yields `(index, image, mask)` for each of `indices`, in that order, at full size.

    Args:
        dataset: a SegmentationDataset.
        transform: EvalTransform-like, `transform(image) -> float32 (3, H, W)`.
        indices: sample indices, e.g. from `eval_shard`.
        num_workers: loader processes; 0 decodes in the calling process.

    Yields:
        index, image mx.nd.NDArray (1, 3, H, W) float32, mask numpy int64 (H, W) (255 = ignore).
    """
    _check_workers(num_workers)
    indices = list(indices)

    def samples():
        import mxnet as mx

        results = _ordered_map(functools.partial(_eval_sample, dataset, transform), indices,
                               num_workers, max_pending=2 * num_workers + 2)
        try:
            for index, (image, mask) in zip(indices, results):
                yield (index, mx.nd.array(image[None], dtype=np.float32), mask.astype(np.int64))
        finally:
            results.close()

    return samples()


def _check_workers(num_workers):
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError("data.num_workers must be an integer >= 0, got %r" % (num_workers,))


def _train_sample(dataset, transform, item):
    epoch, index = item
    image, mask = dataset.load(index)
    return transform(image, mask, epoch, index)


def _eval_sample(dataset, transform, index):
    image, mask = dataset.load(index)
    return transform(image), mask  # mask stays uint8 across the pipe; widened by the caller


class _RemoteTraceback(Exception):
    """Carries a worker's formatted traceback as the cause of the re-raised exception."""

    def __str__(self):
        return "\n" + self.args[0]


def _ordered_map(fn, items, num_workers, max_pending):
    """Yields fn(item) for each item in order, computed in `num_workers` forked processes.

    At most `max_pending` items are in flight, so a slow consumer bounds memory use.
    """
    if num_workers == 0:
        for item in items:
            yield fn(item)
        return

    mxnet = sys.modules.get("mxnet")
    if mxnet is not None:
        # MXNet's fork handler stops its engine until every pending operation has run; one that
        # waits on other processes (a Horovod collective inside a layer) would never finish.
        mxnet.nd.waitall()
    ctx = multiprocessing.get_context("fork")
    tasks = ctx.SimpleQueue()
    workers, readers = [], []
    try:
        with _opencv_without_threads():
            for _ in range(num_workers):
                reader, writer = ctx.Pipe(duplex=False)
                _enlarge_pipe(writer)
                proc = ctx.Process(target=_worker_loop, args=(fn, tasks, writer), daemon=True)
                proc.start()
                writer.close()  # the child holds the write end: EOF on reader means it died
                workers.append(proc)
                readers.append(reader)
        items = iter(items)
        done = {}
        sent = received = 0
        exhausted = False
        while True:
            while not exhausted and sent - received < max_pending:
                item = next(items, _END)
                if item is _END:
                    exhausted = True
                else:
                    tasks.put((sent, item))
                    sent += 1
            if received == sent:
                break
            while received not in done:
                done.update(_collect(readers, workers))
            ok, payload = done.pop(received)
            received += 1
            if not ok:
                exc, remote_tb = payload
                exc.__cause__ = _RemoteTraceback(remote_tb)
                raise exc
            yield payload
        for _ in workers:
            tasks.put(None)
        for proc in workers:
            proc.join(timeout=5)
    finally:
        for proc in workers:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        for reader in readers:
            reader.close()
        tasks.close()


_END = object()


def _enlarge_pipe(conn, size=1 << 20):
    """Raises a pipe's kernel buffer (64 KiB by default) so that multi-megabyte samples pass in
    fewer context switches (about 20% faster on Linux). Best effort: other systems keep theirs."""
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (ImportError, OSError):
        pass


@contextlib.contextmanager
def _opencv_without_threads():
    """Stops OpenCV's thread pool for the duration, so that processes forked meanwhile start
    single-threaded with a consistent pool.

    OpenCV's pthreads pool has no fork handling: a child inherits bookkeeping for worker threads
    that do not exist in it, and any later cv2.setNumThreads there waits forever to join them.
    Shrinking the pool to one thread in the parent joins the real threads first; restoring the
    setting afterwards lets the parent start them again on its next parallel call.
    """
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def _collect(readers, workers):
    """Waits for at least one result; returns {sequence number: (ok, payload)}."""
    results = {}
    ready = multiprocessing.connection.wait(readers + [p.sentinel for p in workers])
    for reader in readers:
        if reader in ready:
            try:
                seq, ok, payload = _recv(reader)
            except EOFError:
                continue  # the worker exited; reported below through its sentinel
            results[seq] = (ok, payload)
    if not results:
        for proc in workers:
            if proc.sentinel in ready:
                proc.join()
                raise RuntimeError(
                    "data loader worker (pid %d) exited unexpectedly with exit code %s%s"
                    % (proc.pid, proc.exitcode,
                       " (killed by a signal, e.g. the out-of-memory killer)"
                       if proc.exitcode is not None and proc.exitcode < 0 else ""))
    return results


def _worker_loop(fn, tasks, writer):
    """Body of a loader process: runs fn on tasks until it receives None."""
    # Ctrl-C goes to the whole process group; the parent handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent stops us with SIGTERM: whatever handler it installed (training's checkpoint on
    # SIGTERM) is not ours.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # OpenCV runs single-threaded here (see _opencv_without_threads): parallelism comes from the
    # worker processes. Do not call cv2.setNumThreads in the child.
    while True:
        task = tasks.get()
        if task is None:
            break
        seq, item = task
        try:
            message = _serialize((seq, True, fn(item)))
        except Exception as exc:  # forwarded to the parent, which re-raises it
            message = _serialize((seq, False, (_portable(exc), traceback.format_exc())))
        _send(writer, message)
    writer.close()


def _portable(exc):
    """Returns `exc` if it survives pickling, else a RuntimeError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError("%s: %s" % (type(exc).__name__, exc))


def _serialize(obj):
    """Pickles obj with its large buffers (numpy arrays) kept out of band, uncopied."""
    buffers = []
    header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return header, [buf.raw() for buf in buffers]


def _send(conn, message):
    header, raws = message
    conn.send((header, [raw.nbytes for raw in raws]))
    for raw in raws:
        conn.send_bytes(raw)


def _recv(conn):
    header, sizes = conn.recv()
    buffers = []
    for size in sizes:
        # Received into writable memory so the arrays are writable, as with num_workers=0.
        buf = bytearray(size)
        conn.recv_bytes_into(buf)
        buffers.append(buf)
    return pickle.loads(header, buffers=buffers)
