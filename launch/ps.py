"""`deeplab launch ps`: MXNet's parameter server (kvstore `dist_sync`) without dmlc_tracker.

Two modes:
- one machine: `deeplab launch ps --workers N --servers M -- train ...` starts a scheduler, M
  servers and N workers as local processes on loopback and supervises them;
- a cluster node (a Kubernetes pod): when DMLC_ROLE is already set, this node runs its role
  only (scheduler/server: MXNet's server loop; worker: the deeplab command), so the same command
  line runs in every pod.

ps-lite hazards handled here: an exported PORT variable makes every node bind that port (it is
removed); a node that dies leaves the others waiting forever (ps-lite heartbeats are off by
default): the local supervisor stops the whole job as soon as any process fails and names the
one that failed first; a scheduler may outlive SIGTERM: the supervisor escalates to SIGKILL.

Stopping (SIGTERM, SIGINT or SIGHUP to the launcher, or a worker that exits after SIGTERM): the
workers go first, each sent one SIGTERM (a second would end it without a checkpoint); they stop
after the same step and rank 0 saves a checkpoint, which needs the servers: the servers and the
scheduler are stopped only once the workers have exited, or after --grace seconds.

Each node runs in a session of its own, and every process carries the job id (procs.JOB_ENV):
nothing of the job outlives the launcher, not even the loader processes of a worker that died.
If the launcher itself is killed, the workers stop with a checkpoint and the servers and the
scheduler follow them (procs.watch_launcher).
"""
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile

from deeplab.errors import LaunchError
from deeplab.utils import free_port

from . import hosts as hosts_
from . import procs

__all__ = ["node_env", "role_command", "start_node", "run", "run_local", "run_node",
           "run_hosts", "place", "route_address"]

# Started as a server or scheduler, `import mxnet` runs the ps-lite loop and exits when the job
# ends (mxnet/kvstore/kvstore_server.py), with a controller that unpickles nothing it receives
# (deeplab.launch.ps_server; not under deeplab.dist, whose import would import mxnet first).
# Before it, a thread that ends the node once its launcher is gone and the workers have stopped
# (procs.exit_when_workers_gone).
SERVER_WAIT = 120.0  # seconds a node whose launcher is gone waits for the workers to stop
_SERVER_CODE = ("import os; from deeplab.launch import procs, ps_server; procs.watch_launcher("
                "procs.exit_when_workers_gone(os.environ.get(procs.JOB_ENV), %g)); "
                "ps_server.main()" % SERVER_WAIT)
# Seconds a failure without a documented exit (procs.ROOT_CAUSES) waits for a worker's
# documented one that it may have followed from, before the job is stopped.
FAILURE_SETTLE = 1.0


def node_env(role, workers, servers, root_uri, root_port, environ=None, local_rank=0):
    """Environment of one ps-lite node (scheduler, server or worker)."""
    env = dict(os.environ if environ is None else environ)
    env.pop("PORT", None)  # ps-lite would bind every node to it
    env.update(DMLC_ROLE=role, DMLC_PS_ROOT_URI=str(root_uri), DMLC_PS_ROOT_PORT=str(root_port),
               DMLC_NUM_WORKER=str(workers), DMLC_NUM_SERVER=str(servers),
               DEEPLAB_DIST_BACKEND="ps", DEEPLAB_LOCAL_RANK=str(local_rank))
    return env


def role_command(role, deeplab_args, python=None):
    """What a node of `role` runs."""
    python = python or sys.executable
    if role == "worker":
        return [python, "-m", "deeplab.cli"] + list(deeplab_args)
    return [python, "-c", _SERVER_CODE]


