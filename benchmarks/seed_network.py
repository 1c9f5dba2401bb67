"""Our DeepLabV3 against the seed project's network, ASPP and Vortex Pooling heads, side by side:
one training step's forward + backward of each, same input, one process (so the same threads),
alternating.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/seed_network.py --seed-repo PATH [--crop 512]
        [--rounds 12] [--warmup 2] [--ours-imperative] [--out FILE.json]

PATH (default: $DEEPLAB_SEED_REPO) is a checkout of
github.com/MTCloudVision/deeplabv3-mxnet_gluon or its bare git directory (then its HEAD is read
with git). Its resnet/network.py is loaded from there at run time; none of its code is copied
here. The seed's networks are built as its train.py builds them, ResNet-50 v2 at output stride
16: ResNet(BottleneckV2, [3, 4, 6, 3], [64, 256, 512, 1024, 2048], 16, 1 for ASPP or 2 for
Vortex Pooling). Its Vortex module averages with plain square AvgPool2D (3, 9, 27), counting the
zero padding (MXNet's default); ours averages over the in-image part of each window.

What this script adapts, and why:
- the seed's network resizes its logits to a fixed 512x512 (ResNet.hybrid_forward): the crop
  must be 512;
- its blocks read `x.shape` in hybrid_forward, so it cannot be hybridized: it runs imperatively,
  as its train.py trains it; ours runs hybridized with static allocation, as our training does
  (--ours-imperative adds ours imperative too);
- its layers leave their input channels to deferred initialization: one forward pass resolves
  them before timing;
- both get the same initialization (He: Xavier, gaussian, in, magnitude 2), the same image and
  label and our loss (a sum of softmax cross-entropy; the seed's loss lives in its data.py with
  its dataset code, and a loss is a negligible part of a step). No optimizer update is timed.

Timing as benchmarks/vortex_pooling.py: after --warmup steps each, --rounds rounds of one step
of every variant, order rotated every round; wall-clock and process CPU time per step; ratios
taken within a round, summarised by median, quartiles and range.
"""
import argparse
import datetime
import importlib.util
import os
import subprocess
import types

import mxnet as mx
import numpy as np
from mxnet import autograd

from deeplab.model import get_model
from deeplab.utils import write_json
# benchmarks/, this script's folder, is first on sys.path
from vortex_pooling import (MODEL, command_line, machine, ratio_stats, time_rounds,
                            training_step)

SEED_URL = "https://github.com/MTCloudVision/deeplabv3-mxnet_gluon"
SEED_FILE = "resnet/network.py"
SEED_CROP = 512  # the seed's ResNet.hybrid_forward resizes its logits to 512x512
HEADS = {"aspp": 1, "vortex": 2}  # the seed's aspp_or_vortex values
RATIOS = (("ours-vortex", "seed-vortex"), ("ours-vortex", "ours-aspp"),
          ("ours-aspp", "seed-aspp"), ("seed-vortex", "seed-aspp"))


def _git(path, *args):
    return subprocess.run(["git", "--git-dir", path] + list(args), check=True,
                          capture_output=True, text=True).stdout


