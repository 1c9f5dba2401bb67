"""The `deeplab` command: `deeplab SUBCOMMAND ...`, each subcommand a module with
`parse_args(argv)` and `main(args)`."""
import importlib
import os
import sys
import traceback

# subcommand -> module implementing it
COMMANDS = {
    "train": "deeplab.train",
    "eval": "deeplab.evaluate",
    "bench": "deeplab.bench",
    "launch": "deeplab.launch.cli",
    "k8s": "deeplab.k8s.cli",
}

USAGE = """usage: deeplab {%s} ...

  train CONFIG --workdir DIR [--set KEY=VALUE ...] [--resume]
  eval  CONFIG --checkpoint PARAMS [--out results.json] [--set KEY=VALUE ...]
  bench CONFIG [--batch B] [--crop N] [--compare gluoncv,head,bn,hybridize] [--out FILE.json]
  launch horovod -np N [-H HOSTS | --hostfile FILE] [--mpi] -- train|eval|bench ARGS...
  launch ps --workers N --servers M -- train|eval|bench ARGS...
  k8s render|validate|run-local ...   (Kubernetes jobs; see `deeplab k8s -h`)

Run `deeplab SUBCOMMAND -h` for the options of each.""" % ",".join(COMMANDS)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print("deeplab: unknown subcommand %r\n\n%s" % (argv[0], USAGE), file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]])
    args = module.parse_args(argv[1:])
    code = 0
    try:
        module.main(args)
    except ValueError as err:
        # Bad input (ConfigError, DatasetError, ParamsError and the like are ValueErrors): one
        # clear line rather than a traceback, unless asked for.
        if os.environ.get("DEEPLAB_TRACEBACK"):
            traceback.print_exc()
        print("deeplab %s: error: %s" % (argv[0], err), file=sys.stderr)
        code = 2
    except SystemExit as err:
        if err.code in (None, 0):
            raise
        if isinstance(err.code, int):
            code = err.code
        else:
            print(err.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: B902 - reported, then the process ends with code 1
        traceback.print_exc()
        code = 1
    if code:
        # Under the parameter server a failing worker must not wait in ps-lite's shutdown.
        from deeplab import dist
        dist.exit_after_failure(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
