"""Offline validation of rendered manifests, strict on unknown fields.

- Core objects (Service, Job, ...): the JSON schemas bundled in the `kubernetes-validate` package,
  in strict mode, for Kubernetes KUBERNETES_VERSION.
- MPIJob (kubeflow.org/v2beta1): the MPI Operator's CRD schema vendored in
  k8s/schemas/kubeflow.org_mpijobs.yaml, checked with `jsonschema`; its metadata against
  Kubernetes' ObjectMeta from the same kubernetes-validate schemas.
- ENUMS: values that the API server and the MPI Operator check in code although their OpenAPI
  schemas do not list them (restartPolicy, cleanPodPolicy, ...).
- What `deeplab k8s render` produces, and nothing else: RENDERED_KINDS only, every pod admitted
  by the *restricted* Pod Security Standard (`restricted_problems`: no privileged container, no
  host namespaces, ports or paths, no added capabilities but NET_BIND_SERVICE, non-root, seccomp,
  ...), and beyond it (`renderer_problems`): no added capability at all, no AppArmor profile
  other than the runtime's default or a local one in a pod's annotations, no service-account
  token; one NetworkPolicy per manifest, named after the job (`manifest_problems`). A document
  added to a manifest by hand or by injection fails here.
"""
import copy
import functools
import glob
import os

import yaml

from deeplab.errors import ManifestError

__all__ = ["KUBERNETES_VERSION", "CRD_PATH", "ManifestError", "RENDERED_KINDS", "load_documents",
           "mpijob_schema", "pod_specs", "restricted_problems", "renderer_problems",
           "manifest_problems", "validate_document", "validate_dir"]

# The Kubernetes release whose API the MPI Operator 0.7.0 CRD was generated from.
KUBERNETES_VERSION = "1.34"
CRD_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas",
                        "kubeflow.org_mpijobs.yaml")

# (field name, allowed values): applied wherever the field appears under the listed parent key.
# Sources: k8s.io/api core/v1 and batch/v1 types (validated by the API server), and the MPI
# Operator's pkg/apis/kubeflow/validation for the MPIJob fields.
ENUMS = {
    ("PodSpec", "restartPolicy"): ("Always", "OnFailure", "Never"),
    ("PodSpec", "dnsPolicy"): ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"),
    ("Container", "imagePullPolicy"): ("Always", "Never", "IfNotPresent"),
    ("Container", "terminationMessagePolicy"): ("File", "FallbackToLogsOnError"),
    ("Port", "protocol"): ("TCP", "UDP", "SCTP"),
    ("EmptyDir", "medium"): ("", "Memory", "HugePages"),
    ("JobSpec", "completionMode"): ("NonIndexed", "Indexed"),
    ("ServiceSpec", "type"): ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"),
    ("ReplicaSpec", "restartPolicy"): ("Always", "OnFailure", "Never", "ExitCode"),
    ("RunPolicy", "cleanPodPolicy"): ("None", "Running", "All"),
    ("MPIJobSpec", "launcherCreationPolicy"): ("AtStartup", "WaitForWorkersReady"),
}
MPI_REPLICA_TYPES = ("Launcher", "Worker")
# (apiVersion, kind) of the objects `deeplab k8s render` writes.
RENDERED_KINDS = (("kubeflow.org/v2beta1", "MPIJob"), ("batch/v1", "Job"), ("v1", "Service"),
                  ("networking.k8s.io/v1", "NetworkPolicy"))

# The restricted Pod Security Standard (kubernetes.io/docs/concepts/security/
# pod-security-standards/, Kubernetes 1.34), which includes the baseline one.
RESTRICTED_VOLUMES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret")
RESTRICTED_ADD_CAPABILITIES = ("NET_BIND_SERVICE",)
SAFE_SYSCTLS = ("kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes")
SELINUX_TYPES = ("", "container_t", "container_init_t", "container_kvm_t", "container_engine_t")
# The pre-1.30 AppArmor annotation of a pod, one per container: the baseline standard allows
# only the runtime's default profile or a local one ("unconfined" turns AppArmor off).
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
# The label every object of a rendered job carries, with the job's name (render._labels).
JOB_LABEL = "app.kubernetes.io/instance"


def load_documents(path):
    """The non-empty YAML documents of `path`, as a list of dicts."""
    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as err:
        raise ManifestError("%s is not valid YAML: %s" % (path, err)) from None
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise ManifestError("%s: document %d is not a Kubernetes object (no kind/apiVersion)"
                                % (path, i + 1))
    return docs


