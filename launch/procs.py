"""The processes of a job, found through /proc: to signal them, and to leave none behind.

Every process that `deeplab launch` starts carries `JOB_ENV=<job id>` in its environment, and
whatever they start inherits it (horovodrun passes it on to remote workers too), so a job's
processes can be found whatever process group or session they moved to and whoever their parent
is now. Training processes are told apart from their loader processes (forked copies with the
same command line, see deeplab.data.loader) and from horovodrun's helpers, so that a SIGTERM
reaches each training process exactly once: a second one ends it at once, without a checkpoint.

Linux only (/proc); elsewhere nothing is found.
"""
import datetime
import glob
import json
import os
import re
import signal
import sys
import threading
import time
import uuid

from deeplab.errors import EXIT_DIVERGED, EXIT_NETWORK, EXIT_STALLED, EXIT_USER_ERROR

__all__ = ["JOB_ENV", "JOB_GROUP_ENV", "LOADER_NAME", "new_job_id", "environ", "cmdline",
           "stat", "alive",
           "all_pids", "descendants", "on_this_host", "job_processes", "is_training_process",
           "training_processes", "signal_process", "signal_group", "kill_processes",
           "STOP_GRACE", "wait_for_exit", "stop_groups",
           "killed_by_signal", "describe_status", "ROOT_CAUSES", "documented_exit",
           "root_cause",
           "memory_cgroups", "oom_kills", "memory_limit", "OomWatch", "StopSignals",
           "stopped_workers",
           "describe_stopped", "Policy", "Supervisor", "LAUNCHER_ENV", "launcher_token",
           "Lifeline", "local_addresses", "interface_addresses", "stop_when_launcher_asks",
           "stop_when_launcher_lost",
           "launcher_alive", "watch_launcher", "workdir_of", "record_killed"]

JOB_ENV = "DEEPLAB_JOB"
# Every process of a parameter-server job across hosts (`deeplab launch ps -H`), whose nodes
# each have a JOB_ENV of their own: the launcher's job id.
JOB_GROUP_ENV = "DEEPLAB_JOB_GROUP"
LOADER_NAME = "deeplab-loader"  # /proc/PID/comm of a loader process (deeplab.data.loader)
COMMANDS = ("train", "eval", "bench", "predict")  # the subcommands that run a network


def new_job_id():
    """A job id unique on this machine and across hosts."""
    return "%d-%s" % (os.getpid(), uuid.uuid4().hex[:12])


def _read(pid, name, mode="r"):
    try:
        with open("/proc/%d/%s" % (pid, name), mode) as f:
            return f.read()
    except (OSError, ValueError):  # gone, or not ours to read
        return None


def environ(pid):
    """The environment a process started with, or {} if it is gone or unreadable."""
    raw = _read(pid, "environ", "rb")
    if not raw:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def cmdline(pid):
    """A process's argv, or [] if it is gone."""
    raw = _read(pid, "cmdline", "rb")
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


def stat(pid):
    """(state, ppid, pgid, sid, comm) of a process, or None if it is gone."""
    raw = _read(pid, "stat")
    if not raw:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3]), comm


def alive(pid):
    """True if the process exists and is not a zombie."""
    s = stat(pid)
    return s is not None and s[0] not in ("Z", "X")


def all_pids():
    """Every process id in this PID namespace."""
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def descendants(root):
    """Live descendants of `root` (children, their children, ...)."""
    children = {}
    for pid in all_pids():
        s = stat(pid)
        if s is not None and s[0] not in ("Z", "X"):
            children.setdefault(s[1], []).append(pid)
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def on_this_host(pid):
    """True if process `pid` shares this process's network namespace: runs on this host, as
    far as the network can tell (always, outside containers; emulated hosts of
    scripts/cluster.py share the process table but not the network)."""
    try:
        return os.readlink("/proc/%d/ns/net" % pid) == os.readlink("/proc/self/ns/net")
    except OSError:
        return False


def job_processes(job_id, var=JOB_ENV):
    """Live processes (this one excepted) carrying `var`=job_id in their environment."""
    return [pid for pid in all_pids()
            if pid != os.getpid() and alive(pid) and environ(pid).get(var) == job_id]


