"""The `deeplab` command: options are parsed before MXNet is imported, so `-h` and a bad flag
answer at once."""
import subprocess
import sys

import pytest

from conftest import TINY

PROBE = """
import sys
from deeplab import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as err:
    code = err.code
print("mxnet imported:", "mxnet" in sys.modules, "code:", code)
"""


def probe(*argv):
    """`deeplab ARGV` in a fresh interpreter: (stdout, stderr) and whether MXNet got imported."""
    proc = subprocess.run([sys.executable, "-c", PROBE] + list(argv), capture_output=True,
                          text=True, timeout=120)
    return proc.stdout, proc.stderr


@pytest.mark.parametrize("command, option", [("train", "--resume-if-exists"),
                                             ("eval", "--checkpoint"),
                                             ("predict", "--batch-per-call"),
                                             ("export", "--onnx")])
def test_help_does_not_import_mxnet(command, option):
    out, err = probe(command, "-h")
    assert option in out, out + err
    assert out.strip().endswith("mxnet imported: False code: 0"), out + err


def test_a_bad_flag_is_reported_before_mxnet_is_imported():
    out, err = probe("train", TINY, "--workdir", "w", "--resmue")
    assert "unrecognized arguments: --resmue" in err
    assert out.strip() == "mxnet imported: False code: 2"


def test_a_run_imports_it_after_parsing(tmp_path):
    """The lazy import must not leave the command without its module: a real (failing) run."""
    out, err = probe("eval", TINY, "--checkpoint", str(tmp_path / "none.params"))
    assert "none.params does not exist" in err
    assert out.strip() == "mxnet imported: True code: 2"
