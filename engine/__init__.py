"""Distributed DeepLabV3 / Vortex Pooling training on MXNet Gluon.

Package layout (each a top-level folder of the repository):
    deeplab.model   networks (backbones, ASPP and Vortex heads); nothing distributed
    deeplab.data    VOC 2012 + SBD, synthetic data, deterministic augmentation and batches
    deeplab.dist    collectives and trainers for the local / Horovod / parameter-server backends
    deeplab.launch  launchers (horovodrun, parameter server)
    deeplab.k8s     Kubernetes manifests
    deeplab.bench   the training-throughput benchmark and analytic costs (`deeplab bench`)
and, from engine/: deeplab.config, deeplab.train, deeplab.precision, deeplab.evaluate,
deeplab.checkpoint, deeplab.metrics, deeplab.workdir, deeplab.logger, deeplab.errors,
deeplab.utils, deeplab.nvml, deeplab.cudabin and the `deeplab` command (deeplab.cli).
"""
__version__ = "0.1.0"
