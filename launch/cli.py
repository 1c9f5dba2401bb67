"""`deeplab launch`: start a deeplab subcommand on many workers.

    deeplab launch horovod -np N [-H HOSTS | --hostfile FILE] [--mpi] -- train|eval|bench ARGS...
    deeplab launch ps --workers N --servers M -- train|eval|bench ARGS...
"""
import argparse
import sys

from . import horovod, ps

__all__ = ["parse_args", "main"]


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        raise SystemExit("deeplab launch: put the deeplab command after '--', e.g. "
                         "deeplab launch horovod -np 2 -- train configs/tiny_synthetic.yaml "
                         "--workdir runs/demo")
    cut = argv.index("--")
    own, command = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="deeplab launch", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="backend", required=True)
    h = sub.add_parser("horovod", help="through horovodrun (Gloo, or MPI with --mpi)")
    h.add_argument("-np", dest="np", type=int, required=True, help="number of workers")
    hosts = h.add_mutually_exclusive_group()
    hosts.add_argument("-H", "--hosts", help="host:slots,... (default localhost:NP)")
    hosts.add_argument("--hostfile", help="file of 'host slots=N' lines")
    h.add_argument("--mpi", action="store_true", help="MPI controller instead of Gloo")
    h.add_argument("--start-timeout", type=int, default=120,
                   help="seconds for workers to start and to rendezvous (default 120)")
    s = sub.add_parser("ps", help="MXNet parameter server (kvstore dist_sync)")
    s.add_argument("--workers", type=int, default=2, help="worker processes (one machine)")
    s.add_argument("--servers", type=int, default=1, help="server processes (one machine)")
    args = p.parse_args(own)
    if not command or command[0] not in ("train", "eval", "bench"):
        p.error("the command after '--' must be a deeplab subcommand: train, eval or bench")
    args.command = command
    return args


def main(args):
    code = horovod.run(args) if args.backend == "horovod" else ps.run(args)
    if code:
        raise SystemExit(code)
