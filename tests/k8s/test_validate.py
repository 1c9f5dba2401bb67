"""deeplab k8s validate: the rendered manifests pass; a typo'd field, a wrong type and a bad enum
value each fail, for the MPIJob (vendored CRD) and for core objects (kubernetes-validate)."""
import copy
import glob
import json
import os

import pytest
import yaml

from deeplab.k8s import cli, render, validate

ROOT = render.source_root()
EXAMPLES = {os.path.basename(os.path.dirname(p)): os.path.dirname(p)
            for p in glob.glob(os.path.join(ROOT, "k8s", "examples", "*", render.MANIFEST))}


def example(backend, kind):
    docs = validate.load_documents(os.path.join(EXAMPLES[backend], render.MANIFEST))
    return copy.deepcopy(next(d for d in docs if d["kind"] == kind))


def worker_pod(mpijob):
    return mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]


@pytest.mark.parametrize("backend", sorted(EXAMPLES))
def test_examples_are_valid(backend):
    count, problems = validate.validate_dir(EXAMPLES[backend])
    assert problems == []
    assert count == (5 if backend.startswith("ps") else 2)  # with the job's NetworkPolicy


def test_cluster_settings_are_checked_by_the_schemas():
    """A misspelt toleration field or a non-string node selector fails validation."""
    doc = example("horovod-eval-h100", "MPIJob")
    assert validate.validate_document(doc) == []
    pod = worker_pod(doc)
    assert pod["tolerations"] and pod["nodeSelector"] and pod["priorityClassName"]
    pod["tolerations"][0]["efect"] = "NoSchedule"
    pod["nodeSelector"]["pool"] = 3
    problems = validate.validate_document(doc)
    assert any("'efect' was unexpected" in p for p in problems), problems
    assert any("nodeSelector.pool: 3 is not of type 'string'" in p for p in problems), problems


MPIJOB_BREAKS = {
    # typo'd field, at the top of the spec and deep inside the pod template
    "typo spec": (lambda d: d["spec"].update(slotPerWorker=4),
                  "spec: Additional properties are not allowed ('slotPerWorker' was unexpected)"),
    "typo container": (lambda d: worker_pod(d)["containers"][0].update(volumeMount=[]),
                       "containers.0: Additional properties are not allowed ('volumeMount'"),
    "typo metadata": (lambda d: d["metadata"].update(lables={}),
                      "metadata: Additional properties are not allowed ('lables'"),
    # wrong type
    "type slots": (lambda d: d["spec"].update(slotsPerWorker="4"),
                   "spec.slotsPerWorker: '4' is not of type 'integer'"),
    "type gpus": (lambda d: worker_pod(d)["containers"][0]["resources"]["limits"].update(
        {"nvidia.com/gpu": "four"}), "'four' does not match"),
    # bad enum value: listed in the CRD, and checked by the operator in code
    "enum mpiImplementation": (lambda d: d["spec"].update(mpiImplementation="MVAPICH"),
                               "spec.mpiImplementation: 'MVAPICH' is not one of"),
    "enum cleanPodPolicy": (lambda d: d["spec"]["runPolicy"].update(cleanPodPolicy="Always"),
                            "spec.runPolicy.cleanPodPolicy: 'Always' is not one of"),
    "enum replica type": (lambda d: d["spec"]["mpiReplicaSpecs"].update(
        Master=d["spec"]["mpiReplicaSpecs"]["Worker"]), "replica type 'Master' is not one of"),
}

JOB_BREAKS = {
    "typo pod": (lambda d: d["spec"]["template"]["spec"].update(restartPolcy="Never"),
                 "Additional properties are not allowed ('restartPolcy' was unexpected)"),
    "type completions": (lambda d: d["spec"].update(completions="8"),
                         "spec.completions: '8' is not of type"),
    "enum restartPolicy": (lambda d: d["spec"]["template"]["spec"].update(
        restartPolicy="Sometimes"), "spec.template.spec.restartPolicy: 'Sometimes' is not one of"),
    "enum completionMode": (lambda d: d["spec"].update(completionMode="indexed"),
                            "spec.completionMode: 'indexed' is not one of"),
    "enum kind": (lambda d: d.update(apiVersion="batch/v2"), "Couldn't find schema for kind Job"),
}

SERVICE_BREAKS = {
    "typo spec": (lambda d: d["spec"].update(clusterIp="None"),
                  "Additional properties are not allowed ('clusterIp' was unexpected)"),
    "type port": (lambda d: d["spec"]["ports"][0].update(port="9091"),
                  "spec.ports.0.port: '9091' is not of type"),
    "enum protocol": (lambda d: d["spec"]["ports"][0].update(protocol="tcp"),
                      "spec.ports.0.protocol: 'tcp' is not one of"),
}