def _deeplab_command(argv):
    """The deeplab subcommand `argv` runs: `python [OPTIONS] -m deeplab.cli SUB ...` or
    `python [OPTIONS] .../deeplab SUB ...` (the console script); None for anything else, such
    as horovodrun, whose arguments end with a deeplab command line."""
    if not argv:
        return None
    name = os.path.basename(argv[0])
    if name == "deeplab":
        return argv[1] if len(argv) > 1 else None
    if not name.startswith("python"):
        return None
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            ok = i + 2 < len(argv) and argv[i + 1] == "deeplab.cli"
            return argv[i + 2] if ok else None
        if arg in ("-c", "-") or not arg.startswith("-"):  # code or a script: the program
            ok = os.path.basename(arg) == "deeplab" and i + 1 < len(argv)
            return argv[i + 1] if ok else None
        i += 2 if arg in ("-W", "-X") else 1  # options that take a value
    return None


def is_training_process(pid):
    """True for a process running `deeplab train|eval|bench|predict`, not one of its loader
    processes (named LOADER_NAME, or a forked copy whose parent runs the same command line)."""
    s = stat(pid)
    if s is None or s[0] in ("Z", "X") or s[4] == LOADER_NAME:
        return False
    argv = cmdline(pid)
    if _deeplab_command(argv) not in COMMANDS:
        return False
    return cmdline(s[1]) != argv


def training_processes(job_id=None, among=None):
    """Training processes (see is_training_process) of job `job_id` (any job if None), among
    the pids `among` (default: every process)."""
    pids = all_pids() if among is None else among
    return [pid for pid in pids if pid != os.getpid() and is_training_process(pid)
            and (job_id is None or environ(pid).get(JOB_ENV) == job_id)]


def stopped_workers(job_id, rank_of):
    """[(rank, pid)] of the job's training processes on this machine that are stopped (state T:
    SIGSTOP, a debugger) or blocked in the kernel (state D: a dead file system): the likely
    cause when the others report a stall. `rank_of(pid)` gives a process's rank or None."""
    out = []
    for pid in training_processes(job_id):
        s = stat(pid)
        if s and s[0] in ("T", "t", "D"):
            out.append((rank_of(pid), pid, "stopped" if s[0] in ("T", "t") else
                        "blocked in the kernel (state D)"))
    return sorted(out, key=lambda r: (r[0] is None, r[0]))


def describe_stopped(stopped):
    """'worker rank 1 (pid 123) is stopped' lines for `stopped_workers`' result."""
    return ["worker rank %s (pid %d) on this machine is %s: the workers waiting for it stalled"
            % ("?" if rank is None else rank, pid, how) for rank, pid, how in stopped]


