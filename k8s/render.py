"""Kubernetes manifests for one training run, rendered from the training config and the flags of
`deeplab k8s render`, so that the pods run exactly the `deeplab` command lines the code accepts.

Horovod: one Kubeflow MPI Operator `MPIJob` (kubeflow.org/v2beta1). Its launcher runs
`deeplab launch horovod --hostfile /etc/mpi/hostfile` (the hostfile the operator writes), which
reaches the workers over ssh; the workers run sshd, hold the GPUs and mount the PVC.

Parameter server: core objects only (Kubeflow's MXJob was removed in Training Operator 1.9): a
headless Service that gives the scheduler pod a stable DNS name, and three Jobs (scheduler; servers
and workers as Indexed Jobs), every pod running `deeplab launch ps -- train ...` with its own
DMLC_ROLE. One worker pod per GPU, since a parameter-server worker is one process.

The pods that train mount one PersistentVolumeClaim at MOUNT (dataset, pretrained weights, run
directory) and a memory-backed /dev/shm for the loader processes. Every pod's PID 1 is
deeplab.k8s.entrypoint, which reaps zombies and, when the pod is deleted, makes the training
processes save a checkpoint before the grace period ends: in MPIJob worker pods it signals them
itself (horovodrun started them through sshd), elsewhere `deeplab launch` does. The output is
deterministic: the same arguments give the same bytes.

The same jobs run `deeplab bench`, `eval` or `predict` instead of `train` (--command), writing
their output under the run directory on the PVC. Pods without a GPU (MPIJob launcher, ps-lite
scheduler and servers) get the CUDA driver stub at the end of LD_LIBRARY_PATH (STUB_LD_PATH): the
CUDA build of MXNet links libcuda.so.1, which only GPU pods receive from the node.
"""
import os
import re
import shlex
import unicodedata

import yaml

from deeplab.errors import RenderError
from deeplab.utils import write_text

__all__ = ["RenderError", "MOUNT", "IMAGE_SOURCE", "PS_PORT", "HOSTFILE", "COMMANDS", "RUN_AS",
           "SSH_DIR", "SSH_PORT", "SSHD_CONFIG", "REQUESTS", "LIMITS", "TRAIN_REQUESTS",
           "CUDA_STUB_DIR", "STUB_LD_PATH", "TOLERATION_EFFECTS", "source_root",
           "default_name", "render", "render_to_dir", "render_command", "dump_documents"]

MOUNT = "/data"  # where every pod mounts the PVC
IMAGE_SOURCE = "/opt/deeplab"  # the repository inside the image (k8s/Dockerfile)
HOSTFILE = "/etc/mpi/hostfile"  # written by the MPI Operator into the launcher
# Every container runs as this user of the image (k8s/Dockerfile: USER 1000, home HOME), never
# as root: the restricted Pod Security Standard. fsGroup makes the PVC and volumes writable to it.
RUN_AS, HOME = 1000, "/home/mpiuser"
SSH_DIR = HOME + "/.ssh"  # where the MPI Operator mounts the job's ssh keys (sshAuthMountPath)
# sshd of the MPIJob workers runs as RUN_AS: an unprivileged port, and the image's config file
# naming a pid file in HOME and the job's key from SSH_DIR (the operator's per-job Secret) as
# host key, as the MPI Operator's non-root example does; ssh_config points clients at SSH_PORT.
SSH_PORT, SSHD_CONFIG = 2222, HOME + "/.sshd_config"
PS_PORT = 9091  # the ps-lite scheduler's port
LAUNCH_TIMEOUT = 300  # seconds for horovodrun to reach every worker and rendezvous
# PID 1 of every pod (k8s/entrypoint.py), before the pod's own command.
ENTRYPOINT = ["python", "-m", "deeplab.k8s.entrypoint"]
# Of the pod's terminationGracePeriodSeconds, the entrypoint keeps ENTRYPOINT_MARGIN seconds to
# kill what is left and exit before the kubelet's SIGKILL, and `deeplab launch` another
# LAUNCH_MARGIN - ENTRYPOINT_MARGIN to do the same with its workers.
ENTRYPOINT_MARGIN, LAUNCH_MARGIN = 5, 10
MANIFEST = "job.yaml"  # the file render_to_dir writes
# Config keys that name files: in a pod only the PVC exists, so they must point into it.
PATH_KEYS = ("data.root", "model.backbone_params", "model.params")
# The `deeplab` commands a job can run, and the file or folder each writes in the run directory.
COMMANDS = ("train", "bench", "eval", "predict")
OUTPUTS = {"bench": "bench.json", "eval": "results.json", "predict": "predictions"}
# k8s/Dockerfile links the CUDA toolkit's driver stub as CUDA_STUB_DIR/libcuda.so.1. Pods without
# a GPU get STUB_LD_PATH (the CUDA base image's LD_LIBRARY_PATH, then the stub). horovodrun passes
# the launcher's environment on to the training processes, so the value also reaches GPU pods:
# there an empty volume hides CUDA_STUB_DIR, and the real libcuda.so.1 is loaded.
CUDA_STUB_DIR = "/opt/cuda-stub"
STUB_LD_PATH = "/usr/local/nvidia/lib:/usr/local/nvidia/lib64:" + CUDA_STUB_DIR
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Environment variables the pods' commands depend on: not settable with --env.
RESERVED_ENV = ("PYTHONUNBUFFERED", "LD_LIBRARY_PATH", "DEEPLAB_LOCAL_RANK")
# --env NAME=secret:SECRET/KEY: the value of KEY in the Secret SECRET (a secretKeyRef).
SECRET_PREFIX = "secret:"
# Resource requests of the containers that do not train (a namespace with a ResourceQuota
# admits only pods that request), and memory limits that stop a runaway process there; the
# training containers get --cpu/--memory or TRAIN_REQUESTS and no memory limit (the memory-backed
# /dev/shm counts towards it, and a limit would kill a run at its peak).
REQUESTS = {"launcher": {"cpu": "500m", "memory": "1Gi"},
            "scheduler": {"cpu": "250m", "memory": "1Gi"},
            "server": {"cpu": "1", "memory": "2Gi"},
            "wait-for-scheduler": {"cpu": "10m", "memory": "16Mi"}}
