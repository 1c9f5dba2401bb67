"""Builds the model and datasets a config describes (shared by training, evaluation and the
benchmark)."""
from mxnet.gluon import nn
from mxnet.gluon.contrib.nn import SyncBatchNorm as DeviceSyncBatchNorm

from deeplab import dist
from deeplab.data import class_table, get_dataset
from deeplab.dist.runtime import uses_sync_bn
from deeplab.dist.syncbn import SyncBatchNorm
from deeplab.model import get_model

__all__ = ["training_network", "evaluation_network", "evaluation_network_of", "build_dataset",
           "copy_parameters", "dataset_classes", "bn_mode"]


def bn_mode(cfg, sync_bn=None):
    """How training normalizes: 'frozen', 'synchronized', 'per-worker' (several workers, each
    its own statistics) or 'plain' (one process)."""
    sync_bn = uses_sync_bn(cfg) if sync_bn is None else sync_bn
    if cfg["train"]["freeze_bn"]:
        return "frozen"
    if sync_bn:
        group = cfg["dist"]["sync_bn_group"]
        return "synchronized" if group == "all" else "synchronized (groups: %s)" % group
    if cfg["dist"]["devices_per_worker"] > 1:
        return "synchronized across each worker's devices" if dist.size() > 1 \
            else "synchronized across the devices"
    return "per-worker" if dist.size() > 1 else "plain"


def training_network(cfg, ctx, params=None, seed=None, sync_bn=None):
    """COLLECTIVE. The config's network for training on `ctx` (a context or a worker's list of
    devices), the same on every worker: model.backbone_params loaded (unless `params` replaces
    every parameter), BN frozen with train.freeze_bn, else synchronized across workers when
    `uses_sync_bn` (or `sync_bn`: benchmarks compare both layers) and across a worker's devices
    when it has several.

    Args:
        params: a whole-model `.params` file (default: model.params), e.g. a checkpoint's.
        seed: seeds the random initialization.
    """
    m, frozen = cfg["model"], cfg["train"]["freeze_bn"]
    sync_bn = uses_sync_bn(cfg) if sync_bn is None else sync_bn
    norm_layer, norm_kwargs = _norm(cfg)
    devices = len(ctx) if isinstance(ctx, (list, tuple)) else 1
    if not frozen and sync_bn:
        norm_layer = SyncBatchNorm
    elif not frozen and devices > 1:
        # The devices of one process: MXNet's own SyncBatchNorm, synchronized in-process.
        norm_layer = DeviceSyncBatchNorm
        norm_kwargs = {"num_devices": devices, "momentum": m["bn_momentum"]}
    backbone_params = None
    if m["backbone_params"]:
        from deeplab.fetch import resolve_params
        # zoo:NAME is found in MXNet's cache or downloaded by the main worker, which alone
        # reads parameter files; a failure is raised on every worker, not left in a broadcast.
        backbone_params = dist.on_main(lambda: resolve_params(m["backbone_params"]))
    return _build(cfg, ctx, norm_layer, norm_kwargs, None,
                  params if params is not None else m["params"], backbone_params, seed)


def evaluation_network(cfg, ctx, output_stride=None, params=None, seed=None):
    """COLLECTIVE. The config's network for evaluation and inference on `ctx`: plain BN on
    running statistics, at `output_stride` (default: model.output_stride), its parameters read
    from `params` (default: model.params) by the main worker and broadcast, or randomly
    initialized from `seed` when there is neither (benchmarks)."""
    norm_layer, norm_kwargs = _norm(cfg)
    return _build(cfg, ctx, norm_layer, norm_kwargs, output_stride,
                  params if params is not None else cfg["model"]["params"], None, seed)


def evaluation_network_of(cfg, net, ctx, output_stride=None):
    """COLLECTIVE. The evaluation network (plain BN, `output_stride`) of `net`, a network of the
    same config in training (whose norm layers and output stride may differ): its parameters
    are copied, no file is read."""
    norm_layer, norm_kwargs = _norm(cfg)
    return _build(cfg, ctx, norm_layer, norm_kwargs, output_stride, None, None, None,
                  copy_from=net)


def _norm(cfg):
    """Plain BN with model.bn_momentum; frozen (running statistics) with train.freeze_bn."""
    kwargs = {"momentum": cfg["model"]["bn_momentum"]}
    if cfg["train"]["freeze_bn"]:
        kwargs["use_global_stats"] = True
    return nn.BatchNorm, kwargs


def _build(cfg, ctx, norm_layer, norm_kwargs, output_stride, params, backbone_params, seed,
           copy_from=None):
    """COLLECTIVE. get_model for the config; files read on the main worker only, the result
    broadcast (or copied from `copy_from`); gamma and beta fixed when BN is frozen."""
    m = cfg["model"]
    main = dist.is_main()
    net = get_model(
        m["name"], head=m["head"], output_stride=output_stride or m["output_stride"],
        num_classes=m["num_classes"], multi_grid=tuple(m["multi_grid"]),
        head_channels=m["head_channels"], dropout=m["dropout"],
        vortex_cascade=m["vortex_cascade"], vortex_pool_padding=m["vortex_pool_padding"],
        norm_layer=norm_layer, norm_kwargs=norm_kwargs,
        backbone_params=backbone_params if main else None, params=params if main else None,
        ctx=ctx, seed=seed)
    if copy_from is not None:
        copy_parameters(copy_from, net)
    dist.broadcast_parameters(net.collect_params())
    if cfg["train"]["freeze_bn"]:
        for p in net.collect_params(".*_gamma|.*_beta").values():
            p.grad_req = "null"
    return net


def copy_parameters(src, dst):
    """Sets every parameter of `dst` to `src`'s value of the same name (the names of
    `save_parameters`, which do not depend on the norm layer's class)."""
    theirs = src._collect_params_with_prefix()
    for name, p in dst._collect_params_with_prefix().items():
        p.set_data(theirs[name].data())


def build_dataset(cfg, split):
    """The config's dataset for `split` ('train' uses data.train_split, 'val' data.val_split)."""
    d = cfg["data"]
    name = d["name"]
    if name == "synthetic":
        s = d["synthetic"]
        ds = get_dataset("synthetic", split=split,
                         size=s["train_size"] if split == "train" else s["val_size"],
                         num_classes=cfg["model"]["num_classes"],
                         image_size=tuple(s["image_size"]), seed=0)
    else:
        kwargs = {}
        if name == "folder":
            kwargs = dict(d["folder"], classes=d["classes"], palette=d["palette"])
        ds = get_dataset(name, root=d["root"],
                         split=d["train_split"] if split == "train" else d["val_split"], **kwargs)
    if ds.num_classes != cfg["model"]["num_classes"]:
        from deeplab.errors import ConfigError
        raise ConfigError("model.num_classes is %d but dataset %r has %d classes"
                          % (cfg["model"]["num_classes"], name, ds.num_classes))
    return ds


def dataset_classes(cfg):
    """(class names, palette) of the config's dataset, read from the config alone (no data
    needed): what predictions are named and coloured with. The palette is PIL's flat list of
    256 [r, g, b] colours, the one `dataset.palette` holds."""
    d = cfg["data"]
    return class_table(d["name"], cfg["model"]["num_classes"], d["classes"], d["palette"])
