"""deeplab k8s render: the checked-in examples are reproducible, the manifests carry the command
lines the code accepts, and bad arguments fail naming the flag or key."""
import glob
import os
import shlex

import pytest
import yaml

from deeplab.k8s import cli, entrypoint, render
from deeplab.launch import cli as launch_cli
from deeplab import train

ROOT = render.source_root()
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "k8s", "examples", "*", render.MANIFEST)))
REAL = "configs/deeplabv3_r50v2-os16_bs16_30k_trainaug_513.yaml"
TINY = "configs/tiny_synthetic.yaml"


def args(**kw):
    base = dict(config=os.path.join(ROOT, REAL), backend="horovod", nodes=2, gpus_per_node=4,
                image="registry.example.com/deeplab:1", data_pvc="voc-data")
    base.update(kw)
    return base


def entrypoint_args(container):
    """The pod's PID 1 (deeplab.k8s.entrypoint) parsed from the container's `command`, with
    the pod's own command (the container's `args`) as `.command`."""
    cmd = container["command"]
    assert cmd[:3] == ["python", "-m", "deeplab.k8s.entrypoint"] and cmd[-1] == "--"
    return entrypoint.parse_args(cmd[3:] + container["args"])


def pod_command(container):
    """(launch args, train args) of a pod's `deeplab launch ... -- train ...` command."""
    a = entrypoint_args(container).command
    assert a[:2] == ["deeplab", "launch"]
    return a[2:], a[a.index("--") + 1:]


