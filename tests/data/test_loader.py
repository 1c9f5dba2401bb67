"""train_batches / eval_samples: same arrays for any worker count and any rank split, errors
from worker processes, cleanup."""
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import mxnet as mx
import numpy as np
import pytest

from deeplab.data import (DatasetError, EvalTransform, GlobalBatchSampler, TrainTransform,
                          VOCSegmentation, eval_samples, get_dataset, train_batches)


@pytest.fixture(scope="module")
def dataset():
    return get_dataset("synthetic", size=11, num_classes=5, image_size=(24, 40), seed=0)


def _train(dataset, num_workers=0, rank=0, world_size=1, start=0, stop=5, batch_size=4):
    sampler = GlobalBatchSampler(len(dataset), batch_size, seed=0)
    transform = TrainTransform(32, seed=0)
    return [(t, data.asnumpy(), label.asnumpy()) for t, data, label in train_batches(
        dataset, transform, sampler, start, stop, rank, world_size, num_workers)]


def test_batches_have_the_documented_types_and_content(dataset):
    sampler = GlobalBatchSampler(len(dataset), 4, seed=0)
    transform = TrainTransform(32, seed=0)
    out = list(train_batches(dataset, transform, sampler, 0, 3))
    assert [t for t, _, _ in out] == [0, 1, 2]
    for t, data, label in out:
        assert isinstance(data, mx.nd.NDArray) and isinstance(label, mx.nd.NDArray)
        assert data.shape == (4, 3, 32, 32) and data.dtype == np.float32
        assert label.shape == (4, 32, 32) and label.dtype == np.float32
        for k, (epoch, index) in enumerate(sampler.batch(t)):
            expected = transform(*dataset.load(index), epoch, index)
            assert np.array_equal(data[k].asnumpy(), expected[0])
            assert np.array_equal(label[k].asnumpy(), expected[1])


@pytest.mark.multiproc  # loader processes
def test_worker_processes_give_identical_batches(dataset):
    # Use MXNet first, so the workers are forked from a process whose engine threads are running.
    (mx.nd.ones((64, 64)) * 2).wait_to_read()
    reference = _train(dataset, num_workers=0)
    for num_workers in (1, 2):
        out = _train(dataset, num_workers=num_workers)
        assert len(out) == len(reference)
        for (t, data, label), (t_ref, data_ref, label_ref) in zip(out, reference):
            assert t == t_ref
            assert np.array_equal(data, data_ref) and np.array_equal(label, label_ref)


