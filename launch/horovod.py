"""`deeplab launch horovod`: runs a `deeplab` subcommand on every worker through `horovodrun`,
and supervises the job.

It builds the horovodrun command line (Gloo controller unless --mpi; timeouts raised for slow
machines; this Python and package on every host), sets the workers' backend and a job id
(procs.JOB_ENV) in their environment, and then:
- passes the output through and, after a failure, names the rank that failed first with its
  exit status (stalled, diverged, killed by a signal, ...) and repeats what Horovod said about
  missing ranks; horovodrun's own traceback about it is left out;
- bounds a failure: if horovodrun has not stopped the job FAILURE_GRACE seconds after the first
  worker failed, everything of the job is killed;
- on SIGTERM, SIGINT or SIGHUP, sends one SIGTERM to each training process of the job on this
  machine (they stop after the same step and rank 0 saves a checkpoint; see deeplab.train),
  waits up to --grace seconds for them, kills what is left and exits with 128 + the signal.
  horovodrun is not asked to do it (it gives its workers 5 s, then SIGKILL), and it is paused
  meanwhile, since it would SIGTERM the other workers again as soon as the first one exits.
  Workers on other hosts are asked through the launcher's lifeline (procs.Lifeline: each
  holds a TCP connection to it and sends itself the SIGTERM), and horovodrun stays paused until
  they have closed it (on Kubernetes, each worker pod's PID 1 also stops its own; see
  deeplab.k8s.entrypoint); a SIGTERM to any one worker stops them all anyway.
- across hosts (-H, --hostfile): names the host of the failed rank, a host horovodrun's ssh
  check could not reach, and after a stall the hosts that no longer answer over ssh.
Nothing of the job is left running when it returns: horovodrun runs in a session of its own,
every process carrying the job id on this machine is killed at the end, and after a failure the
same is done on every other host of the job over ssh (horovodrun's remote workers do not die
with its ssh clients; a host that does not answer is left to the workers' stall watchdog). If
the launcher itself is killed, each worker notices (within a second on this machine, at once
through the lifeline elsewhere) and stops with a checkpoint (procs.watch_launcher). "This
machine" is this network namespace (procs.on_this_host), so emulated hosts sharing one process
table (scripts/cluster.py) behave as separate machines.
The supervision itself is procs.Supervisor's; this module adds horovodrun's part.

With --mpi the job runs under MPICH's `mpirun` (Hydra, from the environment's `mpich` package)
instead: horovodrun 0.28 refuses MPICH 4. Each rank is `python -m deeplab.launch.mpi_rank`,
which runs the worker and prints its output and exit status the way horovodrun does, so the same
supervision, reports and exit codes apply (_MpirunJob).
"""
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

from deeplab.errors import EXIT_STALLED, LaunchError

from . import hosts as hosts_
from . import procs

__all__ = ["horovod_command", "mpirun_command", "mpi_env", "worker_env", "check_hosts",
           "rank_hosts", "run", "supervise", "FAILURE_GRACE", "MPI_ENV"]

FAILURE_GRACE = 20.0  # seconds horovodrun gets to stop the others after a worker failed
# Gloo's timeout for a collective. Above the workers' own stall watchdog (dist.stall_timeout,
# 600 s by default, 4x for the first step and evaluation), so that a stopped or hung worker is
# reported by the watchdog's line, not by Gloo's error on whichever rank waited for it.
GLOO_TIMEOUT = 3600

_FAILED = re.compile(r"^Process (\d+) exit with status code (-?\d+)\.?\s*$")
# horovodrun's prefix on each line a worker prints: "[rank]<stdout>:" or "[rank]<stderr>:".
_PREFIXED = re.compile(r"^(?:.*?)\[(\d+)\]<(stdout|stderr)>:(.*)$", re.S)
_HOROVOD_FAILED = "Horovod detected that one or more processes exited with non-zero status"
# horovodrun's check that every remote host answers over ssh, and its verdict.
_SSH_CHECK = re.compile(r"^ssh not successful for host (\S+?):?\s*$")
_SSH_FAILED = "could not connect to some hosts via ssh"


