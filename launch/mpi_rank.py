"""One rank of `deeplab launch horovod --mpi`, started by mpirun (MPICH's Hydra, or Open MPI's
in NVIDIA's NGC image) in the rank's place: runs the worker's command line as its child and
passes its output on line by line as "[RANK]<stdout>:LINE" and "[RANK]<stderr>:LINE", then, if
the worker failed, "Process RANK exit with status code N." on stderr: what horovodrun prints,
which the launcher reads (Hydra's own rank prefix marks chunks of output, not lines, so the
ranks' lines would interleave).

The worker sees Horovod's variables (HOROVOD_RANK, HOROVOD_SIZE, HOROVOD_LOCAL_RANK,
HOROVOD_LOCAL_SIZE) filled from Hydra's (PMI_RANK, PMI_SIZE, MPI_LOCALRANKID,
MPI_LOCALNRANKS) or Open MPI's (OMPI_COMM_WORLD_RANK, ...), as under horovodrun: the launcher,
the backend's choice and the tests find a worker's rank the same way. Horovod itself takes its
ranks from MPI.

A worker killed by a signal makes this process die of the same signal: Hydra then ends the other
ranks at once (it does so for a rank killed by a signal, not for an exit code; a worker stopped
by SIGTERM exits with 143 and its peers stop by themselves after the same step). The worker dies
with this process (PR_SET_PDEATHSIG) if Hydra kills it.

    python -m deeplab.launch.mpi_rank 'COMMAND LINE'   (one shell-quoted argument, so that this
                                                        process is not taken for the worker)

`python -m deeplab.launch.mpi_rank --relay MPIRUN ARGS...` runs mpirun itself and copies its
output on: mpirun exits, ending every rank, the moment a write to its output fails, so it must
not write to the launcher's pipe directly. If the launcher is killed, the workers notice
(procs.watch_launcher) and stop with a checkpoint while the relay goes on draining mpirun's
output into the void.
"""
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import threading

__all__ = ["child_environ", "main", "relay"]

# Hydra's and Open MPI's variables -> Horovod's
_RANK_VARS = (("PMI_RANK", "HOROVOD_RANK"), ("PMI_SIZE", "HOROVOD_SIZE"),
              ("MPI_LOCALRANKID", "HOROVOD_LOCAL_RANK"),
              ("MPI_LOCALNRANKS", "HOROVOD_LOCAL_SIZE"),
              ("OMPI_COMM_WORLD_RANK", "HOROVOD_RANK"), ("OMPI_COMM_WORLD_SIZE", "HOROVOD_SIZE"),
              ("OMPI_COMM_WORLD_LOCAL_RANK", "HOROVOD_LOCAL_RANK"),
              ("OMPI_COMM_WORLD_LOCAL_SIZE", "HOROVOD_LOCAL_SIZE"))


def child_environ(environ):
    """The worker's environment: this one with Horovod's rank variables from Hydra's or Open
    MPI's."""
    env = dict(environ)
    for mpi, horovod in _RANK_VARS:
        if mpi in env:
            env[horovod] = env[mpi]
    return env


def _rank(environ):
    return environ.get("PMI_RANK") or environ.get("OMPI_COMM_WORLD_RANK") or "?"


_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _in_child():
    for sig in _STOPS:  # ignored here; an ignored signal would stay ignored across exec
        signal.signal(sig, signal.SIG_DFL)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pump(stream, fd, prefix):
    for line in iter(stream.readline, b""):
        if not line.endswith(b"\n"):
            line += b"\n"
        os.write(fd, prefix + line)  # one write per line: Hydra passes it on whole


def _drain(stream, fd):
    """Copies `stream` to `fd` until end-of-file; after a failed write, only reads."""
    ok = True
    for chunk in iter(lambda: stream.read1(65536), b""):
        if ok:
            try:
                os.write(fd, chunk)
            except OSError:
                ok = False


def relay(argv):
    """Runs `argv` (mpirun) with its output copied to this process's; returns its exit code
    (128 + N if it died of signal N)."""
    for sig in _STOPS:  # the launcher signals the workers, never mpirun
        signal.signal(sig, signal.SIG_IGN)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL)
                                                for s in _STOPS])
    pumps = [threading.Thread(target=_drain, args=(proc.stdout, 1)),
             threading.Thread(target=_drain, args=(proc.stderr, 2))]
    for t in pumps:
        t.start()
    code = proc.wait()
    for t in pumps:
        t.join()
    return 128 - code if code < 0 else code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--relay"] and len(argv) > 1:
        return relay(argv[1:])
    if len(argv) != 1:
        print("usage: python -m deeplab.launch.mpi_rank 'COMMAND LINE'", file=sys.stderr)
        return 2
    # Stop requests are the worker's to handle (the launcher signals it directly).
    for sig in _STOPS:
        signal.signal(sig, signal.SIG_IGN)
    rank = _rank(os.environ)
    keep = [int(os.environ["PMI_FD"])] if os.environ.get("PMI_FD", "").isdigit() else []
    proc = subprocess.Popen(shlex.split(argv[0]), env=child_environ(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=keep,
                            preexec_fn=_in_child)
    tag = rank.encode()
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, 1, b"[%s]<stdout>:" % tag)),
             threading.Thread(target=_pump, args=(proc.stderr, 2, b"[%s]<stderr>:" % tag))]
    for t in pumps:
        t.start()
    code = proc.wait()
    for t in pumps:
        t.join()
    if code != 0:  # a signal as a shell says it (128 + N), like horovodrun's workers
        os.write(2, b"Process %s exit with status code %d.\n"
                 % (rank.encode(), 128 - code if code < 0 else code))
    if code < 0:
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code if 0 <= code < 256 else 1


if __name__ == "__main__":
    sys.exit(main())