LIMITS = {"launcher": {"memory": "4Gi"}, "scheduler": {"memory": "2Gi"},
          "server": {"memory": "8Gi"}, "wait-for-scheduler": {"memory": "64Mi"}}
TRAIN_REQUESTS = {"cpu": "2", "memory": "8Gi"}
# The restricted Pod Security Standard's settings, for every pod and every container.
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                "fsGroup": RUN_AS, "fsGroupChangePolicy": "OnRootMismatch",
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
_CPU = re.compile(r"^([0-9]+m|[0-9]+(\.[0-9]{1,3})?)$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# An image reference: [registry[:port]/]path[:tag][@sha256:digest] (the distribution project's
# grammar, registry host names case-insensitive).
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(r"^(?:[a-zA-Z0-9](?:[-a-zA-Z0-9.]*[a-zA-Z0-9])?(?::[0-9]+)?/)?"
                    + _PATH_PART + "(?:/" + _PATH_PART + ")*"
                    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")
_CIDR = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}/\d{1,2}|[0-9a-fA-F:]+/\d{1,3})$")
# A label key: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters.
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# NAME-scheduler, NAME-worker and their pods' names must stay within 63 characters.
MAX_NAME = 40




def source_root():
    """The repository checkout this package runs from (configs/ must be under it), else the
    current directory."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(here, "configs")) and os.path.isfile(
            os.path.join(here, "setup.py")):
        return here
    return os.getcwd()


def default_name(config):
    """A job name from the config file name ('deeplabv3_r50v2-os16_bs16...' ->
    'deeplabv3-r50v2-os16-bs16...'), at most MAX_NAME characters."""
    stem = os.path.splitext(os.path.basename(config))[0].lower()
    name = re.sub(r"[^a-z0-9]+", "-", stem).strip("-")
    if len(name) > MAX_NAME:  # cut at a word boundary where there is one
        cut = name[:MAX_NAME + 1].rfind("-")
        name = name[:cut] if cut > 0 else name[:MAX_NAME]
    if not name or not name[0].isalpha():
        name = ("job-" + name)[:MAX_NAME].rstrip("-")
    return name


def _config_in_image(config, root):
    """CONFIG's path relative to the repository, which is how the pods (working directory
    IMAGE_SOURCE) name it."""
    if not os.path.isfile(config):
        raise RenderError("config file %s does not exist" % config)
    rel = os.path.relpath(os.path.abspath(config), root)
    if rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        raise RenderError("config %s is outside the repository %s: the pods read configs from "
                          "the image, which holds the repository at %s" % (config, root,
                                                                           IMAGE_SOURCE))
    return rel.replace(os.sep, "/")


# The flag of each render argument, for messages.
FLAGS = {"config": "CONFIG", "image": "--image", "data_pvc": "--data-pvc", "name": "--name",
         "data_subdir": "--data-subdir", "shm_size": "--shm-size", "command": "--command",
         "checkpoint": "--checkpoint", "inputs": "--input", "command_args": "--command-arg",
         "resume_from": "--resume-from", "env": "--env", "node_selector": "--node-selector",
         "tolerations": "--toleration", "cpu": "--cpu", "memory": "--memory",
         "image_pull_secrets": "--image-pull-secret", "priority_class": "--priority-class",
         "overrides": "--set", "allow_egress": "--allow-egress"}


def _control(text):
    """Whether `text` holds a control character or a line or paragraph separator (YAML and
    terminals treat several of them as line breaks)."""
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


def _check_control(a):
    """Every flag value is text without control characters: nothing in a value can end the
    header comment or a YAML scalar, whatever the emitter does with it."""
    for key, flag in FLAGS.items():
        value = a.get(key)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and _control(text):
                raise RenderError("%s %r: control characters (newlines, tabs, escapes) are not "
                                  "allowed in flag values" % (flag, text))


def _check_args(a):
    _check_control(a)
    for flag, value, low in (("--nodes", a["nodes"], 1), ("--gpus-per-node", a["gpus_per_node"], 0),
                             ("--grace-period", a["grace_period"], 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise RenderError("%s must be an integer >= %d, got %r" % (flag, low, value))
    if a["backend"] not in ("horovod", "ps"):
        raise RenderError("--backend must be horovod or ps, got %r" % (a["backend"],))
    if a.get("mpi") and a["backend"] != "horovod":
        raise RenderError("--mpi applies to --backend horovod only (an MPIJob launched with "
                          "mpirun)")
    if a["mpi_implementation"] not in MPI_IMPLEMENTATIONS:
        raise RenderError("--mpi-implementation must be one of %s, got %r" % (
            ", ".join(MPI_IMPLEMENTATIONS), a["mpi_implementation"]))
    if a["mpi_implementation"] != "MPICH" and not a["mpi"]:
        raise RenderError("--mpi-implementation applies with --mpi only (without it the "
                          "launcher runs horovodrun over Gloo)")
    if a["backend"] == "ps":
        if isinstance(a["servers"], bool) or not isinstance(a["servers"], int) or a["servers"] < 1:
            raise RenderError("--servers must be an integer >= 1, got %r" % (a["servers"],))
        if a["backoff_limit"] is not None:
            raise RenderError("--backoff-limit applies to --backend horovod only: a lost "
                              "parameter-server pod cannot rejoin its job, so none is retried")
    else:
        if a["servers"] is not None:
            raise RenderError("--servers applies to --backend ps only (Horovod has no servers)")
        bl = a["backoff_limit"]
        if isinstance(bl, bool) or not isinstance(bl, int) or bl < 0:
            raise RenderError("--backoff-limit must be an integer >= 0, got %r" % (bl,))
    if not _DNS_LABEL.match(a["name"]) or len(a["name"]) > MAX_NAME:
        raise RenderError("--name %r must be a DNS label of at most %d characters: lower-case "
                          "letters, digits and '-', starting with a letter" % (a["name"], MAX_NAME))
    if not _DNS_SUBDOMAIN.match(a["data_pvc"]) or len(a["data_pvc"]) > 253:
        raise RenderError("--data-pvc %r is not a valid PersistentVolumeClaim name (lower-case "
                          "letters, digits, '-' and '.')" % (a["data_pvc"],))
    if not a["image"] or not _IMAGE.match(a["image"]):
        raise RenderError("--image must be a container image reference without spaces, "
                          "REGISTRY/NAME:TAG or (recommended) REGISTRY/NAME@sha256:DIGEST, got %r"
                          % (a["image"],))
    if not _QUANTITY.match(a["shm_size"]):
        raise RenderError("--shm-size must be a Kubernetes quantity such as 8Gi, got %r"
                          % (a["shm_size"],))
    sub = a["data_subdir"]
    if not sub or sub.startswith("/") or ".." in sub.split("/"):
        raise RenderError("--data-subdir must be a relative path inside the PVC, got %r" % (sub,))
    _check_command(a)
    _check_cluster(a)


def _on_pvc(flag, path):
    if not isinstance(path, str) or not path.startswith(MOUNT + "/") or ".." in path.split("/"):
        raise RenderError("%s must be a path on the PVC, under %s/ (the only storage the pods "
                          "see), got %r" % (flag, MOUNT, path))


def _check_command(a):
    command = a["command"]
    if command not in COMMANDS:
        raise RenderError("--command must be one of %s, got %r" % (", ".join(COMMANDS), command))
    if command in ("eval", "predict"):
        if not a["checkpoint"]:
            raise RenderError("--command %s needs --checkpoint, a .params file on the PVC "
                              "(e.g. %s/runs/JOB/final.params)" % (command, MOUNT))
        _on_pvc("--checkpoint", a["checkpoint"])
    elif a["checkpoint"]:
        raise RenderError("--checkpoint applies to --command eval and predict only")
    if command == "predict":
        if not a["inputs"]:
            raise RenderError("--command predict needs --input, an image or folder on the PVC "
                              "(repeatable)")
        for path in a["inputs"]:
            _on_pvc("--input", path)
    elif a["inputs"]:
        raise RenderError("--input applies to --command predict only")
    if a["resume_from"] is not None:
        if command != "train":
            raise RenderError("--resume-from applies to --command train only")
        if not _DNS_LABEL.match(a["resume_from"]) or len(a["resume_from"]) > MAX_NAME:
            raise RenderError("--resume-from %r must be the --name of an earlier job (a DNS "
                              "label of at most %d characters)" % (a["resume_from"], MAX_NAME))
    for arg in a["command_args"]:
        if not isinstance(arg, str) or not arg:
            raise RenderError("--command-arg must be a non-empty string, got %r" % (arg,))


def _pair(flag, text, expected):
    """KEY=VALUE -> (KEY, VALUE), else a RenderError naming `flag` and `expected`."""
    if not isinstance(text, str) or "=" not in text or not text.split("=", 1)[0]:
        raise RenderError("%s must be %s, got %r" % (flag, expected, text))
    return tuple(text.split("=", 1))


def _label_key(key):
    prefix, _, name = key.rpartition("/")
    return bool(_LABEL_NAME.match(name)) and (not prefix or (
        len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.match(prefix))))


def _label_value(value):
    return value == "" or bool(_LABEL_NAME.match(value))


def _check_cluster(a):
    """--env, --node-selector, --toleration, --cpu, --memory, --image-pull-secret,
    --priority-class."""
    for text in a["env"]:
        key, value = _pair("--env", text, "NAME=VALUE")
        if not _ENV_NAME.match(key):
            raise RenderError("--env %r: %r is not a valid environment variable name (letters, "
                              "digits, '_', '-', '.', not starting with a digit)" % (text, key))
        if key in RESERVED_ENV or key.startswith("DMLC_"):
            raise RenderError("--env %r: %s is set by the renderer" % (text, key))
        _secret_ref(text, value)
    for text in a["allow_egress"]:
        _egress_rule(text)
    for text in a["node_selector"]:
        key, value = _pair("--node-selector", text, "LABEL=VALUE, e.g. "
                           "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3")
        if not _label_key(key) or not _label_value(value):
            raise RenderError("--node-selector %r is not LABEL=VALUE with a valid label key and "
                              "value (at most 63 characters of letters, digits, '-', '_', '.')"
                              % (text,))
    for text in a["tolerations"]:
        _toleration(text)
    if a["cpu"] is not None and not _CPU.match(str(a["cpu"])):
        raise RenderError("--cpu must be a CPU quantity such as 8 or 7500m, got %r" % (a["cpu"],))
    if a["memory"] is not None and not _QUANTITY.match(str(a["memory"])):
        raise RenderError("--memory must be a Kubernetes quantity such as 64Gi, got %r"
                          % (a["memory"],))
    for flag, names in (("--image-pull-secret", a["image_pull_secrets"]),
                        ("--priority-class", [a["priority_class"]] if a["priority_class"]
                         is not None else [])):
        for name in names:
            if not _DNS_SUBDOMAIN.match(name or "") or len(name) > 253:
                raise RenderError("%s %r is not a valid object name (lower-case letters, digits, "
                                  "'-' and '.')" % (flag, name))


def _secret_ref(text, value):
    """NAME=secret:SECRET/KEY's (SECRET, KEY), None for a literal value."""
    if not value.startswith(SECRET_PREFIX):
        return None
    secret, _, key = value[len(SECRET_PREFIX):].partition("/")
    if not _DNS_SUBDOMAIN.match(secret) or len(secret) > 253 or not _SECRET_KEY.match(key):
        raise RenderError("--env %r: expected NAME=secret:SECRET/KEY, a Secret's name (lower-case "
                          "letters, digits, '-', '.') and one of its keys (letters, digits, '-', "
                          "'_', '.')" % (text,))
    return secret, key


