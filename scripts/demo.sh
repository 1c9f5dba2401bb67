#!/usr/bin/env bash
# The main job: sets up the environment if needed, then trains the tiny DeepLabV3 on the built-in
# synthetic data and evaluates it (pixAcc, mIoU). Results in runs/demo/ (or $1).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_env.sh"
venv=${DEEPLAB_VENV:-$root/.venv}
workdir=${1:-$root/runs/demo}
rm -rf "$workdir"
exec "$venv/bin/deeplab" train "$root/configs/tiny_synthetic.yaml" --workdir "$workdir"
