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