def _egress_rule(text):
    """--allow-egress CIDR[:PORT] -> a NetworkPolicy egress rule (TCP)."""
    expected = "CIDR[:PORT], e.g. 10.0.0.0/8:443 or 192.0.2.10/32"
    cidr, port = text, None
    if text.count(":") and "." in text and text.rsplit(":", 1)[1].isdigit():
        cidr, port = text.rsplit(":", 1)
    if not _CIDR.match(cidr) or (port is not None and not 0 < int(port) < 65536):
        raise RenderError("--allow-egress must be %s, got %r" % (expected, text))
    rule = {"to": [{"ipBlock": {"cidr": cidr}}]}
    if port is not None:
        rule["ports"] = [{"protocol": "TCP", "port": int(port)}]
    return rule


def _toleration(text):
    """KEY[=VALUE]:EFFECT -> a pod toleration (operator Equal with a value, Exists without)."""
    expected = ("KEY[=VALUE]:EFFECT with EFFECT one of %s, e.g. nvidia.com/gpu:NoSchedule"
                % ", ".join(TOLERATION_EFFECTS))
    if not isinstance(text, str) or ":" not in text:
        raise RenderError("--toleration must be %s, got %r" % (expected, text))
    head, effect = text.rsplit(":", 1)
    if effect not in TOLERATION_EFFECTS:
        raise RenderError("--toleration %r: effect %r is not one of %s" % (
            text, effect, ", ".join(TOLERATION_EFFECTS)))
    key, eq, value = head.partition("=")
    if not _label_key(key) or (eq and not _label_value(value)):
        raise RenderError("--toleration must be %s, got %r" % (expected, text))
    if eq:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


