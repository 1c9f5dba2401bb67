"""`deeplab k8s`: Kubernetes jobs for a training config.

    deeplab k8s render CONFIG --backend horovod|ps --nodes N --gpus-per-node G --image IMG
                       --data-pvc NAME --out DIR [--name JOB] [--servers M]
                       [--command train|bench|eval|predict] [--checkpoint P] [--input P ...]
                       [--command-arg=ARG ...] [--resume-from JOB] [--env K=V ...]
                       [--node-selector K=V ...] [--toleration KEY[=VALUE]:EFFECT ...]
                       [--cpu N] [--memory Q] [--image-pull-secret NAME ...]
                       [--priority-class NAME] [--allow-egress CIDR[:PORT] ...]
                       [--no-network-policy] [--mpi] [--set KEY=VALUE ...]
    deeplab k8s validate DIR
    deeplab k8s run-local DIR --data-dir LOCAL_DIR [--source REPO] [--timeout S] [--dry-run]
"""
import argparse
import os
import sys

from deeplab.config import add_set_argument
from deeplab.errors import ManifestError, RenderError

from . import render as render_mod
from .render import MOUNT

__all__ = ["parse_args", "main"]

IMAGES = """Which image (--image) for which GPUs:
  docker build -f k8s/Dockerfile [--build-arg BASE=cuda112] -t IMAGE .
      CUDA 11.2, mxnet-cu112==1.9.1 (cubins sm_50..sm_86): Maxwell to Ampere and Ada; CPU
  docker build -f k8s/Dockerfile --build-arg BASE=ngc -t IMAGE .
      NVIDIA's NGC MXNet container (MXNet 1.9.1, CUDA 12): Hopper (H100, H200) and newer
See docs/kubernetes.md; `deeplab doctor` on a GPU node says which one the node needs."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="deeplab k8s", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)

    r = sub.add_parser(
        "render", help="write the manifests of a training run (or bench, eval, predict)",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=IMAGES)
    r.add_argument("config", help="training config inside the repository, e.g. "
                                  "configs/deeplabv3_r50v2-os16_bs16_30k_trainaug_513.yaml")
    r.add_argument("--backend", required=True, choices=("horovod", "ps"),
                   help="horovod: a Kubeflow MPIJob; ps: a headless Service and Jobs")
    r.add_argument("--nodes", type=int, required=True,
                   help="GPU nodes: Horovod runs one worker pod per node with all its GPUs; "
                        "ps runs one worker pod per GPU")
    r.add_argument("--gpus-per-node", type=int, required=True,
                   help="GPUs per node (0: CPU nodes, one training process each)")
    r.add_argument("--image", required=True,
                   help="container image built from k8s/Dockerfile: --build-arg BASE=cuda112 "
                        "(default) for Maxwell to Ampere/Ada, BASE=ngc for Hopper (H100/H200) "
                        "and newer; by digest (REGISTRY/NAME@sha256:...) is recommended: a tag "
                        "is pulled again by every pod (imagePullPolicy Always)")
    r.add_argument("--data-pvc", required=True,
                   help="PersistentVolumeClaim (ReadWriteMany) mounted at %s in the training "
                        "pods: dataset, weights and the run directory %s/runs/JOB"
                        % (MOUNT, MOUNT))
    r.add_argument("--out", required=True, help="directory to write job.yaml into")
    r.add_argument("--name", help="job name (default: from the config file name)")
    r.add_argument("--servers", type=int,
                   help="parameter servers (--backend ps; default: --nodes)")
    defaults = render_mod.DEFAULTS
    r.add_argument("--data-subdir", default=defaults["data_subdir"],
                   help="dataset directory inside the PVC, becomes data.root=%s/SUBDIR unless "
                        "--set data.root is given (default: %s; unused for synthetic data)"
                        % (MOUNT, defaults["data_subdir"]))
    r.add_argument("--shm-size", default=defaults["shm_size"],
                   help="size of the memory-backed /dev/shm of training pods (default %s)"
                        % defaults["shm_size"])
    r.add_argument("--grace-period", type=int, default=defaults["grace_period"],
                   help="terminationGracePeriodSeconds: time to checkpoint after SIGTERM "
                        "(default %d)" % defaults["grace_period"])
    r.add_argument("--backoff-limit", type=int, default=None,
                   help="--backend horovod: MPIJob runPolicy.backoffLimit, launcher restarts that "
                        "each resume from the newest checkpoint (default %d)"
                        % render_mod.HOROVOD_BACKOFF_LIMIT)
    r.add_argument("--command", default=defaults["command"], choices=render_mod.COMMANDS,
                   help="what the pods run (default %s); bench writes %s/runs/JOB/bench.json, "
                        "eval %s/runs/JOB/results.json, predict %s/runs/JOB/predictions/"
                        % (defaults["command"], MOUNT, MOUNT, MOUNT))
    r.add_argument("--checkpoint",
                   help="--command eval|predict: the .params file on the PVC, e.g. "
                        "%s/runs/JOB/final.params" % MOUNT)
    r.add_argument("--input", dest="inputs", action="append", default=[], metavar="PATH",
                   help="--command predict: image or folder of images on the PVC (repeatable)")
    r.add_argument("--command-arg", dest="command_args", action="append", default=[],
                   metavar="ARG",
                   help="one more argument for the command, e.g. --command-arg=--steps "
                        "--command-arg=50 (repeatable; use '=' for values starting with '-')")
    r.add_argument("--resume-from", metavar="JOB",
                   help="--command train: continue the run directory %s/runs/JOB of an earlier "
                        "job (any --nodes whose world size divides train.batch_size)" % MOUNT)
    r.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment variable of every container, e.g. NCCL_DEBUG=INFO, or "
                        "NAME=secret:SECRET/KEY for the key of a Secret (a secretKeyRef: the "
                        "value never enters the manifest) (repeatable)")
    r.add_argument("--node-selector", action="append", default=[], metavar="LABEL=VALUE",
                   help="nodeSelector of every pod (repeatable)")
    r.add_argument("--toleration", dest="tolerations", action="append", default=[],
                   metavar="KEY[=VALUE]:EFFECT",
                   help="toleration of every pod, EFFECT one of %s; operator Equal with a "
                        "VALUE, Exists without (repeatable)"
                        % ", ".join(render_mod.TOLERATION_EFFECTS))
    r.add_argument("--cpu", help="CPU request of each training (GPU) pod, e.g. 16 or 7500m "
                                 "(default %s)" % render_mod.TRAIN_REQUESTS["cpu"])
    r.add_argument("--memory", help="memory request of each training (GPU) pod, e.g. 64Gi "
                                    "(the memory-backed /dev/shm counts towards it; default %s)"
                                    % render_mod.TRAIN_REQUESTS["memory"])
    r.add_argument("--image-pull-secret", dest="image_pull_secrets", action="append",
                   default=[], metavar="NAME",
                   help="imagePullSecrets entry of every pod (repeatable)")
    r.add_argument("--priority-class", metavar="NAME",
                   help="priorityClassName of every pod")
    r.add_argument("--allow-egress", action="append", default=[], metavar="CIDR[:PORT]",
                   help="let the job's pods connect to these addresses (TCP), e.g. an object "
                        "store or a weights mirror; beyond the job's own pods and DNS, the "
                        "job's NetworkPolicy allows nothing else (repeatable)")
    r.add_argument("--mpi", action="store_true", default=None,
                   help="--backend horovod: the MPIJob's launcher runs `deeplab launch horovod "
                        "--mpi` (MPICH's mpirun, the image's; mpiImplementation MPICH), so that "
                        "synchronized BN's statistics go straight over MPI "
                        "(dist.sync_bn_transport auto). Not with the NGC-based image, whose MPI "
                        "is OpenMPI")
    r.add_argument("--no-network-policy", dest="network_policy", action="store_false",
                   help="leave out the job's NetworkPolicy (clusters without a policy "
                        "controller; the pods are then reachable from every pod)")
    add_set_argument(r, example="model.backbone_params=%s/models/resnet50_v2.params" % MOUNT)

    v = sub.add_parser("validate", help="validate manifests offline (strict)")
    v.add_argument("dir", help="directory of manifests, e.g. the --out of render")

    lo = sub.add_parser("run-local", help="run the pods' commands as local processes")
    lo.add_argument("dir", help="directory of rendered manifests")
    lo.add_argument("--data-dir", required=True,
                    help="local directory standing for the PVC (%s)" % MOUNT)
    lo.add_argument("--source", default=None,
                    help="repository checkout standing for the image's %s (default: the "
                         "checkout this package runs from)" % render_mod.IMAGE_SOURCE)
    lo.add_argument("--timeout", type=float, default=None,
                    help="stop the job after this many seconds")
    lo.add_argument("--dry-run", action="store_true",
                    help="print the local command lines without running them")
    return p.parse_args(argv)


def _render(args):
    path = render_mod.render_to_dir({
        "config": args.config, "backend": args.backend, "nodes": args.nodes,
        "gpus_per_node": args.gpus_per_node, "image": args.image, "data_pvc": args.data_pvc,
        "name": args.name, "servers": args.servers, "overrides": args.overrides,
        "data_subdir": args.data_subdir, "shm_size": args.shm_size,
        "grace_period": args.grace_period, "backoff_limit": args.backoff_limit,
        **{key: getattr(args, key) for key in (
            "command", "checkpoint", "inputs", "command_args", "resume_from", "env",
            "node_selector", "tolerations", "cpu", "memory", "image_pull_secrets",
            "priority_class", "allow_egress", "network_policy", "mpi")}}, args.out)
    print("wrote %s" % path)


def _validate(args):
    from .validate import KUBERNETES_VERSION, validate_dir

    count, problems = validate_dir(args.dir)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        raise ManifestError("%d problem(s) in %s (Kubernetes %s, MPI Operator CRD v2beta1)"
                         % (len(problems), args.dir, KUBERNETES_VERSION))
    print("%s: %d object(s) valid for Kubernetes %s" % (args.dir, count, KUBERNETES_VERSION))


def _run_local(args):
    from .local import run_local

    source = args.source or render_mod.source_root()
    if not os.path.isdir(source):
        raise RenderError("--source %s is not a directory" % source)
    code = run_local(args.dir, args.data_dir, source, timeout=args.timeout, dry_run=args.dry_run)
    if code:
        raise SystemExit(code)


def main(args):
    {"render": _render, "validate": _validate, "run-local": _run_local}[args.action](args)