def test_examples_exist_for_both_backends():
    assert {os.path.basename(os.path.dirname(p)) for p in EXAMPLES} == {"horovod", "ps"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_examples_rerender_byte_for_byte(path, tmp_path, monkeypatch):
    with open(path) as f:
        header = f.readline()
        expected = header + f.read()
    prefix = "# Rendered by: "
    assert header.startswith(prefix), "%s lacks its render command line" % path
    argv = shlex.split(header[len(prefix):])
    assert argv[:3] == ["deeplab", "k8s", "render"]
    monkeypatch.chdir(ROOT)  # the command names the config relative to the repository
    parsed = cli.parse_args(argv[2:] + ["--out", str(tmp_path)])
    cli.main(parsed)
    with open(tmp_path / render.MANIFEST) as f:
        assert f.read() == expected, "%s is stale: render it again with its header's command" % path


def test_render_is_deterministic(tmp_path):
    a = render.render_to_dir(args(backend="ps"), str(tmp_path / "a"))
    b = render.render_to_dir(args(backend="ps"), str(tmp_path / "b"))
    assert open(a).read() == open(b).read()


def test_mpijob_shape():
    (job,) = render.render(args(overrides=["train.lr=0.01"]))
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v2beta1", "MPIJob")
    spec = job["spec"]
    assert spec["slotsPerWorker"] == 4
    assert spec["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3}
    assert spec["sshAuthMountPath"] == "/root/.ssh"
    launcher = spec["mpiReplicaSpecs"]["Launcher"]
    worker = spec["mpiReplicaSpecs"]["Worker"]
    assert launcher["replicas"] == 1 and worker["replicas"] == 2
    wpod = worker["template"]["spec"]
    (wc,) = wpod["containers"]
    worker_pid1 = entrypoint_args(wc)
    assert worker_pid1.command == ["/usr/sbin/sshd", "-De"] and worker_pid1.workers
    assert wc["resources"] == {"limits": {"nvidia.com/gpu": 4}}
    assert {m["mountPath"] for m in wc["volumeMounts"]} == {"/data", "/dev/shm"}
    volumes = {v["name"]: v for v in wpod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "voc-data"}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert wpod["terminationGracePeriodSeconds"] == 300
    assert launcher["template"]["spec"]["terminationGracePeriodSeconds"] == 300
    (lc,) = launcher["template"]["spec"]["containers"]
    assert not entrypoint_args(lc).workers  # `deeplab launch` stops its own processes


@pytest.mark.parametrize("backend", ["horovod", "ps"])
def test_every_pod_stops_within_its_grace_period(backend):
    """PID 1 of every pod is the entrypoint; it kills what is left before the kubelet does,
    and `deeplab launch` kills its workers before the entrypoint does."""
    docs = render.render(args(backend=backend, grace_period=120))
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Job"] + [
        r["template"]["spec"] for d in docs if d["kind"] == "MPIJob"
        for r in d["spec"]["mpiReplicaSpecs"].values()]
    assert len(pods) == (2 if backend == "horovod" else 3)
    for pod in pods:
        assert pod["terminationGracePeriodSeconds"] == 120
        (c,) = pod["containers"]
        pid1 = entrypoint_args(c)
        assert pid1.grace == 120 - render.ENTRYPOINT_MARGIN
        if pid1.command[0] == "deeplab":
            launch = launch_cli.parse_args(pid1.command[2:])
            assert launch.grace == 120 - render.LAUNCH_MARGIN < pid1.grace


def test_mpijob_launcher_runs_the_launch_and_train_flags_the_code_accepts():
    (job,) = render.render(args(overrides=["train.lr=0.01"]))
    (c,) = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    launch_args, train_args = pod_command(c)
    launch = launch_cli.parse_args(launch_args)
    assert (launch.backend, launch.np, launch.hostfile) == ("horovod", 8, render.HOSTFILE)
    t = train.parse_args(train_args[1:])
    assert t.config == REAL and t.workdir == "/data/runs/deeplabv3-r50v2-os16-bs16-30k-trainaug"
    assert t.resume
    assert t.overrides == ["data.root=/data/voc", "train.lr=0.01"]


def test_ps_objects_wire_the_dmlc_environment():
    service, sched, servers, workers = render.render(args(backend="ps", servers=3, name="run1"))
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    spod = sched["spec"]["template"]
    # The Service selects the scheduler pod, whose hostname.subdomain is DMLC_PS_ROOT_URI.
    assert all(spod["metadata"]["labels"][k] == v for k, v in service["spec"]["selector"].items())
    assert spod["spec"]["subdomain"] == service["metadata"]["name"] == "run1"
    root = "%s.%s" % (spod["spec"]["hostname"], spod["spec"]["subdomain"])
    assert servers["spec"]["completionMode"] == workers["spec"]["completionMode"] == "Indexed"
    assert servers["spec"]["completions"] == 3 and workers["spec"]["completions"] == 8
    for job, role in ((sched, "scheduler"), (servers, "server"), (workers, "worker")):
        (c,) = job["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["DMLC_ROLE"] == role
        assert env["DMLC_PS_ROOT_URI"] == root
        assert env["DMLC_PS_ROOT_PORT"] == str(service["spec"]["ports"][0]["port"])
        assert env["DMLC_NUM_SERVER"] == "3" and env["DMLC_NUM_WORKER"] == "8"
        assert job["spec"]["backoffLimit"] == 0
        launch_args, train_args = pod_command(c)
        assert launch_cli.parse_args(launch_args).backend == "ps"
        assert train.parse_args(train_args[1:]).workdir == "/data/runs/run1"
    for job in (servers, workers):  # ps-lite aborts if the scheduler's name does not resolve
        (init,) = job["spec"]["template"]["spec"]["initContainers"]
        assert init["env"] == [{"name": "DMLC_PS_ROOT_URI", "value": root}]
        assert "getent hosts" in init["command"][-1]
    assert "initContainers" not in spod["spec"]
    (wc,) = workers["spec"]["template"]["spec"]["containers"]
    assert wc["resources"] == {"limits": {"nvidia.com/gpu": 1}}  # one GPU per worker process
    assert "volumes" not in servers["spec"]["template"]["spec"]


def test_synthetic_data_needs_no_data_root_and_cpu_nodes_get_no_gpus():
    (job,) = render.render(args(config=os.path.join(ROOT, TINY), gpus_per_node=0, nodes=2))
    spec = job["spec"]
    assert spec["slotsPerWorker"] == 1
    (wc,) = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    assert "resources" not in wc
    (c,) = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    assert not any(a.startswith("data.root=") for a in c["args"])


def test_default_name_comes_from_the_config_file():
    assert render.default_name(REAL) == "deeplabv3-r50v2-os16-bs16-30k-trainaug"
    assert render.default_name(TINY) == "tiny-synthetic"
    assert len(render.default_name("configs/" + "x" * 80 + ".yaml")) <= render.MAX_NAME


@pytest.mark.parametrize("change, message", [
    (dict(nodes=3), "train.batch_size (16, the global batch) must be divisible"),
    (dict(nodes=0), "--nodes must be an integer >= 1"),
    (dict(servers=2), "--servers applies to --backend ps only"),
    (dict(backend="ps", servers=0), "--servers must be an integer >= 1"),
    (dict(backend="ps", backoff_limit=2), "--backoff-limit applies to --backend horovod only"),
    (dict(name="Deeplab_1"), "--name 'Deeplab_1' must be a DNS label"),
    (dict(data_pvc="Voc Data"), "--data-pvc 'Voc Data' is not a valid"),
    (dict(image="a b"), "--image must be a container image reference"),
    (dict(shm_size="lots"), "--shm-size must be a Kubernetes quantity"),
    (dict(overrides=["data.root=/home/me/voc"]), "the pods see only the PVC, mounted at /data"),
    (dict(overrides=["train.lrr=0.1"]), "unknown key train.lrr"),
    (dict(config="/tmp/nowhere.yaml"), "config file /tmp/nowhere.yaml does not exist"),
])
def test_bad_arguments_name_what_is_wrong(change, message):
    with pytest.raises(ValueError) as err:
        render.render(args(**change))
    assert message in str(err.value)


def test_config_outside_the_repository_is_refused(tmp_path):
    outside = tmp_path / "mine.yaml"
    outside.write_text(open(os.path.join(ROOT, TINY)).read())
    with pytest.raises(render.RenderError, match="outside the repository"):
        render.render(args(config=str(outside)))


def test_cli_reports_bad_input_in_one_line(capsys, tmp_path):
    from deeplab.cli import main

    code = main(["k8s", "render", os.path.join(ROOT, REAL), "--backend", "horovod", "--nodes",
                 "3", "--gpus-per-node", "1", "--image", "i", "--data-pvc", "p",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("deeplab k8s: error: train.batch_size")


def test_manifest_header_and_documents_parse(tmp_path):
    path = render.render_to_dir(args(backend="ps"), str(tmp_path))
    text = open(path).read()
    assert text.startswith("# Rendered by: deeplab k8s render ")
    kinds = [d["kind"] for d in yaml.safe_load_all(text)]
    assert kinds == ["Service", "Job", "Job", "Job"]