def signal_process(pid, sig):
    """Sends `sig` to `pid`; returns False if the process is gone (or not ours)."""
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_group(pgid, sig):
    """Sends `sig` to process group `pgid`, whether or not its leader still runs."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_processes(find, timeout=5.0, poll=0.05):
    """SIGKILLs what `find()` returns until it returns nothing or `timeout` passes; returns the
    pids still found then (processes that a dying parent starts are caught on the next round)."""
    deadline = time.monotonic() + timeout
    while True:
        left = find()
        if not left or time.monotonic() > deadline:
            return left
        for pid in left:
            signal_process(pid, signal.SIGKILL)
        time.sleep(poll)


STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for a process group being stopped


def wait_for_exit(popens, timeout, poll=0.2):
    """Waits up to `timeout` seconds for every Popen in `popens` to exit."""
    popens = list(popens)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in popens):
        time.sleep(poll)


def stop_groups(popens, grace=STOP_GRACE):
    """What a launcher's teardown does to the processes it started (the parameter server's
    nodes, run-local's pods): SIGTERM each Popen's process group, SIGKILL after `grace` seconds.

    Each Popen must lead its own process group (start_new_session). Groups whose leader has
    already exited are killed too: its children (a dead worker's loaders) may still be there.
    """
    popens = list(popens)
    for p in popens:
        if p.poll() is None:
            signal_group(p.pid, signal.SIGTERM)
    wait_for_exit(popens, grace, poll=0.05)
    for p in popens:
        signal_group(p.pid, signal.SIGKILL)
        p.wait()


# Exit statuses with a meaning of their own (deeplab.errors; the CLI's docstring).
_MEANINGS = {EXIT_USER_ERROR: "bad input", EXIT_DIVERGED: "diverged (non-finite loss)",
             EXIT_STALLED: "stalled", EXIT_NETWORK: "lost its network connection"}

# A worker's documented exit, its own one-line reason, is the job's cause over a peer's error
# that followed it (a broken collective: exit code 1; killed or stopped by the launcher). One
# line per code: the code and the start of the one line the worker prints with it (horovodrun
# may stop the worker before its exit status is seen: the line tells). 143 (stopped by
# SIGTERM) is not here: horovodrun's own SIGTERM to the survivors of a failure ends them with
# 143 too, so it says nothing about the cause; nor is 5 (a lost connection): a peer that died
# first breaks its connections too, and its death is the cause.
ROOT_CAUSES = (
    (EXIT_USER_ERROR, r"deeplab \w+: error: "),  # a workdir in use, a full disk, a bad config
    (EXIT_DIVERGED, r"deeplab \w+: training diverged"),
    (EXIT_STALLED, r"deeplab: stalled: "),  # the watchdog of a rank that waited for another
)


def documented_exit(line):
    """The exit code a worker's output `line` announces (ROOT_CAUSES), or None."""
    for code, pattern in ROOT_CAUSES:
        if re.match(pattern, line):
            return code
    return None


def root_cause(failures):
    """Index in `failures` ((rank, status, ...) in the order they were seen) of the failure that
    ended the job: the first with a documented exit (ROOT_CAUSES), else the first."""
    documented = [code for code, _ in ROOT_CAUSES]
    for i, failure in enumerate(failures):
        if failure[1] in documented:
            return i
    return 0


def _signal_of(code):
    """The signal behind an exit status: a Popen return code (negative: killed by that signal)
    or a shell-style status (128 + N: killed by signal N); None for a plain exit."""
    return -code if code < 0 else code - 128 if 128 < code < 160 else None


def killed_by_signal(code):
    """True if exit status `code` means killed by a signal other than SIGTERM."""
    return _signal_of(code) not in (None, signal.SIGTERM)


def describe_status(code, oom=None):
    """Words for a worker's exit status (see _signal_of): stalled, diverged, stopped by
    SIGTERM, killed by SIGKILL, ... With an OomWatch `oom`, a SIGKILL that the out-of-memory
    killer dealt is said so."""
    sig = _signal_of(code)
    if sig == signal.SIGTERM:
        return "stopped by SIGTERM%s" % (" (exit code %d)" % code if code > 0 else "")
    if sig == signal.SIGKILL and oom is not None:
        verdict = oom.verdict()
        if verdict:
            return "%s (signal 9%s)" % (verdict, ", exit code %d" % code if code > 0 else "")
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        return "killed by %s (signal %d%s)" % (name, sig, ", exit code %d" % code
                                               if code > 0 else "")
    if code in _MEANINGS:
        return "%s (exit code %d)" % (_MEANINGS[code], code)
    return "exit code %d" % code


# The out-of-memory killer's counters: per cgroup (v2 memory.events, v1 memory.oom_control:
# "oom_kill N", counting the cgroup and its descendants) and for the machine (/proc/vmstat).
_CGROUP_ROOT = "/sys/fs/cgroup"


def memory_cgroups(pid="self", root=_CGROUP_ROOT):
    """The memory cgroup directories of process `pid`, innermost first up to the mount point
    (cgroup v2, or v1's memory controller), that exist on this machine."""
    try:
        with open("/proc/%s/cgroup" % pid) as f:
            raw = f.read()
    except OSError:
        raw = ""
    out = []
    for line in (raw or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "" and os.path.exists(os.path.join(root, "cgroup.controllers")):
            mount = root  # v2 (unified)
        elif "memory" in controllers.split(","):
            mount = os.path.join(root, "memory")  # v1
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for i in range(len(parts), -1, -1):
            d = os.path.join(mount, *parts[:i])
            if os.path.isdir(d):
                out.append(d)
    return out


def _counter(path, key):
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


def oom_kills(cgroups, vmstat="/proc/vmstat"):
    """{source: out-of-memory kills so far} for each cgroup directory in `cgroups` that counts
    them, and `vmstat` (the machine's)."""
    out = {}
    for d in cgroups:
        for name in ("memory.events", "memory.oom_control"):
            n = _counter(os.path.join(d, name), "oom_kill")
            if n is not None:
                out[d] = n
                break
    n = _counter(vmstat, "oom_kill")
    if n is not None:
        out["/proc/vmstat"] = n
    return out


def memory_limit(cgroup):
    """The memory limit of a cgroup directory in bytes (v2 memory.max, v1
    memory.limit_in_bytes), or None for none."""
    for name in ("memory.max", "memory.limit_in_bytes"):
        try:
            with open(os.path.join(cgroup, name)) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= 1 << 62:  # v1's "none"
            return None
        return int(text)
    return None


class OomWatch:
    """The out-of-memory killer's counters when a job started (of this process's memory
    cgroups, which its workers inherit, and of the machine), to tell later whether a worker's
    SIGKILL came from it."""

    def __init__(self, pid="self", root=_CGROUP_ROOT, vmstat="/proc/vmstat"):
        self.cgroups, self.vmstat = memory_cgroups(pid, root), vmstat
        self.before = oom_kills(self.cgroups, vmstat)

    def verdict(self):
        """'killed by the out-of-memory killer (...)' if a counter rose since the start, else
        None."""
        now = oom_kills(self.cgroups, self.vmstat)
        rose = [src for src, n in now.items() if n > self.before.get(src, n)]
        for d in self.cgroups:  # innermost first: the limit that was hit
            if d in rose:
                limit = memory_limit(d)
                if limit is not None:
                    return "killed by the out-of-memory killer (memory limit %d MiB of cgroup " \
                           "%s)" % (limit >> 20, d)
        where = [d for d in self.cgroups if d in rose]
        if where:
            return "killed by the out-of-memory killer (cgroup %s)" % where[0]
        if rose:  # the machine's counter only: another process may have been its victim
            return "killed by SIGKILL, probably by the out-of-memory killer (it killed a " \
                   "process on this machine meanwhile: /proc/vmstat oom_kill)"
        return None


class StopSignals:
    """Records SIGTERM, SIGINT and SIGHUP instead of dying of them, while in use as a context
    manager.

    `count` is how many arrived, `signum` the first; `first_time` when it arrived (monotonic).
    `hold`: once one arrived, they are ignored after the context instead of restored (the
    process is exiting with the first one's code).
    """

    # SIGHUP: the terminal closed or the ssh session dropped; a stop request like the others
    # (nohup or setsid for a job that must survive its terminal: docs/faults.md).
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, hold=False):
        self.count, self.signum, self.first_time = 0, None, None
        self.hold = hold
        self._previous = {}

    def _handle(self, signum, frame):
        if self.count == 0:
            self.signum, self.first_time = signum, time.monotonic()
        self.count += 1

    def __enter__(self):
        for sig in self.SIGNALS:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # `nohup deeplab launch ...`: asked to outlive the terminal
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        if self.hold and self.count:
            # The process is on its way out with the first signal's code: a Ctrl-C pressed
            # again after the job already ended must not turn that into a traceback or
            # another status. Ignored, not merely counted: the interpreter's finalization
            # puts SIG_DFL back in place of Python handlers (not of SIG_IGN), and a SIGINT
            # landing then would end the process with status -2.
            for sig in self._previous:
                signal.signal(sig, signal.SIG_IGN)
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self):
        """The shell's convention for a process stopped by the first signal."""
        return 128 + self.signum if self.signum else 0


