"""`deeplab launch ps`: MXNet's parameter server (kvstore `dist_sync`) without dmlc_tracker.

Two modes:
- one machine: `deeplab launch ps --workers N --servers M -- train ...` starts a scheduler, M
  servers and N workers as local processes on loopback and supervises them;
- a cluster node (a Kubernetes pod): when DMLC_ROLE is already set, this node runs its role
  only (scheduler/server: MXNet's server loop; worker: the deeplab command), so the same command
  line runs in every pod.

ps-lite hazards handled here: an exported PORT variable makes every node bind that port (it is
removed); a node that dies leaves the others waiting forever (ps-lite heartbeats are off by
default): the local supervisor stops the whole job as soon as any process fails and names it;
a scheduler may outlive SIGTERM: the supervisor escalates to SIGKILL on each process group.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

__all__ = ["node_env", "role_command", "run"]

# Started as a server or scheduler, `import mxnet` runs the ps-lite loop and exits when the job
# ends (mxnet/kvstore/kvstore_server.py).
_SERVER_CODE = "import mxnet"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _signal_group(proc, sig):
    """Sends `sig` to a node's process group (its whole process tree) if it still runs."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def wait_for_exit(procs, timeout, poll=0.2):
    """Waits up to `timeout` seconds for every (name, Popen) in `procs` to exit."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.poll() is None for _, p in procs):
        time.sleep(poll)


def stop_all(procs, grace=5.0):
    """SIGTERM every process group, then SIGKILL what is left after `grace` seconds."""
    for _, p in procs:
        _signal_group(p, signal.SIGTERM)
    wait_for_exit(procs, grace, poll=0.05)
    for _, p in procs:
        _signal_group(p, signal.SIGKILL)
        p.wait()


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _describe(code):
    return "killed by signal %d" % -code if code < 0 else "exit code %d" % code


def _who(name, proc, rank_dir):
    """'worker rank R (worker i, pid P)' for a worker, from the rank it reported (ps-lite assigns
    ranks at registration, so the start order does not give it); the name for other nodes."""
    if not name.startswith("worker"):
        return "%s (pid %d)" % (name, proc.pid)
    try:
        with open(os.path.join(rank_dir, str(proc.pid))) as f:
            rank = f.read().strip()
    except OSError:
        rank = "?"
    return "worker rank %s (%s, pid %d)" % (rank, name, proc.pid)


def run_local(workers, servers, deeplab_args, poll=0.2, finish_grace=30.0):
    """Runs the job on this machine; returns 0 if every worker succeeded.

    A process that dies with a non-zero code (a worker, a server or the scheduler) stops the
    whole job at once: ps-lite would leave the others waiting forever.
    """
    port = free_port()
    cores = os.cpu_count() or 1
    procs = []
    # SIGTERM (a job scheduler, `timeout`) must not orphan the nodes: raise, so `finally` stops
    # them.
    signal.signal(signal.SIGTERM, _raise_exit)
    with tempfile.TemporaryDirectory(prefix="deeplab-ps-") as rank_dir:
        try:
            for role, count in (("scheduler", 1), ("server", servers), ("worker", workers)):
                for i in range(count):
                    env = node_env(role, workers, servers, "127.0.0.1", port, local_rank=i)
                    env["DMLC_NODE_HOST"] = "127.0.0.1"
                    if role == "worker":
                        env["DEEPLAB_RANK_DIR"] = rank_dir
                        if "OMP_NUM_THREADS" not in os.environ:
                            env["OMP_NUM_THREADS"] = str(max(1, cores // workers))
                    # Each node in its own session: signals reach its whole process tree.
                    p = subprocess.Popen(role_command(role, deeplab_args), env=env,
                                         start_new_session=True)
                    procs.append((role if role == "scheduler" else "%s %d" % (role, i), p))
            worker_procs = [p for name, p in procs if name.startswith("worker")]
            while any(p.poll() is None for p in worker_procs):
                for name, p in procs:
                    code = p.poll()
                    if code:  # None (running) and 0 (ps-lite finalized) are fine
                        print("deeplab launch ps: %s was lost (%s); stopping the job"
                              % (_who(name, p, rank_dir), _describe(code)), file=sys.stderr,
                              flush=True)
                        return 1
                time.sleep(poll)
            failed = [(name, p) for name, p in procs if name.startswith("worker") and p.returncode]
            for name, p in failed:
                print("deeplab launch ps: %s failed (%s)" % (
                    _who(name, p, rank_dir), _describe(p.returncode)), file=sys.stderr, flush=True)
            if failed:
                return 1
            # Workers done: the servers and the scheduler leave when ps-lite finalizes.
            wait_for_exit(procs, finish_grace, poll)
            return 0
        finally:
            stop_all(procs)


def run_node(deeplab_args):
    """Runs this node's role from DMLC_* in the environment (cluster mode); returns its code."""
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
    return subprocess.call(role_command(role, deeplab_args), env=env)


def run(args):
    if os.environ.get("DMLC_ROLE"):
        return run_node(args.command)
    return run_local(args.workers, args.servers, args.command)
