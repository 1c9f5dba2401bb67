"""PID 1 of the training pods: runs the pod's command as a child, reaps zombies, and on SIGTERM
stops the training processes so that they can save a checkpoint first.

    python -m deeplab.k8s.entrypoint [--grace S] [--workers] -- CMD [ARGS...]

Kubernetes deletes a pod by sending SIGTERM to PID 1 of each container, and SIGKILL to everything
terminationGracePeriodSeconds later. A process that is PID 1 does not die of signals it does not
handle, and it inherits every orphan of the container, which stays a zombie unless PID 1 reaps
it. This entrypoint does both duties, and forwards the stop:

- default (launcher and parameter-server pods): CMD is `deeplab launch ...`, which stops its own
  processes in the right order; SIGTERM is forwarded to CMD.
- `--workers` (MPIJob worker pods): CMD is `sshd -De`; the training processes are started by
  horovodrun through ssh, so no signal reaches them through CMD. Each training process
  (`deeplab train|eval|bench`, not its loader processes) found in /proc is sent one SIGTERM (a
  second would end it without a checkpoint); once they have all exited, CMD gets SIGTERM.

When CMD has exited, or `--grace` seconds after the SIGTERM, whatever is left is killed, and the
entrypoint exits with CMD's status (128 + N if CMD was killed by signal N). Outside a PID
namespace (tests, `deeplab k8s run-local`) it makes itself a child subreaper, so that orphans of
CMD are re-parented to it, and it only signals its own descendants.
"""
import argparse
import ctypes
import os
import signal
import sys
import time

from deeplab.launch import procs

__all__ = ["parse_args", "run", "main"]

_PR_SET_CHILD_SUBREAPER = 36


def _say(text):
    print("deeplab entrypoint: %s" % text, file=sys.stderr, flush=True)


def parse_args(argv=None):
    """Entrypoint options before '--', the pod's command after it (`args.command`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m deeplab.k8s.entrypoint",
                                description=__doc__.split("\n\n")[0],
                                usage="%(prog)s [--grace S] [--workers] -- CMD [ARGS...]")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds from SIGTERM until what is left is killed (default 30); keep "
                        "it below the pod's terminationGracePeriodSeconds")
    p.add_argument("--workers", action="store_true",
                   help="stop the training processes in the container first (they are not "
                        "children of CMD: MPIJob worker pods, where CMD is sshd)")
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = p.parse_known_args(argv[:cut])
    args.command = argv[cut + 1:]
    if cut == len(argv) or not args.command:
        p.error("put the pod's command after '--', e.g. -- /usr/sbin/sshd -De")
    if extra:
        p.error("unrecognized arguments before '--': %s" % " ".join(extra))
    if args.grace < 0:
        p.error("--grace must be >= 0, got %g" % args.grace)
    return args


def _in_scope():
    """The processes this entrypoint looks after: the whole PID namespace when it is PID 1,
    else its descendants."""
    return procs.all_pids() if os.getpid() == 1 else procs.descendants(os.getpid())


def _reap(child):
    """Reaps every exited child (orphans included); returns the wait status of `child` if it
    was among them, else None."""
    status = None
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == child:
            status = st


def _kill_rest(child, timeout=5.0):
    """SIGKILLs every process left in scope and reaps them; returns the wait status of `child`
    if it was reaped here."""
    me = os.getpid()
    procs.kill_processes(lambda: [pid for pid in _in_scope() if pid != me and procs.alive(pid)],
                         timeout=timeout)
    return _reap(child)


def run(command, grace=30.0, workers=False, poll=0.1):
    """Runs `command` as PID 1 would; returns the exit status to end with (see the module
    docstring)."""
    if os.getpid() != 1:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    with procs.StopSignals() as stop:
        try:
            # A process group of its own: a Ctrl-C in a terminal reaches CMD only through us.
            child = os.posix_spawnp(command[0], command, os.environ, setpgroup=0)
        except OSError as err:
            _say("cannot run %s: %s" % (command[0], err))
            return 127
        status = None
        signalled = set()
        child_signalled = False
        announced = False
        while status is None:
            status = _reap(child)
            if status is not None:
                break
            if stop.count > 1:
                _say("%s again: killing everything" % signal.Signals(stop.signum).name)
                break
            if stop.count:
                if not announced:
                    announced = True
                    _say("%s: stopping %s (grace %g s)" % (
                        signal.Signals(stop.signum).name,
                        "the training processes, then %s" % command[0] if workers
                        else command[0], grace))
                training = procs.training_processes(among=_in_scope()) if workers else []
                for pid in training:
                    if pid not in signalled:
                        signalled.add(pid)
                        procs.signal_process(pid, signal.SIGTERM)
                if not training and not child_signalled:
                    child_signalled = True
                    procs.signal_process(child, signal.SIGTERM)
                if time.monotonic() - stop.first_time > grace:
                    _say("still running %g s after %s: killing everything"
                         % (grace, signal.Signals(stop.signum).name))
                    break
            time.sleep(poll)
        reaped = _kill_rest(child)
        status = reaped if status is None else status
    if status is None:
        return 128 + signal.SIGKILL
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def main(argv=None):
    args = parse_args(argv)
    return run(args.command, grace=args.grace, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
