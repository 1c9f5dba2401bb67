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


# k8s validate has no options.
HELP_COMMANDS = [("train",), ("eval",), ("predict",), ("export",), ("plot",), ("bench",),
                 ("fetch", "backbone"), ("fetch", "voc"), ("fetch", "cityscapes"), ("doctor",),
                 ("check-data",), ("launch", "horovod"), ("launch", "ps"), ("k8s", "render"),
                 ("k8s", "run-local")]
# What `deeplab -h` (cli.USAGE) leaves to the subcommand's own -h, saying so.
USAGE_DEFERS = {("k8s", "render"): "(deeplab k8s render -h)"}


def _flags(help_text):
    """The first spelling of each option in an argparse help (aliases after it are older
    spellings), -h excluded."""
    flags = []
    for line in help_text.splitlines():
        words = line.strip().split(", ")
        if line.startswith("  -") and not words[0].startswith("-h"):
            flags.append(words[0].split()[0].split("=")[0])
    return flags


def _readme_usage():
    """{subcommand: text of its entries} from README.md's usage block."""
    import os

    from conftest import ROOT

    text = open(os.path.join(ROOT, "README.md")).read()
    block = text[text.index("## Command line"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    entries, current = {}, None
    for line in block.splitlines():
        if line.startswith("deeplab "):
            for part in line.replace(" | deeplab ", " |\0deeplab ").split("\0"):
                current = part.split()[1]
                entries[current] = entries.get(current, "") + " " + part
        elif current:
            entries[current] += " " + line
    return entries


def _cli_usage():
    """{subcommand: text of its entries} from `deeplab -h` (cli.USAGE): an entry starts two
    spaces in, its continuation lines further in."""
    from deeplab import cli

    block = cli.USAGE.split("\n\n")[1]
    entries, current = {}, None
    for line in block.splitlines():
        if line.startswith("  ") and line[2] not in " |":
            current = line.split()[0]
        entries[current] = entries.get(current, "") + " " + line
    return entries


@pytest.mark.parametrize("where", ["README", "USAGE"])
@pytest.mark.parametrize("command", HELP_COMMANDS, ids=" ".join)
def test_usage_lists_every_flag(command, where, capsys):
    """README.md's usage block and `deeplab -h` (cli.USAGE) list every option of every
    subcommand's -h."""
    from deeplab import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(list(command) + ["-h"])
    assert exit_.value.code in (0, None)
    flags = _flags(capsys.readouterr().out)
    assert flags, "no options found in %s -h" % " ".join(command)
    usage = (_readme_usage() if where == "README" else _cli_usage())[command[0]]
    if where == "USAGE" and command in USAGE_DEFERS:
        assert USAGE_DEFERS[command] in usage
        return
    missing = [f for f in flags if f not in usage.replace("[", " ").replace("]", " ").split()
               and f + "=" not in usage]
    assert not missing, "%s's usage of deeplab %s lacks %s" % (where, " ".join(command),
                                                               missing)
