"""The stall watchdog ends a process whose main thread stops making progress, and only then.

Each case is a Python process of its own (the watchdog ends the process it watches) whose main
thread sleeps where a stalled worker would be blocked in a collective; all cases run at once to
keep the test short. Times are measured from the watchdog's creation to the process's exit.
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from deeplab.dist import EXIT_STALLED

WHERE = "(rank 0 of 1, backend local); the process hung or was stopped"

CASES = {
    # A beat replaces the long first limit by the timeout.
    "stalled": """
        wd = Watchdog(1, first_timeout=30)
        wd.beat("iteration 3")
        time.sleep(60)
    """,
    "beats": """
        with Watchdog(1) as wd:
            for i in range(6):
                time.sleep(0.4)
                wd.beat("iteration %d" % i)
        time.sleep(1.5)  # stopped: no limit any more
        print("finished")
    """,
    # 1.5 s before the first beat, 2 s in a block: both allowed; then the timeout again.
    "extended": """
        wd = Watchdog(1, first_timeout=2)
        time.sleep(1.5)
        wd.beat("iteration 1")
        with wd.extend(3, "evaluation"):
            time.sleep(2)
        time.sleep(60)
    """,
    "stalled_in_block": """
        wd = Watchdog(1, exit_code=9)
        wd.beat("iteration 7")
        with wd.extend(1.5, "evaluation"):
            time.sleep(60)
    """,
    "disabled": """
        import threading
        wd = Watchdog(0)
        wd.beat("iteration 1")
        with wd.extend(0.5, "evaluation"):
            time.sleep(1)
        time.sleep(1.5)
        print("finished", wd.enabled, [t.name for t in threading.enumerate()])
    """,
}

PRELUDE = """\
import time
from deeplab.dist import Watchdog
print(time.monotonic(), flush=True)
"""


@pytest.fixture(scope="module")
def runs():
    """{case: (exit code, stdout after the start time, stderr, seconds from start to exit)}"""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HOROVOD_", "DMLC_", "DEEPLAB_DIST"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    procs = {name: subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
             for name, code in CASES.items()}
    ended, deadline = {}, time.monotonic() + 90
    try:
        while len(ended) < len(procs) and time.monotonic() < deadline:
            for name, p in procs.items():
                if name not in ended and p.poll() is not None:
                    ended[name] = time.monotonic()  # CLOCK_MONOTONIC: the children's clock too
            time.sleep(0.02)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate()
        assert name in ended, "%s did not end:\n%s" % (name, stderr[-3000:])
        start, _, rest = stdout.partition("\n")
        out[name] = (p.returncode, rest, stderr, ended[name] - float(start))
    return out


def stall_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("deeplab: stalled")]


def test_no_beat_within_the_timeout_ends_the_process_with_one_line(runs):
    code, _, stderr, seconds = runs["stalled"]
    assert code == EXIT_STALLED, stderr
    assert stall_lines(stderr) == [
        "deeplab: stalled: no progress for 1 s after iteration 3 " + WHERE]
    assert stderr.rstrip().endswith(WHERE)
    assert 1.0 <= seconds < 6.0


def test_beats_keep_the_process_alive_and_stop_ends_the_watch(runs):
    code, stdout, stderr, seconds = runs["beats"]
    assert code == 0 and stdout == "finished\n", stderr
    assert not stall_lines(stderr) and seconds >= 3.9


def test_first_timeout_and_extend_allow_longer(runs):
    code, _, stderr, seconds = runs["extended"]
    assert code == EXIT_STALLED, stderr
    # The block's end counts as a beat: the timeout runs from there.
    assert stall_lines(stderr) == [
        "deeplab: stalled: no progress for 1 s after evaluation " + WHERE]
    assert 4.5 <= seconds < 9.5


def test_a_stall_inside_an_extended_block_names_it(runs):
    code, _, stderr, seconds = runs["stalled_in_block"]
    assert code == 9, stderr
    assert stall_lines(stderr) == [
        "deeplab: stalled: no progress for 1.5 s in evaluation after iteration 7 " + WHERE]
    assert 1.5 <= seconds < 6.5


def test_timeout_0_disables_it(runs):
    code, stdout, stderr, _ = runs["disabled"]
    assert code == 0 and stdout.startswith("finished False ["), stderr
    assert "deeplab-watchdog" not in stdout and not stall_lines(stderr)


# `deeplab eval` under one watchdog, as `deeplab train`: start-up, the evaluation (its gathers
# included) and the backend's shutdown, each a phase named in the line. Each case blocks one of
# them for good (the stand-in of a stopped peer or parameter-server scheduler), at
# dist.stall_timeout=1 (4 s for start-up and per image of the evaluation).
EVAL_CASES = {
    "start-up": "dist.init = lambda *a, **kw: time.sleep(60)",
    "gather": """
        gather = dist.gather_rows
        dist.gather_rows = lambda row, name=None: time.sleep(60) if name == "eval.shapes" \\
            else gather(row, name)
    """,
    "shutdown": "dist.comm.shutdown = lambda: time.sleep(60)",  # what dist.watched_command calls
}

EVAL_PRELUDE = """\
import sys, time
import mxnet as mx
from deeplab import dist, evaluate
from deeplab.build import evaluation_network
from deeplab.config import load_config
tiny, params, out = sys.argv[1:4]
evaluation_network(load_config(tiny), mx.cpu(), seed=0).save_parameters(params)
"""

EVAL_RUN = """
print(time.monotonic(), flush=True)
evaluate.main(evaluate.parse_args([tiny, "--checkpoint", params, "--out", out, "--quiet",
                                   "--set", "dist.stall_timeout=1", "data.num_workers=0",
                                   "data.synthetic.val_size=2"]))
