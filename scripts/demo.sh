#!/usr/bin/env bash
# The main job: sets up the environment if needed, then trains the tiny DeepLabV3 on the built-in
# synthetic data with 2 Horovod workers (synchronized BN) and evaluates it, the confusion matrix
# gathered on rank 0 (pixAcc, mIoU). Results in runs/demo/ (or $1: an earlier demo run there is
# replaced; a folder holding anything else, a training run on real data included, is refused).
# DEEPLAB_WORKERS=N changes the number of workers (the global batch, 8, must be divisible by it).
# The workers run under MPI (--mpi: MPICH's mpirun, Horovod's MPI controller, synchronized BN's
# statistics straight over MPI), the fastest correct path here: the same parameters, bit for
# bit, as through horovodrun over Gloo, in about half the time (docs/distributed.md);
# DEEPLAB_DEMO_GLOO=1 runs it through horovodrun over Gloo instead.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_env.sh"
venv=${DEEPLAB_VENV:-$root/.venv}
workdir=${1:-$root/runs/demo}
# deeplab train's rule for --workdir: a folder holding anything a run does not write, or a run
# still going, is refused (exit code 2) with nothing deleted; so is a run that is not a demo's
# (its config.yaml's data.name is not synthetic).
"$venv/bin/python" - "$workdir" <<'EOF' || exit 2
import sys
from deeplab.errors import UserError
from deeplab.workdir import replace_run
try:
    replace_run(sys.argv[1])
except UserError as err:
    sys.exit("demo.sh: error: %s" % err)
EOF
mpi=--mpi
if [ -n "${DEEPLAB_DEMO_GLOO:-}" ]; then mpi=; fi
exec "$venv/bin/deeplab" launch horovod $mpi -np "${DEEPLAB_WORKERS:-2}" -- \
  train "$root/configs/tiny_synthetic.yaml" --workdir "$workdir"