class Policy:
    """What a Supervisor asks of one launcher; the defaults do nothing. Each method gets the
    Supervisor (its `stop` signals, `signalled` pids, `stopping` request, `say`)."""

    def start(self, sup):
        """Starts the job's processes (inside the signal handling)."""

    def targets(self, sup):
        """While stopping: the pids that should each get one SIGTERM (the Supervisor sends it
        once per pid: a second one ends a training process without a checkpoint)."""
        return []

    def while_stopping(self, sup):
        """While stopping, after the SIGTERMs of this round."""

    def check(self, sup, now):
        """The failure test: None to go on, anything else ends the supervision with it as the
        outcome."""
        return None

    def ended(self, sup):
        """True once the job is over."""
        return True

    def grace_over(self, sup):
        """The workers outlived the grace (say so); the job is killed."""

    def finish(self, sup, outcome):
        """After the loop, before the teardown (e.g. let the servers finalize)."""

    def teardown(self, sup):
        """Stops what the launcher started (whatever the outcome)."""

    def leftovers(self):
        """The job's processes still alive (killed until none is left)."""
        return []

    def report(self, sup, outcome):
        """Says what happened; returns the launcher's exit code."""
        return 0


class Supervisor:
    """The one supervision policy of every launcher: the first stop signal (SIGTERM, SIGINT,
    SIGHUP) sends one SIGTERM to each of the policy's targets, a second one kills the job at
    once; the workers get `grace` seconds to stop; the policy's failure test can end it any
    time; whatever happens, the policy's teardown runs and what is left of the job (the
    policy's leftovers, found by the job marker) is killed; then the policy reports.

    Outcomes passed to finish/report: ENDED (the job is over), AGAIN (a second signal), GRACE
    (the grace ran out) or what the policy's check returned.

    `exits`: the caller's process exits with the report's code (every launcher). Once a stop
    signal arrived, stop signals are then ignored after run(), so one that comes after the job
    ended (Ctrl-C twice, the workers already stopped) cannot change the exit status.
    """

    ENDED, AGAIN, GRACE = "ended", "again", "grace"

    def __init__(self, policy, grace, poll=0.1, say=None, workdir=None, exits=True):
        self.policy, self.grace, self.poll, self.workdir = policy, grace, poll, workdir
        self.exits = exits  # the launcher's process exits after run(): StopSignals(hold=True)
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.signalled = set()
        self.stopping = None  # (monotonic time, why) once the job was asked to stop
        self.stop = None  # the StopSignals, while running

    def request_stop(self, why, when=None):
        """Starts the stop (the grace counts from `when`) unless it has started already."""
        if self.stopping is None:
            self.stopping = (time.monotonic() if when is None else when, why)

    def run(self):
        """Supervises the job; returns the policy's report."""
        p = self.policy
        started = time.time()
        with StopSignals(hold=self.exits) as self.stop:
            try:
                p.start(self)
                outcome = self._loop()
                p.finish(self, outcome)
            finally:
                # Whatever happened: nothing of the job outlives the launcher.
                p.teardown(self)
                kill_processes(p.leftovers)
            if outcome == self.AGAIN and self.workdir:
                stopped = time.time() - (time.monotonic() - self.stop.first_time)
                self.say(record_killed(self.workdir, started, stopped,
                                       "%s twice" % signal.Signals(self.stop.signum).name))
            return p.report(self, outcome)

    def _loop(self):
        p, stop = self.policy, self.stop
        while True:
            now = time.monotonic()
            if stop.count > 1:
                self.say("%s again: killing the job" % signal.Signals(stop.signum).name)
                return self.AGAIN
            if stop.count:
                self.request_stop(signal.Signals(stop.signum).name, stop.first_time)
            if self.stopping is not None:
                for pid in p.targets(self):
                    if pid not in self.signalled:
                        self.signalled.add(pid)
                        signal_process(pid, signal.SIGTERM)
                p.while_stopping(self)
            verdict = p.check(self, now)
            if verdict is not None:
                return verdict
            if p.ended(self):
                return self.ENDED
            if self.stopping is not None and now - self.stopping[0] > self.grace:
                p.grace_over(self)
                return self.GRACE
            time.sleep(self.poll)


