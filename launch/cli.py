"""`deeplab launch`: start a deeplab subcommand on many workers.

    deeplab launch horovod -np N [-H HOSTS | --hostfile FILE] [--mpi] [--grace S] -- CMD ARGS...
    deeplab launch ps [--workers N --servers M] [-H HOSTS [--server-hosts H,...]] [--grace S]
        -- CMD ARGS...

CMD is train, eval, bench or predict.
"""
import argparse
import os
import re
import sys

from deeplab.utils import positive_int

from . import horovod, ps

__all__ = ["parse_args", "main", "DEFAULT_GRACE"]

# Seconds the workers get to checkpoint and exit after the launcher receives SIGTERM.
DEFAULT_GRACE = float(os.environ.get("DEEPLAB_LAUNCH_GRACE", "120"))
SUBCOMMANDS = ("train", "eval", "bench", "predict")
_EXAMPLE = "deeplab launch horovod -np 2 -- train configs/tiny_synthetic.yaml --workdir runs/demo"
_STOPPING = ("SIGTERM, Ctrl-C or SIGHUP (the terminal closed: use nohup or setsid for a job that "
             "must outlive it): every worker is asked to stop after its current step (rank 0 "
             "saves a checkpoint); what still runs after --grace seconds is killed; exit code "
             "128 + the signal. A second signal kills the job at once.")


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError("expected a number of seconds >= 0, got %r" % text)
    return value


def _interfaces(text):
    """IFACE[,IFACE...]: Linux interface names (at most 15 characters, no '/' or spaces)."""
    names = text.split(",")
    if not all(re.match(r"^[A-Za-z0-9_.:@-]{1,15}$", n) for n in names):
        raise argparse.ArgumentTypeError("expected network interface names separated by ',', "
                                         "e.g. eth1 or ib0,eth1, got %r" % text)
    return text


def _parser():
    p = argparse.ArgumentParser(
        prog="deeplab launch", description=__doc__.split("\n\n")[0],
        epilog="The deeplab command follows '--', e.g. %s. %s" % (_EXAMPLE, _STOPPING))
    sub = p.add_subparsers(dest="backend", required=True, metavar="{horovod,ps}")
    h = sub.add_parser(
        "horovod", help="through horovodrun (Gloo, or MPI with --mpi)",
        usage="deeplab launch horovod -np N [-H HOSTS | --hostfile FILE] [--mpi] "
              "[--network-interface IFACE] [--start-timeout S] [--grace S] [--timeline FILE] "
              "[--autotune [LOG]] [--horovodrun-arg ARG ...] -- train|eval|bench|predict "
              "ARGS...",
        description="Runs `deeplab ARGS...` on N workers through horovodrun. When a worker "
                    "fails, the job stops and the rank that failed first is named. " + _STOPPING)
    h.add_argument("-np", dest="np", type=positive_int, required=True, help="number of workers")
    hosts = h.add_mutually_exclusive_group()
    hosts.add_argument("-H", "--hosts", help="host:slots,... (default localhost:NP)")
    hosts.add_argument("--hostfile", help="file of 'host slots=N' lines")
    h.add_argument("--mpi", action="store_true",
                   help="MPICH's mpirun instead of horovodrun: Horovod over MPI, synchronized "
                        "BN's statistics straight over MPI (dist.sync_bn_transport auto)")
    h.add_argument("--start-timeout", type=positive_int, default=120,
                   help="seconds for workers to start and to rendezvous (default 120)")
    h.add_argument("--timeline", metavar="FILE",
                   help="Horovod's timeline (horovodrun --timeline-filename): a Chrome trace "
                        "(chrome://tracing) of every collective, e.g. of synchronized BN")
    h.add_argument("--autotune", nargs="?", const=True, metavar="LOG",
                   help="Horovod's autotuner (fusion buffer, cycle time, ...), logging its "
                        "trials to LOG if given (horovodrun --autotune [--autotune-log-file])")
    h.add_argument("--network-interface", type=_interfaces, metavar="IFACE[,IFACE...]",
                   help="network interface(s) for the workers' traffic, e.g. a private cluster "
                        "network (horovodrun --network-interface; default: its own choice); "
                        "with --mpi only the first (mpirun -iface). The launcher's lifeline "
                        "listens on their addresses only; horovodrun's rendezvous still listens "
                        "on all interfaces (firewall it: docs/distributed.md)")
    h.add_argument("--horovodrun-arg", dest="horovodrun_args", action="append", default=[],
                   metavar="ARG", help="any other horovodrun argument, passed as given "
                   "(repeatable; an argument with a value: --horovodrun-arg=--cycle-time-ms "
                   "--horovodrun-arg=5); with --mpi, an mpirun argument")
    s = sub.add_parser(
        "ps", help="MXNet parameter server (kvstore dist_sync)",
        usage="deeplab launch ps [--workers N --servers M] [-H HOSTS [--server-hosts H,...]] "
              "[--grace S] -- "
              "train|eval|bench|predict ARGS...",
        description="Runs a scheduler, M servers and N workers on this machine, across hosts "
                    "reached over ssh (-H), or this node's role only when DMLC_ROLE is set (a "
                    "cluster). When a process fails, the job "
                    "stops and the worker that failed first is named. " + _STOPPING + " The "
                    "servers and the scheduler are stopped after the workers.")
    s.add_argument("--workers", type=positive_int, default=2,
                   help="worker processes (default 2)")
    s.add_argument("--servers", type=positive_int, default=1,
                   help="server processes (default 1)")
    s.add_argument("-H", "--hosts", default=None, metavar="HOSTS",
                   help="host:slots,... to run on, each reached with `ssh HOST` (same paths, "
                        "Python and package everywhere): the workers fill each host's slots "
                        "in turn, the servers go one per host in turn, the scheduler runs "
                        "here (default: all on this machine)")
    s.add_argument("--server-hosts", default=None, metavar="HOST,...",
                   help="with -H: the hosts the servers go to, one per host in turn "
                        "(default: the -H hosts), e.g. the launching host")
    for sp in (h, s):
        sp.add_argument("--grace", type=_seconds, default=DEFAULT_GRACE,
                        help="seconds the workers get to checkpoint and exit after SIGTERM "
                             "(default %g, or $DEEPLAB_LAUNCH_GRACE)" % DEFAULT_GRACE)
    return p, {"horovod": h, "ps": s}