print("finished")
"""


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory):
    """{case: (exit code, stdout after the start time, stderr, seconds from start to exit,
    whether the results were written)}"""
    from conftest import TINY

    tmp = tmp_path_factory.mktemp("eval")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HOROVOD_", "DMLC_", "DEEPLAB_DIST"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    procs = {name: subprocess.Popen(
        [sys.executable, "-c", EVAL_PRELUDE + textwrap.dedent(code) + EVAL_RUN, TINY,
         str(tmp / ("%s.params" % name)), str(tmp / ("%s.json" % name))],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, code in EVAL_CASES.items()}
    out = {}
    for name, p in procs.items():
        try:
            stdout, stderr = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        ended = time.monotonic()  # the cases are awaited in turn: an upper bound for the later
        start, _, rest = stdout.partition("\n")
        assert start, "%s did not start:\n%s" % (name, stderr[-3000:])
        out[name] = (p.returncode, rest, stderr, ended - float(start),
                     (tmp / ("%s.json" % name)).exists())
    return out


@pytest.mark.parametrize("case, line, results", [
    ("start-up", "no progress for 4 s in start-up after start-up", False),
    ("gather", "no progress for 4 s in the evaluation after evaluation image 2 of 2", False),
    ("shutdown", "no progress for 1 s in the local backend's shutdown after the evaluation",
     True),
])
def test_every_phase_of_deeplab_eval_is_watched(eval_runs, case, line, results):
    """A stalled start-up (the backend's rendezvous), a stalled gather after the images (the
    shapes each worker compiled) and a stalled shutdown of the backend (ps-lite's last barrier,
    run at exit before, unwatched) each end `deeplab eval` with the stall's line naming the
    phase, exit 4; the results are written only when the evaluation is complete."""
    code, stdout, stderr, seconds = eval_runs[case][:4]
    assert code == EXIT_STALLED, stderr[-3000:]
    assert stall_lines(stderr) == ["deeplab: stalled: %s %s" % (line, WHERE)], stderr[-3000:]
    assert "finished" not in stdout
    assert eval_runs[case][4] == results
    limit = 1 if case == "shutdown" else 4
    assert limit <= seconds < limit + 30, seconds
