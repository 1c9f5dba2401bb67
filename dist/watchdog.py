"""A stall watchdog: ends a worker whose training made no progress for too long.

A worker that is stopped (SIGSTOP), hung (a dead file system, a deadlock) or cut off from its
peers leaves the others waiting inside a collective: the parameter server waits forever, and
Horovod over Gloo fails only at its timeout, on a surviving rank, which then looks like the
culprit. The training loop calls `beat()` after each step; when no beat arrives in time, a
daemon thread prints one line and ends the process with EXIT_STALLED.

One watchdog covers a `deeplab train` process from start to end: start-up (the backend's
rendezvous, the pre-flight), every step, barrier and collective, evaluation, the final
checkpoint and save, and the backend's shutdown (the parameter server's finalisation waits for
every node, Horovod's last cycle for every peer); one covers a `deeplab eval` process the same
way (start-up, the evaluation and its gathers, the shutdown). The phases outside the step loop
run inside `extend(seconds, name)`, so that the line names the phase; a wait that names what it
waits for (`deeplab.utils.waiting_on`, e.g. the data loader's next sample and its file) is
named too. It ends it with `os._exit`, without Python's cleanup: the main thread is stuck in
a C call that does not return, and an orderly exit would wait for it.
"""
import os
import sys
import threading
import time
from contextlib import contextmanager

from deeplab.errors import EXIT_STALLED
from deeplab.utils import waits

from . import comm

__all__ = ["EXIT_STALLED", "Watchdog", "watched_command"]


class Watchdog:
    """Ends the process with `exit_code` when no `beat()` arrives for `timeout` seconds.

    Create it after `dist.init()`: its message names this worker's rank and backend. Use it as
    a context manager (or call `stop()`) so that it stops watching when training ends.

    Args:
        timeout: seconds allowed between beats; <= 0 disables the watchdog.
        first_timeout: seconds allowed before the first beat (default: `timeout`); <= 0: no
            limit until then.
        exit_code: the exit status of the process when the watchdog ends it.
    """

    def __init__(self, timeout, first_timeout=None, exit_code=EXIT_STALLED):
        self.timeout = float(timeout)
        self.enabled = self.timeout > 0
        self.exit_code = exit_code
        self._cond = threading.Condition()
        self._stopped = False
        self._last = time.monotonic()  # when the current limit started counting
        self._limit = self.timeout if first_timeout is None else float(first_timeout)
        self._what = "start-up"  # the last progress, for the message
        self._phase = None  # (name, seconds) of the `extend` block running, if any
        self._thread = None
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, name="deeplab-watchdog",
                                            daemon=True)
            self._thread.start()

    def beat(self, what):
        """Records progress: `what` (e.g. 'iteration 12') just completed; the limit restarts."""
        with self._cond:
            self._last, self._what = time.monotonic(), what
            self._limit = self.timeout if self._phase is None else self._phase[1]
            # A shorter limit than the one the thread waits for (the first one) must wake it.
            self._cond.notify()

    def expect(self, seconds):
        """Allows `seconds` (<= 0: no limit) until the next beat, e.g. for a first step that
        builds and compiles; inside an `extend` block, its limit comes back at the next beat."""
        with self._cond:
            self._limit = float(seconds)
            self._cond.notify()

    @contextmanager
    def extend(self, seconds, what):
        """Allows `seconds` (<= 0: no limit) instead of the timeout while the block runs, e.g.
        around the first step or evaluation; the block's end counts as a beat for `what`.

        Blocks may nest; beats inside a block keep its limit.
        """
        with self._cond:
            outer = self._phase
            self._phase = (what, float(seconds))
            self._last, self._limit = time.monotonic(), float(seconds)
            self._cond.notify()
        try:
            yield self
        finally:
            with self._cond:
                self._phase = outer
            self.beat(what)

    def stop(self):
        """Stops watching (the thread ends); later beats do nothing harmful."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def _watch(self):
        with self._cond:
            while True:
                if self._stopped:
                    return
                if self._limit <= 0:  # no limit now: wait for the next change
                    self._cond.wait()
                    continue
                left = self._last + self._limit - time.monotonic()
                if left <= 0:
                    message = self._message()
                    break
                self._cond.wait(left)
        _end_process(message, self.exit_code)

    def _message(self):
        during = "in %s " % self._phase[0] if self._phase is not None else ""
        # Asked now, not at creation: the watchdog may start before the backend does.
        try:
            where = "rank %d of %d, backend %s" % (comm.rank(), comm.size(), comm.backend())
        except Exception:  # noqa: B902 - a backend half started: the message must still go out
            where = "backend %s starting" % comm.backend()
        waiting = waits()
        hint = ("waiting for %s" % "; ".join(waiting)) if waiting else comm.stall_hint()
        return "deeplab: stalled: no progress for %s s %safter %s (%s); %s" % (
            _seconds(self._limit), during, self._what, where, hint)


def _seconds(s):
    return ("%.2f" % s).rstrip("0").rstrip(".")


def _end_process(message, code):
    """Writes `message` as one line to stderr and ends the process at once with `code`."""
    # Python's buffered output first, so the log reads in order; bounded, since a stalled main
    # thread may hold a stream's lock while blocked writing to a full pipe.
    def flush():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass

    flusher = threading.Thread(target=flush, daemon=True)
    flusher.start()
    flusher.join(1.0)
    os.write(2, (message + "\n").encode())
    os._exit(code)


@contextmanager
def watched_command(stall):
    """COLLECTIVE at its end. The frame of a command's workers (deeplab train, deeplab eval):
    one Watchdog (first_timeout 4x `stall`) over the whole body, which it yields; a lost
    network connection raised in the body becomes the one-line NetworkLost; after the body,
    the backend's shutdown runs watched as its own phase (the parameter server would otherwise
    run its barrier of every node at exit, unwatched: it waits for good on a stopped
    scheduler)."""
    with Watchdog(stall, first_timeout=4 * stall) as watchdog:
        try:
            yield watchdog
        except Exception as err:  # noqa: B902 - a lost connection, said in one line
            lost = comm.network_failure(err)
            if lost is None:
                raise
            raise lost from None
        with watchdog.extend(stall, "the %s backend's shutdown" % comm.backend()):
            comm.shutdown()
