"""The Python API: a trained network for notebooks and services.

    import deeplab

    model = deeplab.load("runs/demo")               # a run directory: config.yaml + final.params
    labels, probs = model.segment(image)            # numpy (H, W, 3) uint8 RGB or a PIL image
    results = model.evaluate("data/images", "data/masks")   # scores of a folder of masks

`segment` gives the numbers `deeplab predict` writes: the same network, evaluation output
stride, eval.scales and eval.flip, so `labels` equals the class-index PNG predict writes for the
same pixels. The full reference is docs/api.md.
"""
import os

import mxnet as mx
import numpy as np

from deeplab import dist
from deeplab.config import eval_stride, load_config
from deeplab.data import EvalTransform, FolderSegmentation
from deeplab.errors import ConfigError, ParamsError, UserError

from .build import build_dataset, dataset_classes, evaluation_network
from .evaluate import evaluate, no_cudnn_autotune, predict, results_dict

__all__ = ["Segmenter", "load", "find_run_files"]


def find_run_files(path, config=None):
    """(config file, params file) for `path`: a run directory (its config.yaml and final.params)
    or a .params file (with `config`, else the config.yaml of its run directory, found beside
    it or one level up, e.g. for checkpoints/iter_*.params).

    Raises:
        ParamsError: the path does not exist, is not a .params file, or a run directory has no
            final.params (the message lists the .params files it holds).
        ConfigError: no config was given and none was found beside the file.
    """
    path = os.path.expanduser(str(path))
    if os.path.isdir(path):
        params = os.path.join(path, "final.params")
        if not os.path.isfile(params):
            found = sorted(os.path.relpath(os.path.join(d, n), path)
                           for d, _, names in os.walk(path) for n in names
                           if n.endswith(".params"))
            raise ParamsError(
                "run directory %s has no final.params (training has not finished); %s"
                % (path, "pass one of its files instead: " + ", ".join(found) if found
                   else "it holds no .params file"))
        folders = [path]
    elif os.path.isfile(path):
        if not path.endswith(".params"):
            raise ParamsError("%s is not a .params file (expected final.params, best.params, "
                              "checkpoints/iter_*.params, or a run directory)" % path)
        params = path
        here = os.path.dirname(os.path.abspath(path))
        folders = [here, os.path.dirname(here)]
    else:
        raise ParamsError("%s does not exist; expected a run directory or a .params file" % path)
    if config is None:
        candidates = [os.path.join(f, "config.yaml") for f in folders]
        config = next((c for c in candidates if os.path.isfile(c)), None)
        if config is None:
            raise ConfigError("no config for %s: pass config= (the YAML it was trained with); "
                              "looked for %s" % (params, " and ".join(candidates)))
    return config, params


def _as_rgb(image, index=None):
    """An (H, W, 3) uint8 RGB array from a numpy array or a PIL image."""
    what = "image" if index is None else "image %d" % index
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise UserError("%s: expected an RGB image, an (H, W, 3) uint8 array or a PIL image; got "
                        "shape %s dtype %s" % (what, array.shape, array.dtype))
    return array


