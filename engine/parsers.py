"""The command-line options of `deeplab train`, `eval`, `predict` and `export`, apart from the
modules that run them: those import MXNet (seconds), and `deeplab train -h`, a bad flag or the
launcher's pre-flight (which reads train's options) need none of it.

Each function takes the arguments after the subcommand and returns the parsed namespace; the
command modules' `parse_args` are these.
"""
import argparse
import sys

from deeplab.config import add_set_argument
from deeplab.utils import positive_int

__all__ = ["IMAGE_EXTENSIONS", "train", "evaluate", "predict", "export"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def train(argv=None):
    p = argparse.ArgumentParser(
        prog="deeplab train",
        description="Training: SGD with momentum and poly learning rate by iteration, softmax "
                    "cross-entropy over the labelled pixels of the global batch, periodic "
                    "checkpoints, evaluation at the end.")
    p.add_argument("config", help="YAML config, e.g. configs/tiny_synthetic.yaml")
    p.add_argument("--workdir", required=True, help="run directory (config, checkpoints, results)")
    add_set_argument(p)
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_const", const="required", default=False,
                        help="continue from the newest intact checkpoint in --workdir (an "
                             "error if there is none)")
    resume.add_argument("--resume-if-exists", dest="resume", action="store_const",
                        const="if-exists",
                        help="continue from the newest intact checkpoint if --workdir holds "
                             "one, else start a new run (for schedulers that restart jobs)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="when resuming: accept a config that changes the training (model, data, "
                        "batch, schedule, seed, BN mode) against the checkpoint's")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar during evaluation")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = ["train"] + argv
    return args


def evaluate(argv=None):
    p = argparse.ArgumentParser(
        prog="deeplab eval",
        description="Evaluation on full images: optional multi-scale + flip inference, one "
                    "confusion matrix summed over workers, scores computed and written by the "
                    "main worker. Prints pixAcc, mIoU and a per-class table (IoU and pixel "
                    "accuracy of each class).")
    p.add_argument("config", help="YAML config (the model and data sections are used)")
    p.add_argument("--checkpoint", required=True,
                   help="a .params file: final.params, best.params or checkpoints/iter_*.params "
                        "(or a run directory: its final.params)")
    p.add_argument("--out", default=None,
                   help="where to write the results JSON (in a run directory: refused while "
                        "that run is going)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_set_argument(p, example="eval.output_stride=8")
    return p.parse_args(argv)


def predict(argv=None):
    p = argparse.ArgumentParser(
        prog="deeplab predict",
        description="Segmentation of image files: a class-index PNG and a colour overlay per "
                    "image.",
        epilog="Images of the same size are inferred together, --batch-per-call at a time, "
               "with any eval.scales and eval.flip. --set takes every value that follows it: "
               "put it last, or end it with --.")
    p.add_argument("config", help="YAML config (the model and eval sections are used)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (%s) or folders of them" % ", ".join(IMAGE_EXTENSIONS))
    p.add_argument("--checkpoint", required=True,
                   help="a .params file: final.params or checkpoints/iter_*.params (or a run "
                        "directory: its final.params)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for <stem>.png and <stem>_overlay.jpg (created if missing; "
                        "not an input folder nor inside one)")
    # Per call of the network on one worker, unlike bench's --batch-per-worker; --batch is the
    # older spelling.
    p.add_argument("--batch-per-call", "--batch", dest="batch", type=positive_int, default=1,
                   metavar="B", help="images of one size inferred together (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_set_argument(p, example="eval.flip=true")
    # Inputs may come before, between or after the options.
    return p.parse_intermixed_args(argv)


def export(argv=None):
    p = argparse.ArgumentParser(
        prog="deeplab export",
        description="Export of the evaluation network for deployment: an MXNet symbol and "
                    "parameters, optionally an ONNX model, and PREFIX-preprocessing.json.",
        epilog="Input the graphs expect (as PREFIX-preprocessing.json says): RGB, float32 "
               "divided by 255, minus the ImageNet mean (0.485, 0.456, 0.406), divided by the "
               "ImageNet std (0.229, 0.224, 0.225), NCHW (1, 3, H, W); output: logits "
               "(1, classes, H, W), the class is the argmax over axis 1. PREFIX-symbol.json "
               "takes inputs of any size, like the Gluon network. ONNX needs static shapes: "
               "PREFIX.onnx takes exactly (1, 3, H, W) with H W from --size (default: the "
               "config's data.crop_size); resize or pad images to it.")
    p.add_argument("config", help="YAML config (the model and eval sections are used)")
    p.add_argument("--checkpoint", required=True,
                   help="a .params file: final.params or checkpoints/iter_*.params (or a run "
                        "directory: its final.params)")
    p.add_argument("--out", required=True, metavar="PREFIX",
                   help="output prefix: writes PREFIX-symbol.json, PREFIX-0000.params, "
                        "PREFIX-preprocessing.json (and PREFIX.onnx)")
    p.add_argument("--onnx", action="store_true",
                   help="also write PREFIX.onnx (ONNX opset of mx.onnx; static input shape)")
    p.add_argument("--size", nargs=2, type=positive_int, metavar=("H", "W"), default=None,
                   help="input height and width the graphs are traced at and the fixed input "
                        "size of the ONNX model (default: data.crop_size square)")
    add_set_argument(p, example="eval.output_stride=8")
    return p.parse_args(argv)