def workdir_of(deeplab_args):
    """The --workdir of a deeplab command line (`train CONFIG --workdir DIR ...`), or None."""
    args = list(deeplab_args)
    for i, arg in enumerate(args):
        if arg == "--workdir" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--workdir="):
            return arg.split("=", 1)[1]
    return None


def _checkpoints(workdir):
    """{iteration: time written} of the complete checkpoints in WORKDIR/checkpoints (the
    iter_N.json written last marks one complete; deeplab.checkpoint has the rest, but imports
    MXNet, seconds a launcher killing its job should not spend)."""
    out = {}
    for path in glob.glob(os.path.join(workdir, "checkpoints", "iter_*.json")):
        m = re.search(r"iter_(\d+)\.json$", path)
        try:
            out[int(m.group(1))] = os.path.getmtime(path)
        except (AttributeError, OSError):
            pass
    return out


def record_killed(workdir, started, stopped, how):
    """After a job was killed (`how`: "SIGINT twice"): records in WORKDIR/run.json, if this
    job's run left it "running" (written since `started`, a wall-clock time), that the run was
    killed; returns what happened to the checkpoints since `stopped` (the first signal)."""
    path = os.path.join(workdir, "run.json")
    try:
        with open(path) as f:
            info = json.load(f)
        mine = os.path.getmtime(path) >= started - 1
    except (OSError, ValueError):
        info, mine = None, False
    if isinstance(info, dict) and mine and info.get("status") == "running":
        from deeplab.utils import write_json

        info.update(status="killed", ended_by=how, end=datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"))
        write_json(path, info)
    saved = _checkpoints(workdir)
    after = sorted(i for i, t in saved.items() if t >= stopped)
    if after:
        return "%s: killed after the workers saved the checkpoint of iteration %d in %s; " \
               "continue with --resume" % (how, after[-1], workdir)
    return "%s: killed before any checkpoint was saved%s; %s recorded as killed" % (
        how, "; the newest is from iteration %d, before the stop" % max(saved) if saved
        else "", path if mine else "run.json not")


# How the workers notice that their launcher is gone. On the launcher's machine: the launcher's
# pid and start time (a reused pid has another), polled every LAUNCHER_POLL seconds by a thread
# in each process of the job. A parent-death signal would not do: horovodrun, the workers and
# the parameter server's nodes run in sessions of their own and are not the launcher's
# children. The token names the launcher's host, PID and network namespaces: a process
# elsewhere (another host, another pod, an emulated host of scripts/cluster.py) cannot see that
# pid. When the job has processes on other hosts the launcher also opens a lifeline (Lifeline):
# a TCP port whose addresses the token carries, to which each of those processes holds a
# connection. The launcher's death closes it at once (its kernel sends FIN/RST whatever killed
# it); a launcher host that vanishes is found by TCP keep-alive (LIFELINE_KEEPALIVE); and the
# launcher asks them to stop through it (one byte), since its signals do not cross hosts.
LAUNCHER_ENV = "DEEPLAB_LAUNCHER"
LAUNCHER_POLL = 1.0
# (idle s, interval s, probes): the launcher's host silent for ~40 s counts as gone.
LIFELINE_KEEPALIVE = (20, 5, 4)
LIFELINE_CONNECT = 10.0  # seconds to reach the lifeline at start, per address
_STOP = b"S"


def _start_time(pid):
    raw = _read(pid, "stat")
    return raw[raw.rindex(")") + 2:].split()[19] if raw else None  # field 22: starttime


def _where():
    """'HOST/PID-NAMESPACE/NET-NAMESPACE' of this process: where a pid means the same process
    (the network namespace stands for the host where hosts share a kernel)."""
    names = []
    for ns in ("pid", "net"):
        try:
            names.append(os.readlink("/proc/self/ns/" + ns))
        except OSError:
            names.append("?")
    return "/".join([os.uname().nodename] + names)


def _ipv4_address(sock, name):
    """The IPv4 address of interface `name` (SIOCGIFADDR), or None if it has none."""
    import fcntl
    import socket
    import struct

    try:
        raw = fcntl.ioctl(sock.fileno(), 0x8915,  # SIOCGIFADDR
                          struct.pack("256s", name[:15].encode()))
    except OSError:  # no IPv4 address on it, or no such interface
        return None
    return socket.inet_ntoa(raw[20:24])


def local_addresses():
    """This host's IPv4 addresses other than loopback (its interfaces', in the order the kernel
    lists them)."""
    import socket

    out = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            address = _ipv4_address(sock, name)
            if address and not address.startswith("127.") and address not in out:
                out.append(address)
    finally:
        sock.close()
    return out


def interface_addresses(interfaces):
    """The IPv4 addresses of the named interfaces ('eth1' or 'ib0,eth1'), looked up as
    local_addresses does (loopback included: it was named). An interface that does not exist or
    has no IPv4 address is a LaunchError naming it."""
    import socket

    from deeplab.errors import LaunchError

    out = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for name in interfaces.split(","):
            address = _ipv4_address(sock, name)
            if address is None:
                raise LaunchError("--network-interface %s: this host has no interface %r with "
                                  "an IPv4 address" % (interfaces, name))
            if address not in out:
                out.append(address)
    finally:
        sock.close()
    return out


class Lifeline:
    """The launcher's end of the lifeline: a TCP port (a free port on all interfaces, or on the
    addresses of `interfaces`, e.g. --network-interface's) that accepts the job's processes on
    other hosts, reads nothing from them, holds each connection open while the launcher lives,
    and sends one stop byte when asked.

    Its sockets are not inherited by what the launcher starts (Python's default), so only the
    launcher's own death closes them. It carries no data but that byte: a stranger who connects
    learns nothing and can only be told to stop.
    """

    def __init__(self, addresses=None, max_connections=4096, interfaces=None):
        if interfaces:
            # Only there, so that the port is not reachable from networks the user kept the
            # job off (horovodrun's own rendezvous still listens on all: docs/distributed.md).
            self.addresses = interface_addresses(interfaces)
            self.servers = _listen_on(self.addresses)
        else:
            import socket

            self.addresses = list(addresses) if addresses is not None else local_addresses()
            self.servers = [socket.create_server(("0.0.0.0", 0), backlog=128)]
        self.port = self.servers[0].getsockname()[1]
        self.max_connections = max_connections
        self.lock = threading.Lock()
        self.conns = []  # open connections
        self.stopped = False
        for server in self.servers:
            threading.Thread(target=self._accept, args=(server,), name="deeplab-lifeline",
                             daemon=True).start()

    def _accept(self, server):
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed
                return
            with self.lock:
                if len(self.conns) >= self.max_connections:
                    conn.close()
                    continue
                if self.stopped:
                    _send_quietly(conn, _STOP)
                self.conns.append(conn)
            threading.Thread(target=self._watch, args=(conn,), daemon=True).start()

    def _watch(self, conn):
        # The peer sends nothing: recv returns when it closes (its process and every process
        # it forked, which share the socket, have exited).
        try:
            while conn.recv(1024):
                pass
        except OSError:
            pass
        with self.lock:
            if conn in self.conns:
                self.conns.remove(conn)
        conn.close()

    def part(self):
        """What the launcher token carries: 'lifeline=ADDR,ADDR:PORT'."""
        return "lifeline=%s:%d" % (",".join(self.addresses), self.port)

    def open(self):
        """How many processes elsewhere still hold a connection."""
        with self.lock:
            return len(self.conns)

    def stop(self):
        """Asks every connected process (and any that connects later) to stop; returns how many
        were asked now (0 after the first call)."""
        with self.lock:
            if self.stopped:
                return 0
            self.stopped = True
            conns = list(self.conns)
        for conn in conns:
            _send_quietly(conn, _STOP)
        return len(conns)

    def close(self):
        with self.lock:
            conns, self.conns = self.conns, []
        import socket

        for sock in self.servers + conns:
            try:  # shutdown first: it wakes a thread blocked on the socket and sends FIN
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _listen_on(addresses, attempts=20):
    """Listening sockets on `addresses`, all on one free port (the token names one port)."""
    import errno
    import socket

    for _ in range(attempts):
        servers = [socket.create_server((addresses[0], 0), backlog=128)]
        port = servers[0].getsockname()[1]
        try:
            for address in addresses[1:]:
                servers.append(socket.create_server((address, port), backlog=128))
            return servers
        except OSError as err:
            for server in servers:
                server.close()
            if err.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, "no port free on all of %s" % ", ".join(addresses))


