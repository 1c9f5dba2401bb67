"""The `deeplab` command: `deeplab SUBCOMMAND ...`, each subcommand a module with
`parse_args(argv)` and `main(args)`."""
import importlib
import sys

# subcommand -> module implementing it
COMMANDS = {
    "train": "deeplab.train",
    "eval": "deeplab.evaluate",
}

USAGE = """usage: deeplab {%s} ...

  train CONFIG --workdir DIR [--set KEY=VALUE ...] [--resume]
  eval  CONFIG --checkpoint PARAMS [--out results.json] [--set KEY=VALUE ...]

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
    from deeplab.config import ConfigError
    try:
        module.main(args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        # Bad input: one clear line, not a traceback.
        print("deeplab %s: error: %s" % (argv[0], err), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
