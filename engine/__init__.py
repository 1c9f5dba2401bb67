"""Distributed DeepLabV3 / Vortex Pooling training on MXNet Gluon.

The Python API (docs/api.md), loaded on first use so that `import deeplab` stays cheap:

    import deeplab
    model = deeplab.load("runs/demo")          # a run directory, or a .params file + config=
    labels, probs = model.segment(image)       # (H, W, 3) uint8 RGB array or PIL image
    results = model.evaluate("images/", "masks/")

Package layout (each a top-level folder of the repository):
    deeplab.model   networks (backbones, ASPP and Vortex heads); nothing distributed
    deeplab.data    VOC 2012 + SBD, Cityscapes, image/mask folders, synthetic data,
                    deterministic augmentation and batches
    deeplab.dist    collectives and trainers for the local / Horovod / parameter-server backends
    deeplab.launch  launchers (horovodrun, parameter server)
    deeplab.k8s     Kubernetes manifests
    deeplab.bench   the training-throughput benchmark and analytic costs (`deeplab bench`)
and, from engine/: deeplab.api, deeplab.config, deeplab.train, deeplab.precision,
deeplab.evaluate, deeplab.checkpoint, deeplab.metrics, deeplab.workdir, deeplab.logger,
deeplab.errors, deeplab.utils, deeplab.nvml, deeplab.cudabin and the `deeplab` command
(deeplab.cli).
"""
__version__ = "0.1.0"

# name -> module of the API; imported on first access (MXNet loads then, not at import).
_API = {"load": "deeplab.api", "Segmenter": "deeplab.api"}

__all__ = ["__version__", "load", "Segmenter"]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError("module 'deeplab' has no attribute %r" % name)


def __dir__():
    return sorted(list(globals()) + list(_API))
