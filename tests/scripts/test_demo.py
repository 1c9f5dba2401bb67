"""scripts/demo.sh DIR: it replaces an earlier demo run in DIR, never a folder holding anything
else (a real training run included)."""
import os
import subprocess
import sys

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
