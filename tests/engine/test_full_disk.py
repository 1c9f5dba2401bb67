"""A disk that fills up while a Horovod run writes its last file, final.params (issue 19): the
file must never be renamed into place cut short. MXNet's writer did not report a disk that
filled within its last buffer; the run then ended "successfully" with a truncated final.params.
Root only (it mounts tmpfs file systems sized to the byte)."""
import json
import os
import shutil
import subprocess
import uuid

import pytest

from conftest import TINY, deeplab, horovod, sets
from deeplab.checkpoint import Checkpointer
from deeplab.launch import procs

PAGE = 4096
RUN = ["train.iterations=40", "train.checkpoint_every=1000"]  # the reproduction


@pytest.fixture
def mount_tmpfs(tmp_path):
    mounted = []

    def mount(size):
        mnt = tmp_path / ("disk-" + uuid.uuid4().hex[:6])
        mnt.mkdir()
        if os.geteuid() != 0 or subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=%d" % size, "tmpfs", str(mnt)],
                capture_output=True).returncode != 0:
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def used(path):
    u = shutil.disk_usage(path)
    return u.total - u.free


def test_disk_full_while_writing_final_params_is_the_one_line_error_and_nothing_partial(
        mount_tmpfs):
    # The same run on a roomy disk tells how much it writes before final.params.
    roomy = mount_tmpfs(64 << 20)
    deeplab(*horovod(2), "train", TINY, "--workdir", roomy / "run", "--no-eval", *sets(*RUN))
    final = os.path.getsize(roomy / "run" / "final.params")
    before_final = used(roomy) - -(-final // PAGE) * PAGE
    # Now a disk that runs out within the last page of final.params: MXNet wrote it without an
    # error, the file cut short (a shortfall of several pages is reported by its writer).
    disk = mount_tmpfs(before_final + -(-final // PAGE) * PAGE - PAGE)
    proc = deeplab(*horovod(2), "train", TINY, "--workdir", disk / "run", "--no-eval",
                   *sets(*RUN), check=False)
    out = proc.stdout
    assert proc.returncode == 2, out[-3000:]
    assert "cannot write %s: the disk is full" % (disk / "run" / "final.params") in out, out[-3000:]
    assert not (disk / "run" / "final.params").exists()
    assert not [n for n in os.listdir(disk / "run") if n.endswith(".tmp")]
    ckpt = Checkpointer(str(disk / "run")).latest()  # the last checkpoint is whole
    assert ckpt["iteration"] == 40
    assert json.loads((disk / "run" / "run.json").read_text())["status"] == "failed"
    assert not procs.job_processes(str(disk / "run"), "DEEPLAB_TEST_NEVER_SET")  # sanity
