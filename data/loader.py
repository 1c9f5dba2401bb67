"""Training and evaluation input pipelines: decode + augment in worker processes, batch in order.

Work is split per sample: worker processes (forked, so the dataset and transform need not be
picklable) run `dataset.load` and the transform and send numpy arrays back; the caller's process
reassembles them in order and builds NDArrays. Workers never touch MXNet, so forking after MXNet
(or Horovod) has started its threads is safe. Because every random choice is a function of
(seed, epoch, index), the output does not depend on `num_workers`.

An exception in a worker is re-raised in the caller with its type and message unchanged (the
worker's traceback is attached as the cause); a worker that dies (e.g. killed for memory) raises
RuntimeError instead of hanging the job. A sample that never arrives (a file that blocks: a FIFO,
a file system gone) is for the stall watchdog to end: while the caller waits, it names the
sample, its files and the loader process reading it (`deeplab.utils.waiting_on`).

Loader processes never outlive the process that forked them, however it ends (SIGKILL
included): the kernel kills them when it dies (PR_SET_PDEATHSIG), and each also checks that its
parent is still there. Nor do they hold what their parent shares with the rest of the job: their
output reaches the parent's stderr through a pipe of their own, not the parent's stdout/stderr
(which a launcher reads until end-of-file), and they drop the parent's network connections (so
that a dead worker's peers see its connections close). They are named `LOADER_NAME` in
/proc/PID/comm, so that tools that signal training processes can leave them out.
"""
import contextlib
import ctypes
import functools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import stat
import sys
import threading
import time
import traceback

import numpy as np

from deeplab.utils import waiting_on

__all__ = ["LOADER_NAME", "train_batches", "eval_samples"]

# /proc/PID/comm of a loader process (at most 15 characters).
LOADER_NAME = "deeplab-loader"


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
                               num_workers, max_pending=max(2 * per_rank, 4 * num_workers),
                               describe=lambda item: _describe(dataset, item[1]))
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
                               num_workers, max_pending=2 * num_workers + 2,
                               describe=lambda index: _describe(dataset, index))
        try:
            for index, (image, mask) in zip(indices, results):
                yield (index, mx.nd.array(image[None], dtype=np.float32), mask.astype(np.int64))
        finally:
            results.close()

    return samples()


def _check_workers(num_workers):
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError("data.num_workers must be an integer >= 0, got %r" % (num_workers,))


def _describe(dataset, index):
    describe = getattr(dataset, "describe", None)
    return describe(index) if describe else "sample %s" % index


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


def _ordered_map(fn, items, num_workers, max_pending, describe=repr):
    """Yields fn(item) for each item in order, computed in `num_workers` forked processes.

    At most `max_pending` items are in flight, so a slow consumer bounds memory use.
    `describe(item)` names an item in the stall watchdog's message while we wait for it.
    """
    if num_workers == 0:
        for item in items:
            with waiting_on(lambda: "the data loader to read %s (in this process)"
                            % describe(item)):
                result = fn(item)
            yield result
        return

    mxnet = sys.modules.get("mxnet")
    if mxnet is not None:
        # MXNet's fork handler stops its engine until every pending operation has run; one that
        # waits on other processes (a Horovod collective inside a layer) would never finish.
        mxnet.nd.waitall()
    ctx = multiprocessing.get_context("fork")
    tasks = ctx.SimpleQueue()
    workers, readers = [], []
    # What each loader process is at: (sequence number or -1, since when, monotonic seconds),
    # written by it, read by the watchdog's message.
    busy = ctx.Array("d", 2 * num_workers, lock=False)
    for slot in range(num_workers):
        busy[2 * slot] = -1
    # The loader processes' stdout and stderr: copied to ours by a thread, so that they never
    # hold our own stdout/stderr open.
    output_r, output_w = os.pipe()
    relay = threading.Thread(target=_relay_output, args=(output_r,),
                             name="deeplab-loader-output", daemon=True)
    relay.start()
    try:
        with _opencv_without_threads():
            for slot in range(num_workers):
                reader, writer = ctx.Pipe(duplex=False)
                _enlarge_pipe(writer)
                proc = ctx.Process(target=_worker_main,
                                   args=(fn, tasks, writer, os.getpid(), output_w,
                                         (busy, slot)), daemon=True)
                proc.start()
                writer.close()  # the child holds the write end: EOF on reader means it died
                workers.append(proc)
                readers.append(reader)
        os.close(output_w)  # the relay ends when the last child has exited
        output_w = None
        items = iter(items)
        done, pending = {}, {}  # results arrived early; items sent and not yet received
        sent = received = 0
        exhausted = False

        def waiting():
            seq = received
            text = "the data loader to read %s" % describe(pending[seq])
            for slot, proc in enumerate(workers):
                if busy[2 * slot] == seq:
                    return "%s: loader process %d has been reading it for %.0f s" % (
                        text, proc.pid, time.monotonic() - busy[2 * slot + 1])
            return text

        while True:
            while not exhausted and sent - received < max_pending:
                item = next(items, _END)
                if item is _END:
                    exhausted = True
                else:
                    tasks.put((sent, item))
                    pending[sent] = item
                    sent += 1
            if received == sent:
                break
            if received not in done:
                with waiting_on(waiting):
                    while received not in done:
                        done.update(_collect(readers, workers))
            ok, payload = done.pop(received)
            del pending[received]
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
        if output_w is not None:
            os.close(output_w)
        relay.join(timeout=5)
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