def check_hosts(np, hosts=None, hostfile=None):
    """Raises LaunchError if the hosts cannot hold `np` workers or the hostfile is missing."""
    if hostfile:
        if not os.path.isfile(hostfile):
            raise LaunchError("--hostfile %s does not exist" % hostfile)
        return
    slots = sum(hosts_.slots(hosts).values()) if hosts else np
    if slots < np:
        raise LaunchError("-np %d needs %d slots, but -H %s gives %d" % (np, np, hosts, slots))


def rank_hosts(np, hosts=None, hostfile=None):
    """[host of rank 0, host of rank 1, ...] as horovodrun places the ranks (Horovod's own
    assignment: each host's slots in turn), or None if Horovod cannot read the hosts (then
    horovodrun itself says why)."""
    from horovod.runner.common.util import hosts as hvd_hosts

    try:
        spec = hvd_hosts.parse_host_files(hostfile) if hostfile else \
            ",".join("%s:%d" % hs for hs in hosts_.slots(hosts or "localhost:%d" % np).items())
        return [slot.hostname for slot in hvd_hosts.get_host_assignments(
            hvd_hosts.parse_hosts(spec), np, np)]
    except (OSError, ValueError, IndexError):
        return None


def _horovodrun(python):
    beside = os.path.join(os.path.dirname(python), "horovodrun")
    return beside if os.path.exists(beside) else "horovodrun"


def horovod_command(np, deeplab_args, hosts=None, hostfile=None, mpi=False, start_timeout=120,
                    python=None, timeline=None, autotune=None, extra=(), network_interface=None):
    """The horovodrun command line that runs `deeplab DEEPLAB_ARGS` on `np` workers.

    Args:
        network_interface: the interfaces (comma-separated) the workers' Gloo or MPI traffic
            and horovodrun's driver address use (--network-interface); default: horovodrun's
            choice among the interfaces every host can reach each other on. horovodrun's
            rendezvous server binds every interface whatever it is told (horovod.runner.util.
            network.find_port binds ''), so the docs say to firewall it.
        timeline: Horovod timeline file (--timeline-filename; Chrome trace of every collective).
        autotune: True, or a log file, for Horovod's autotuner (--autotune [--autotune-log-file]).
        extra: other horovodrun arguments, passed as given.
    """
    python = python or sys.executable
    cmd = [_horovodrun(python), "-np", str(np), "--start-timeout", str(start_timeout)]
    if hostfile:
        cmd += ["--hostfile", hostfile]
    else:
        cmd += ["-H", hosts or "localhost:%d" % np]
    if mpi:
        cmd += ["--mpi"]
    else:
        cmd += ["--gloo", "--gloo-timeout-seconds", str(max(start_timeout, GLOO_TIMEOUT))]
    if network_interface:
        cmd += ["--network-interface", network_interface]
    if timeline:
        cmd += ["--timeline-filename", timeline]
    if autotune:
        cmd += ["--autotune"] + (["--autotune-log-file", autotune] if autotune is not True
                                  else [])
    return cmd + list(extra) + [python, "-m", "deeplab.cli"] + list(deeplab_args)


def _mpirun(python):
    beside = os.path.join(os.path.dirname(python), "mpirun")
    return beside if os.path.exists(beside) else "mpirun"