def _run_dir(a):
    """The run directory on the PVC: the job's own, or the earlier job's with --resume-from."""
    return "%s/runs/%s" % (MOUNT, a["resume_from"] or a["name"])


def _command_args(a, cfg, config_rel):
    """The `COMMAND ...` arguments every pod runs (after `deeplab launch ... --`)."""
    from deeplab.config import parse_override

    overrides = list(a["overrides"])
    for text in overrides:
        parts, value = parse_override(text)
        dotted = ".".join(parts)
        if dotted in PATH_KEYS and value is not None and not (
                isinstance(value, str) and value.startswith(MOUNT + "/")):
            raise RenderError("--set %s: the pods see only the PVC, mounted at %s; give a path "
                              "under %s/" % (text, MOUNT, MOUNT))
    # bench times synthetic batches: it reads no dataset.
    if a["command"] != "bench" and cfg["data"]["name"] != "synthetic" and not any(
            t.split("=", 1)[0] == "data.root" for t in overrides):
        overrides.insert(0, "data.root=%s/%s" % (MOUNT, a["data_subdir"].strip("/")))
    command, run_dir = a["command"], _run_dir(a)
    args = [command, config_rel]
    if command == "predict":
        args += list(a["inputs"])
    if command == "train":
        # A restarted pod continues from the newest checkpoint; the first pod finds none and
        # starts the run. With --resume-from the earlier job's checkpoint must be there.
        args += ["--workdir", run_dir,
                 "--resume" if a["resume_from"] else "--resume-if-exists"]
    if command in ("eval", "predict"):
        args += ["--checkpoint", a["checkpoint"]]
    if command in OUTPUTS:
        args += ["--out", "%s/%s" % (run_dir, OUTPUTS[command])]
    args += list(a["command_args"])
    # Last: predict's --set takes every value that follows it.
    for text in overrides:
        args += ["--set", text]
    return args