def _relay_output(fd):
    """Copies what the loader processes print (read end `fd`) to our stderr until they all exit.

    Raw descriptor writes only: a lock of sys.stderr held by this thread while the parent forks
    would stay locked in the child.
    """
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            try:
                os.write(2, data)
            except OSError:
                pass  # nowhere to print: keep draining so that the children never block
    finally:
        os.close(fd)


_PR_SET_PDEATHSIG, _PR_SET_NAME = 1, 15


def _prctl(option, arg):
    """Linux prctl(2); returns False where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _detach_from_parent(parent_pid, output_fd):
    """Makes a freshly forked loader process die with its parent and let go of what the
    parent shares with the rest of the job (see the module docstring)."""
    # The kernel sends SIGKILL when the thread that forked us ends (the training loop's thread,
    # which lives as long as the process). Checked once set: the parent may have died before.
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent_pid:
        os._exit(1)
    _prctl(_PR_SET_NAME, ctypes.c_char_p(LOADER_NAME.encode()))
    # Where prctl is missing (or the parent ends in an unusual way), a thread notices that we
    # were re-parented.
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    for fd in (1, 2):
        os.dup2(output_fd, fd)
    os.close(output_fd)
    _drop_sockets()


def _exit_when_orphaned(parent_pid, interval=1.0):
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)


def _drop_sockets():
    """Points every inherited socket descriptor (the parent's Gloo, ps-lite and rendezvous
    connections) at /dev/null, so that the connections close as soon as the parent dies, not when
    its last loader process does. The descriptor numbers stay taken: objects of the parent that
    still name them close /dev/null, never a file of ours."""
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in fds:
            try:
                if fd != null and stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.dup2(null, fd)
            except OSError:
                pass  # the listing's own descriptor, already closed
    finally:
        os.close(null)


def _worker_main(fn, tasks, writer, parent_pid, output_fd, busy=None):
    """Entry point of a loader process."""
    _detach_from_parent(parent_pid, output_fd)
    _worker_loop(fn, tasks, writer, busy)


def _worker_loop(fn, tasks, writer, busy=None):
    """Body of a loader process: runs fn on tasks until it receives None. `busy`: (shared
    array, slot) where it records which task it is at and since when."""
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
        if busy is not None:
            array, slot = busy
            array[2 * slot + 1] = time.monotonic()
            array[2 * slot] = seq
        try:
            message = _serialize((seq, True, fn(item)))
        except Exception as exc:  # forwarded to the parent, which re-raises it
            message = _serialize((seq, False, (_portable(exc), traceback.format_exc())))
        if busy is not None:
            array[2 * slot] = -1
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
