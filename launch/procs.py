"""The processes of a job, found through /proc: to signal them, and to leave none behind.

Every process that `deeplab launch` starts carries `JOB_ENV=<job id>` in its environment, and
whatever they start inherits it (horovodrun passes it on to remote workers too), so a job's
processes can be found whatever process group or session they moved to and whoever their parent
is now. Training processes are told apart from their loader processes (forked copies with the
same command line, see deeplab.data.loader) and from horovodrun's helpers, so that a SIGTERM
reaches each training process exactly once: a second one ends it at once, without a checkpoint.

Linux only (/proc); elsewhere nothing is found.
"""
import os
import signal
import time
import uuid

from deeplab.errors import EXIT_DIVERGED, EXIT_STALLED, EXIT_USER_ERROR

__all__ = ["JOB_ENV", "LOADER_NAME", "new_job_id", "environ", "cmdline", "stat", "alive",
           "all_pids", "descendants", "on_this_host", "job_processes", "is_training_process",
           "training_processes", "signal_process", "signal_group", "kill_processes",
           "killed_by_signal", "describe_status", "StopSignals", "stopped_workers",
           "describe_stopped"]

JOB_ENV = "DEEPLAB_JOB"
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


# Exit statuses with a meaning of their own.
_MEANINGS = {EXIT_USER_ERROR: "bad input", EXIT_DIVERGED: "diverged (non-finite loss)",
             EXIT_STALLED: "stalled"}


def _signal_of(code):
    """The signal behind an exit status: a Popen return code (negative: killed by that signal)
    or a shell-style status (128 + N: killed by signal N); None for a plain exit."""
    return -code if code < 0 else code - 128 if 128 < code < 160 else None


def killed_by_signal(code):
    """True if exit status `code` means killed by a signal other than SIGTERM."""
    return _signal_of(code) not in (None, signal.SIGTERM)


def describe_status(code):
    """Words for a worker's exit status (see _signal_of): stalled, diverged, stopped by
    SIGTERM, killed by SIGKILL, ..."""
    sig = _signal_of(code)
    if sig == signal.SIGTERM:
        return "stopped by SIGTERM%s" % (" (exit code %d)" % code if code > 0 else "")
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


class StopSignals:
    """Records SIGTERM and SIGINT instead of dying of them, while in use as a context manager.

    `count` is how many arrived, `signum` the first; `first_time` when it arrived (monotonic).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.count, self.signum, self.first_time = 0, None, None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.count == 0:
            self.signum, self.first_time = signum, time.monotonic()
        self.count += 1

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self):
        """The shell's convention for a process stopped by the first signal."""
        return 128 + self.signum if self.signum else 0