def mpi_flavour(mpirun):
    """("mpich", None) for MPICH's Hydra, ("openmpi", MAJOR) for Open MPI (NGC's image, HPC-X),
    from `mpirun --version`; LaunchError for anything else."""
    try:
        out = subprocess.run([mpirun, "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, encoding="utf-8", errors="replace",
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LaunchError("cannot run %s --version: %s" % (mpirun, err)) from err
    m = re.search(r"\(Open MPI\) (\d+)\.", out) or re.search(r"Open MPI v?(\d+)\.", out)
    if m:
        return "openmpi", int(m.group(1))
    if "HYDRA" in out or "MPICH" in out:
        return "mpich", None
    raise LaunchError("%s is neither MPICH's (Hydra) nor Open MPI's mpirun: %s" % (
        mpirun, " ".join(out.split())[:200] or "it printed no version"))


def _hostfile_slots(path):
    """{host: slots} of a hostfile: horovodrun's and Open MPI's 'host slots=N' lines or MPICH's
    'host:N' (as the MPI Operator writes it for mpiImplementation MPICH); '#' comments."""
    out = {}
    with open(path) as f:
        for line in f:
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            host, _, n = words[0].partition(":")
            n = n or next((w.split("=", 1)[1] for w in words[1:] if w.startswith("slots=")), "1")
            out[host] = int(n)
    return out


# Variables Open MPI's mpirun does not pass to the ranks it starts over ssh (-x is its way;
# Hydra passes the whole environment). horovodrun does the same: every variable it can export.
_NOT_EXPORTED = re.compile(r"^(BASH_FUNC_.*|OLDPWD|PWD|SHLVL|_|HOSTNAME|OMPI_.*|PMIX_.*|PRTE_.*)$")


def mpirun_command(np, deeplab_args, hosts=None, hostfile=None, python=None, extra=(),
                   network_interface=None, flavour=("mpich", None), env=None):
    """The mpirun command line that runs `deeplab DEEPLAB_ARGS` on `np` workers, each through
    `deeplab.launch.mpi_rank`, for MPICH's Hydra or (`flavour` ("openmpi", MAJOR)) Open MPI.
    Hosts as for horovod_command (-H host:slots,... or a horovodrun hostfile); ranks fill each
    host's slots in turn. For Open MPI, `env` names the variables passed on with -x.
    `network_interface` becomes Hydra's -iface, which takes one interface (the first), or Open
    MPI's btl/oob_tcp_if_include, which take the list.

    Open MPI by default ends every rank as soon as one exits with a non-zero code; Hydra only
    when one dies of a signal. A worker stopped by SIGTERM exits with 143 while rank 0 may still
    be finishing the same stop, so Open MPI is told to let the others be (4.x: ORTE's
    orte_abort_on_non_zero_status, 5.x: PRRTE's state_base_error_non_zero_exit); a rank killed
    by a signal still ends the job at once, as under Hydra."""
    python = python or sys.executable
    kind, major = flavour
    cmd = [_mpirun(python), "-np", str(np)]
    slots = _hostfile_slots(hostfile) if hostfile else hosts_.slots(hosts) if hosts else None
    if kind == "openmpi":
        slots = slots or {"localhost": np}
        cmd += ["--host", ",".join("%s:%d" % hs for hs in slots.items()),
                "--bind-to", "none", "--map-by", "slot"]
        if os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
        cmd += (["--prtemca", "state_base_error_non_zero_exit", "0"] if (major or 5) >= 5
                else ["--mca", "orte_abort_on_non_zero_status", "0"])
        if network_interface:
            for key in ("btl_tcp_if_include", "oob_tcp_if_include"):
                cmd += ["--prtemca" if key.startswith("oob") and (major or 5) >= 5 else "--mca",
                        key, network_interface]
        for name in sorted(env or ()):
            if not _NOT_EXPORTED.match(name):
                cmd += ["-x", name]
    else:
        if slots:
            cmd += ["-hosts", ",".join("%s:%d" % hs for hs in slots.items())]
            if set(slots) - hosts_.LOCAL_NAMES:
                cmd += ["-launcher", "ssh"]
        if network_interface:
            cmd += ["-iface", network_interface.split(",")[0]]
    worker = [python, "-m", "deeplab.cli"] + list(deeplab_args)
    return cmd + list(extra) + [python, "-m", "deeplab.launch.mpi_rank", shlex.join(worker)]


# MPICH's settings for the workers, chosen by measurement (docs/distributed.md, "Busy
# polling"): a rank waiting for a peer polls. MPICH's defaults, pinned here: a yield of the core
# every 1000 polls (never yielding saved 2-5 us a call but kept the waiting process on a core;
# sleeping to yield cost 200-450 us a call), and no progress thread.
MPI_ENV = {"MPIR_CVAR_POLLS_BEFORE_YIELD": "1000", "MPIR_CVAR_ASYNC_PROGRESS": "0"}


def mpi_env(env):
    """`env` with MPI_ENV's defaults for what it does not set."""
    out = dict(env)
    for k, v in MPI_ENV.items():
        out.setdefault(k, v)
    return out


def worker_env(np, hosts=None, hostfile=None, environ=None, job_id=None):
    """The environment for horovodrun (passed on to the workers): the backend, the job id, and
    on a single machine one share of the cores per worker unless OMP_NUM_THREADS is already set."""
    env = dict(os.environ if environ is None else environ)
    env["DEEPLAB_DIST_BACKEND"] = "horovod"
    env[procs.JOB_ENV] = job_id or procs.new_job_id()
    local = not hostfile and set(hosts_.slots(hosts or "localhost:%d" % np)) <= {"localhost",
                                                                           "127.0.0.1"}
    if local and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // np))
    return env


class _Output:
    """Passes horovodrun's output through and reads what it says about the workers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.failures = []  # (rank, status, monotonic time), in the order horovodrun saw them
        self.missing = []  # Horovod's lines about ranks that did not submit a collective
        # rank -> (exit code, monotonic time, line) of its documented one-line error
        # (procs.ROOT_CAUSES: "deeplab CMD: error: ...", a stall, a divergence)
        self.errors = {}
        self.ssh_errors = {}  # rank -> ssh's own error line (its worker never started, or lost)
        self.unreachable = {}  # host -> ssh's error, from horovodrun's check before the start
        self._checking = None  # host whose failed ssh check horovodrun is printing
        self._missing_from = None  # rank whose "Missing ranks:" list is being read

    def line(self, text):
        """Reads one line of horovodrun's output."""
        m = _PREFIXED.match(text)
        with self.lock:
            if m is None:
                f = _FAILED.match(text)
                if f:
                    self.failures.append((int(f.group(1)), int(f.group(2)), time.monotonic()))
                c = _SSH_CHECK.match(text)
                if c:
                    self._checking = c.group(1)
                elif self._checking and text.strip():
                    self.unreachable[self._checking] = text.strip()
                    self._checking = None
                return
            rank, body = int(m.group(1)), m.group(3).strip()
            code = procs.documented_exit(body)
            if code is not None and rank not in self.errors:
                self.errors[rank] = (code, time.monotonic(), body)
            if body.startswith(("ssh: ", "Timeout, server ", "Connection closed by ",
                                "Connection reset by ")):
                self.ssh_errors.setdefault(rank, body)
            if "Missing ranks:" in body:
                self._missing_from = rank
                self.missing.append(body)
            elif self._missing_from == rank:
                # the list that follows, one "RANK: [tensor names]" line per missing rank
                if re.match(r"^\d+: ", body) and len(self.missing) < 8:
                    self.missing.append(body)
                else:
                    self._missing_from = None

    def pump(self, stream, out):
        """Copies `stream` to `out` line by line until end-of-file. horovodrun's own traceback
        for a failed worker (reported by the launcher instead) is dropped; any other is kept."""
        held = []
        for text in stream:
            prefixed = _PREFIXED.match(text) is not None
            if not prefixed and (held or text.startswith("Traceback (most recent call last)")):
                held.append(text)
                continue
            self.line(text)
            out.write(text)
            out.flush()
        if held and not any(_HOROVOD_FAILED in t or _SSH_FAILED in t for t in held):
            out.write("".join(held))
            out.flush()


def _say(text):
    print("deeplab launch: %s" % text, file=sys.stderr, flush=True)


class _HorovodJob(procs.Policy):
    """The Supervisor's policy for horovodrun: its output parsed, its workers stopped while it
    is paused, the rank that failed first reported."""

    runner = "horovodrun"

    def __init__(self, cmd, env, failure_grace, hosts=None, network_interface=None):
        self.cmd, self.env, self.failure_grace, self.hosts = cmd, env, failure_grace, hosts
        self.network_interface = network_interface
        self.job_id = env[procs.JOB_ENV]
        self.output = _Output()
        self.proc, self.pumps = None, []
        self.paused = self.killed = False
        self.training = []
        self.stalled = None
        self.code = None
        self.oom = None
        self.lifeline = None

    def start(self, sup):
        self.oom = procs.OomWatch()
        # Every process of the job stops by itself if this launcher is killed (SIGKILL, out of
        # memory): see procs.watch_launcher. Workers on other hosts hold a connection to its
        # lifeline, through which it also asks them to stop; on --network-interface's
        # addresses only, when it is given.
        if self.hosts and hosts_.remote_hosts(self.hosts):
            self.lifeline = procs.Lifeline(interfaces=self.network_interface)
        self.env = dict(self.env, **{procs.LAUNCHER_ENV: procs.launcher_token(
            lifeline=self.lifeline)})
        try:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                encoding="utf-8", errors="replace", bufsize=1, start_new_session=True)
        except OSError as err:
            raise LaunchError("cannot run %s: %s" % (self.cmd[0], err)) from err
        self.pumps = [threading.Thread(target=self.output.pump, args=(stream, out), daemon=True)
                      for stream, out in ((self.proc.stdout, sys.stdout),
                                          (self.proc.stderr, sys.stderr))]
        for t in self.pumps:
            t.start()

    def _here(self):  # on this host: the workers elsewhere are horovodrun's (over ssh)
        return [pid for pid in procs.job_processes(self.job_id) if procs.on_this_host(pid)]

    def targets(self, sup):
        self.training = procs.training_processes(self.job_id, among=self._here())
        fresh = [pid for pid in self.training if pid not in sup.signalled]
        told = self.lifeline is not None and self.lifeline.stop()  # the workers elsewhere
        if (fresh or told) and not self.paused:
            # As soon as one worker exits, horovodrun would SIGTERM the others (a second
            # SIGTERM, which ends rank 0 even while it writes the checkpoint) and SIGKILL them
            # 5 s later: it waits, paused, until they have exited.
            self.paused = procs.signal_process(self.proc.pid, signal.SIGSTOP)
        return fresh

    def while_stopping(self, sup):
        # Resumed once the workers here have exited and those elsewhere closed the lifeline.
        if self.paused and not self.training and not (self.lifeline and self.lifeline.open()):
            self.paused = not procs.signal_process(self.proc.pid, signal.SIGCONT)

    def check(self, sup, now):
        with self.output.lock:
            first = self.output.failures[0] if self.output.failures else None
        if first and self.stalled is None:  # before the job is torn down: who is stopped
            self.stalled = procs.stopped_workers(self.job_id, _rank_of)
        if first and sup.stopping is None and now - first[2] > self.failure_grace:
            _say("%s did not stop the job within %g s of the failure of worker rank %d: "
                 "killing it" % (self.runner, self.failure_grace, first[0]))
            return "failure grace"
        return None

    def ended(self, sup):
        return self.proc.poll() is not None

    def grace_over(self, sup):
        _say("the workers did not stop within --grace %g s: killing the job" % sup.grace)

    def teardown(self, sup):
        if self.proc is None:
            return
        if self.paused:
            procs.signal_process(self.proc.pid, signal.SIGCONT)
        self.killed = self.proc.poll() is None
        procs.signal_group(self.proc.pid, signal.SIGKILL)
        if self.lifeline is not None:
            self.lifeline.close()

    def leftovers(self):
        return self._here()

    def report(self, sup, outcome):
        self.code = self.proc.wait()
        if self.code != 0 and self.hosts:
            hosts_.reap_remote(hosts_.remote_hosts(self.hosts), self.job_id)
        for t in self.pumps:
            t.join(timeout=5)
        return _report(self.output, self.code, sup.stop, self.killed, sup.signalled,
                       self.stalled or [], self.oom, self.hosts)


# Hydra's own report of a rank killed by a signal (the launcher says it in one line instead).
_HYDRA_BANNER = re.compile(r"^(=+|=   .*|YOUR APPLICATION TERMINATED WITH THE EXIT STRING.*|"
                           r"This typically refers to a problem with your application\.|"
                           r"Please see the FAQ page for debugging suggestions)\s*$")


# Open MPI's own report of a rank that exited non-zero or died of a signal, between rules.
_OMPI_RULE = re.compile(r"^-{20,}\s*$")
_OMPI_ABOUT_A_RANK = re.compile(r"(mpirun|prterun) (noticed that process rank|detected that one "
                                r"or more processes exited)")


class _MpiOutput(_Output):
    """mpirun's output: the ranks' lines as horovodrun prints them (deeplab.launch.mpi_rank);
    Hydra's banner and Open MPI's message about a rank that failed are left out. `on_stall` is called (from the
    reading thread) when a rank announces a stall: Hydra kills the other ranks as soon as the
    stalled one exits, so what is stopped must be looked at before."""

    def __init__(self):
        super().__init__()
        self.on_stall = None

    def line(self, text):
        super().line(text)
        m = _PREFIXED.match(text)
        if m and self.on_stall and procs.documented_exit(m.group(3).strip()) == EXIT_STALLED:
            self.on_stall()

    def pump(self, stream, out):
        block = None  # Open MPI's messages come between lines of dashes
        for text in stream:
            self.line(text)
            prefixed = _PREFIXED.match(text) is not None
            if not prefixed and _OMPI_RULE.match(text):
                if block is None:
                    block = [text]
                    continue
                block.append(text)
                text, block = "".join(block), None
                if _OMPI_ABOUT_A_RANK.search(text):
                    continue  # said by the launcher in one line
            elif block is not None and not prefixed:
                block.append(text)
                continue
            elif not prefixed and _HYDRA_BANNER.match(text):
                continue
            out.write(text)
            out.flush()
        if block:
            out.write("".join(block))
            out.flush()


class _MpirunJob(_HorovodJob):
    """The Supervisor's policy for mpirun: horovodrun's, except that mpirun is not paused while
    the workers stop (Hydra ends the others only when a rank dies of a signal; a worker stopped
    by SIGTERM exits with 143 and leaves its peers alone)."""

    runner = "mpirun"

    def __init__(self, cmd, env, failure_grace, hosts=None, network_interface=None):
        # mpirun behind a relay (deeplab.launch.mpi_rank --relay): mpirun ends the job when a
        # write to its output fails, as it would once this launcher is killed.
        super().__init__([sys.executable, "-m", "deeplab.launch.mpi_rank", "--relay"]
                         + list(cmd), env, failure_grace, hosts, network_interface)
        self.output = _MpiOutput()
        self.output.on_stall = self._look_for_stopped

    def _look_for_stopped(self):
        if self.stalled is None:
            self.stalled = procs.stopped_workers(self.job_id, _rank_of)

    def targets(self, sup):
        self.training = procs.training_processes(self.job_id, among=self._here())
        if self.lifeline is not None:
            self.lifeline.stop()  # the workers on other hosts
        return [pid for pid in self.training if pid not in sup.signalled]

    def while_stopping(self, sup):
        pass


def supervise(cmd, env, grace, failure_grace=FAILURE_GRACE, poll=0.1, hosts=None, mpi=False,
              network_interface=None):
    """Runs the horovodrun command line `cmd` with `env` (which must carry procs.JOB_ENV) until
    the job ends; returns the launcher's exit code. See the module docstring.

    Args:
        hosts: the host of each rank (rank_hosts), to name it in the report; when workers run
            on other machines and the job stalled, the hosts that no longer answer over ssh
            are named as its likely cause.
        network_interface: --network-interface: the launcher's lifeline listens on these
            interfaces' addresses only.
    """
    job = (_MpirunJob if mpi else _HorovodJob)(cmd, env, failure_grace, hosts,
                                               network_interface)
    words = cmd[:-1] + shlex.split(cmd[-1]) if mpi else cmd  # mpi_rank's one argument
    return procs.Supervisor(job, grace, poll, say=_say, workdir=procs.workdir_of(words)).run()


def _rank_of(pid):
    rank = procs.environ(pid).get("HOROVOD_RANK")
    return int(rank) if rank is not None and rank.isdigit() else None


def _where(rank, hosts):
    """' on HOST' for a rank when the job spans several hosts, else ''."""
    if not hosts or len(set(hosts)) < 2 or rank >= len(hosts):
        return ""
    return " on %s" % hosts[rank]


def _is_remote(rank, hosts):
    """True if `rank` ran on another machine than this one (horovodrun started it over ssh)."""
    return bool(_where(rank, hosts)) and not hosts_.is_local(hosts[rank])


def _report(output, code, stop, killed, signalled, stalled=(), oom=None, hosts=None):
    """Prints what happened to the job; returns the launcher's exit code."""
    failures = output.failures
    if code == 0 and not killed and not failures:
        # (Open MPI's mpirun, told to let the other ranks be, exits 0 when a rank did not:
        # the ranks' own exit lines say it.)
        return 0
    if output.unreachable:
        for host, why in sorted(output.unreachable.items()):
            _say("cannot reach host %s over ssh, nothing was started: %s" % (host, why))
        return code if 0 < code < 256 else 1
    if stop.count:
        name = signal.Signals(stop.signum).name
        if stop.count > 1 and killed:  # (a second one after the job ended changed nothing)
            _say("stopped by %s, then killed by a second signal before the workers could "
                 "finish stopping" % name)
        else:
            _say("stopped by %s: %s" % (name, "SIGTERM sent to %d local worker(s), which save "
                                        "a checkpoint after their current step"
                                        % len(signalled) if signalled
                                        else "no worker ran on this machine"))
        return stop.exit_code
    # A rank that printed its documented one-line error exited with its code, even where
    # horovodrun stopped it before its exit status was seen.
    seen = {r for r, _, _ in failures}
    failures = sorted([(r, output.errors[r][0] if r in output.errors else s, t)
                       for r, s, t in failures] +
                      [(r, code, t) for r, (code, t, _) in output.errors.items() if r not in seen],
                      key=lambda f: f[2])
    if failures:
        root = procs.root_cause(failures)
        rank, status, _ = failures[root]
        detail = procs.describe_status(status, oom)
        if rank in output.errors and output.errors[rank][0] == procs.EXIT_USER_ERROR:
            detail += ": %s" % output.errors[rank][2]
        elif rank in output.ssh_errors:
            detail += ": %s" % output.ssh_errors[rank]
        others = failures[:root] + failures[root + 1:]
        later = ", ".join("rank %d %s" % (r, procs.describe_status(s, oom)) for r, s, _ in others)
        verb = "was lost" if procs.killed_by_signal(status) else \
            "exited" if procs.describe_status(status).startswith("stopped") else "failed"
        if status == 255 and rank not in output.errors and rank not in output.ssh_errors \
                and _is_remote(rank, hosts):
            # ssh's own status for a remote command killed by a signal (OpenSSH says no more)
            verb, detail = "was lost", "its ssh session ended with exit code 255: killed by a " \
                "signal on %s, or the connection to it broke" % hosts[rank]
        if root == 0:
            _say("worker rank %d%s %s first: %s; %s" % (
                rank, _where(rank, hosts), verb, detail,
                "the others were killed" if killed else
                "later: %s" % later if later else "the others were stopped"))
        else:
            _say("worker rank %d%s %s: %s; the cause of the job's end (the failure of %s, seen "
                 "first, followed from it)" % (rank, _where(rank, hosts), verb, detail, later))
        for text in output.missing:
            _say("Horovod reported: %s" % text)
        for text in procs.describe_stopped(stalled):
            _say(text)
        if status == EXIT_STALLED and hosts:
            _name_silent_hosts(hosts)
        return status if 0 < status < 256 else 1
    if code:
        _say("horovodrun failed with exit code %d%s" % (code, " (killed)" if killed else ""))
        return code if code > 0 else 128 - code
    return 0


def _name_silent_hosts(hosts):
    """After a stall: names the other hosts of the job that no longer answer over ssh (cut
    off, powered down), with their ranks, as what the others waited for."""
    for host, why in sorted(hosts_.unreachable_hosts(hosts_.remote_hosts(hosts)).items()):
        ranks = ", ".join(str(r) for r, h in enumerate(hosts) if h == host)
        _say("host %s (worker rank%s %s) does not answer over ssh (%s): the workers waiting "
             "for it stalled" % (host, "s" if "," in ranks else "", ranks, why))


def run(args):
    """Runs the job described by `deeplab launch horovod` arguments; returns its exit code."""
    check_hosts(args.np, args.hosts, args.hostfile)
    if args.mpi:
        return _run_mpi(args)
    cmd = horovod_command(args.np, args.command, hosts=args.hosts, hostfile=args.hostfile,
                          mpi=args.mpi, start_timeout=args.start_timeout,
                          timeline=args.timeline, autotune=args.autotune,
                          extra=args.horovodrun_args,
                          network_interface=getattr(args, "network_interface", None))
    if not os.path.exists(cmd[0]) and shutil.which(cmd[0]) is None:
        raise LaunchError("horovodrun is neither beside %s nor on the PATH: install Horovod "
                          "(scripts/setup_env.sh)" % sys.executable)
    env = worker_env(args.np, args.hosts, args.hostfile)
    _say(" ".join(cmd))
    return supervise(cmd, env, grace=args.grace,
                     hosts=rank_hosts(args.np, args.hosts, args.hostfile),
                     network_interface=getattr(args, "network_interface", None))


def _run_mpi(args):
    """`run` with --mpi: mpirun_command under the same supervision (--horovodrun-arg values go to
    mpirun), for the mpirun found (MPICH's from requirements/mpi.txt, or Open MPI's in NGC's
    image)."""
    if args.timeline or args.autotune:
        raise LaunchError("--timeline and --autotune are horovodrun's; with --mpi set "
                          "HOROVOD_TIMELINE=FILE or HOROVOD_AUTOTUNE=1 in the environment")
    mpirun = _mpirun(sys.executable)
    if not os.path.exists(mpirun) and shutil.which(mpirun) is None:
        raise LaunchError("mpirun is neither beside %s nor on the PATH: install MPICH "
                          "(scripts/setup_env.sh, requirements/mpi.txt)" % sys.executable)
    flavour = mpi_flavour(mpirun)
    env = mpi_env(worker_env(args.np, args.hosts, args.hostfile))
    cmd = mpirun_command(args.np, args.command, hosts=args.hosts, hostfile=args.hostfile,
                         extra=args.horovodrun_args,
                         network_interface=getattr(args, "network_interface", None),
                         flavour=flavour, env=list(env) + [procs.LAUNCHER_ENV])
    shown = [c for i, c in enumerate(cmd) if "-x" not in (c, cmd[i - 1])]
    _say(" ".join(shown) + (" (and -x for %d variables)" % cmd.count("-x") if "-x" in cmd
                            else ""))
    return supervise(cmd, env, grace=args.grace, mpi=True,
                     hosts=rank_hosts(args.np, args.hosts, args.hostfile),
                     network_interface=getattr(args, "network_interface", None))
