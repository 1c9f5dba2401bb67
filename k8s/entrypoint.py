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


class _Pod(procs.Policy):
    """The Supervisor's policy for PID 1: the training processes in the container stopped
    first (with --workers), then CMD; orphans reaped."""

    def __init__(self, command, workers):
        self.command, self.workers = command, workers
        self.child, self.status = None, None

    def start(self, sup):
        try:
            # A process group of its own: a Ctrl-C in a terminal reaches CMD only through us.
            self.child = os.posix_spawnp(self.command[0], self.command, os.environ, setpgroup=0)
        except OSError as err:
            _say("cannot run %s: %s" % (self.command[0], err))

    def targets(self, sup):
        if not sup.signalled:
            _say("%s: stopping %s (grace %g s)" % (
                sup.stopping[1], "the training processes, then %s" % self.command[0]
                if self.workers else self.command[0], sup.grace))
        training = procs.training_processes(among=_in_scope()) if self.workers else []
        # CMD once the training processes have all exited
        return training or [self.child]

    def ended(self, sup):
        if self.child is None:
            return True
        if self.status is None:
            self.status = _reap(self.child)
        return self.status is not None

    def grace_over(self, sup):
        _say("still running %g s after %s: killing everything" % (sup.grace, sup.stopping[1]))

    def teardown(self, sup):
        if self.child is not None:
            reaped = _kill_rest(self.child)
            self.status = reaped if self.status is None else self.status

    def report(self, sup, outcome):
        if self.child is None:
            return 127
        if self.status is None:
            return 128 + signal.SIGKILL
        code = os.waitstatus_to_exitcode(self.status)
        return 128 - code if code < 0 else code


def run(command, grace=30.0, workers=False, poll=0.1):
    """Runs `command` as PID 1 would; returns the exit status to end with (see the module
    docstring)."""
    if os.getpid() != 1:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    return procs.Supervisor(_Pod(command, workers), grace, poll, say=_say).run()


def main(argv=None):
    args = parse_args(argv)
    return run(args.command, grace=args.grace, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