@pytest.mark.parametrize("backend, kind, breaks", [
    ("horovod", "MPIJob", MPIJOB_BREAKS), ("ps", "Job", JOB_BREAKS),
    ("ps", "Service", SERVICE_BREAKS)], ids=["MPIJob", "Job", "Service"])
def test_each_kind_of_mistake_fails(backend, kind, breaks):
    for label, (change, expected) in breaks.items():
        doc = example(backend, kind)
        assert validate.validate_document(doc) == []
        change(doc)
        problems = validate.validate_document(doc)
        assert any(expected in p for p in problems), (label, problems)


def test_validate_command_lists_problems_and_fails(tmp_path, capsys):
    doc = example("ps", "Job")
    doc["spec"]["template"]["spec"]["restartPolcy"] = "Never"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"1 problem\(s\) in .* \(Kubernetes 1\.34"):
        cli.main(cli.parse_args(["validate", str(tmp_path)]))
    err = capsys.readouterr().err
    assert "job.yaml: Job/deeplabv3-os16-ps-scheduler: spec.template.spec: Additional" in err


def test_unreadable_manifests_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(validate.ManifestError, match="a.yaml is not valid YAML"):
        validate.validate_dir(str(tmp_path))
    (tmp_path / "a.yaml").write_text("just: data\n")
    with pytest.raises(validate.ManifestError, match="document 1 is not a Kubernetes object"):
        validate.validate_dir(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(validate.ManifestError, match="holds no"):
        validate.validate_dir(str(tmp_path / "empty"))


def test_only_the_vendored_mpijob_version_is_accepted():
    doc = example("horovod", "MPIJob")
    doc["apiVersion"] = "kubeflow.org/v1"
    assert "only the kubeflow.org/v2beta1 MPIJob schema is vendored" in \
        validate.validate_document(doc)[0]


def test_crd_schema_is_made_strict_only_where_it_lists_properties():
    schema = validate.mpijob_schema()
    spec = schema["properties"]["spec"]
    assert spec["additionalProperties"] is False
    # maps keep their value schemas: replica types, labels, resource quantities
    assert isinstance(spec["properties"]["mpiReplicaSpecs"]["additionalProperties"], dict)
    assert schema["properties"]["metadata"] == {"type": "object"}  # checked as ObjectMeta


def _podspec_differences(crd_spec, k8s_spec, defs):
    """Property names, required lists and types that differ between the CRD's pod spec and
    Kubernetes' PodSpec definition, recursively."""
    diffs = []

    def resolve(k):
        while "$ref" in k:
            k = defs[k["$ref"].split("/")[-1]]
        return k

    def k8s_type(k):
        t = k.get("type")
        if isinstance(t, list):
            t = [x for x in t if x != "null"]
            t = t[0] if len(t) == 1 else tuple(t)
        return t

    def walk(c, k, path):
        k = resolve(k)
        if k.get("format") == "int-or-string" or "oneOf" in k:
            if not c.get("x-kubernetes-int-or-string"):
                diffs.append("%s: int-or-string" % path)
            return
        if c.get("type") != k8s_type(k) and not (k8s_type(k) == "number"
                                                  and c.get("type") == "integer"):
            diffs.append("%s: type %s vs %s" % (path, c.get("type"), k8s_type(k)))
        if "properties" in c:
            cp, kp = c["properties"], k.get("properties", {})
            if set(cp) != set(kp):
                diffs.append("%s: properties %s" % (path, sorted(set(cp) ^ set(kp))))
            if sorted(c.get("required", [])) != sorted(k.get("required", [])):
                diffs.append("%s: required" % path)
            for p in set(cp) & set(kp):
                walk(cp[p], kp[p], path + "." + p)
        if isinstance(c.get("additionalProperties"), dict) and isinstance(
                k.get("additionalProperties"), dict):
            walk(c["additionalProperties"], k["additionalProperties"], path + ".*")
        if c.get("type") == "array":
            walk(c["items"], k["items"], path + "[]")

    walk(crd_spec, k8s_spec, "spec")
    return diffs


def test_vendored_crd_pod_template_matches_the_pinned_kubernetes_podspec():
    """The vendored CRD and kubernetes-validate describe the same Kubernetes release: its pod
    template is Kubernetes KUBERNETES_VERSION's PodSpec, field for field (except the pruned
    ObjectMeta that controller-gen embeds for ephemeral volume claim templates)."""
    import kubernetes_validate.utils as kv

    version = [v for v in kv.all_versions() if kv.major_minor(v) == validate.KUBERNETES_VERSION]
    defs = kv.schema_contents("kubernetes-json-schema/v%s-local-strict/_definitions.json"
                              % version[-1], validate.KUBERNETES_VERSION)["$defs"]
    with open(validate.CRD_PATH) as f:
        crd = yaml.safe_load(f)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    template = schema["properties"]["spec"]["properties"]["mpiReplicaSpecs"][
        "additionalProperties"]["properties"]["template"]["properties"]["spec"]
    diffs = _podspec_differences(template, defs["io.k8s.api.core.v1.PodSpec"], defs)
    assert diffs == ["spec.volumes[].ephemeral.volumeClaimTemplate.metadata: properties %s"
                     % sorted(set(defs["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"][
                         "properties"]) - {"annotations", "finalizers", "labels", "name",
                                           "namespace"})], json.dumps(diffs, indent=1)


# --- what render does not produce: other kinds, pods a restricted namespace rejects ----------

PRIVILEGED_POD = """---
apiVersion: v1
kind: Pod
metadata:
  name: evil
spec:
  hostNetwork: true
  containers:
  - name: x
    image: busybox
    securityContext:
      privileged: true
      capabilities:
        add: [SYS_ADMIN]
    volumeMounts:
    - name: root
      mountPath: /host
  volumes:
  - name: root
    hostPath:
      path: /
"""


def test_validate_refuses_a_manifest_with_an_injected_document(tmp_path, capsys):
    """The issue's reproduction: a privileged, hostNetwork Pod appended to a rendered job."""
    text = open(os.path.join(EXAMPLES["horovod"], render.MANIFEST)).read()
    (tmp_path / render.MANIFEST).write_text(text + PRIVILEGED_POD)
    count, problems = validate.validate_dir(str(tmp_path))
    evil = [p for p in problems if "Pod/evil" in p]
    assert len(problems) == len(evil) and count == 3
    for words in ("kind: v1 Pod is not an object deeplab k8s render writes",
                  "spec.hostNetwork: host namespaces are not allowed",
                  "spec.volumes.0: hostPath volumes are not allowed",
                  "spec.containers.0.securityContext.privileged: privileged containers",
                  "spec.containers.0.securityContext.capabilities.add: 'SYS_ADMIN'",
                  "spec.containers.0.securityContext.runAsNonRoot: must be true",
                  "spec.automountServiceAccountToken: must be false"):
        assert any(words in p for p in evil), (words, evil)
    with pytest.raises(validate.ManifestError, match=r"problem\(s\) in"):
        cli.main(cli.parse_args(["validate", str(tmp_path)]))
    assert "Pod/evil" in capsys.readouterr().err


def _set(obj, path, value):
    *head, last = path.split(".")
    for key in head:
        obj = obj[int(key)] if isinstance(obj, list) else obj.setdefault(key, {})
    if isinstance(obj, list):
        last = int(last)
    if value is _DELETE:
        del obj[last]
    else:
        obj[last] = value


_DELETE = object()
W = "spec.mpiReplicaSpecs.Worker.template.spec"
# (change to the worker pod of the horovod example, what validate says)
RESTRICTED_BREAKS = {
    "root user": ("securityContext.runAsUser", 0, "securityContext.runAsUser: 0 (root)"),
    "may run as root": ("securityContext.runAsNonRoot", _DELETE, "runAsNonRoot: must be true"),
    "escalation": ("containers.0.securityContext.allowPrivilegeEscalation", True,
                   "allowPrivilegeEscalation: must be false"),
    "capabilities kept": ("containers.0.securityContext.capabilities.drop", [],
                          "capabilities.drop: must include ALL"),
    "capability added": ("containers.0.securityContext.capabilities.add", ["NET_ADMIN"],
                         "capabilities.add: 'NET_ADMIN' is not allowed"),
    "no seccomp": ("securityContext.seccompProfile", _DELETE,
                   "seccompProfile.type: must be RuntimeDefault or Localhost"),
    "unconfined": ("securityContext.seccompProfile.type", "Unconfined",
                   "seccompProfile.type: 'Unconfined' is not allowed"),
    "privileged": ("containers.0.securityContext.privileged", True, "privileged containers"),
    "host pid": ("hostPID", True, "hostPID: host namespaces"),
    "host ipc": ("hostIPC", True, "hostIPC: host namespaces"),
    "host port": ("containers.0.ports.0.hostPort", 2222, "hostPort: host ports"),
    "host path": ("volumes.0", {"name": "data", "hostPath": {"path": "/data"}},
                  "hostPath volumes are not allowed"),
    "token": ("automountServiceAccountToken", _DELETE, "automountServiceAccountToken: must be "
                                                       "false"),
    "proc mount": ("containers.0.securityContext.procMount", "Unmasked",
                   "procMount: must be Default"),
    "sysctl": ("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}],
               "'kernel.msgmax' is not a safe sysctl"),
}


@pytest.mark.parametrize("label", sorted(RESTRICTED_BREAKS))
def test_each_restricted_rule_is_checked(label):
    path, value, expected = RESTRICTED_BREAKS[label]
    doc = example("horovod", "MPIJob")
    assert validate.validate_document(doc) == []
    _set(worker_pod(doc), path, value)
    problems = validate.validate_document(doc)
    assert any(expected in p and p.startswith(W) for p in problems), (label, problems)


@pytest.mark.parametrize("backend", sorted(EXAMPLES))
def test_every_pod_of_the_examples_meets_the_restricted_standard(backend):
    docs = validate.load_documents(os.path.join(EXAMPLES[backend], render.MANIFEST))
    pods = [(p, s) for d in docs for p, s in validate.pod_specs(d)]
    assert len(pods) == (3 if backend.startswith("ps") else 2)
    for path, spec in pods:
        assert validate.restricted_problems(spec, path) == []


def test_a_service_exposed_outside_the_cluster_is_refused():
    doc = example("ps", "Service")
    doc["spec"]["type"] = "NodePort"
    assert any("in-cluster ClusterIP" in p for p in validate.validate_document(doc))


def test_an_added_capability_is_refused_even_the_one_restricted_allows():
    """Restricted admits NET_BIND_SERVICE; deeplab k8s render adds no capability, so a manifest
    that has one was edited."""
    doc = example("horovod", "MPIJob")
    worker_pod(doc)["containers"][0]["securityContext"]["capabilities"]["add"] = [
        "NET_BIND_SERVICE"]
    assert validate.restricted_problems(worker_pod(doc), W) == []  # restricted allows it
    assert validate.validate_document(doc) == [
        W + ".containers.0.securityContext.capabilities.add: 'NET_BIND_SERVICE': deeplab k8s "
        "render adds no capabilities"]


@pytest.mark.parametrize("backend", sorted(EXAMPLES))
def test_an_unconfined_apparmor_annotation_is_refused(backend):
    kind = "MPIJob" if backend.startswith("horovod") else "Job"
    doc = example(backend, kind)
    holder = doc["spec"]["mpiReplicaSpecs"]["Worker"]["template"] if kind == "MPIJob" \
        else doc["spec"]["template"]
    prefix = W[:-len("spec")] if kind == "MPIJob" else "spec.template."
    container = holder["spec"]["containers"][0]["name"]
    key = validate.APPARMOR_ANNOTATION + container
    for allowed in ("runtime/default", "localhost/deeplab"):
        holder.setdefault("metadata", {}).setdefault("annotations", {})[key] = allowed
        assert validate.validate_document(doc) == [], allowed
    holder["metadata"]["annotations"][key] = "unconfined"
    assert validate.validate_document(doc) == [
        "%smetadata.annotations.%s: 'unconfined': AppArmor must stay on (only runtime/default "
        "or localhost/PROFILE)" % (prefix, key)]


def test_one_network_policy_named_after_the_job(tmp_path):
    """A second NetworkPolicy (which could open what the job's closes), or the policy renamed,
    is not what deeplab k8s render writes."""
    path = os.path.join(EXAMPLES["horovod"], render.MANIFEST)
    docs = validate.load_documents(path)
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    job = policy["metadata"]["name"]
    assert validate.manifest_problems(docs) == []
    assert validate.manifest_problems([d for d in docs if d is not policy]) == []  # left out
    extra = copy.deepcopy(policy)
    extra["metadata"]["name"] = "allow-all"
    extra["spec"] = {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}
    assert validate.manifest_problems(docs + [extra]) == [
        "NetworkPolicy/*: 2 NetworkPolicies (%s, allow-all); deeplab k8s render writes one per "
        "job" % job,
        "NetworkPolicy/allow-all: metadata.name: not named after the job (%s); deeplab k8s "
        "render names its policy after the job" % job]
    # ... and through `deeplab k8s validate`, for a manifest edited by hand
    text = open(path).read()
    (tmp_path / render.MANIFEST).write_text(text + "---\n" + yaml.safe_dump(extra))
    count, problems = validate.validate_dir(str(tmp_path))
    assert count == len(docs) + 1 and len(problems) == 2
    assert all(p.startswith(str(tmp_path / render.MANIFEST) + ": NetworkPolicy/")
               for p in problems)
    renamed = copy.deepcopy(policy)
    renamed["metadata"]["name"] = "other"
    assert validate.manifest_problems([d for d in docs if d is not policy] + [renamed]) == [
        "NetworkPolicy/other: metadata.name: not named after the job (%s); deeplab k8s render "
        "names its policy after the job" % job]