def _send_quietly(conn, data):
    try:
        conn.sendall(data)
    except OSError:
        pass


def launcher_token(pid=None, lifeline=None):
    """'PID:STARTTIME:HOST/PID-NS/NET-NS' of this process (or `pid`), then ' ' and the
    `lifeline`'s part if one is given, for LAUNCHER_ENV."""
    pid = os.getpid() if pid is None else pid
    token = "%d:%s:%s" % (pid, _start_time(pid), _where())
    return token + " " + lifeline.part() if lifeline is not None else token


def _lifeline_of(token):
    """([addresses], port) of the token's lifeline, or None."""
    for field in token.split()[1:]:
        if field.startswith("lifeline="):
            addresses, _, port = field[len("lifeline="):].rpartition(":")
            if port.isdigit() and addresses:
                return addresses.split(","), int(port)
    return None


def watchable(token):
    """True if the launcher of `token` runs where this process can see its pid."""
    return token.split()[0].split(":", 2)[2:] == [_where()]


def launcher_alive(token):
    """True while the process `token` (launcher_token) runs (a zombie has ended)."""
    pid, start = token.split()[0].split(":")[:2]
    return pid.isdigit() and alive(int(pid)) and _start_time(int(pid)) == start


def _connect_lifeline(addresses, port):
    """A connected socket to the lifeline (keep-alive on), or None."""
    import socket

    for address in addresses:
        try:
            sock = socket.create_connection((address, port), timeout=LIFELINE_CONNECT)
        except OSError:
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = LIFELINE_KEEPALIVE
        for opt, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval),
                           ("TCP_KEEPCNT", count), ("TCP_USER_TIMEOUT",
                                                    1000 * (idle + interval * count))):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        return sock
    return None


