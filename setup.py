"""Installs the `deeplab` package from the repository's top-level folders.

The folders keep the layout our users asked for (model/, data/, dist/, launch/, k8s/), and are
installed as subpackages of one name, `deeplab`, so nothing generic lands at the top of
site-packages. engine/ is the package root (config, CLI, training and evaluation loops).

Dependencies are pinned in requirements/ (cpu.txt or gpu.txt) and installed by
scripts/setup_env.sh, which also builds Horovod; they are not repeated here so that a GPU
install (mxnet-cu112) and a CPU install (mxnet) use the same package.
"""
from setuptools import setup

SUBPACKAGES = ["model", "data", "dist", "launch", "k8s", "bench"]

setup(
    name="deeplab-dist",
    version="0.1.0",
    description="Distributed DeepLabV3 / Vortex Pooling training with MXNet Gluon and Horovod",
    python_requires=">=3.10",  # NGC MXNet images run 3.10; tests/test_python_versions.py checks
    packages=["deeplab"] + ["deeplab." + p for p in SUBPACKAGES],
    package_dir={"deeplab": "engine", **{"deeplab." + p: p for p in SUBPACKAGES}},
    # The MPI Operator's CRD schema that `deeplab k8s validate` checks MPIJobs against, and the
    # C++ source of synchronized BN's fused CPU kernels (compiled at first use).
    package_data={"deeplab.k8s": ["schemas/*.yaml"], "deeplab.dist": ["csrc/*.cc"]},
    entry_points={"console_scripts": ["deeplab = deeplab.cli:main"]},
)