def load_seed(path):
    """(module, provenance) of the seed's resnet/network.py, from a checkout or a git dir."""
    path = os.path.abspath(path)
    source_file = os.path.join(path, SEED_FILE)
    if os.path.isfile(source_file):
        spec = importlib.util.spec_from_file_location("seed_resnet_network", source_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        git_dir = os.path.join(path, ".git")
        commit = _git(git_dir, "rev-parse", "HEAD").strip() if os.path.isdir(git_dir) else None
        return module, {"path": source_file, "commit": commit}
    try:
        source = _git(path, "show", "HEAD:" + SEED_FILE)
        commit = _git(path, "rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError) as err:
        detail = (getattr(err, "stderr", None) or str(err)).strip()
        raise SystemExit("--seed-repo %s: neither a checkout with %s nor a git directory whose "
                         "HEAD has it (%s); get it from %s" % (path, SEED_FILE, detail, SEED_URL))
    origin = "%s:HEAD:%s" % (path, SEED_FILE)
    module = types.ModuleType("seed_resnet_network")
    module.__file__ = origin
    exec(compile(source, origin, "exec"), module.__dict__)
    return module, {"path": origin, "commit": commit}


def seed_network(seed, head, crop):
    """The seed's ResNet-50 v2 network at output stride 16, as its train.py builds it."""
    net = seed.ResNet(seed.BottleneckV2, [3, 4, 6, 3], [64, 256, 512, 1024, 2048], 16,
                      HEADS[head])
    mx.random.seed(0)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    with autograd.train_mode():  # resolves the deferred shapes; nothing recorded
        net(mx.nd.zeros((1, 3, crop, crop)))
    return net


def build_variants(seed, crop, ours_imperative):
    nets = {}
    for head in HEADS:
        ours = get_model(MODEL, head=head, output_stride=16, seed=0)
        ours.hybridize(static_alloc=True)
        nets["ours-" + head] = ours
        nets["seed-" + head] = seed_network(seed, head, crop)
        if ours_imperative:
            nets["ours-%s-imperative" % head] = get_model(MODEL, head=head, output_stride=16,
                                                          seed=0)
    return nets


def _format(s):
    return "%.3f [IQR %.3f-%.3f, range %.3f-%.3f]" % (s["median"], s["q25"], s["q75"], s["min"],
                                                     s["max"])


def main(args):
    if args.crop != SEED_CROP:
        raise SystemExit("--crop %d: the seed's network resizes its logits to %dx%d "
                         "(ResNet.hybrid_forward in its %s); use --crop %d"
                         % (args.crop, SEED_CROP, SEED_CROP, SEED_FILE, SEED_CROP))
    seed, provenance = load_seed(args.seed_repo)
    nets = build_variants(seed, args.crop, args.ours_imperative)
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.standard_normal((1, 3, args.crop, args.crop)))
    label = mx.nd.array(rng.randint(0, 21, (1, args.crop, args.crop)))
    print("training step (forward + backward), ResNet-50 v2, OS16, crop %d, batch 1, "
          "OMP_NUM_THREADS=%s: %s" % (args.crop, os.environ.get("OMP_NUM_THREADS"),
                                      ", ".join(nets)), flush=True)
    times = time_rounds({n: training_step(net, x, label) for n, net in nets.items()},
                        args.rounds, args.warmup)
    variants = {n: {"hybridized": n.startswith("ours") and not n.endswith("imperative"),
                    "wall_s": float(np.median(t["wall_s"])),
                    "cpu_s": float(np.median(t["cpu_s"])),
                    "wall_s_all": t["wall_s"], "cpu_s_all": t["cpu_s"]}
                for n, t in times.items()}
    ratios = {"%s/%s" % (a, b): {"wall": ratio_stats(times[a]["wall_s"], times[b]["wall_s"]),
                                 "cpu": ratio_stats(times[a]["cpu_s"], times[b]["cpu_s"])}
              for a, b in RATIOS}
    report = {"benchmark": "seed_network", "command": command_line(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(),
              "seed": dict(provenance, repository=SEED_URL, file=SEED_FILE),
              "model": MODEL, "output_stride": 16, "crop": args.crop, "batch": 1,
              "rounds": args.rounds, "warmup": args.warmup, "variants": variants,
              "ratios": ratios}
    print("median step, wall / CPU:")
    for name, v in variants.items():
        print("  %-24s %.3f s / %.3f s" % (name, v["wall_s"], v["cpu_s"]))
    print("per-round ratios:")
    for name, r in ratios.items():
        print("  %-24s wall %s; CPU %s" % (name, _format(r["wall"]), _format(r["cpu"])))
    if args.out:
        write_json(args.out, report)
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed-repo", default=os.environ.get("DEEPLAB_SEED_REPO"),
                   help="checkout or bare git directory of %s (default: $DEEPLAB_SEED_REPO)"
                   % SEED_URL)
    p.add_argument("--crop", type=int, default=SEED_CROP)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ours-imperative", action="store_true",
                   help="also time ours imperatively (as the seed runs)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    if not args.seed_repo:
        p.error("--seed-repo (or DEEPLAB_SEED_REPO) is required: a checkout or bare git "
                "directory of %s" % SEED_URL)
    return args


if __name__ == "__main__":
    main(parse_args())