def watch_launcher(on_lost, environ=None, poll=LAUNCHER_POLL, on_stop=None):
    """Calls `on_lost(pid)` from a daemon thread once the launcher named by LAUNCHER_ENV is
    gone, and `on_stop(pid)` if it asks this process to stop through its lifeline; returns the
    thread, or None when there is nothing to watch (no token; a launcher elsewhere without a
    lifeline, or whose lifeline cannot be reached: said in one line).

    Where this process can see the launcher's pid (watchable), the pid is polled every `poll`
    seconds; elsewhere the token's lifeline is watched: its connection closed or silent past
    TCP keep-alive means the launcher is gone.
    """
    token = (os.environ if environ is None else environ).get(LAUNCHER_ENV)
    if not token:
        return None
    pid = int(token.partition(":")[0])
    if watchable(token):
        def watch():
            while launcher_alive(token):
                time.sleep(poll)
            on_lost(pid)
    else:
        lifeline = _lifeline_of(token)
        if lifeline is None:
            return None
        sock = _connect_lifeline(*lifeline)
        if sock is None:
            print("deeplab: cannot reach the launcher's lifeline at %s port %d: this process "
                  "will not notice the launcher's loss (dist.stall_timeout still applies)"
                  % (" or ".join(lifeline[0]), lifeline[1]), file=sys.stderr, flush=True)
            return None

        def watch():
            try:
                while True:
                    data = sock.recv(64)
                    if not data:
                        break
                    if _STOP in data and on_stop is not None:
                        on_stop(pid)
            except OSError:
                pass
            on_lost(pid)

    thread = threading.Thread(target=watch, name="deeplab-launcher-watch", daemon=True)
    thread.start()
    return thread


