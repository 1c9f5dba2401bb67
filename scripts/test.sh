#!/usr/bin/env bash
# Sets up the environment if needed (scripts/setup_env.sh), then runs the test suite, and the
# --mpi tests again under Open MPI (below). Extra arguments go to pytest alone, e.g.
# `bash scripts/test.sh tests/model -k aspp`; DEEPLAB_SKIP_OPENMPI=1 skips the Open MPI pass.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_env.sh"
venv=${DEEPLAB_VENV:-$root/.venv}
cd "$root"
if [ $# -gt 0 ] || [ -n "${DEEPLAB_SKIP_OPENMPI:-}" ]; then
  exec "$venv/bin/python" -m pytest "$@"
fi
# The whole suite; then the tests of `deeplab launch horovod --mpi` once more under Open MPI, the
# MPI of NVIDIA's NGC image (the suite's own MPI is MPICH): an environment of its own with
# Horovod built against Open MPI (DEEPLAB_MPI=openmpi; made once, ~8 minutes, like the first).
status=0
"$venv/bin/python" -m pytest || status=$?
openmpi=${DEEPLAB_OPENMPI_VENV:-$root/.venv-openmpi}
echo "[test] the --mpi tests under Open MPI ($openmpi)" >&2
DEEPLAB_VENV=$openmpi DEEPLAB_MPI=openmpi bash "$root/scripts/setup_env.sh" || exit 1
"$openmpi/bin/python" -m pytest -m "not multihost" -k mpi tests/launch/test_mpi.py \
  tests/dist/test_equivalence.py tests/launch/test_faults.py || status=$?
exit $status