class Segmenter:
    """A trained network with the config it was trained with; build it with `load`.

    Attributes:
        config: the resolved config (nested dicts).
        checkpoint: the absolute path of the parameters file.
        class_names: the dataset's class names, index 0 first.
        palette: the dataset's colours, PIL's flat [r, g, b, ...] list of 256 colours.
        output_stride: the stride inference runs at (eval.output_stride, else the model's).
        ctx: the MXNet device.
    """

    def __init__(self, net, config, checkpoint, ctx):
        self.net, self.config, self.checkpoint, self.ctx = net, config, checkpoint, ctx
        self.class_names, self.palette = dataset_classes(config)
        self.output_stride = eval_stride(config)
        self._transform = EvalTransform()

    @property
    def num_classes(self):
        return self.config["model"]["num_classes"]

    def segment(self, image):
        """Segments one image.

        Args:
            image: an (H, W, 3) uint8 RGB numpy array or a PIL image (converted to RGB).
        Returns:
            (labels, probs): uint8 (H, W) class indices and float32 (C, H, W) class
            probabilities (the softmax averaged over eval.scales and eval.flip, as DeepLabV3
            §4.3); labels is the argmax of probs, the image `deeplab predict` writes.
        """
        labels, probs = self._infer([_as_rgb(image)])
        return labels[0], probs[0]

    def segment_batch(self, images, batch_size=8):
        """Segments several images; images of one size are inferred together, `batch_size` at
        a time.

        Args:
            images: a list of numpy arrays or PIL images (see `segment`); sizes may differ.
        Returns:
            a list of (labels, probs), one per image, in order.
        """
        arrays = [_as_rgb(im, i) for i, im in enumerate(images)]
        groups = {}
        for i, im in enumerate(arrays):
            groups.setdefault(im.shape, []).append(i)
        out = [None] * len(arrays)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                labels, probs = self._infer([arrays[i] for i in chunk])
                for j, i in enumerate(chunk):
                    out[i] = (labels[j], probs[j])
        return out

    def _infer(self, images):
        """uint8 (B, H, W) labels and float32 (B, C, H, W) probabilities of same-size images."""
        e = self.config["eval"]
        data = mx.nd.array(np.stack([self._transform(im) for im in images]), ctx=self.ctx)
        total = predict(self.net, data, e["scales"], e["flip"])
        # The argmax of the sum, as `deeplab predict` takes it; the sum over scales (and
        # mirrors) divided by their number is the mean probability.
        labels = total.argmax(axis=1).asnumpy().astype(np.uint8)
        probs = (total / (len(e["scales"]) * (2 if e["flip"] else 1))).asnumpy()
        return labels, probs.astype(np.float32, copy=False)

    def evaluate(self, images=None, masks=None, img_suffix=".jpg", seg_map_suffix=".png",
                 quiet=True):
        """Scores the network on a folder of images and masks, or on the config's val split.

        Args:
            images, masks: folders of images and of their masks (palette or greyscale PNGs of
                class indices, 255 ignored), paired by name below each folder; both None: the
                config's dataset (data.name, data.root, data.val_split).
            img_suffix, seg_map_suffix: what the image and mask file names end with.
            quiet: no progress bar.
        Returns:
            the dict `deeplab eval --out` writes: pixAcc, mIoU, per_class_iou, class_names,
            confusion_matrix, num_images, ...
        """
        cfg = self.config
        if images is None and masks is None:
            dataset = build_dataset(cfg, "val")
        elif images is None or masks is None:
            raise UserError("evaluate: give both images and masks folders, or neither (the "
                            "config's val split)")
        else:
            for what, folder in (("images", images), ("masks", masks)):
                if not os.path.isdir(str(folder)):
                    raise UserError("evaluate: %s folder %s does not exist" % (what, folder))
            dataset = FolderSegmentation(
                ".", ".", self.class_names, img_dir=os.path.abspath(str(images)),
                ann_dir=os.path.abspath(str(masks)), img_suffix=img_suffix,
                seg_map_suffix=seg_map_suffix)
        no_cudnn_autotune()
        conf, n = evaluate(self.net, dataset, cfg, self.ctx, quiet=quiet)
        return results_dict(conf, n, dataset, cfg, self.output_stride, self.checkpoint)

    def __repr__(self):
        return "Segmenter(%s, %s head, %d classes, output stride %d, %s)" % (
            self.config["model"]["name"], self.config["model"]["head"], self.num_classes,
            self.output_stride, self.checkpoint)


def load(path, config=None, overrides=(), ctx=None):
    """Loads a trained network for inference.

    Args:
        path: a run directory (uses its config.yaml and final.params) or a .params file
            (final.params, best.params, checkpoints/iter_*.params, or any file of the network).
        config: the YAML config the parameters were trained with; default: the run
            directory's config.yaml (beside the .params file or one level up).
        overrides: `KEY=VALUE` strings as `--set` takes them, e.g. ["eval.flip=true",
            "eval.scales=[0.75,1.0,1.25]", "eval.output_stride=8"].
        ctx: the MXNet device (default: the first GPU if any, else the CPU).
    Returns:
        a Segmenter.
    Raises:
        deeplab.errors.UserError (ParamsError, ConfigError): what is wrong with the path,
            the config or the parameters, in one line.
    """
    config, params = find_run_files(path, config)
    cfg = load_config(config, list(overrides))
    ctx = ctx or dist.context()
    net = evaluation_network(cfg, ctx, output_stride=eval_stride(cfg), params=params)
    if cfg["train"]["hybridize"]:
        net.hybridize()
    return Segmenter(net, cfg, os.path.abspath(params), ctx)
