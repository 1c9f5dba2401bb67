"""The code runs on Python 3.10 (NVIDIA's NGC MXNet containers, for Hopper GPUs) as well as on
3.11 (the official wheels here): checked statically, since only 3.11 is installed."""
import os
import subprocess
import sys

from conftest import ROOT

PACKAGES = ["engine", "model", "data", "dist", "launch", "k8s", "bench", "scripts", "benchmarks"]


def test_no_syntax_or_library_use_newer_than_python_3_10():
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    proc = subprocess.run([vermin, "--target=3.10-", "--violations", "--no-tips",
                           "--eval-annotations", *PACKAGES], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_3_11_only_construct_is_caught(tmp_path):
    """The check itself can fail: `except*` is Python 3.11 syntax."""
    bad = tmp_path / "new.py"
    bad.write_text("try:\n    pass\nexcept* ValueError:\n    pass\n")
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    proc = subprocess.run([vermin, "--target=3.10-", "--violations", "--no-tips", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