def _labels(a, component):
    return {"app.kubernetes.io/name": "deeplab", "app.kubernetes.io/instance": a["name"],
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "deeplab-k8s-render"}


def _env(pairs):
    return [{"name": k, "value": str(v)} for k, v in pairs]


def _user_env(a):
    """--env: literal values, or secretKeyRefs (the value stays in the cluster's Secret)."""
    out = []
    for text in a["env"]:
        name, value = text.split("=", 1)
        ref = _secret_ref(text, value)
        out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": ref[0], "key": ref[1]}}}
                   if ref else {"name": name, "value": value})
    return out


def pull_policy(image):
    """Always for a tag (the node checks the registry, so that another tenant's image cached under
    the same tag is never used); IfNotPresent for a digest, which names the content itself."""
    return "IfNotPresent" if "@sha256:" in image else "Always"


def _resources(requests=None, limits=None):
    out = {}
    if requests:
        out["requests"] = dict(requests)
    if limits:
        out["limits"] = dict(limits)
    return out


def _volumes(a, gpus=0):
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": a["data_pvc"]}},
               # The loader's worker processes pass batches through shared memory; the container
               # runtime's default /dev/shm is 64 MiB.
               {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": a["shm_size"]}}]
    if gpus:  # hides the image's CUDA driver stub from GPU processes (see STUB_LD_PATH)
        volumes.append({"name": "no-cuda-stub", "emptyDir": {"sizeLimit": "1Mi"}})
    return volumes


_MOUNTS = [{"name": "data", "mountPath": MOUNT}, {"name": "dshm", "mountPath": "/dev/shm"}]


def _container(a, name, command, args=None, env=(), gpus=0, mounts=True, ports=None,
               trains=False):
    """A container of the job's image; `trains` for the pods that hold the GPUs (--cpu,
    --memory), `gpus` the GPUs it gets (none: the CUDA driver stub goes on its library path)."""
    c = {"name": name, "image": a["image"], "imagePullPolicy": pull_policy(a["image"]),
         "workingDir": IMAGE_SOURCE, "command": list(command)}
    if args is not None:
        c["args"] = list(args)
        # Python's output reaches `kubectl logs` as it is written.
        c["env"] = _env([("PYTHONUNBUFFERED", "1")]) + list(env) + _user_env(a)
        if not gpus:
            c["env"] += _env([("LD_LIBRARY_PATH", STUB_LD_PATH)])
    if ports:
        c["ports"] = ports
    if trains:
        requests = {k: str(a[k]) if a[k] is not None else TRAIN_REQUESTS[k]
                    for k in ("cpu", "memory")}
        c["resources"] = _resources(requests, {"nvidia.com/gpu": gpus} if gpus else None)
    else:
        c["resources"] = _resources(REQUESTS[name], LIMITS[name])
    c["securityContext"] = _copy(CONTAINER_SECURITY)
    if mounts:
        c["volumeMounts"] = [dict(m) for m in _MOUNTS]
    if gpus:
        c.setdefault("volumeMounts", []).append({"name": "no-cuda-stub",
                                                 "mountPath": CUDA_STUB_DIR, "readOnly": True})
    return c


def _copy(obj):
    import copy

    return copy.deepcopy(obj)


def _pod(a, spec):
    """Pod `spec` with the scheduling and security settings every pod of the job shares."""
    # No Kubernetes API access: the pods never call it, so they get no token to leak.
    spec["automountServiceAccountToken"] = False
    spec["securityContext"] = _copy(POD_SECURITY)
    if a["node_selector"]:
        spec["nodeSelector"] = dict(text.split("=", 1) for text in a["node_selector"])
    if a["tolerations"]:
        spec["tolerations"] = [_toleration(text) for text in a["tolerations"]]
    if a["image_pull_secrets"]:
        spec["imagePullSecrets"] = [{"name": n} for n in a["image_pull_secrets"]]
    if a["priority_class"]:
        spec["priorityClassName"] = a["priority_class"]
    return spec


def _entrypoint(a, workers=False):
    """The container `command`: PID 1 of the pod, to which the pod's own command (`args`) is
    given; `workers` for pods whose training processes are not its children (sshd)."""
    grace = max(1, a["grace_period"] - ENTRYPOINT_MARGIN)
    return ENTRYPOINT + ["--grace", str(grace)] + (["--workers"] if workers else []) + ["--"]


def _launch(a, backend, *options):
    """`deeplab launch BACKEND OPTIONS... --grace S --` (the train arguments follow)."""
    grace = max(1, a["grace_period"] - LAUNCH_MARGIN)
    return ["deeplab", "launch", backend] + list(options) + ["--grace", str(grace), "--"]


def _mpijob(a, train_args):
    slots = a["gpus_per_node"] or 1
    launch = _launch(a, "horovod", *(["--mpi"] if a["mpi"] else []), "-np",
                     str(a["nodes"] * slots), "--hostfile", HOSTFILE,
                     "--start-timeout", str(LAUNCH_TIMEOUT)) + train_args
    launcher = _pod(a, {"containers": [_container(a, "launcher", _entrypoint(a), launch,
                                                  mounts=False)],
                        "terminationGracePeriodSeconds": a["grace_period"]})
    worker = _pod(a, {"containers": [_container(a, "worker", _entrypoint(a, workers=True),
                                                ["/usr/sbin/sshd", "-De", "-f", SSHD_CONFIG],
                                                gpus=a["gpus_per_node"], trains=True,
                                                ports=[{"name": "ssh", "containerPort": SSH_PORT,
                                                        "protocol": "TCP"}])],
                      "volumes": _volumes(a, a["gpus_per_node"]),
                      "terminationGracePeriodSeconds": a["grace_period"]})
    return {
        "apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob",
        "metadata": {"name": a["name"], "labels": _labels(a, "training")},
        "spec": {
            "slotsPerWorker": slots,
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": a["backoff_limit"]},
            # horovodrun (Gloo) reaches the workers over the operator's ssh. With --mpi the
            # launcher runs the image's mpirun: MPICH's Hydra in the default image
            # (requirements/mpi.txt, as scripts/setup_env.sh), Open MPI's in NGC's
            # (--mpi-implementation OpenMPI); the operator writes the hostfile as that MPI reads
            # it (host:slots or 'host slots=N' lines) and the launcher reads either.
            "mpiImplementation": a["mpi_implementation"] if a["mpi"] else "OpenMPI",
            "launcherCreationPolicy": "WaitForWorkersReady",
            "sshAuthMountPath": SSH_DIR,
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "OnFailure",
                             "template": {"metadata": {"labels": _labels(a, "launcher")},
                                          "spec": launcher}},
                "Worker": {"replicas": a["nodes"], "restartPolicy": "OnFailure",
                           "template": {"metadata": {"labels": _labels(a, "worker")},
                                        "spec": worker}},
            },
        },
    }