def _exit_status(code):
    """A Popen return code as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code


def _say(text):
    print("deeplab launch ps: %s" % text, file=sys.stderr, flush=True)


def _who(name, proc, rank_dir):
    """'worker rank R (worker i, pid P)' for a worker, from the rank it reported (ps-lite assigns
    ranks at registration, so the start order does not give it); the name for other nodes."""
    if not name.startswith("worker"):
        return "%s (pid %d)" % (name, proc.pid)
    if " on " in name:  # on another host: the pid here is its ssh client's
        return name
    try:
        with open(os.path.join(rank_dir, str(proc.pid))) as f:
            rank = f.read().strip()
    except OSError:
        rank = "?"
    return "worker rank %s (%s, pid %d)" % (rank, name, proc.pid)


def _rank(pid, rank_dir):
    """The rank worker process `pid` reported, or None."""
    try:
        with open(os.path.join(rank_dir, str(pid))) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _stopped_by_sigterm(code):
    return code in (-signal.SIGTERM, 128 + signal.SIGTERM)


def start_node(cmd, env):
    """Starts one node of the job, `cmd` with `env`, in a session of its own (signals then reach
    its whole process tree); returns its Popen."""
    return subprocess.Popen(cmd, env=env, start_new_session=True)


class _LocalJob(procs.Policy):
    """The Supervisor's policy for a parameter-server job on this machine: the workers are
    stopped first, the first process that fails stops the job, the servers and the scheduler
    are stopped last."""

    def __init__(self, workers, servers, deeplab_args, rank_dir, finish_grace, poll):
        self.n_workers, self.n_servers, self.deeplab_args = workers, servers, deeplab_args
        self.rank_dir, self.finish_grace, self.poll = rank_dir, finish_grace, poll
        self.job_id = procs.new_job_id()
        self.nodes = []  # (name, Popen), scheduler first, workers last
        self.workers = []
        self.failures = []  # (name, exit status, when seen, Popen), in the order seen
        self.oom = None

    def start(self, sup):
        self.oom = procs.OomWatch()
        port = free_port()
        cores = os.cpu_count() or 1
        for role, count in (("scheduler", 1), ("server", self.n_servers),
                            ("worker", self.n_workers)):
            for i in range(count):
                env = node_env(role, self.n_workers, self.n_servers, "127.0.0.1", port,
                               local_rank=i)
                env["DMLC_NODE_HOST"] = "127.0.0.1"
                env[procs.JOB_ENV] = self.job_id
                env[procs.LAUNCHER_ENV] = procs.launcher_token()
                if role == "worker":
                    env["DEEPLAB_RANK_DIR"] = self.rank_dir
                    if "OMP_NUM_THREADS" not in os.environ:
                        env["OMP_NUM_THREADS"] = str(max(1, cores // self.n_workers))
                p = start_node(role_command(role, self.deeplab_args), env)
                self.nodes.append((role if role == "scheduler" else "%s %d" % (role, i), p))
        self.workers = [(name, p) for name, p in self.nodes if name.startswith("worker")]

    def targets(self, sup):
        if not sup.stop.count:  # a worker SIGTERMed directly: the workers stop together
            return []
        # the workers only: their loaders must not get one
        return [p.pid for _, p in self.workers if p.poll() is None]

    def check(self, sup, now):
        for name, p in self.nodes:
            code = p.poll()
            if code in (None, 0) or any(f[0] == name for f in self.failures):
                continue  # running, ps-lite finalized, or seen already
            if name.startswith("worker") and _stopped_by_sigterm(code):
                # SIGTERM sent to a worker directly: all stop together
                sup.request_stop("SIGTERM to %s" % _who(name, p, self.rank_dir), now)
                continue
            if sup.stopping is not None and not name.startswith("worker"):
                continue
            self.failures.append((name, _exit_status(code), now, p))
        if not self.failures:
            return None
        # The cause of the job's end, as `deeplab launch horovod` ranks it: a documented exit
        # (a worker's own one-line reason) over an error seen before it that followed from it.
        # A first failure without one leaves FAILURE_SETTLE seconds for one to show.
        root = procs.root_cause(self.failures)
        name, status, seen, p = self.failures[root]
        if status not in [c for c, _ in procs.ROOT_CAUSES] and now - seen < FAILURE_SETTLE \
                and any(q.poll() is None for _, q in self.workers):
            return None
        verb = "was lost" if procs.killed_by_signal(status) else "failed"
        detail = procs.describe_status(p.poll(), self.oom)  # Popen's code: "(signal 9)"
        others = ", ".join("%s %s" % (_who(n, q, self.rank_dir), procs.describe_status(q.poll()))
                           for n, _, _, q in self.failures if n != name)
        if root == 0:
            _say("%s %s first: %s; %sstopping the job" % (
                _who(name, p, self.rank_dir), verb, detail,
                "later: %s; " % others if others else ""))
        else:
            _say("%s %s: %s; the cause of the job's end (the failure of %s, seen first, followed "
                 "from it); stopping the job" % (_who(name, p, self.rank_dir), verb, detail,
                                                 others))
        for text in procs.describe_stopped(procs.stopped_workers(
                self.job_id, lambda pid: _rank(pid, self.rank_dir))):
            _say(text)
        return ("failed", status)

    def ended(self, sup):
        return all(p.poll() is not None for _, p in self.workers)

    def grace_over(self, sup):
        _say("the workers did not stop within --grace %g s of %s: killing the job"
             % (sup.grace, sup.stopping[1]))

    def finish(self, sup, outcome):
        if outcome == sup.ENDED and sup.stopping is None:
            # Every worker exited 0: the servers and the scheduler leave when ps-lite finalizes.
            procs.wait_for_exit([p for _, p in self.nodes], self.finish_grace, self.poll)

    def teardown(self, sup):
        procs.stop_groups([p for _, p in self.nodes])

    def leftovers(self):
        return procs.job_processes(self.job_id)

    def report(self, sup, outcome):
        if isinstance(outcome, tuple):  # ("failed", exit status), said when it was seen
            return outcome[1]
        if outcome == sup.AGAIN:
            return sup.stop.exit_code
        if sup.stopping is not None:
            if outcome == sup.ENDED:
                _say("stopped by %s: the workers saved a checkpoint and exited; stopping the "
                     "servers and the scheduler" % sup.stopping[1])
            return sup.stop.exit_code or 128 + signal.SIGTERM
        return 0


def run_local(workers, servers, deeplab_args, grace=120.0, poll=0.2, finish_grace=30.0):
    """Runs the job on this machine; returns 0 if every worker succeeded, else the exit status
    of the process that failed first (128 + N if killed by signal N; 143 when stopped).

    A process that dies with a non-zero code (a worker, a server or the scheduler) stops the
    whole job at once: ps-lite would leave the others waiting forever.
    """
    with tempfile.TemporaryDirectory(prefix="deeplab-ps-") as rank_dir:
        job = _LocalJob(workers, servers, deeplab_args, rank_dir, finish_grace, poll)
        return procs.Supervisor(job, grace, poll, say=_say,
                                workdir=procs.workdir_of(deeplab_args)).run()


def place(workers, servers, slots, server_hosts=None):
    """([host of worker 0, ...], [host of server 0, ...]) for `slots` ({host: slots}, in order):
    the workers fill each host's slots in turn (as horovodrun places ranks), the servers go one
    per host in turn (as MXNet's ssh tracker spreads them) over `server_hosts` (a list;
    default: the hosts of `slots`)."""
    room = sum(slots.values())
    if room < workers:
        raise LaunchError("--workers %d needs %d slots, but -H gives %d (%s)" % (
            workers, workers, room, ",".join("%s:%d" % hs for hs in slots.items())))
    worker_hosts = [h for h, n in slots.items() for _ in range(n)][:workers]
    names = list(server_hosts or slots)
    return worker_hosts, [names[i % len(names)] for i in range(servers)]


def route_address(host):
    """This host's address on the route to `host` (no packet is sent)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect((socket.gethostbyname(host), 9))
        return sock.getsockname()[0]
    finally:
        sock.close()


