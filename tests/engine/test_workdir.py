"""The run directory: foreign files, files in place of directories, a second run, and resumes
that would not continue the checkpoint's run are refused before anything is written."""
import os
import subprocess
import sys

import pytest

from conftest import TINY
from deeplab.config import load_config
from deeplab.errors import CheckpointError, ParamsError, WorkdirError
from deeplab.workdir import (WorkdirLock, check_resume, check_workdir, lock_if_run,
                             replace_run, resolve_checkpoint)


def test_new_and_empty_directories_are_accepted(tmp_path):
    """Accepted without an error and without writing anything (the run creates the directory
    later); so is a run's own directory that saved nothing yet."""
    assert check_workdir(str(tmp_path / "new" / "run"), resume=False) is None
    assert not (tmp_path / "new").exists()
    assert check_workdir(str(tmp_path), resume=False) is None
    assert os.listdir(tmp_path) == []
    (tmp_path / "config.yaml").write_text("model: {}\n")
    (tmp_path / "train.log").write_text("")
    assert check_workdir(str(tmp_path), resume=False) is None
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "train.log"]
    (tmp_path / "final.params").write_bytes(b"")  # a finished run, by contrast, is refused
    with pytest.raises(WorkdirError, match="already holds a run"):
        check_workdir(str(tmp_path), resume=False)


def test_a_file_is_refused(tmp_path):
    f = tmp_path / "run"
    f.write_text("x")
    with pytest.raises(WorkdirError, match="run is a file"):
        check_workdir(str(f), resume=False)


def test_a_directory_of_other_files_is_refused_naming_them(tmp_path):
    (tmp_path / "config.yaml").write_text("mine")
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(WorkdirError, match="not a training run's.*thesis.tex"):
        check_workdir(str(tmp_path), resume=True)