def parse_args(argv=None):
    """Launcher options before '--', the deeplab command after it (as `args.command`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    own, command = argv[:cut], argv[cut + 1:]
    p, subparsers = _parser()
    args, extra = p.parse_known_args(own)  # prints the help for -h and stops there
    sp = subparsers[args.backend]
    if cut == len(argv):
        sp.error("put the deeplab command after '--', e.g. %s" % _EXAMPLE)
    if extra:
        sp.error("unrecognized arguments before '--': %s" % " ".join(extra))
    if not command or command[0] not in SUBCOMMANDS:
        sp.error("the command after '--' must be a deeplab subcommand: train, eval, bench or "
                 "predict%s"
                 % (", got %r" % command[0] if command else ""))
    args.command = command
    return args


def _world_size(args):
    """The number of training workers the job will have, or None where this launcher cannot
    tell (a parameter-server node of a cluster without DMLC_NUM_WORKER)."""
    if args.backend == "horovod":
        return args.np
    if os.environ.get("DMLC_ROLE"):
        count = os.environ.get("DMLC_NUM_WORKER", "")
        return int(count) if count.isdigit() and int(count) > 0 else None
    return args.workers


def preflight(args):
    """Before any worker starts: for `train`, its options and config, and that the global batch
    splits evenly over the workers (and their devices); raises UserError, so that the user reads
    one line instead of every worker's traceback, and nothing is written.

    The workers check it again (deeplab train's pre-flight): this is to fail before starting
    them."""
    if args.command[0] != "train":
        return
    if args.backend == "ps" and os.environ.get("DMLC_ROLE") in ("scheduler", "server"):
        # Such a node trains nothing; and `import mxnet` (which loading the config does) with
        # DMLC_ROLE=server|scheduler makes this process the ps-lite node itself, in place of
        # the supervised child (mxnet/kvstore/kvstore_server.py).
        return
    from deeplab import parsers
    from deeplab.config import load_config
    from deeplab.errors import ConfigError

    if args.backend == "horovod":  # the launcher's own arguments first
        horovod.check_hosts(args.np, args.hosts, args.hostfile)
    options = parsers.train(args.command[1:])
    if not os.path.isfile(options.config):
        return  # on the workers' machines only: they report it
    cfg = load_config(options.config, options.overrides)
    world = _world_size(args)
    if world is None:
        return
    batch, devices = cfg["train"]["batch_size"], cfg["dist"]["devices_per_worker"]
    if batch % (world * devices) == 0:
        return
    flag = "-np %d" % world if args.backend == "horovod" else "%d workers" % world
    fits = [n for n in range(1, batch + 1) if batch % (n * devices) == 0]
    raise ConfigError(
        "train.batch_size %d (the global batch) does not split over %s%s: use a number of "
        "workers among %s, or a train.batch_size that is a multiple of %d; no worker was "
        "started" % (batch, flag, " x %d devices" % devices if devices > 1 else "",
                     ", ".join(map(str, fits)), world * devices))


def main(args):
    """Runs the job; exits with its code (see horovod.run and ps.run)."""
    preflight(args)
    code = horovod.run(args) if args.backend == "horovod" else ps.run(args)
    if code:
        raise SystemExit(code)
