"""launch/procs.py's Supervisor driven by a scripted Policy, in this process: the policy's
targets are made-up pids and `procs.signal_process` is replaced by a recorder, so nothing is
started or signalled but this test's own process, which receives the stop signals (SIGTERM,
SIGINT) the Supervisor handles while it runs. Marked `unit` by hand: the tier rule marks every
test that names deeplab.launch `multiproc`, and this one starts no process. The launchers'
policies with real processes: tests/launch/test_supervise.py and test_faults.py."""
import signal
import time

import pytest

from deeplab.launch import procs

pytestmark = pytest.mark.unit


@pytest.fixture
def sent(monkeypatch):
    """[(pid, signal)] the Supervisor sends, in order (none reaches a process)."""
    out = []

    def record(pid, sig):
        out.append((pid, sig))
        return True
    monkeypatch.setattr(procs, "signal_process", record)
    return out


class Scripted(procs.Policy):
    """A policy whose rounds are scripted. Round r is the r-th call of `check`, which runs
    `script[r](sup)` if there is one and returns its result (None: go on). `targets(round)`
    gives the pids to stop; the job ends once `ends_at` rounds have run (never if None);
    `left` are the job's processes left after the teardown, until the Supervisor kills them.
    Every call is recorded in `calls`."""

    def __init__(self, sent, script=None, targets=lambda rounds: [], ends_at=None, left=()):
        self.sent, self.script, self._targets = sent, script or {}, targets
        self.ends_at, self.left = ends_at, list(left)
        self.rounds, self.calls = 0, []

    def start(self, sup):
        self.calls.append("start")

    def targets(self, sup):
        return self._targets(self.rounds)

    def check(self, sup, now):
        self.rounds += 1
        action = self.script.get(self.rounds)
        return action(sup) if action else None

    def ended(self, sup):
        return self.ends_at is not None and self.rounds >= self.ends_at

    def grace_over(self, sup):
        self.calls.append("grace_over")

    def finish(self, sup, outcome):
        self.calls.append(("finish", outcome))

    def teardown(self, sup):
        self.calls.append("teardown")

    def leftovers(self):
        self.calls.append("leftovers")
        killed = {pid for pid, sig in self.sent if sig == signal.SIGKILL}
        return [pid for pid in self.left if pid not in killed]

    def report(self, sup, outcome):
        self.calls.append(("report", outcome))
        return outcome


def stop_signal(sig):
    """A script step: `sig` to this process (as a job scheduler or Ctrl-C would send it)."""
    def send(sup):
        signal.raise_signal(sig)
    return send


def supervise(policy, grace=30.0):
    said = []
    # exits=False: this test's process goes on after the run, with its own handlers back.
    outcome = procs.Supervisor(policy, grace, poll=0.01, say=said.append, exits=False).run()
    return outcome, said


def after_loop(calls):
    """The calls from the loop's end on: finish, teardown, leftovers (one or more), report."""
    return [c for c in calls if c not in ("start", "grace_over")]


def test_a_stop_signal_sends_each_target_one_sigterm_and_waits_for_the_end(sent):
    # 103 appears once the stop has begun (a process the job started meanwhile).
    policy = Scripted(sent, {1: stop_signal(signal.SIGTERM)},
                      targets=lambda rounds: [101, 102] + ([103] if rounds >= 3 else []),
                      ends_at=8)
    handler = signal.getsignal(signal.SIGTERM)
    outcome, said = supervise(policy)
    assert outcome == procs.Supervisor.ENDED
    assert sent == [(101, signal.SIGTERM), (102, signal.SIGTERM), (103, signal.SIGTERM)]
    assert policy.calls == ["start", ("finish", "ended"), "teardown", "leftovers",
                            ("report", "ended")]
    assert said == []
    assert signal.getsignal(signal.SIGTERM) == handler  # restored after the run


def test_a_second_stop_signal_kills_the_job_at_once(sent):
    policy = Scripted(sent, {1: stop_signal(signal.SIGINT), 3: stop_signal(signal.SIGINT)},
                      targets=lambda rounds: [101], left=[201, 202])
    outcome, said = supervise(policy)
    assert outcome == procs.Supervisor.AGAIN
    assert said == ["SIGINT again: killing the job"]
    assert sent[0] == (101, signal.SIGTERM)  # once, though it was a target every round
    assert sorted(sent[1:]) == [(201, signal.SIGKILL), (202, signal.SIGKILL)]
    assert policy.rounds == 3  # no round after the second signal
    calls = after_loop(policy.calls)
    assert calls[:2] == [("finish", "again"), "teardown"] and calls[-1] == ("report", "again")
    assert set(calls[2:-1]) == {"leftovers"}


def test_workers_that_outlive_the_grace_are_killed(sent):
    def ask(sup):
        sup.request_stop("asked")  # as a launcher does when a worker stops by itself
    policy = Scripted(sent, {1: ask}, targets=lambda rounds: [101, 102], left=[101, 102])
    t0 = time.monotonic()
    outcome, said = supervise(policy, grace=0.3)
    assert outcome == procs.Supervisor.GRACE
    assert time.monotonic() - t0 >= 0.3
    assert policy.rounds > 3  # the targets were asked every round, signalled once
    assert sent[:2] == [(101, signal.SIGTERM), (102, signal.SIGTERM)]
    assert sorted(sent[2:]) == [(101, signal.SIGKILL), (102, signal.SIGKILL)]
    assert "grace_over" in policy.calls
    assert after_loop(policy.calls)[0] == ("finish", "grace")


def test_the_policys_check_ends_the_loop_with_its_verdict(sent):
    policy = Scripted(sent, {3: lambda sup: ("failed", 7)}, targets=lambda rounds: [101])
    outcome, said = supervise(policy)
    assert outcome == ("failed", 7)  # what report returned
    assert sent == []  # no stop was asked: the targets are not signalled
    assert policy.calls == ["start", ("finish", ("failed", 7)), "teardown", "leftovers",
                            ("report", ("failed", 7))]


@pytest.mark.parametrize("where", ["start", "check"])
def test_teardown_and_leftovers_run_whatever_happens(sent, where):
    def fail(sup=None):
        raise RuntimeError("the policy broke")
    policy = Scripted(sent, {2: fail}, left=[301])
    if where == "start":
        policy.start = fail
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="the policy broke"):
        supervise(policy)
    assert policy.calls[-2:] == ["leftovers", "leftovers"] and "teardown" in policy.calls
    assert sent == [(301, signal.SIGKILL)]
    assert not any(isinstance(c, tuple) for c in policy.calls)  # neither finish nor report
    assert signal.getsignal(signal.SIGTERM) == handler
