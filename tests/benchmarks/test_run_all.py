"""benchmarks/run_all.py: every command it runs is valid for today's parsers, and RESULTS.md
renders from the committed reports."""
import importlib.util
import os
import shutil

import pytest

from deeplab import bench
from deeplab.launch import cli as launch_cli
from conftest import ROOT



def _run_all():
    spec = importlib.util.spec_from_file_location(
        "run_all", os.path.join(ROOT, "benchmarks", "run_all.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN_ALL = _run_all()


@pytest.mark.parametrize("name", sorted(RUN_ALL.RUNS))
def test_each_command_parses(name):
    _, cmd = RUN_ALL.RUNS[name][:2]
    cmd = [c.format(out="/tmp/x.json", results="/tmp/results") for c in cmd]
    if cmd[1:3] != ["-m", "deeplab.cli"]:  # a script of benchmarks/: it must exist
        script = next(c for c in cmd if c.startswith("benchmarks/"))
        assert os.path.exists(os.path.join(ROOT, script))
        return
    args = cmd[3:]
    if args[0] == "launch":
        launched = launch_cli.parse_args(args[1:])
        args = launched.command
    assert args[0] == "bench"
    parsed = bench.parse_args(args[1:])
    assert os.path.exists(os.path.join(ROOT, parsed.config))
    assert parsed.out == "/tmp/x.json"


def test_results_md_renders_from_the_reports(tmp_path):
    results = os.path.join(ROOT, "benchmarks", "results")
    if not os.path.isdir(results) or not os.listdir(results):
        pytest.skip("no committed benchmark reports")
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    out = tmp_path / "RESULTS.md"
    RUN_ALL.render(str(copy), str(out))
    text = out.read_text()
    assert text.startswith("# Benchmark results")
    for name in RUN_ALL.RUNS:
        if os.path.exists(os.path.join(results, name + ".json")):
            assert "results/%s" % name in text
    # the committed RESULTS.md is what the committed reports render to
    with open(os.path.join(ROOT, "benchmarks", "RESULTS.md")) as f:
        assert f.read() == text


def test_scaling_md_passes_both_latency_reports(monkeypatch):
    """SCALING.md is regenerated with Horovod's and the MPI transport's per-call reports, the
    command recorded in it being the one run here."""
    ran = []
    monkeypatch.setattr(RUN_ALL.subprocess, "check_call", lambda cmd, cwd: ran.append(cmd))
    monkeypatch.setattr(RUN_ALL.os.path, "exists", lambda path: True)
    RUN_ALL.scaling_md()
    cmd = ran[0]
    assert cmd[1] == "benchmarks/scaling_report.py"
    args = dict(zip(cmd[2::2], cmd[3::2]))
    assert args["--collective-latency"] == "benchmarks/results/collective_latency.json"
    assert args["--collective-latency-mpi"] == "benchmarks/results/collective_latency_mpi.json"