# The launcher's environment that its nodes on other hosts get over ssh, as horovodrun passes
# its own (horovod.runner.common.util.env.IGNORE_REGEXES): all of it but what belongs to this
# shell or session, or to this host's devices.
_NOT_PASSED = re.compile(r"^(BASH_FUNC_.*|OLDPWD|PWD|SHLVL|_|HOSTNAME|SSH_.*|DISPLAY|TERM|"
                         r"TMUX.*|STY|XDG_.*|.*CUDA_VISIBLE_DEVICES|.*_SECRET_.*)$")


def _remote_command(cmd, env):
    """The shell command line that runs `cmd` with `env` in this directory on another host."""
    assigned = " ".join(shlex.quote("%s=%s" % kv) for kv in sorted(env.items())
                        if not _NOT_PASSED.match(kv[0]))
    return "cd %s && exec env %s %s" % (shlex.quote(os.getcwd()), assigned,
                                        " ".join(shlex.quote(c) for c in cmd))


class _HostsJob(_LocalJob):
    """The Supervisor's policy for a parameter-server job across hosts: the scheduler here, the
    servers and workers where place() puts them, each remote one started over ssh as a node of a
    cluster (`deeplab launch ps` with DMLC_ROLE, which runs and supervises its role there).

    Signals do not cross hosts: the remote nodes hold the launcher's lifeline, through which it
    asks them to stop (a node's worker gets one SIGTERM; its servers keep serving until the
    workers are done) and whose closing tells them it is gone. After a failure what is left of
    the job on the other hosts is killed over ssh."""

    def __init__(self, placed, deeplab_args, rank_dir, finish_grace, poll, grace):
        worker_hosts, server_hosts = placed
        super().__init__(len(worker_hosts), len(server_hosts), deeplab_args, rank_dir,
                         finish_grace, poll)
        self.placed, self.node_grace = placed, grace
        self.lifeline = None
        self.local = []  # (name, Popen) of the nodes running here
        self.remote = []

    def start(self, sup):
        self.oom = procs.OomWatch()
        worker_hosts, server_hosts = self.placed
        self.remote = hosts_.remote_hosts(worker_hosts + server_hosts)
        root = route_address(self.remote[0])
        port = free_port()
        self.lifeline = procs.Lifeline()
        here = procs.launcher_token()
        token = procs.launcher_token(lifeline=self.lifeline)
        nodes = [("scheduler", None)] + [("server %d" % i, h) for i, h in
                                         enumerate(server_hosts)] + \
            [("worker %d" % i, h) for i, h in enumerate(worker_hosts)]
        local_ranks = {}
        for name, host in nodes:
            role = name.split()[0]
            local = host is None or hosts_.is_local(host)
            count = local_ranks[host, role] = local_ranks.get((host, role), -1) + 1
            env = node_env(role, self.n_workers, self.n_servers, root, port, local_rank=count)
            env[procs.JOB_ENV] = env[procs.JOB_GROUP_ENV] = self.job_id
            env["DEEPLAB_PS_WORKERS_ELSEWHERE"] = "1"  # see procs.exit_when_workers_gone
            if host is None:  # the scheduler: this launcher's own child
                env["DMLC_NODE_HOST"] = root
                env[procs.LAUNCHER_ENV] = here
                p = start_node(role_command(role, self.deeplab_args), env)
            else:  # a node of a cluster, run and supervised by `deeplab launch ps` there
                env.pop("DMLC_NODE_HOST", None)
                env[procs.LAUNCHER_ENV] = here if local else token
                cmd = [sys.executable, "-m", "deeplab.cli", "launch", "ps", "--grace",
                       "%g" % self.node_grace, "--"] + list(self.deeplab_args)
                p = start_node(cmd if local else hosts_.ssh_command(
                    host, _remote_command(cmd, env)), env)
                name = "%s on %s" % (name, host)
            self.nodes.append((name, p))
            if local:
                self.local.append((name, p))
        self.workers = [(name, p) for name, p in self.nodes if name.startswith("worker")]

    def targets(self, sup):
        if not sup.stop.count:  # a worker SIGTERMed directly: the workers stop together
            return []
        self.lifeline.stop()  # the nodes elsewhere; their ssh clients are not signalled
        return [p.pid for name, p in self.local if name.startswith("worker")
                and p.poll() is None]

    def teardown(self, sup):
        procs.stop_groups([p for _, p in self.nodes])
        self.lifeline.close()
        if any(p.returncode != 0 for _, p in self.nodes):
            hosts_.reap_remote(self.remote, self.job_id, procs.JOB_GROUP_ENV)

    def leftovers(self):
        return [pid for pid in set(procs.job_processes(self.job_id)) | set(
            procs.job_processes(self.job_id, procs.JOB_GROUP_ENV)) if procs.on_this_host(pid)]