def _ps_objects(a, train_args, devices=1):
    """The parameter server's Service and Jobs; `devices`: dist.devices_per_worker, the GPUs
    each worker pod gets and drives (one worker per node with all its GPUs, for example)."""
    per_node = a["gpus_per_node"] // devices if a["gpus_per_node"] else 1  # CPU nodes: one
    workers = a["nodes"] * per_node
    root = "scheduler.%s" % a["name"]  # <hostname>.<subdomain>, resolved through the Service
    common = [("DMLC_PS_ROOT_URI", root), ("DMLC_PS_ROOT_PORT", PS_PORT),
              ("DMLC_NUM_SERVER", a["servers"]), ("DMLC_NUM_WORKER", workers),
              # ps-lite's scheduler then binds 0.0.0.0 rather than its DNS name.
              ("DMLC_USE_KUBERNETES", 1)]
    pod_ip = {"name": "DMLC_NODE_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    launch = _launch(a, "ps") + train_args
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": a["name"], "labels": _labels(a, "scheduler")},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {"app.kubernetes.io/instance": a["name"],
                              "app.kubernetes.io/component": "scheduler"},
                 "ports": [{"name": "ps-root", "port": PS_PORT, "targetPort": PS_PORT,
                            "protocol": "TCP"}]},
    }

    def job(role, count, container, indexed, volumes):
        pod = {"restartPolicy": "Never", "terminationGracePeriodSeconds": a["grace_period"],
               "containers": [container]}
        if role == "scheduler":
            pod = {"hostname": "scheduler", "subdomain": a["name"], **pod}
        else:
            pod["initContainers"] = [wait_for_scheduler]
        if volumes:
            pod["volumes"] = _volumes(a, container["resources"].get("limits", {}).get(
                "nvidia.com/gpu"))
        _pod(a, pod)
        spec = {"completions": count, "parallelism": count}
        if indexed:
            spec["completionMode"] = "Indexed"
        # A lost ps-lite node cannot rejoin the job, so a pod is never retried.
        spec["backoffLimit"] = 0
        spec["template"] = {"metadata": {"labels": _labels(a, role)}, "spec": pod}
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "%s-%s" % (a["name"], role), "labels": _labels(a, role)},
                "spec": spec}

    # ps-lite aborts if the scheduler's name does not resolve yet, and the Service publishes it
    # only once the scheduler pod has an address: servers and workers wait for it first.
    wait_for_scheduler = {
        "name": "wait-for-scheduler", "image": a["image"],
        "imagePullPolicy": pull_policy(a["image"]),
        "command": ["sh", "-c", 'for i in $(seq %d); do getent hosts "$DMLC_PS_ROOT_URI" '
                    '>/dev/null && exit 0; sleep 1; done; echo "$DMLC_PS_ROOT_URI does not '
                    'resolve" >&2; exit 1' % LAUNCH_TIMEOUT],
        "env": _env([("DMLC_PS_ROOT_URI", root)]),
        "resources": _resources(REQUESTS["wait-for-scheduler"], LIMITS["wait-for-scheduler"]),
        "securityContext": _copy(CONTAINER_SECURITY)}
    scheduler = _container(a, "scheduler", _entrypoint(a), launch,
                           env=_env([("DMLC_ROLE", "scheduler")] + common), mounts=False,
                           ports=[{"name": "ps-root", "containerPort": PS_PORT,
                                   "protocol": "TCP"}])
    server = _container(a, "server", _entrypoint(a), launch,
                        env=_env([("DMLC_ROLE", "server")] + common) + [pod_ip], mounts=False)
    worker = _container(a, "worker", _entrypoint(a), launch,
                        env=_env([("DMLC_ROLE", "worker")] + common
                                 # each worker pod sees its own GPUs from device 0
                                 + [("DEEPLAB_LOCAL_RANK", 0)]) + [pod_ip],
                        gpus=devices if a["gpus_per_node"] else 0, trains=True)
    return [service, job("scheduler", 1, scheduler, False, False),
            job("server", a["servers"], server, True, False),
            job("worker", workers, worker, True, True)]


