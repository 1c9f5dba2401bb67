"""scripts/demo.sh DIR: it replaces an earlier demo run in DIR, never a folder holding anything
else (a real training run included)."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

DEMO = os.path.join(ROOT, "scripts", "demo.sh")


def demo(workdir):
    env = dict(os.environ, DEEPLAB_VENV=os.path.dirname(os.path.dirname(sys.executable)))
    return subprocess.run(["bash", DEMO, str(workdir)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=600)


def test_a_folder_of_user_files_is_refused_and_nothing_deleted(tmp_path):
    """Regression: `bash scripts/demo.sh DIR` ran `rm -rf DIR`."""
    (tmp_path / "thesis.tex").write_text("three years of work")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "f1.png").write_bytes(b"png")
    proc = demo(tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "demo.sh: error: %s holds files that are not a training run's (figures, thesis.tex)"
        % tmp_path)
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "thesis.tex").read_text() == "three years of work"
    assert (tmp_path / "figures" / "f1.png").read_bytes() == b"png"


def test_an_earlier_run_still_going_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("the running run's")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from deeplab.workdir import WorkdirLock; "
         "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = demo(tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "in use by another run (pid %d" % holder.pid in proc.stderr
        assert (tmp_path / "config.yaml").read_text() == "the running run's"
    finally:
        holder.kill()
        holder.wait()



def test_a_real_training_run_is_refused_and_nothing_deleted(tmp_path):
    """Regression: `bash scripts/demo.sh runs/r50-p2` deleted a real training run, a folder
    holding only a run's files. The demo replaces only a run on its synthetic data."""
    run = tmp_path / "r50-p2"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "iter_0030000.params").write_bytes(b"weights")
    (run / "final.params").write_bytes(b"days of training")
    (run / "config.yaml").write_text("model:\n  name: deeplabv3_resnet50_v2\ndata:\n  name: "
                                     "voc\n  root: /data/voc\n")
    proc = demo(run)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "demo.sh: error: %s holds a training run on data.name voc (its config.yaml), not a "
        "demo's (data.name synthetic); not deleting it: the demo replaces only an earlier demo's "
        "run, choose an empty or new directory" % run)
    assert (run / "final.params").read_bytes() == b"days of training"
    assert (run / "checkpoints" / "iter_0030000.params").read_bytes() == b"weights"


def test_the_demo_trains_and_rank_0_evaluates(tmp_path):
    """The README's main job as shipped: 2 Horovod workers under MPI, synchronized BN with its
    statistics over MPI, rank 0's evaluation; the figures the README shows."""
    proc = demo(tmp_path / "demo")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "mpirun -np 2" in proc.stderr + out
    assert "training on 2 worker(s) (dist.backend horovod), global batch 8, synchronized BN; " \
        "BN statistics over mpi" in out, out[-3000:]
    m = re.search(r"\[0\]<stdout>:.* pixAcc (\S+)  mIoU (\S+)  \(48 images", out)
    assert m, out[-3000:]
    # 0.9421 / 0.6231 here (the README's figures); background everywhere would score 0.17
    assert float(m.group(1)) > 0.9 and float(m.group(2)) > 0.5, m.group(0)
    with open(tmp_path / "demo" / "results.json") as f:
        assert json.load(f)["mIoU"] == pytest.approx(float(m.group(2)), abs=1e-4)