def run_hosts(placed, deeplab_args, grace=120.0, poll=0.2, finish_grace=30.0):
    """Runs the job across hosts (`placed`: from place()); returns run_local's codes.

    Every host must hold this directory, this Python and this package at the same paths, and
    accept `ssh HOST` without a prompt; the hosts must reach this one (the scheduler and the
    lifeline listen here) and each other (servers and workers)."""
    unreachable = hosts_.unreachable_hosts(hosts_.remote_hosts(placed[0] + placed[1]))
    if unreachable:
        for host, why in sorted(unreachable.items()):
            _say("cannot reach host %s over ssh, nothing was started: %s" % (host, why))
        return 1
    with tempfile.TemporaryDirectory(prefix="deeplab-ps-") as rank_dir:
        job = _HostsJob(placed, deeplab_args, rank_dir, finish_grace, poll, grace)
        return procs.Supervisor(job, grace, poll, say=_say,
                                workdir=procs.workdir_of(deeplab_args)).run()


class _Node(procs.Policy):
    """The Supervisor's policy for one node of a cluster job (DMLC_ROLE set)."""

    def __init__(self, role, cmd, env):
        self.role, self.cmd, self.env = role, cmd, env
        self.proc = None

    def start(self, sup):
        self.proc = start_node(self.cmd, self.env)

    def targets(self, sup):
        # A worker is sent one SIGTERM (the worker only: its loaders must not get one); a
        # scheduler or server keeps serving: the workers still need it for their last step.
        return [self.proc.pid] if self.role == "worker" else []

    def ended(self, sup):
        return self.proc.poll() is not None

    def teardown(self, sup):
        if self.proc is not None:
            procs.stop_groups([self.proc])

    def leftovers(self):
        return [pid for pid in procs.job_processes(self.env[procs.JOB_ENV])
                if procs.on_this_host(pid)]

    def report(self, sup, outcome):
        code = _exit_status(self.proc.returncode)
        return sup.stop.exit_code if sup.stop.count and code else code


