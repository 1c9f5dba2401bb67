"""`deeplab eval`: the results file of a run still going is not overwritten."""
import json
import os
import shutil
import subprocess
import sys

from conftest import TINY, train_tiny
from deeplab import cli


def test_eval_out_onto_a_running_runs_results_is_refused(tmp_path, capsys):
    """Regression: `deeplab eval --out RUN/results.json` overwrote the results of a run still
    going; the run's lock refuses it, as it refuses a second training run."""
    ckpt = train_tiny(tmp_path / "done", 2)
    run = tmp_path / "running"
    run.mkdir()
    results = run / "results.json"
    results.write_text('{"mIoU": 0.5}\n')
    holder = subprocess.Popen(  # the running run: it holds the lock of its directory
        [sys.executable, "-c", "import sys, time; from deeplab.workdir import WorkdirLock; "
         "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)",
         str(run)], stdout=subprocess.PIPE, text=True)
    args = ["eval", TINY, "--checkpoint", ckpt, "--out", str(results), "--quiet", "--set",
            "data.num_workers=0", "data.synthetic.val_size=2"]
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("deeplab eval: error: %s is in use by another run (pid %d on %s); wait "
                       "for it to end or choose another --out"
                       % (run, holder.pid, __import__("socket").gethostname()))
        assert results.read_text() == '{"mIoU": 0.5}\n'
    finally:
        holder.kill()
        holder.wait()
    # The run ended: its directory may take the results, and the lock is not left held.
    assert cli.main(args) == 0
    assert json.loads(results.read_text())["num_images"] == 2
    assert cli.main(args) == 0


def test_checkpoint_may_be_a_run_directory_or_is_named_when_wrong(tmp_path, capsys):
    run = tmp_path / "run"
    final = train_tiny(run, 2)
    base = ["eval", TINY, "--quiet", "--set", "data.num_workers=0", "data.synthetic.val_size=2",
            "--out", str(tmp_path / "r.json"), "--checkpoint"]
    assert cli.main(base + [str(run)]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["checkpoint"] == final
    states = str(run / "checkpoints" / "iter_0000002.states")
    assert cli.main(base + [states]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("deeplab eval: error: --checkpoint %s is a trainer state (optimizer "
                   "momentum, for --resume), not network parameters; expected a .params file "
                   "such as %s" % (states, states[:-len(".states")] + ".params"))
    assert cli.main(base + [final, "--set", "model.num_classes=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "another network" in err and "3 classes" in err and "5 classes" in err
    assert "missing" not in err  # not the list of every parameter that does not fit


def test_eval_out_is_written_with_the_configs_umask(tmp_path):
    """train.umask (default '027') holds for every command that writes, not only train: the
    folders `eval --out` creates are 0750 and its results 0640 under a process umask of 022."""
    ckpt = train_tiny(tmp_path / "run", 2)
    old = os.umask(0o022)
    try:
        out = tmp_path / "shared" / "x" / "results.json"
        assert cli.main(["eval", TINY, "--checkpoint", ckpt, "--out", str(out), "--quiet",
                         "--set", "data.num_workers=0", "data.synthetic.val_size=2"]) == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "shared", tmp_path / "shared" / "x"):
        assert os.stat(path).st_mode & 0o777 == 0o750, path
    assert os.stat(out).st_mode & 0o777 == 0o640


def test_a_lone_params_file_of_another_network_names_both(tmp_path, capsys):
    """final.params copied out of its run (no iter_N.json or config.yaml beside it to read the
    network from) and loaded with a config of another head and class count: the one line
    says what the file holds and what the config builds before the keys that do not fit."""
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(train_tiny(tmp_path / "run", 2), lone / "final.params")
    code = cli.main(["eval", TINY, "--checkpoint", str(lone / "final.params"), "--quiet",
                     "--set", "data.num_workers=0", "data.synthetic.val_size=2",
                     "model.num_classes=3", "model.head=vortex"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "deeplab eval: error: params file %s does not fit DeepLabV3: it holds a network with "
        "backbone tiny_v2, head aspp (16 channels), 5 classes; the config builds backbone "
        "tiny_v2, head vortex (16 channels), 3 classes; " % (lone / "final.params")), err