def _network_policy(a):
    """The job's NetworkPolicy: its pods accept connections from the job's own pods only, and
    connect only to them, to DNS and to what --allow-egress names.

    Ingress is not narrowed to ports: the job's pods also listen on ports chosen at run time
    (Gloo's pairs and horovodrun's rendezvous under Horovod, every ps-lite server and worker under
    the parameter server), besides sshd (SSH_PORT) and the ps-lite scheduler (PS_PORT).
    """
    job = {"app.kubernetes.io/name": "deeplab", "app.kubernetes.io/instance": a["name"]}
    peers = [{"podSelector": {"matchLabels": dict(job)}}]
    egress = [{"to": _copy(peers)},
              # DNS wherever the cluster serves it (kube-dns pods, or a node-local cache)
              {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]
    egress += [_egress_rule(text) for text in a["allow_egress"]]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": a["name"], "labels": _labels(a, "network-policy")},
            "spec": {"podSelector": {"matchLabels": dict(job)},
                     "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": peers}], "egress": egress}}


def _normalize(args):
    """Render arguments as a dict with every option filled in."""
    a = dict(args)
    for key, default in DEFAULTS.items():
        if a.get(key) is None:
            a[key] = default
    a.setdefault("name", None)
    a.setdefault("servers", None)
    a.setdefault("backoff_limit", None)
    for key in ("resume_from", "checkpoint", "cpu", "memory", "priority_class"):
        a.setdefault(key, None)
    if a.get("network_policy") is None:
        a["network_policy"] = True
    a["mpi"] = bool(a.get("mpi"))
    a["mpi_implementation"] = a.get("mpi_implementation") or "MPICH"
    for key in LISTS:
        a[key] = list(a.get(key) or [])
    if a["backoff_limit"] is None and a["backend"] == "horovod":
        a["backoff_limit"] = HOROVOD_BACKOFF_LIMIT
    if a["name"] is None:
        a["name"] = default_name(a["config"])
    if a["backend"] == "ps" and a["servers"] is None:
        a["servers"] = a["nodes"]
    return a


# The MPI Operator's mpiImplementation values our images carry: MPICH (the default image, from
# PyPI) and OpenMPI (NGC's image).
MPI_IMPLEMENTATIONS = ("MPICH", "OpenMPI")

# The render options' defaults, for `deeplab k8s render` and the Python API alike.
DEFAULTS = {"command": "train", "data_subdir": "voc", "shm_size": "8Gi", "grace_period": 300}
HOROVOD_BACKOFF_LIMIT = 3  # --backoff-limit's default under --backend horovod
LISTS = ("overrides", "inputs", "command_args", "env", "node_selector", "tolerations",
         "image_pull_secrets", "allow_egress")


# The module whose parse_args reads each command's arguments (as `deeplab COMMAND` does).
PARSERS = {"train": "deeplab.train", "bench": "deeplab.bench", "eval": "deeplab.evaluate",
           "predict": "deeplab.predict"}


def _parse_command(a, args):
    """Parses the pods' `COMMAND ARGS` with the command's own parser, so that a bad
    --command-arg fails here rather than in every pod."""
    import contextlib
    import importlib
    import io

    parser = importlib.import_module(PARSERS[args[0]]).parse_args
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser(args[1:])
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        raise RenderError("--command-arg: `deeplab %s` rejects its arguments: %s" % (
            args[0], lines[-1] if lines else "invalid arguments")) from None


