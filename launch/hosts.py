"""The hosts of a job that spans machines, for both launchers: `-H host:slots,...` read, which
hosts are this machine, and what is done to the others over ssh (asked whether they answer,
cleared of a job's processes). ssh runs with the user's own configuration (keys, ports, jump
hosts), in batch mode: it never prompts.
"""
import shlex
import socket
import subprocess
import sys
import threading

from deeplab.errors import LaunchError

from . import procs

__all__ = ["LOCAL_NAMES", "slots", "is_local", "remote_hosts", "unreachable_hosts",
           "reap_remote", "ssh_command"]

LOCAL_NAMES = {"localhost", "127.0.0.1"}
SSH_OPTIONS = ["-o", "BatchMode=yes"]


def slots(spec, flag="-H"):
    """{host: slots} from 'h1:4,h2:4' (a host without ':n' has 1 slot), in the given order."""
    out = {}
    for item in spec.split(","):
        host, _, n = item.strip().partition(":")
        if not host or (n and not (n.isdigit() and int(n) > 0)):
            raise LaunchError("%s %s: expected host:slots,... with slots >= 1, e.g. "
                              "node1:4,node2:4" % (flag, spec))
        out[host] = int(n) if n else 1
    return out


def is_local(host):
    """True if `host` is this machine (this network namespace): a loopback name, or a name
    whose address is one of this host's. A name that does not resolve is not."""
    if host in LOCAL_NAMES:
        return True
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return False
    return address.startswith("127.") or address in procs.local_addresses()


def remote_hosts(hosts):
    """The distinct hosts of `hosts` that are not this machine, in order."""
    return [h for h in dict.fromkeys(hosts) if not is_local(h)]


def ssh_command(host, remote, connect_timeout=10):
    """`ssh HOST REMOTE` (REMOTE a shell command line) in batch mode."""
    return ["ssh"] + SSH_OPTIONS + ["-o", "ConnectTimeout=%d" % connect_timeout, host, remote]


def _each(hosts, work):
    threads = [threading.Thread(target=work, args=(h,), daemon=True) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def unreachable_hosts(hosts, timeout=10):
    """{host: ssh's error} for the `hosts` that do not answer `ssh HOST true` within
    `timeout` seconds (asked in parallel, with the user's ssh configuration)."""
    out = {}

    def probe(host):
        try:
            proc = subprocess.run(ssh_command(host, "true", timeout), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  timeout=timeout + 2)
            if proc.returncode != 0:
                out[host] = (proc.stderr.strip().splitlines() or ["exit code %d"
                                                                 % proc.returncode])[-1]
        except subprocess.TimeoutExpired:
            out[host] = "no answer within %d s" % timeout
        except OSError as err:
            out[host] = "cannot run ssh: %s" % err

    _each(hosts, probe)
    return out


# Run over ssh on another host: kills what carries the job id there (the same Python and
# package are on every host, as the launchers require).
_REAP = ("from deeplab.launch import procs; procs.kill_processes(lambda: [p for p in "
         "procs.job_processes(%r, %r) if procs.on_this_host(p)])")


def reap_remote(hosts, job_id, var=procs.JOB_ENV, timeout=20):
    """Kills the job's processes left on the other `hosts` (in parallel, over ssh): those
    whose environment has `var`=`job_id`.

    A process started with `ssh HOST CMD` (no terminal) does not die with its ssh client: a
    worker that was not itself failing (waiting in a collective for a dead peer, say) would run
    on until its stall watchdog. A host that does not answer is left to that watchdog."""
    def reap(host):
        try:
            subprocess.run(ssh_command(host, "%s -c %s" % (
                sys.executable, shlex.quote(_REAP % (job_id, var)))), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
        except (subprocess.TimeoutExpired, OSError):
            pass

    _each(hosts, reap)
