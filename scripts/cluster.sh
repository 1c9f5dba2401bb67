#!/usr/bin/env bash
# Emulated hosts on this machine (network namespaces with sshd; needs root). See scripts/cluster.py.
#   scripts/cluster.sh up N [--rate R] [--delay D]   start node1..nodeN (e.g. --rate 1gbit)
#   scripts/cluster.sh exec NODE CMD...              run CMD on NODE (ssh nodeK works from there)
#   scripts/cluster.sh shape NODE [--rate R] [--delay D] [--cut|--restore]
#   scripts/cluster.sh down                          stop and remove everything (idempotent)
# --name NAME (before the action) or $DEEPLAB_CLUSTER runs several clusters side by side.
set -euo pipefail
exec python3 "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cluster.py" "$@"