def test_a_finished_run_needs_resume(tmp_path):
    (tmp_path / "final.params").write_bytes(b"x")
    with pytest.raises(WorkdirError, match="already holds a run.*--resume"):
        check_workdir(str(tmp_path), resume=False)
    check_workdir(str(tmp_path), resume=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(WorkdirError, match="not writable|not a writable"):
        check_workdir(str(ro / "run"), resume=False)


def test_a_second_holder_of_the_lock_is_refused_naming_the_first(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from deeplab.workdir import WorkdirLock; "
         "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirError, match=r"in use by another run \(pid %d" % holder.pid):
            WorkdirLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: no stale lock
    WorkdirLock(str(tmp_path)).acquire().release()


@pytest.mark.parametrize("override, key", [
    ("train.batch_size=4", "train.batch_size"),
    ("train.lr=0.5", "train.lr"),
    ("train.seed=3", "train.seed"),
    ("train.freeze_bn=true", "train.freeze_bn"),
    ("model.head=vortex", "model.head"),
    ("data.crop_size=48", "data.crop_size"),
    ("train.iterations=400", "train.iterations"),
])
def test_resume_refuses_changes_to_the_training_unless_allowed(override, key):
    saved = load_config(TINY)
    new = load_config(TINY, [override])
    with pytest.raises(CheckpointError, match="%s.*--allow-config-change" % key):
        check_resume(saved, new, 100)
    assert any(c.startswith(key) for c in check_resume(saved, new, 100, allow_change=True))


def test_resume_accepts_changes_that_do_not_alter_the_training():
    saved = load_config(TINY)
    new = load_config(TINY, ["data.num_workers=0", "train.log_every=5", "dist.backend=horovod",
                             "train.checkpoint_every=7", "data.root=/elsewhere",
                             "eval.flip=true", "dist.stall_timeout=30"])
    assert check_resume(saved, new, 100) == []


def test_resume_never_goes_below_the_checkpoint_iteration():
    saved = load_config(TINY)
    new = load_config(TINY, ["train.iterations=10"])
    for allow in (False, True):
        with pytest.raises(CheckpointError, match="train.iterations is 10.*iteration 20"):
            check_resume(saved, new, 20, allow_change=allow)


def test_replace_run_deletes_an_earlier_demo_run(tmp_path):
    run = tmp_path / "demo"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("final.params", "run.json", ".lock"):
        (run / name).write_text("x")
    (run / "config.yaml").write_text("model:\n  name: deeplabv3_tiny_v2\ndata:\n  name: "
                                     "synthetic\n")  # what the demo's run records
    replace_run(str(run))
    assert not run.exists()
    replace_run(str(run))  # nothing there: nothing to do
    run.mkdir()
    (run / ".lock").write_text("")  # a demo killed before it wrote anything
    replace_run(str(run))
    assert not run.exists()


@pytest.mark.parametrize("config, why", [
    ("data:\n  name: voc\n", "a training run on data.name voc (its config.yaml), not a demo's "
                                "(data.name synthetic)"),
    (None, "a training run without its config.yaml"),
    ("not: [a config", "a training run on data its config.yaml does not name, not a demo's "
                       "(data.name synthetic)"),
])
def test_replace_run_refuses_a_run_that_is_not_the_demos(tmp_path, config, why):
    """Regression: `bash scripts/demo.sh runs/r50-p2` deleted a real training run (a folder of
    run files only); the demo replaces only a run on its synthetic data."""
    run = tmp_path / "r50-p2"
    (run / "checkpoints").mkdir(parents=True)
    (run / "final.params").write_text("days of training")
    if config is not None:
        (run / "config.yaml").write_text(config)
    with pytest.raises(WorkdirError) as err:
        replace_run(str(run))
    assert str(err.value) == ("%s holds %s; not deleting it: the demo replaces only an earlier "
                              "demo's run, choose an empty or new directory" % (run, why))
    assert (run / "final.params").read_text() == "days of training"


def test_replace_run_refuses_a_folder_holding_other_files_and_deletes_nothing(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    (tmp_path / "config.yaml").write_text("mine too")
    with pytest.raises(WorkdirError, match="not a training run's.*thesis.tex.*not deleting"):
        replace_run(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "thesis.tex"]


def test_replace_run_refuses_a_run_still_going(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from deeplab.workdir import WorkdirLock; "
         "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirError, match=r"in use by another run \(pid %d" % holder.pid):
            replace_run(str(tmp_path))
        assert os.listdir(tmp_path) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_lock_if_run_locks_only_run_directories(tmp_path):
    assert lock_if_run(str(tmp_path)) is None
    assert os.listdir(tmp_path) == []  # no lock file left in a folder that is not a run's
    (tmp_path / ".lock").write_text("")
    lock = lock_if_run(str(tmp_path))
    with pytest.raises(WorkdirError, match="in use by another run"):
        WorkdirLock(str(tmp_path)).acquire()
    lock.release()


def _run(tmp_path, final=True, model=None):
    """A finished run's directory as deeplab train leaves it (config.yaml, checkpoints/)."""
    import json

    import yaml

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = load_config(TINY, ["%s=%s" % kv for kv in (model or {}).items()])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    for ext in (".params", ".states"):
        (run / "checkpoints" / ("iter_0000008" + ext)).write_bytes(b"x")
    (run / "checkpoints" / "iter_0000008.json").write_text(json.dumps({"iteration": 8,
                                                                       "config": cfg}))
    if final:
        (run / "final.params").write_bytes(b"x")
    return run


def test_a_run_directory_gives_its_final_params(tmp_path):
    run = _run(tmp_path)
    assert resolve_checkpoint(str(run), load_config(TINY)) == str(run / "final.params")


def test_an_unfinished_run_directory_names_its_parameter_files(tmp_path):
    run = _run(tmp_path, final=False)
    with pytest.raises(ParamsError, match=r"is a directory without final.params.*give one of "
                                          r"its parameter files: .*iter_0000008.params"):
        resolve_checkpoint(str(run), load_config(TINY))


def test_a_states_file_is_named_as_a_trainer_state_with_the_params_to_use(tmp_path):
    run = _run(tmp_path)
    states = run / "checkpoints" / "iter_0000008.states"
    with pytest.raises(ParamsError, match=r"is a trainer state .*not network parameters; "
                                          r"expected a .params file such as .*iter_0000008"
                                          r"\.params"):
        resolve_checkpoint(str(states), load_config(TINY))


@pytest.mark.parametrize("name", ["final.params", "checkpoints/iter_0000008.params"])
def test_a_checkpoint_of_another_network_names_both(tmp_path, name):
    run = _run(tmp_path, model={"model.head": "vortex", "model.num_classes": 7})
    with pytest.raises(ParamsError) as err:
        resolve_checkpoint(str(run / name), load_config(TINY))
    text = str(err.value)
    assert "checkpoint of another network: deeplabv3_tiny_v2 (head vortex, 7 classes" in text
    assert "the config builds deeplabv3_tiny_v2 (head aspp, 5 classes" in text
    # The same network: accepted.
    cfg = load_config(TINY, ["model.head=vortex", "model.num_classes=7"])
    assert resolve_checkpoint(str(run / name), cfg) == str(run / name)
