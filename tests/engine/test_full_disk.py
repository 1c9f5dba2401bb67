"""A disk that fills up while a Horovod run writes one of its files (issue 19, item 1), at each
kind of file a run writes through MXNet: a mid-run checkpoint's .params, its .states,
best.params (train.eval_every) and the last file of the run, final.params.

Each time the disk runs out within the file's last page: there MXNet's writer returned without
an error and left the file cut short, which was then renamed into place (a shortfall of
several pages is reported by the writer itself; tests/engine/test_checkpoint.py and
test_export.py cover the first byte and the middle of a file). Each run must end with the
documented one-line full-disk error naming the file (exit 2), within BOUND seconds of it,
nothing of the job left, no partial file, run.json "failed", and the last checkpoint intact:
once the disk has room again, --resume reaches bitwise the parameters of a run that never
failed. Root only (tmpfs file systems filled to the page)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import mxnet as mx
import numpy as np
import pytest

from conftest import (PAGE, ROOT, TINY, deeplab, fill_leaving, horovod, mount_tmpfs, sets,
                      unmount, worker_environ)
from deeplab.checkpoint import Checkpointer
from deeplab.launch import procs

# Tiny and short: checkpoints at 10, 20, 30, 40 (none pruned), one evaluation (at 20, which
# writes best.params), every log and record file under one page for the whole run, so that
# the room a moment needs is the same in every run.
RUN = ["train.iterations=40", "train.checkpoint_every=10", "train.keep_checkpoints=10",
       "train.eval_every=20", "train.log_every=10", "train.batch_size=6",
       "data.synthetic.train_size=24", "data.synthetic.val_size=4"]
CKPT = "checkpoints/iter_%07d"
# moment: (the file being written, the files of the run written before it besides the run's
# records, the newest checkpoint left intact)
MOMENTS = {
    "checkpoint-params": (CKPT % 20 + ".params", [CKPT % 10 + e for e in (".params", ".states",
                                                                          ".json")], 10),
    "checkpoint-states": (CKPT % 20 + ".states", [CKPT % 10 + e for e in (".params", ".states",
                                                                          ".json")]
                          + [CKPT % 20 + ".params"], 10),
    "best-params": ("best.params", [CKPT % i + e for i in (10, 20)
                                    for e in (".params", ".states", ".json")], 20),
    "final-params": ("final.params", [CKPT % i + e for i in (10, 20, 30, 40)
                                      for e in (".params", ".states", ".json")]
                     + ["best.params", "best.json"], 40),
}
BOUND = 60  # seconds from the error to the end of the job
MARKER = "FULL_DISK_TEST"


def pages(size):
    return -(-size // PAGE)


@pytest.fixture(scope="module")
def roomy(tmp_path_factory):
    """The run on a roomy tmpfs: {file: size} of what it wrote, and its directory (the
    parameters of a run that never failed)."""
    disk = mount_tmpfs(tmp_path_factory.mktemp("roomy") / "disk", 64 << 20)
    try:
        deeplab(*horovod(2), "train", TINY, "--workdir", disk / "run", "--no-eval", *sets(*RUN))
        sizes = {os.path.relpath(os.path.join(d, n), str(disk / "run")):
                 os.path.getsize(os.path.join(d, n))
                 for d, _, names in os.walk(str(disk / "run")) for n in names}
        yield sizes, disk / "run"
    finally:
        unmount(disk)


class Job:
    """The failing run in the background, every process of it carrying a marker in its
    environment (as tests/launch/test_faults.py's Job), its output lines timed."""

    def __init__(self, workdir):
        self.marker = uuid.uuid4().hex
        cmd = [sys.executable, "-m", "deeplab.cli", *horovod(2), "train", TINY, "--workdir",
               str(workdir), "--no-eval", *sets(*RUN)]
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, env=worker_environ(**{MARKER: self.marker}), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines = []  # (time read, line)
        self.reader = threading.Thread(target=lambda: self.lines.extend(
            (time.time(), line) for line in self.proc.stdout), daemon=True)
        self.reader.start()

    def finish(self, timeout=300):
        """(exit code, output, seconds from the first line with `error` to the job's end),
        once nothing of the job is left."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.reader.join(10)
        ended = time.time()
        time.sleep(1)  # a zombie's parent reaps it
        out = "".join(line for _, line in self.lines)
        left = procs.job_processes(self.marker, MARKER)
        procs.kill_processes(lambda: procs.job_processes(self.marker, MARKER))
        assert not left, "processes outlived the job: %s\n%s" % (left, out[-3000:])
        first = next((t for t, line in self.lines if "error: cannot write" in line), None)
        assert first is not None, out[-3000:]
        print("job ended with %s, %.1f s after the error, %.1f s after its start"
              % (self.proc.returncode, ended - first, ended - self.started))
        return self.proc.returncode, out, ended - first


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_disk_full_within_the_last_page_of_any_file_of_a_run_is_the_one_line_error(
        roomy, tmpfs, moment):
    sizes, straight = roomy
    target, before, last = MOMENTS[moment]
    records = [f for f in sizes if not f.startswith("checkpoints/")
               and f not in ("best.params", "best.json", "final.params")]
    # run.json, train.log, metrics.jsonl, tb/..., .lock: one page each from the first
    # checkpoint to the end, whatever their length in a given run
    assert all(0 < sizes[f] < PAGE for f in records), sizes
    room = sum(pages(sizes[f]) for f in records + before) + pages(sizes[target]) - 1
    disk = tmpfs(64 << 20)
    fill_leaving(disk, room * PAGE)
    workdir = disk / "run"
    job = Job(workdir)
    code, out, elapsed = job.finish()
    assert code == 2, out[-3000:]
    assert elapsed < BOUND, "the job took %.0f s to end after the error" % elapsed
    line = "deeplab train: error: cannot write %s: the disk is full (" % (workdir / target)
    assert line in out, out[-3000:]
    assert "failed first: bad input (exit code 2): " + line[:-1] in out \
        or "failed: bad input (exit code 2): " + line[:-1] in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert not (workdir / target).exists()
    assert not [n for d, _, names in os.walk(str(workdir)) for n in names if n.endswith(".tmp")]
    assert Checkpointer(str(workdir)).latest()["iteration"] == last
    assert json.loads((workdir / "run.json").read_text())["status"] == "failed"

    # Room again: the last checkpoint resumes to the parameters of the run that never failed.
    os.remove(disk / "filler")
    deeplab(*horovod(2), "train", TINY, "--workdir", workdir, "--no-eval", "--resume",
            *sets(*RUN))
    got, want = (mx.nd.load(str(d / "final.params")) for d in (workdir, straight))
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k].asnumpy(), want[k].asnumpy(), err_msg=k)
