"""The `deeplab` command: `deeplab SUBCOMMAND ...`, each subcommand a module with
`parse_args(argv)` and `main(args)`.

Exit codes: 0 success; 1 a failure with a traceback (a bug); 2 bad input (a config, a file, a
directory, a flag), reported in one line; 3 training diverged (non-finite loss or parameters);
4 a stalled job (see dist.stall_timeout); 5 a lost network connection between workers; 6 a
`deeplab doctor` check failed; 143 stopped by SIGTERM after saving a checkpoint; 130 stopped by
Ctrl-C (SIGINT): after saving a checkpoint, or at once on a second Ctrl-C.
"""
import importlib
import os
import sys
import traceback

# subcommand -> module implementing it
COMMANDS = {
    "train": "deeplab.train",
    "eval": "deeplab.evaluate",
    "predict": "deeplab.predict",
    "export": "deeplab.export",
    "plot": "deeplab.plot",
    "bench": "deeplab.bench",
    "launch": "deeplab.launch.cli",
    "k8s": "deeplab.k8s.cli",
    "fetch": "deeplab.fetch",
    "doctor": "deeplab.doctor",
    "check-data": "deeplab.check_data",
}

# subcommand -> its parser in deeplab.parsers, for the modules that import MXNet
LIGHT_PARSERS = {"train": "train", "eval": "evaluate", "predict": "predict", "export": "export"}

USAGE = """usage: deeplab [--version] {%s} ...

  train CONFIG --workdir DIR [--resume | --resume-if-exists] [--allow-config-change]
        [--no-eval] [--quiet] [--set KEY=VALUE ...]
  eval  CONFIG --checkpoint PARAMS|RUN_DIR [--out results.json] [--quiet] [--set KEY=VALUE ...]
  predict CONFIG --checkpoint PARAMS|RUN_DIR --out DIR [--batch-per-call B] [--quiet] INPUT...
          [--set KEY=VALUE ...]
  export CONFIG --checkpoint PARAMS|RUN_DIR --out PREFIX [--onnx] [--size H W]
         [--set KEY=VALUE ...]
  plot  --workdir DIR [--workdir DIR2 ...] [--out curves.png] | plot --confusion RESULTS [--out PNG]
  bench CONFIG [--mode train|infer] [--batch-per-worker B] [--crop N] [--steps S] [--warmup W]
        [--repeat R] [--compare gluoncv,head,bn,hybridize,amp] [--baseline ONE_WORKER.json]
        [--out FILE.json] [--plot FILE.png] [--profile T.json] [--quiet] [--set KEY=VALUE ...]
  launch horovod -np N [-H HOSTS | --hostfile FILE] [--mpi] [--start-timeout S] [--grace S]
         [--timeline FILE] [--autotune [LOG]] [--horovodrun-arg ARG ...]
         [--network-interface IFACE[,IFACE...]] -- train|eval|bench|predict ARGS...
  launch ps [--workers N --servers M] [-H HOSTS [--server-hosts H,...]] [--grace S]
         -- train|eval|bench|predict ARGS...
  k8s render CONFIG --backend horovod|ps --nodes N --gpus-per-node G --image IMG
             --data-pvc NAME --out DIR [--name JOB] [...]  (deeplab k8s render -h)
  k8s validate DIR | k8s run-local DIR --data-dir LOCAL_DIR [--source SRC] [--timeout S]
             [--dry-run]
  fetch backbone NAME [--root DIR] | fetch voc --root DIR [--keep-archives]
        | fetch cityscapes [--root DIR] [--delete-archives]
        ($DEEPLAB_FETCH_MIRROR replaces the download base URL)
  doctor [CONFIG] [--workers N] [--json] [--set KEY=VALUE ...]
  check-data CONFIG [--split train val] [--set KEY=VALUE ...]

KEY=VALUE sets a config key (docs/configuration.md), e.g. train.lr=1e-3 data.num_workers=4.
Run `deeplab SUBCOMMAND -h` for the options of each.""" % ",".join(COMMANDS)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from deeplab import __version__
        print("deeplab %s" % __version__)
        return 0
    if argv[0] not in COMMANDS:
        print("deeplab: unknown subcommand %r\n\n%s" % (argv[0], USAGE), file=sys.stderr)
        return 2
    from deeplab.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, JobStopped, UserError

    code = 0
    try:
        # Options first, MXNet after: `-h` and a bad flag answer at once.
        light = LIGHT_PARSERS.get(argv[0])
        if light:
            from deeplab import parsers

            args = getattr(parsers, light)(argv[1:])
        module = importlib.import_module(COMMANDS[argv[0]])
        if not light:
            args = module.parse_args(argv[1:])
        from deeplab.launch import procs

        if argv[0] in procs.COMMANDS:
            # A worker of a launcher stops (with a checkpoint) if its launcher is killed, or
            # when the launcher on another host asks through its lifeline.
            procs.watch_launcher(procs.stop_when_launcher_lost,
                                 on_stop=procs.stop_when_launcher_asks)
        module.main(args)
    except UserError as err:
        # Bad input: one clear line rather than a traceback, unless asked for.
        if os.environ.get("DEEPLAB_TRACEBACK"):
            traceback.print_exc()
        print("deeplab %s: error: %s" % (argv[0], err), file=sys.stderr)
        code = EXIT_USER_ERROR
    except JobStopped as err:
        print("deeplab %s: %s" % (argv[0], err), file=sys.stderr)
        code = err.exit_code
    except SystemExit as err:  # argparse's usage errors and --help, launchers' exit codes
        if err.code in (None, 0):
            raise
        if isinstance(err.code, int):
            code = err.code
        else:
            print(err.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt as err:  # Ctrl-C outside training's loop, or a second one in it
        # Only what happened: a second Ctrl-C may land once the first one's checkpoint is saved.
        saved = getattr(err, "saved_checkpoint", None)
        print("deeplab %s: interrupted (Ctrl-C): stopped at once%s" % (
            argv[0], "" if argv[0] != "train" else
            ", after the checkpoint of iteration %d was saved; continue with --resume" % saved
            if saved is not None else
            ", without a checkpoint; continue from the last one with --resume"), file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BaseException:  # noqa: B902 - reported, then the process ends with code 1
        traceback.print_exc()
        code = 1
    if code and "deeplab.dist" in sys.modules:
        # Under the parameter server a failing worker must not wait in ps-lite's shutdown.
        sys.modules["deeplab.dist"].exit_after_failure(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
