#!/usr/bin/env bash
# Sets up the environment if needed (scripts/setup_env.sh), then runs the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/model -k aspp`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_env.sh"
venv=${DEEPLAB_VENV:-$root/.venv}
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