def run_node(deeplab_args, grace=120.0, poll=0.2):
    """Runs this node's role from DMLC_* in the environment (cluster mode); returns its code.

    On SIGTERM a worker is sent one SIGTERM (it checkpoints and exits); a scheduler or server
    keeps serving until it exits or `grace` seconds pass, since the workers, told to stop at the
    same moment, still need it for their last step.
    """
    missing = [k for k in ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT",
                           "DMLC_NUM_WORKER", "DMLC_NUM_SERVER") if not os.environ.get(k)]
    if missing:
        print("deeplab launch ps: DMLC_ROLE is set but %s is not" % ", ".join(missing),
              file=sys.stderr)
        return 2
    role = os.environ["DMLC_ROLE"]
    if role not in ("scheduler", "server", "worker"):
        print("deeplab launch ps: DMLC_ROLE must be scheduler, server or worker, got %r" % role,
              file=sys.stderr)
        return 2
    env = dict(os.environ)
    env.pop("PORT", None)
    env["DEEPLAB_DIST_BACKEND"] = "ps"
    if not env.get("DMLC_NODE_HOST"):
        # ps-lite binds this node to DMLC_NODE_HOST, by default the first interface it finds:
        # on a machine with several networks, take the one that reaches the scheduler.
        env["DMLC_NODE_HOST"] = route_address(env["DMLC_PS_ROOT_URI"])
    # This node's processes carry a job id of its own (what it stops and leaves nothing of;
    # another node may run on this host). Started by `deeplab launch ps -H` from another host,
    # they also carry that job's id (procs.JOB_GROUP_ENV, by which that launcher clears the
    # hosts after a failure), and this node stops when that launcher asks or is gone.
    env[procs.JOB_ENV] = procs.new_job_id()
    if os.environ.get(procs.LAUNCHER_ENV):
        procs.watch_launcher(procs.stop_when_launcher_lost,
                             on_stop=procs.stop_when_launcher_asks)
    env[procs.LAUNCHER_ENV] = procs.launcher_token()
    node = _Node(role, role_command(role, deeplab_args), env)
    return procs.Supervisor(node, grace, poll, say=_say,
                            workdir=procs.workdir_of(deeplab_args)).run()


def run(args):
    """Runs `deeplab launch ps` arguments: this node's role if DMLC_ROLE is set, else the whole
    job on this machine; returns the exit code."""
    grace = getattr(args, "grace", 120.0)
    if os.environ.get("DMLC_ROLE"):
        return run_node(args.command, grace=grace)
    spec = getattr(args, "hosts", None)
    if getattr(args, "server_hosts", None) and not spec:
        raise LaunchError("--server-hosts needs -H (the workers' hosts)")
    if spec:
        servers = getattr(args, "server_hosts", None)
        placed = place(args.workers, args.servers, hosts_.slots(spec),
                       [h.strip() for h in servers.split(",") if h.strip()] if servers else None)
        if any(not hosts_.is_local(h) for h in placed[0] + placed[1]):
            return run_hosts(placed, args.command, grace=grace)
    return run_local(args.workers, args.servers, args.command, grace=grace)
