"""`deeplab launch horovod`: runs a `deeplab` subcommand on every worker through `horovodrun`.

Thin by design: it builds the horovodrun command line (Gloo controller unless --mpi; timeouts
raised for slow machines; this Python and package on every host), sets the workers' backend in
their environment, and after a failure names the rank that was lost.
"""
import os
import re
import subprocess
import sys

__all__ = ["horovod_command", "worker_env", "run"]

_FAILED = re.compile(r"Process (\d+) exit with status code (-?\d+)")


def _slots(hosts):
    """{host: slots} from 'h1:4,h2:4' (a host without ':n' has 1 slot)."""
    out = {}
    for item in hosts.split(","):
        host, _, n = item.strip().partition(":")
        out[host] = int(n) if n else 1
    return out


def horovod_command(np, deeplab_args, hosts=None, hostfile=None, mpi=False, start_timeout=120,
                    python=None):
    """The horovodrun command line that runs `deeplab DEEPLAB_ARGS` on `np` workers."""
    python = python or sys.executable
    horovodrun = os.path.join(os.path.dirname(python), "horovodrun")
    cmd = [horovodrun if os.path.exists(horovodrun) else "horovodrun", "-np", str(np),
           "--start-timeout", str(start_timeout)]
    if hostfile:
        cmd += ["--hostfile", hostfile]
    else:
        cmd += ["-H", hosts or "localhost:%d" % np]
    if mpi:
        cmd += ["--mpi"]
    else:
        cmd += ["--gloo", "--gloo-timeout-seconds", str(start_timeout)]
    return cmd + [python, "-m", "deeplab.cli"] + list(deeplab_args)


def worker_env(np, hosts=None, hostfile=None, environ=None):
    """The environment for horovodrun (passed on to the workers): the backend, and on a single
    machine one share of the cores per worker unless OMP_NUM_THREADS is already set."""
    env = dict(os.environ if environ is None else environ)
    env["DEEPLAB_DIST_BACKEND"] = "horovod"
    local = not hostfile and set(_slots(hosts or "localhost:%d" % np)) <= {"localhost",
                                                                           "127.0.0.1"}
    if local and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // np))
    return env


def run(args):
    """Runs horovodrun; returns its exit code, after naming a lost worker if there was one."""
    cmd = horovod_command(args.np, args.command, hosts=args.hosts, hostfile=args.hostfile,
                          mpi=args.mpi, start_timeout=args.start_timeout)
    env = worker_env(args.np, args.hosts, args.hostfile)
    print("deeplab launch: %s" % " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
    lost = None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        m = _FAILED.search(line)
        if m and lost is None:
            lost = (int(m.group(1)), int(m.group(2)))
    code = proc.wait()
    if code != 0:
        if lost is not None:
            rank, status = lost
            how = ("killed by signal %d" % -status) if status < 0 else "exit code %d" % status
            print("deeplab launch: worker rank %d was lost (%s); horovodrun stopped the other "
                  "workers" % (rank, how), file=sys.stderr, flush=True)
        else:
            print("deeplab launch: horovodrun failed with exit code %d" % code, file=sys.stderr)
    return code