def _strict(schema):
    """`schema` with additionalProperties: false on every object that lists its properties and
    does not say otherwise. The CRD's schema, like every structural CRD schema, leaves unknown
    fields to the API server's pruning (silently dropped); here they are errors."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def mpijob_schema(path=CRD_PATH):
    """The strict JSON schema of an MPIJob kubeflow.org/v2beta1, from the vendored CRD."""
    with open(path) as f:
        crd = yaml.safe_load(f)
    for version in crd["spec"]["versions"]:
        if version["name"] == "v2beta1":
            return _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    raise ManifestError("%s has no v2beta1 version" % path)


@functools.lru_cache(maxsize=None)
def _object_meta_validator(version):
    """A validator of Kubernetes ObjectMeta (strict) from kubernetes-validate's schemas."""
    import jsonschema
    import kubernetes_validate.utils as kv
    from referencing import Registry, Resource

    full = [v for v in kv.all_versions() if kv.major_minor(v) == version]
    if not full:
        raise ManifestError("kubernetes-validate %s has no schemas for Kubernetes %s"
                            % (kv.__version__, version))
    defs = kv.schema_contents("kubernetes-json-schema/v%s-local-strict/_definitions.json"
                              % full[-1], version)
    registry = Resource.from_contents(defs) @ Registry()
    ref = {"$ref": defs["$id"] + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    return jsonschema.Draft202012Validator(ref, registry=registry)


def _path(parts):
    return ".".join(str(p) for p in parts) or "(top level)"


def _enum_errors(doc):
    """Errors for the ENUMS fields of `doc` (an object dict)."""
    errors = []

    def check(kind, obj, path):
        if not isinstance(obj, dict):
            return
        for (k, field), allowed in ENUMS.items():
            if k == kind and field in obj and obj[field] not in allowed:
                errors.append("%s.%s: %r is not one of %s" % (
                    path, field, obj[field], ", ".join(repr(v) for v in allowed)))

    def pod(spec, path):
        if not isinstance(spec, dict):
            return
        check("PodSpec", spec, path)
        for key in ("initContainers", "containers"):
            for i, c in enumerate(spec.get(key) or []):
                check("Container", c, "%s.%s.%d" % (path, key, i))
                for j, p in enumerate((c or {}).get("ports") or []):
                    check("Port", p, "%s.%s.%d.ports.%d" % (path, key, i, j))
        for i, v in enumerate(spec.get("volumes") or []):
            if isinstance(v, dict) and isinstance(v.get("emptyDir"), dict):
                check("EmptyDir", v["emptyDir"], "%s.volumes.%d.emptyDir" % (path, i))

    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    kind = doc.get("kind")
    if kind == "Job":
        check("JobSpec", spec, "spec")
        pod((spec.get("template") or {}).get("spec"), "spec.template.spec")
    elif kind == "Service":
        check("ServiceSpec", spec, "spec")
        for j, p in enumerate(spec.get("ports") or []):
            check("Port", p, "spec.ports.%d" % j)
    elif kind == "Pod":
        pod(spec, "spec")
    elif kind == "MPIJob":
        check("MPIJobSpec", spec, "spec")
        check("RunPolicy", spec.get("runPolicy"), "spec.runPolicy")
        for rtype, rspec in (spec.get("mpiReplicaSpecs") or {}).items():
            path = "spec.mpiReplicaSpecs.%s" % rtype
            if rtype not in MPI_REPLICA_TYPES:
                errors.append("%s: replica type %r is not one of %s" % (
                    path, rtype, ", ".join(MPI_REPLICA_TYPES)))
            check("ReplicaSpec", rspec, path)
            if isinstance(rspec, dict):
                pod((rspec.get("template") or {}).get("spec"), path + ".template.spec")
    return errors


def _pods(doc):
    """(field path prefix, holder) of every pod `doc` would create, the holder being what
    carries the pod's `metadata` and `spec`: a Pod itself (prefix ''), a pod template (Job,
    Deployment, ...), a CronJob's job template's, each MPIJob replica's."""
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    if doc.get("kind") == "Pod":
        return [("", doc)]
    out = []
    if doc.get("kind") == "MPIJob":
        for rtype, rspec in sorted((spec.get("mpiReplicaSpecs") or {}).items()):
            template = (rspec or {}).get("template") if isinstance(rspec, dict) else None
            out.append(("spec.mpiReplicaSpecs.%s.template." % rtype, template))
    for path, holder in (("spec.template.", spec.get("template")),
                         ("spec.jobTemplate.spec.template.",
                          ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template"))):
        if isinstance(holder, dict):
            out.append((path, holder))
    return [(p, h if isinstance(h, dict) else {}) for p, h in out]


def _part(holder, key):
    return holder.get(key) if isinstance(holder.get(key), dict) else {}


def pod_specs(doc):
    """(field path, pod spec) of every pod `doc` would create: a Pod's spec, a pod template's
    (Job, Deployment, ...), a CronJob's job template's, each MPIJob replica's."""
    return [(prefix + "spec", _part(holder, "spec")) for prefix, holder in _pods(doc)]


def restricted_problems(spec, path="spec"):
    """Why pod `spec` would be rejected by a namespace enforcing the restricted Pod Security
    Standard (empty if it would be admitted), as 'field.path: message' strings."""
    errors = []
    sc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            errors.append("%s.%s: host namespaces are not allowed" % (path, key))
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        errors.append("%s.securityContext.windowsOptions.hostProcess: not allowed" % path)
    for i, v in enumerate(spec.get("volumes") or []):
        kinds = [k for k in (v or {}) if k != "name"]
        for k in kinds:
            if k not in RESTRICTED_VOLUMES:
                errors.append("%s.volumes.%d: %s volumes are not allowed (only %s)"
                              % (path, i, k, ", ".join(RESTRICTED_VOLUMES)))
    for i, sysctl in enumerate(sc.get("sysctls") or []):
        if (sysctl or {}).get("name") not in SAFE_SYSCTLS:
            errors.append("%s.securityContext.sysctls.%d: %r is not a safe sysctl"
                          % (path, i, (sysctl or {}).get("name")))
    pod_non_root = sc.get("runAsNonRoot") is True
    pod_seccomp = (sc.get("seccompProfile") or {}).get("type")
    errors += _context_problems(sc, path + ".securityContext", container=False)
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        errors.append("%s.securityContext.seccompProfile.type: %r is not allowed "
                      "(RuntimeDefault or Localhost)" % (path, pod_seccomp))
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(key) or []):
            cpath = "%s.%s.%d" % (path, key, i)
            csc = (c or {}).get("securityContext") or {}
            spath = cpath + ".securityContext"
            errors += _context_problems(csc, spath, container=True)
            if csc.get("privileged"):
                errors.append("%s.privileged: privileged containers are not allowed" % spath)
            if csc.get("allowPrivilegeEscalation") is not False:
                errors.append("%s.allowPrivilegeEscalation: must be false" % spath)
            if csc.get("runAsNonRoot") is False or not (
                    pod_non_root or csc.get("runAsNonRoot") is True):
                errors.append("%s.runAsNonRoot: must be true (here or in the pod's "
                              "securityContext)" % spath)
            seccomp = (csc.get("seccompProfile") or {}).get("type")
            if seccomp not in (None, "RuntimeDefault", "Localhost") or (
                    seccomp is None and pod_seccomp is None):
                errors.append("%s.seccompProfile.type: must be RuntimeDefault or Localhost (here "
                              "or in the pod's securityContext)" % spath)
            caps = csc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                errors.append("%s.capabilities.drop: must include ALL" % spath)
            for cap in caps.get("add") or []:
                if cap not in RESTRICTED_ADD_CAPABILITIES:
                    errors.append("%s.capabilities.add: %r is not allowed (only %s)"
                                  % (spath, cap, ", ".join(RESTRICTED_ADD_CAPABILITIES)))
            for j, port in enumerate((c or {}).get("ports") or []):
                if (port or {}).get("hostPort"):
                    errors.append("%s.ports.%d.hostPort: host ports are not allowed" % (cpath, j))
    return errors


def _context_problems(sc, path, container):
    """The rules a pod's and a container's securityContext share."""
    errors = []
    if sc.get("runAsUser") == 0:
        errors.append("%s.runAsUser: 0 (root) is not allowed" % path)
    if (sc.get("windowsOptions") or {}).get("hostProcess") and container:
        errors.append("%s.windowsOptions.hostProcess: not allowed" % path)
    se = sc.get("seLinuxOptions") or {}
    if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
        errors.append("%s.seLinuxOptions: only a container type, no user or role" % path)
    if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault",
                                                             "Localhost"):
        errors.append("%s.appArmorProfile.type: must be RuntimeDefault or Localhost" % path)
    if sc.get("procMount") not in (None, "Default"):
        errors.append("%s.procMount: must be Default" % path)
    return errors


def renderer_problems(doc):
    """Why `doc` is not an object `deeplab k8s render` writes: another kind, a pod the restricted
    Pod Security Standard rejects, an added capability (even the NET_BIND_SERVICE restricted
    allows: the renderer adds none), an AppArmor annotation other than the runtime's default or a
    local profile (e.g. 'unconfined'), a service-account token, a Service exposed outside."""
    kind = (doc.get("apiVersion"), doc.get("kind"))
    errors = []
    if kind not in RENDERED_KINDS:
        errors.append("kind: %s %s is not an object deeplab k8s render writes (%s)" % (
            kind[0], kind[1], ", ".join("%s %s" % k for k in RENDERED_KINDS)))
    for prefix, holder in _pods(doc):
        path, spec = prefix + "spec", _part(holder, "spec")
        errors += restricted_problems(spec, path)
        if spec.get("automountServiceAccountToken") is not False:
            errors.append("%s.automountServiceAccountToken: must be false (the pods never "
                          "use the Kubernetes API)" % path)
        for key in ("initContainers", "containers", "ephemeralContainers"):
            for i, c in enumerate(spec.get(key) or []):
                caps = ((c or {}).get("securityContext") or {}).get("capabilities") or {}
                for cap in caps.get("add") or []:
                    if cap in RESTRICTED_ADD_CAPABILITIES:  # the others: restricted_problems
                        errors.append("%s.%s.%d.securityContext.capabilities.add: %r: deeplab "
                                      "k8s render adds no capabilities" % (path, key, i, cap))
        annotations = _part(holder, "metadata").get("annotations") or {}
        for name, value in sorted(annotations.items() if isinstance(annotations, dict) else ()):
            if str(name).startswith(APPARMOR_ANNOTATION) and value != "runtime/default" \
                    and not str(value).startswith("localhost/"):
                errors.append("%smetadata.annotations.%s: %r: AppArmor must stay on (only "
                              "runtime/default or localhost/PROFILE)" % (prefix, name, value))
    if doc.get("kind") == "Service" and isinstance(doc.get("spec"), dict):
        svc = doc["spec"]
        if svc.get("type", "ClusterIP") != "ClusterIP" or svc.get("externalIPs"):
            errors.append("spec: the job's Service must be an in-cluster ClusterIP one")
    return errors


def manifest_problems(docs):
    """Why the objects of one manifest file, together, are not what `deeplab k8s render` writes:
    more than one NetworkPolicy, or one not named after the job (the name its other objects
    carry in their JOB_LABEL): a second policy, or one that selects other pods, could open what
    the job's own policy closes. Messages start with 'Kind/name: '."""
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    jobs = sorted({str(_part(_part(d, "metadata"), "labels").get(JOB_LABEL))
                   for d in docs if d.get("kind") != "NetworkPolicy"
                   and _part(_part(d, "metadata"), "labels").get(JOB_LABEL)})
    errors = []
    if len(policies) > 1:
        errors.append("NetworkPolicy/*: %d NetworkPolicies (%s); deeplab k8s render writes one "
                      "per job" % (len(policies), ", ".join(
                          str(_part(p, "metadata").get("name")) for p in policies)))
    for policy in policies:
        name = _part(policy, "metadata").get("name")
        if name not in jobs:
            errors.append("NetworkPolicy/%s: metadata.name: not named after the job (%s); "
                          "deeplab k8s render names its policy after the job" % (
                              name, ", ".join(jobs) or "no job object in the file"))
    return errors


def validate_document(doc, version=KUBERNETES_VERSION):
    """Problems with one object, as 'field.path: message' strings (empty if it is valid)."""
    import jsonschema
    import kubernetes_validate

    errors = []
    if doc.get("kind") == "MPIJob":
        if doc.get("apiVersion") != "kubeflow.org/v2beta1":
            return ["apiVersion: %r: only the kubeflow.org/v2beta1 MPIJob schema is vendored "
                    "(%s)" % (doc.get("apiVersion"), os.path.basename(CRD_PATH))]
        validator = jsonschema.Draft202012Validator(mpijob_schema())
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            errors.append("%s: %s" % (_path(err.absolute_path), err.message))
        if isinstance(doc.get("metadata"), dict):
            for err in _object_meta_validator(version).iter_errors(doc["metadata"]):
                errors.append("%s: %s" % (_path(["metadata"] + list(err.absolute_path)),
                                          err.message))
    else:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append("%s: %s" % (_path(err.absolute_path), err.message))
        except kubernetes_validate.SchemaNotFoundError as err:
            errors.append("kind: %s" % err.message)
    return errors + _enum_errors(doc) + renderer_problems(doc)


def validate_dir(directory, version=KUBERNETES_VERSION):
    """Validates every *.yaml file in `directory`, each object and each file's objects together
    (manifest_problems); returns (number of objects, list of 'FILE: Kind/name: field: message'
    problems)."""
    if not os.path.isdir(directory):
        raise ManifestError("%s is not a directory of manifests" % directory)
    files = sorted(glob.glob(os.path.join(directory, "*.yaml")) +
                   glob.glob(os.path.join(directory, "*.yml")))
    if not files:
        raise ManifestError("%s holds no *.yaml manifests" % directory)
    count, problems = 0, []
    for path in files:
        docs = load_documents(path)
        for doc in docs:
            count += 1
            name = (doc.get("metadata") or {}).get("name", "?")
            for err in validate_document(doc, version):
                problems.append("%s: %s/%s: %s" % (path, doc["kind"], name, err))
        problems += ["%s: %s" % (path, err) for err in manifest_problems(docs)]
    return count, problems
