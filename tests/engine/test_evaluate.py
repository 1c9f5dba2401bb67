"""`deeplab eval`: the results file of a run still going is not overwritten."""
import json
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
