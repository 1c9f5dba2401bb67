"""The run logger: timestamped lines on the console and in DIR/train.log on the main worker,
silent on the others (their output would repeat the main worker's, interleaved).

    log = run_logger(os.path.join(workdir, "train.log"))
    log.info("iter %d/%d ...", it, total)
"""
import logging
import sys

from deeplab import dist

__all__ = ["run_logger", "format_duration", "progress"]

_FORMAT = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


def run_logger(path=None, name="deeplab", main=None):
    """The logger `name`, configured afresh: console (stdout) and `path` (appended) on the main
    worker, nothing elsewhere.

    Args:
        path: log file, or None for the console only.
        main: whether this process writes (default: `dist.is_main()`).
    """
    main = dist.is_main() if main is None else main
    log = logging.getLogger(name)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.propagate = False
    if not main:
        log.addHandler(logging.NullHandler())
        log.setLevel(logging.CRITICAL + 1)
        return log
    log.setLevel(logging.INFO)
    handlers = [logging.StreamHandler(sys.stdout)]
    if path:
        handlers.append(logging.FileHandler(path, mode="a"))
    for h in handlers:
        h.setFormatter(_FORMAT)
        log.addHandler(h)
    return log


def format_duration(seconds):
    """'1:02:03' for 3723 s; '2d 1:02:03' past a day."""
    seconds = int(max(0, round(seconds)))
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    text = "%d:%02d:%02d" % (h, m, s)
    return "%dd %s" % (days, text) if days else text


def progress(iterable, total, desc, quiet=False):
    """A tqdm progress bar on the main worker when stderr is a terminal and not `quiet`; the
    iterable unchanged otherwise (worker ranks, logs, pipes)."""
    if quiet or not dist.is_main() or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)