def render(args, root=None):
    """The manifests (a list of dicts) for render arguments `args` (a dict with the keys of
    `deeplab k8s render`'s options: config, backend, nodes, gpus_per_node, image, data_pvc and
    optionally name, servers, overrides, data_subdir, shm_size, grace_period, backoff_limit,
    command, checkpoint, inputs, command_args, resume_from, env, node_selector, tolerations, cpu,
    memory, image_pull_secrets, priority_class, allow_egress, network_policy (default True); the
    list-valued ones are lists of strings).

    Raises:
        RenderError (or ConfigError) naming the flag or config key that is wrong.
    """
    from deeplab.config import load_config

    a = _normalize(args)
    _check_args(a)
    root = root or source_root()
    config_rel = _config_in_image(a["config"], root)
    cfg = load_config(a["config"], a["overrides"])
    world = a["nodes"] * (a["gpus_per_node"] or 1)
    # bench's default batch per worker, like training's, is train.batch_size / workers.
    if a["command"] in ("train", "bench") and cfg["train"]["batch_size"] % world:
        raise RenderError("train.batch_size (%d, the global batch) must be divisible by the number "
                          "of workers, --nodes x --gpus-per-node = %d" % (
                              cfg["train"]["batch_size"], world))
    if cfg["dist"]["backend"] not in ("auto", a["backend"]):
        raise RenderError("dist.backend is %r in the config but --backend is %r"
                          % (cfg["dist"]["backend"], a["backend"]))
    train_args = _command_args(a, cfg, config_rel)
    _parse_command(a, train_args)
    devices = cfg["dist"]["devices_per_worker"]
    if devices > 1 and a["backend"] == "horovod":
        raise RenderError("dist.devices_per_worker is %d: one worker driving several GPUs runs "
                          "under --backend ps (Horovod runs one worker per GPU)" % devices)
    if devices > 1 and a["gpus_per_node"] % devices:
        raise RenderError("dist.devices_per_worker (%d) must divide --gpus-per-node (%d): each "
                          "worker pod drives that many of a node's GPUs"
                          % (devices, a["gpus_per_node"]))
    docs = [_mpijob(a, train_args)] if a["backend"] == "horovod" else _ps_objects(
        a, train_args, devices)
    if a["network_policy"]:
        docs.append(_network_policy(a))
    elif a["allow_egress"]:
        raise RenderError("--allow-egress applies to the job's NetworkPolicy, which "
                          "--no-network-policy leaves out")
    return docs


def render_command(args, root=None):
    """The canonical `deeplab k8s render` command line that reproduces `args`, run from the
    repository's top directory."""
    a = _normalize(args)
    config = _config_in_image(a["config"], root or source_root())
    cmd = ["deeplab", "k8s", "render", config, "--backend", a["backend"],
           "--nodes", str(a["nodes"]), "--gpus-per-node", str(a["gpus_per_node"]),
           "--image", a["image"], "--data-pvc", a["data_pvc"], "--name", a["name"]]
    if a["backend"] == "ps":
        cmd += ["--servers", str(a["servers"])]
    for flag, key, default in (("--data-subdir", "data_subdir", DEFAULTS["data_subdir"]),
                               ("--shm-size", "shm_size", DEFAULTS["shm_size"]),
                               ("--grace-period", "grace_period", DEFAULTS["grace_period"]),
                               ("--backoff-limit", "backoff_limit", HOROVOD_BACKOFF_LIMIT
                                if a["backend"] == "horovod" else None),
                               ("--command", "command", DEFAULTS["command"]),
                               ("--checkpoint", "checkpoint", None),
                               ("--resume-from", "resume_from", None),
                               ("--cpu", "cpu", None), ("--memory", "memory", None),
                               ("--priority-class", "priority_class", None)):
        if a[key] != default:
            cmd += [flag, str(a[key])]
    for flag, key in (("--input", "inputs"), ("--env", "env"),
                      ("--node-selector", "node_selector"), ("--toleration", "tolerations"),
                      ("--image-pull-secret", "image_pull_secrets"),
                      ("--allow-egress", "allow_egress")):
        for text in a[key]:
            cmd += [flag, text]
    if not a["network_policy"]:
        cmd += ["--no-network-policy"]
    if a["mpi"]:
        cmd += ["--mpi"]
    if a["mpi_implementation"] != "MPICH":
        cmd += ["--mpi-implementation", a["mpi_implementation"]]
    # '=' form: a value such as '--quiet' would otherwise be read as an option.
    cmd += ["--command-arg=%s" % text for text in a["command_args"]]
    for text in a["overrides"]:
        cmd += ["--set", text]
    return cmd


def dump_documents(docs, header_lines=()):
    """Multi-document YAML text, keys in the order built, no line wrapping. The header lines
    become comments; one with a line break or control character is refused (it could end the
    comment and start YAML of its own)."""
    for line in header_lines:
        if _control(line):
            raise RenderError("refusing to write a header comment with control characters: %r"
                              % (line,))
    out = "".join("# %s\n" % line for line in header_lines)
    out += yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=4096,
                              explicit_start=True)
    return out


def render_to_dir(args, out, root=None):
    """Renders and writes `out`/job.yaml (creating `out`); returns its path."""
    docs = render(args, root=root)
    header = ["Rendered by: %s" % " ".join(shlex.quote(t) for t in render_command(args, root)),
              "Generated by the command above (plus --out DIR). You may edit this file; run the "
              "command again to regenerate it (edits are then lost)."]
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, MANIFEST)
    write_text(path, dump_documents(docs, header))
    return path