_told = []  # the watch sends its SIGTERM once: a second one would end the worker at once


def _stop_self_once(text):
    if _told:
        return
    _told.append(text)
    os.kill(os.getpid(), signal.SIGTERM)
    try:  # after: with the launcher gone, nothing may read this any more (EPIPE)
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def stop_when_launcher_lost(pid):
    """A worker's reaction to its launcher's loss: one SIGTERM to itself, the stop request the
    launcher would have sent (finish the step, checkpoint, exit 143)."""
    _stop_self_once("deeplab: the launcher (pid %d) is gone: stopping after the current step, "
                    "with a checkpoint" % pid)


def stop_when_launcher_asks(pid):
    """A worker's reaction to its launcher's stop request through the lifeline (it runs on
    another host, where the launcher's SIGTERM cannot reach it): the same one SIGTERM."""
    _stop_self_once("deeplab: the launcher (pid %d) asks the job to stop: stopping after the "
                    "current step" % pid)


def exit_when_workers_gone(job_id, timeout):
    """A parameter-server server's or scheduler's reaction to its launcher's loss: it serves
    until the job's training processes on this machine have stopped (they need it for their
    last step and checkpoint), at most `timeout` seconds, then exits with 143."""
    def on_lost(pid):
        print("deeplab launch ps: the launcher (pid %d) is gone: this %s exits once the workers "
              "have stopped" % (pid, os.environ.get("DMLC_ROLE", "node")), file=sys.stderr,
              flush=True)
        deadline = time.monotonic() + timeout
        # Workers on other hosts (`deeplab launch ps -H`) cannot be seen from here: ps-lite's
        # own end, once they have finalized, ends this process before the deadline.
        elsewhere = os.environ.get("DEEPLAB_PS_WORKERS_ELSEWHERE") == "1"
        while (elsewhere or training_processes(job_id)) and time.monotonic() < deadline:
            time.sleep(LAUNCHER_POLL)
        os._exit(128 + signal.SIGTERM)
    return on_lost