@pytest.mark.parametrize("world_size,num_workers", [(2, 0), (4, 0), (4, 2)])
def test_rank_slices_concatenate_to_the_single_worker_batch(dataset, world_size, num_workers):
    reference = _train(dataset, stop=4, batch_size=8)
    per_rank = [_train(dataset, num_workers, r, world_size, stop=4, batch_size=8)
                for r in range(world_size)]
    for t in range(4):
        assert all(out[t][1].shape[0] == 8 // world_size for out in per_rank)
        data = np.concatenate([out[t][1] for out in per_rank])
        label = np.concatenate([out[t][2] for out in per_rank])
        assert np.array_equal(data, reference[t][1]) and np.array_equal(label, reference[t][2])


@pytest.mark.multiproc  # loader processes
def test_resuming_at_an_iteration_replays_nothing(dataset):
    full = _train(dataset, stop=7)
    resumed = _train(dataset, num_workers=2, start=4, stop=7)
    assert [t for t, _, _ in resumed] == [4, 5, 6]
    for (t, data, label), (_, data_ref, label_ref) in zip(resumed, full[4:]):
        assert np.array_equal(data, data_ref) and np.array_equal(label, label_ref)
    assert _train(dataset, start=5, stop=5) == []


def test_bad_world_size_fails_at_the_call(dataset):
    sampler = GlobalBatchSampler(len(dataset), 4, seed=0)
    with pytest.raises(ValueError, match="train.batch_size"):
        train_batches(dataset, TrainTransform(32, 0), sampler, 0, 5, rank=0, world_size=3)
    with pytest.raises(ValueError, match="num_workers"):
        train_batches(dataset, TrainTransform(32, 0), sampler, 0, 5, num_workers=-1)
    wrong_size = GlobalBatchSampler(len(dataset) + 1, 4, seed=0)
    with pytest.raises(ValueError, match="samples"):
        train_batches(dataset, TrainTransform(32, 0), wrong_size, 0, 5)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_samples_in_order_at_full_size(dataset, num_workers):
    transform = EvalTransform()
    indices = [9, 2, 5, 0, 10, 3]
    out = list(eval_samples(dataset, transform, indices, num_workers=num_workers))
    assert [index for index, _, _ in out] == indices
    for index, image, mask in out:
        expected_image, expected_mask = dataset.load(index)
        assert isinstance(image, mx.nd.NDArray) and image.dtype == np.float32
        assert image.shape == (1, 3) + expected_mask.shape
        assert np.array_equal(image[0].asnumpy(), transform(expected_image))
        assert mask.dtype == np.int64 and np.array_equal(mask, expected_mask)
    assert list(eval_samples(dataset, transform, [], num_workers=num_workers)) == []


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataset_error_in_worker_keeps_its_message(tmp_path, tree_builder, num_workers):
    tree = tree_builder(tmp_path, voc_train=["a", "b", "c", "d"], voc_val=["v"])
    with open(tree.voc_image("c"), "wb") as f:
        f.write(b"corrupt")
    ds = VOCSegmentation(tree.root, "train")
    sampler = GlobalBatchSampler(len(ds), 2, seed=0)
    with pytest.raises(DatasetError) as err:
        for _ in train_batches(ds, TrainTransform(16, 0), sampler, 0, 4, num_workers=num_workers):
            pass
    assert tree.voc_image("c") in str(err.value)
    with pytest.raises(DatasetError) as err:
        list(eval_samples(ds, EvalTransform(), range(4), num_workers=num_workers))
    assert tree.voc_image("c") in str(err.value)
    if num_workers:  # the worker's traceback is attached
        assert "read_image" in str(err.value.__cause__)


class _Unpicklable(Exception):
    def __init__(self, a, b):
        super().__init__("bad sample %s/%s" % (a, b))


class _FailingDataset:
    """Wraps a dataset; `load(fail_index)` raises `error()` or, for error=None, kills the worker."""

    def __init__(self, dataset, fail_index, error):
        self.dataset, self.fail_index, self.error = dataset, fail_index, error
        self.parent = os.getpid()

    def __len__(self):
        return len(self.dataset)

    def load(self, index):
        if index == self.fail_index:
            if self.error is not None:
                raise self.error()
            if os.getpid() != self.parent:
                os._exit(3)
        return self.dataset.load(index)


@pytest.mark.multiproc  # loader processes
def test_unpicklable_worker_error_still_reports_its_message(dataset):
    failing = _FailingDataset(dataset, 4, lambda: _Unpicklable("x", "y"))
    with pytest.raises(RuntimeError, match="_Unpicklable: bad sample x/y"):
        list(eval_samples(failing, EvalTransform(), range(8), num_workers=2))


def test_dead_worker_raises_instead_of_hanging(dataset):
    failing = _FailingDataset(dataset, 4, None)
    with pytest.raises(RuntimeError, match="exited unexpectedly with exit code 3"):
        list(eval_samples(failing, EvalTransform(), range(8), num_workers=2))
    assert not multiprocessing.active_children()


def test_stopping_early_stops_the_workers(dataset):
    sampler = GlobalBatchSampler(len(dataset), 4, seed=0)
    batches = train_batches(dataset, TrainTransform(32, 0), sampler, 0, 1000, num_workers=2)
    next(batches)
    assert len(multiprocessing.active_children()) == 2
    batches.close()
    assert not multiprocessing.active_children()
    samples = eval_samples(dataset, EvalTransform(), range(11), num_workers=2)
    next(samples)
    del samples  # garbage collection closes the generator too
    assert not multiprocessing.active_children()


_OPENCV_FORK_SCRIPT = textwrap.dedent("""
    import cv2, numpy as np
    from deeplab.data import GlobalBatchSampler, TrainTransform, get_dataset, train_batches

    class ResizingTransform(TrainTransform):
        # Grows and shrinks OpenCV's pool inside the worker: this joins the pool's threads,
        # which hangs if the worker inherited bookkeeping for threads that only the parent had.
        def __call__(self, image, mask, epoch, index):
            cv2.setNumThreads(2)
            cv2.resize(np.zeros((600, 600, 3), np.uint8), (1200, 1200))
            cv2.setNumThreads(1)
            return super().__call__(image, mask, epoch, index)

    cv2.setNumThreads(2)
    for _ in range(3):  # run OpenCV's thread pool in the parent before the workers fork
        cv2.resize(np.zeros((1000, 1000, 3), np.uint8), (2000, 2000))
    ds = get_dataset("synthetic", size=8, num_classes=3, image_size=(24, 32))
    batches = train_batches(ds, ResizingTransform(24, 0), GlobalBatchSampler(8, 4, 0), 0, 3,
                            num_workers=2)
    print(sum(1 for _ in batches), cv2.getNumThreads())
""")


def test_workers_fork_safely_after_opencv_used_its_thread_pool():
    # In a subprocess with a timeout: the failure this guards against is a deadlock.
    proc = subprocess.Popen([sys.executable, "-c", _OPENCV_FORK_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its hung loader workers
        proc.communicate()
        pytest.fail("loader workers deadlocked after the parent used OpenCV's thread pool")
    assert proc.returncode == 0, err
    assert out.split() == ["3", "2"]  # all batches, and the parent's OpenCV setting restored


_SIGTERM_HANDLER_SCRIPT = textwrap.dedent("""
    import multiprocessing, signal
    from deeplab.data import GlobalBatchSampler, TrainTransform, get_dataset, train_batches

    # A parent that handles SIGTERM itself (training checkpoints on SIGTERM): the loader still
    # stops its workers, which must not inherit that handler.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    ds = get_dataset("synthetic", size=8, num_classes=3, image_size=(24, 32))
    batches = train_batches(ds, TrainTransform(24, 0), GlobalBatchSampler(8, 4, 0), 0, 100,
                            num_workers=2)
    next(batches)
    batches.close()
    print(len(multiprocessing.active_children()))
""")


def test_stopping_early_stops_the_workers_when_the_parent_handles_sigterm():
    proc = subprocess.Popen([sys.executable, "-c", _SIGTERM_HANDLER_SCRIPT],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the loader waited forever for workers that ignored SIGTERM")
    assert proc.returncode == 0, err
    assert out.split() == ["0"]


_ORPHAN_SCRIPT = textwrap.dedent("""
    import multiprocessing, os, socket, sys, time
    from deeplab.data import GlobalBatchSampler, TrainTransform, get_dataset, train_batches

    class Chatty(TrainTransform):
        def __call__(self, image, mask, epoch, index):
            print("loader %d says hello" % os.getpid(), file=sys.stderr, flush=True)
            return super().__call__(image, mask, epoch, index)

    # A connection the parent shares with its peers (as Gloo's or ps-lite's would be).
    server = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(server.getsockname())
    ds = get_dataset("synthetic", size=8, num_classes=3, image_size=(24, 32))
    batches = train_batches(ds, Chatty(24, 0), GlobalBatchSampler(8, 4, 0), 0, 1000,
                            num_workers=2)
    next(batches)
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    time.sleep(600)
""")


def _fd_targets(pid):
    out = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            out[int(fd)] = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            pass
    return out


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_loader_processes_die_with_their_parent_and_hold_none_of_its_files():
    """A training process killed with SIGKILL takes its loader processes with it; while they
    run they hold neither its stdout/stderr (a launcher waits for end-of-file there) nor its
    network connections (its peers wait for those to close), and what they print reaches the
    parent's stderr."""
    from deeplab.data.loader import LOADER_NAME

    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        loaders = [int(p) for p in proc.stdout.readline().split()]
        assert len(loaders) == 2, proc.stderr.read() if proc.poll() is not None else loaders
        parent = _fd_targets(proc.pid)
        for pid in loaders:
            with open("/proc/%d/comm" % pid) as f:
                assert f.read().strip() == LOADER_NAME
            held = set(_fd_targets(pid).values())
            assert parent[1] not in held and parent[2] not in held, (parent, held)
            assert not any(t.startswith("socket:") for t in held), held
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 5
        while any(_alive(p) for p in loaders) and time.time() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in loaders), "loader processes outlived their parent"
        # End-of-file on the parent's output as soon as it is dead: nothing else holds it.
        err = proc.stderr.read()
        assert "says hello" in err, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
