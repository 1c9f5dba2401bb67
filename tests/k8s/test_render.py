"""deeplab k8s render: the checked-in examples are reproducible, the manifests carry the command
lines the code accepts, and bad arguments fail naming the flag or key."""
import glob
import re
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
    assert {os.path.basename(os.path.dirname(p)) for p in EXAMPLES} >= {"horovod", "ps"}


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
    job, _policy = render.render(args(overrides=["train.lr=0.01"]))
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v2beta1", "MPIJob")
    spec = job["spec"]
    assert spec["slotsPerWorker"] == 4
    assert spec["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3}
    assert spec["sshAuthMountPath"] == "/home/mpiuser/.ssh" == render.SSH_DIR
    launcher = spec["mpiReplicaSpecs"]["Launcher"]
    worker = spec["mpiReplicaSpecs"]["Worker"]
    assert launcher["replicas"] == 1 and worker["replicas"] == 2
    wpod = worker["template"]["spec"]
    (wc,) = wpod["containers"]
    worker_pid1 = entrypoint_args(wc)
    assert worker_pid1.command == ["/usr/sbin/sshd", "-De", "-f", "/home/mpiuser/.sshd_config"]
    assert worker_pid1.workers
    assert wc["resources"] == {"requests": render.TRAIN_REQUESTS,
                               "limits": {"nvidia.com/gpu": 4}}
    assert {m["mountPath"] for m in wc["volumeMounts"]} == {"/data", "/dev/shm",
                                                             render.CUDA_STUB_DIR}
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
    job, _policy = render.render(args(overrides=["train.lr=0.01"]))
    (c,) = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    launch_args, train_args = pod_command(c)
    launch = launch_cli.parse_args(launch_args)
    assert (launch.backend, launch.np, launch.hostfile) == ("horovod", 8, render.HOSTFILE)
    t = train.parse_args(train_args[1:])
    assert t.config == REAL and t.workdir == "/data/runs/deeplabv3-r50v2-os16-bs16-30k-trainaug"
    assert t.resume
    assert t.overrides == ["data.root=/data/voc", "train.lr=0.01"]


def test_mpijob_with_mpi_launches_mpirun_and_names_mpich(tmp_path):
    """--mpi: the launcher runs `deeplab launch horovod --mpi` (MPICH's mpirun, the image's), the
    operator is told MPICH (so that it writes the hostfile as host:slots, which the launcher
    reads), and the canonical command line keeps the flag."""
    from deeplab.launch import horovod

    job, _policy = render.render(args(mpi=True))
    assert job["spec"]["mpiImplementation"] == "MPICH"
    (c,) = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    launch_args, _ = pod_command(c)
    launch = launch_cli.parse_args(launch_args)
    assert (launch.mpi, launch.np, launch.hostfile) == (True, 8, render.HOSTFILE)
    assert "--mpi" in render.render_command(args(mpi=True))
    plain, _ = render.render(args())
    assert plain["spec"]["mpiImplementation"] == "OpenMPI"
    (pc,) = plain["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    assert not launch_cli.parse_args(pod_command(pc)[0]).mpi
    with pytest.raises(render.RenderError, match="--mpi applies to --backend horovod only"):
        render.render(args(backend="ps", mpi=True))
    # The hostfile the operator writes for MPICH, and Open MPI's / horovodrun's form.
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("job-worker-0.job.ns.svc:4\njob-worker-1.job.ns.svc:4\n")
    assert horovod._hostfile_slots(str(hostfile)) == {"job-worker-0.job.ns.svc": 4,
                                                      "job-worker-1.job.ns.svc": 4}
    hostfile.write_text("# comment\nnode1 slots=2\nnode2\n")
    assert horovod._hostfile_slots(str(hostfile)) == {"node1": 2, "node2": 1}


def test_mpijob_with_mpi_on_the_ngc_image_names_open_mpi_through_the_command_line(tmp_path):
    """--mpi --mpi-implementation OpenMPI (NGC's image): the operator writes Open MPI's
    hostfile, the launcher still runs `deeplab launch horovod --mpi` (it reads which mpirun it
    has), and the flags survive the command line into the canonical command."""
    from deeplab.k8s import cli as k8s_cli

    out = tmp_path / "out"
    k8s_cli.main(k8s_cli.parse_args([
        "render", TINY, "--backend", "horovod", "--nodes", "2", "--gpus-per-node", "4",
        "--image", "registry.example.com/deeplab-dist:0.1.0-ngc", "--data-pvc", "data",
        "--mpi", "--mpi-implementation", "OpenMPI", "--out", str(out)]))
    (path,) = [p for p in out.rglob("*.yaml")]
    text = path.read_text()
    job = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "MPIJob")
    assert job["spec"]["mpiImplementation"] == "OpenMPI"
    (c,) = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    assert launch_cli.parse_args(pod_command(c)[0]).mpi
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("--mpi --mpi-implementation OpenMPI" in line for line in header)
    with pytest.raises(render.RenderError, match="--mpi-implementation applies with --mpi only"):
        render.render(args(mpi_implementation="OpenMPI"))
    with pytest.raises(render.RenderError, match="--mpi-implementation must be one of MPICH"):
        render.render(args(mpi=True, mpi_implementation="IntelMPI"))


def test_cli_render_passes_mpi_through(tmp_path):
    """`deeplab k8s render ... --mpi` reaches the renderer (the CLI once dropped it silently and
    rendered an Open MPI job): the manifest names MPICH and its header keeps the flag."""
    out = str(tmp_path / "out")
    cli.main(cli.parse_args(["render", os.path.join(ROOT, REAL), "--backend", "horovod",
                             "--nodes", "2", "--gpus-per-node", "4",
                             "--image", "registry.example.com/deeplab:1", "--data-pvc", "voc-data",
                             "--mpi", "--out", out]))
    with open(os.path.join(out, render.MANIFEST)) as f:
        header = f.readline()
        job = next(yaml.safe_load_all(f))
    assert job["spec"]["mpiImplementation"] == "MPICH"
    assert header.startswith("# Rendered by: ") and "--mpi" in shlex.split(header)
    (c,) = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"]
    assert launch_cli.parse_args(pod_command(c)[0]).mpi
    assert "[--mpi [--mpi-implementation MPICH|OpenMPI]]" in cli.__doc__


def test_ps_objects_wire_the_dmlc_environment():
    service, sched, servers, workers, _policy = render.render(args(backend="ps", servers=3,
                                                                   name="run1"))
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
    # one GPU per worker process
    assert wc["resources"] == {"requests": render.TRAIN_REQUESTS, "limits": {"nvidia.com/gpu": 1}}
    assert "volumes" not in servers["spec"]["template"]["spec"]


def test_synthetic_data_needs_no_data_root_and_cpu_nodes_get_no_gpus():
    job, _policy = render.render(args(config=os.path.join(ROOT, TINY), gpus_per_node=0, nodes=2))
    spec = job["spec"]
    assert spec["slotsPerWorker"] == 1
    (wc,) = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    assert wc["resources"] == {"requests": render.TRAIN_REQUESTS}  # no GPU
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
    second = text.splitlines()[1]
    assert "Do not edit" not in text and "You may edit this file" in second
    assert "run the command again to regenerate it" in second
    kinds = [d["kind"] for d in yaml.safe_load_all(text)]
    assert kinds == ["Service", "Job", "Job", "Job", "NetworkPolicy"]


# --- commands other than train, cluster settings, resuming, pods without a GPU ---------------

from deeplab import evaluate, predict  # noqa: E402
from deeplab.bench import throughput  # noqa: E402
from deeplab.k8s import validate  # noqa: E402

PARSERS = {"train": train.parse_args, "bench": throughput.parse_args,
           "eval": evaluate.parse_args, "predict": predict.parse_args}
CKPT = "/data/runs/old/final.params"
COMMAND_ARGS = {
    "train": {},
    "bench": dict(command_args=["--steps", "5", "--repeat=2"]),
    "eval": dict(checkpoint=CKPT, command_args=["--quiet"]),
    "predict": dict(checkpoint=CKPT, inputs=["/data/images", "/data/more/a.jpg"]),
}
CLUSTER = dict(env=["NCCL_DEBUG=INFO", "HOROVOD_FUSION_THRESHOLD=67108864", "EMPTY="],
               node_selector=["nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3", "pool=gpu"],
               tolerations=["nvidia.com/gpu:NoSchedule", "dedicated=ml:NoExecute"],
               cpu="7500m", memory="64Gi", image_pull_secrets=["regcred"],
               priority_class="high-priority")


def containers(docs):
    """(pod spec, container) of every main container of the rendered objects."""
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Job"] + [
        r["template"]["spec"] for d in docs if d["kind"] == "MPIJob"
        for r in d["spec"]["mpiReplicaSpecs"].values()]
    return [(pod, c) for pod in pods for c in pod["containers"]]


def command_of(docs):
    """The `COMMAND ARGS...` that the pods run (after `deeplab launch ... --`)."""
    for _, c in containers(docs):
        if c["args"][0] == "deeplab":
            return c["args"][c["args"].index("--") + 1:]
    raise AssertionError("no pod runs deeplab")


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.mark.parametrize("backend", ["horovod", "ps"])
@pytest.mark.parametrize("command", render.COMMANDS)
def test_every_command_renders_runs_its_own_flags_and_validates(command, backend, tmp_path):
    a = args(backend=backend, name="job1", command=command, **COMMAND_ARGS[command])
    path = render.render_to_dir(a, str(tmp_path))
    count, problems = validate.validate_dir(str(tmp_path))
    assert problems == [] and count == (2 if backend == "horovod" else 5)  # + NetworkPolicy
    docs = list(yaml.safe_load_all(open(path)))
    cmd = command_of(docs)
    assert cmd[0] == command
    parsed = PARSERS[command](cmd[1:])
    assert parsed.config == REAL
    if command == "train":
        assert parsed.workdir == "/data/runs/job1" and parsed.resume
    elif command == "bench":
        assert parsed.out == "/data/runs/job1/bench.json"
        assert (parsed.steps, parsed.repeat) == (5, 2)
        assert not any(o.startswith("data.root=") for o in parsed.overrides)  # synthetic
    elif command == "eval":
        assert (parsed.checkpoint, parsed.out) == (CKPT, "/data/runs/job1/results.json")
        assert parsed.quiet and parsed.overrides == ["data.root=/data/voc"]
    else:
        assert parsed.checkpoint == CKPT and parsed.out == "/data/runs/job1/predictions"
        assert parsed.inputs == ["/data/images", "/data/more/a.jpg"]
        assert parsed.overrides == ["data.root=/data/voc"]
    # The header's command line renders the same bytes.
    argv = shlex.split(open(path).readline()[len("# Rendered by: "):])
    out2 = tmp_path / "again"
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        cli.main(cli.parse_args(argv[2:] + ["--out", str(out2)]))
    finally:
        os.chdir(cwd)
    assert open(out2 / render.MANIFEST).read() == open(path).read()


@pytest.mark.parametrize("backend", ["horovod", "ps"])
def test_cluster_settings_reach_every_pod_and_validate(backend, tmp_path):
    render.render_to_dir(args(backend=backend, **CLUSTER), str(tmp_path))
    count, problems = validate.validate_dir(str(tmp_path))
    assert problems == []
    docs = validate.load_documents(str(tmp_path / render.MANIFEST))
    pairs = containers(docs)
    assert len(pairs) == (2 if backend == "horovod" else 3)
    for pod, c in pairs:
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                                       "pool": "gpu"}
        assert pod["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"}]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["priorityClassName"] == "high-priority"
        env = env_of(c)
        assert (env["NCCL_DEBUG"], env["HOROVOD_FUSION_THRESHOLD"], env["EMPTY"]) == (
            "INFO", "67108864", "")
        # --cpu/--memory on the pods that train (they hold the GPUs); no CPU limit (throttling
        # would slow the loader), no memory limit (the memory-backed /dev/shm counts towards it).
        # The others get requests and memory limits of their own.
        gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if gpus:
            assert c["resources"] == {"requests": {"cpu": "7500m", "memory": "64Gi"},
                                      "limits": {"nvidia.com/gpu": gpus}}
        else:
            assert c["resources"] == {"requests": render.REQUESTS[c["name"]],
                                      "limits": render.LIMITS[c["name"]]}


@pytest.mark.parametrize("backend", ["horovod", "ps"])
@pytest.mark.parametrize("gpus", [4, 0])
def test_cuda_driver_stub_only_where_no_gpu_is_attached(backend, gpus):
    """Pods without a GPU find libcuda.so.1 in the image's stub directory; pods with one see that
    directory empty, even when the launcher's LD_LIBRARY_PATH reaches them through horovodrun."""
    docs = render.render(args(backend=backend, gpus_per_node=gpus))
    roles = {}
    for pod, c in containers(docs):
        has_gpu = "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        if has_gpu:
            assert "LD_LIBRARY_PATH" not in env_of(c)
            assert volumes[mounts[render.CUDA_STUB_DIR]]["emptyDir"]
        else:
            assert env_of(c)["LD_LIBRARY_PATH"] == render.STUB_LD_PATH
            assert render.STUB_LD_PATH.split(":")[-1] == render.CUDA_STUB_DIR  # searched last
            assert render.CUDA_STUB_DIR not in mounts
        roles[c["name"]] = has_gpu
    expected = ({"launcher": False, "worker": bool(gpus)} if backend == "horovod" else
                {"scheduler": False, "server": False, "worker": bool(gpus)})
    assert roles == expected


@pytest.mark.parametrize("backend", ["horovod", "ps"])
def test_resume_from_continues_an_earlier_run_directory_on_another_world_size(backend):
    docs = render.render(args(backend=backend, name="second", resume_from="first", nodes=1,
                              gpus_per_node=2))
    t = train.parse_args(command_of(docs)[1:])
    assert t.workdir == "/data/runs/first" and t.resume
    assert [d["metadata"]["name"] for d in docs][0] == "second"
    cmd = render.render_command(args(backend=backend, name="second", resume_from="first"))
    assert cmd[cmd.index("--resume-from") + 1] == "first"


@pytest.mark.parametrize("change, message", [
    (dict(command="serve"), "--command must be one of train, bench, eval, predict, got 'serve'"),
    (dict(command="eval"), "--command eval needs --checkpoint"),
    (dict(command="eval", checkpoint="runs/x.params"), "--checkpoint must be a path on the PVC"),
    (dict(command="predict", checkpoint=CKPT), "--command predict needs --input"),
    (dict(command="predict", checkpoint=CKPT, inputs=["/home/me/a.jpg"]),
     "--input must be a path on the PVC"),
    (dict(checkpoint=CKPT), "--checkpoint applies to --command eval and predict only"),
    (dict(inputs=["/data/a.jpg"]), "--input applies to --command predict only"),
    (dict(command="bench", resume_from="old"), "--resume-from applies to --command train only"),
    (dict(resume_from="Old_Run"), "--resume-from 'Old_Run' must be the --name of an earlier job"),
    (dict(command="bench", command_args=["--stepz", "5"]),
     "--command-arg: `deeplab bench` rejects its arguments"),
    (dict(env=["NCCL_DEBUG"]), "--env must be NAME=VALUE, got 'NCCL_DEBUG'"),
    (dict(env=["=x"]), "--env must be NAME=VALUE"),
    (dict(env=["1BAD=x"]), "is not a valid environment variable name"),
    (dict(env=["DMLC_ROLE=worker"]), "--env 'DMLC_ROLE=worker': DMLC_ROLE is set by the renderer"),
    (dict(env=["LD_LIBRARY_PATH=/x"]), "LD_LIBRARY_PATH is set by the renderer"),
    (dict(node_selector=["pool"]), "--node-selector must be LABEL=VALUE"),
    (dict(node_selector=["pool=a b"]), "--node-selector 'pool=a b' is not LABEL=VALUE"),
    (dict(tolerations=["nvidia.com/gpu:NoSchedul"]),
     "--toleration 'nvidia.com/gpu:NoSchedul': effect 'NoSchedul' is not one of NoSchedule, "
     "PreferNoSchedule, NoExecute"),
    (dict(tolerations=["nvidia.com/gpu"]), "--toleration must be KEY[=VALUE]:EFFECT"),
    (dict(tolerations=["a b=c:NoSchedule"]), "--toleration must be KEY[=VALUE]:EFFECT"),
    (dict(cpu="lots"), "--cpu must be a CPU quantity such as 8 or 7500m, got 'lots'"),
    (dict(memory="64GB"), "--memory must be a Kubernetes quantity such as 64Gi, got '64GB'"),
    (dict(image_pull_secrets=["Reg Cred"]), "--image-pull-secret 'Reg Cred' is not a valid"),
    (dict(priority_class="High"), "--priority-class 'High' is not a valid object name"),
])
def test_bad_command_and_cluster_flags_name_the_flag(change, message):
    with pytest.raises(render.RenderError) as err:
        render.render(args(**change))
    assert message in str(err.value)


@pytest.mark.parametrize("flags, named", [
    (["--toleration", "nvidia.com/gpu:Sometimes"], "--toleration"),
    (["--env", "NCCL_DEBUG"], "--env"),
    (["--node-selector", "pool"], "--node-selector"),
    (["--command", "serve"], "--command"),
    (["--cpu", "-1"], "--cpu"),
])
def test_cli_rejects_bad_flags_with_exit_code_2_naming_the_flag(flags, named, capsys, tmp_path):
    from deeplab.cli import main

    code = main(["k8s", "render", os.path.join(ROOT, REAL), "--backend", "horovod", "--nodes",
                 "2", "--gpus-per-node", "4", "--image", "i", "--data-pvc", "p",
                 "--out", str(tmp_path)] + flags)
    err = capsys.readouterr().err
    assert code == 2 and named in err, err
    assert not (tmp_path / render.MANIFEST).exists()


def test_help_says_which_image_for_which_gpus(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["render", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "docker build -f k8s/Dockerfile --build-arg BASE=ngc" in out
    assert "Hopper (H100, H200)" in out and "--command-arg=" in out


def test_ps_workers_driving_all_of_a_nodes_gpus():
    # SCALING.md's recommendation beyond one node: one worker per node with dist.devices_per_worker.
    _, _, _, workers, _ = render.render(args(backend="ps", servers=2, gpus_per_node=8,
                                          overrides=["dist.devices_per_worker=8"]))
    assert workers["spec"]["completions"] == 2
    (wc,) = workers["spec"]["template"]["spec"]["containers"]
    assert wc["resources"] == {"requests": render.TRAIN_REQUESTS, "limits": {"nvidia.com/gpu": 8}}
    env = {e["name"]: e.get("value") for e in wc["env"]}
    assert env["DMLC_NUM_WORKER"] == "2" and env["DEEPLAB_LOCAL_RANK"] == "0"
    _, train_args = pod_command(wc)
    assert "dist.devices_per_worker=8" in train_args


@pytest.mark.parametrize("change, message", [
    (dict(overrides=["dist.devices_per_worker=2"]), "runs under --backend ps"),
    (dict(backend="ps", gpus_per_node=4, overrides=["dist.devices_per_worker=3"]),
     "must divide --gpus-per-node (4)"),
])
def test_devices_per_worker_that_cannot_render_is_refused(change, message):
    with pytest.raises(render.RenderError, match=re.escape(message)):
        render.render(args(**change))


# --- security: injection, restricted pods, the NetworkPolicy, requests, images, secrets -------

INJECTED = "X=1\napiVersion: v1\nkind: Pod\nmetadata: {name: evil}\nspec:\n  hostNetwork: true"


@pytest.mark.parametrize("change, flag", [
    (dict(env=[INJECTED]), "--env"),
    (dict(overrides=["train.lr=0.1\n---\nkind: Pod"]), "--set"),
    (dict(command="eval", checkpoint="/data/a.params\napiVersion: v1"), "--checkpoint"),
    (dict(command="predict", checkpoint="/data/a.params", inputs=["/data/x\r\nkind: Pod"]),
     "--input"),
    (dict(command="bench", command_args=["--steps\n5"]), "--command-arg"),
    (dict(node_selector=["pool=gpu\u2028kind: Pod"]), "--node-selector"),  # a YAML line break
    (dict(env=["X=\x1b[2J"]), "--env"),  # a terminal escape
])
def test_control_characters_in_any_flag_are_refused_naming_the_flag(change, flag):
    with pytest.raises(render.RenderError) as err:
        render.render(args(**change))
    message = str(err.value)
    assert message.startswith(flag + " ") and "control characters" in message
    assert "\n" not in message


def test_the_injection_reproduction_is_refused_by_the_cli_and_writes_nothing(capsys, tmp_path):
    from deeplab.cli import main

    code = main(["k8s", "render", os.path.join(ROOT, REAL), "--backend", "horovod", "--nodes",
                 "2", "--gpus-per-node", "4", "--image", "i", "--data-pvc", "p",
                 "--out", str(tmp_path / "out"), "--env", INJECTED])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--env" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_header_line_that_could_break_out_is_never_written():
    with pytest.raises(render.RenderError, match="control characters"):
        render.dump_documents([{"kind": "Job"}], ["Rendered by: x\nkind: Pod"])


def pod_specs_of(docs):
    return [(d["kind"], path, spec) for d in docs for path, spec in validate.pod_specs(d)]


VARIANTS = {
    "horovod-gpu": dict(backend="horovod"),
    "horovod-cpu": dict(backend="horovod", gpus_per_node=0, config=os.path.join(ROOT, TINY)),
    "horovod-mpi": dict(backend="horovod", mpi=True),
    "horovod-mpi-cpu": dict(backend="horovod", mpi=True, gpus_per_node=0,
                            config=os.path.join(ROOT, TINY)),
    "ps-gpu": dict(backend="ps"),
    "ps-cpu": dict(backend="ps", gpus_per_node=0, config=os.path.join(ROOT, TINY)),
    "ps-devices-per-worker": dict(backend="ps", gpus_per_node=8,
                                  overrides=["dist.devices_per_worker=8"]),
    **{"%s-%s" % (b, c): dict(backend=b, command=c, **COMMAND_ARGS[c])
       for b in ("horovod", "ps") for c in ("bench", "eval", "predict")},
    **{"%s-resume-from" % b: dict(backend=b, name="second", resume_from="first", nodes=1)
       for b in ("horovod", "ps")},
    "horovod-cluster-settings": dict(backend="horovod", **CLUSTER),
    "ps-cluster-settings": dict(backend="ps", **CLUSTER),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_of_every_variant_meets_the_restricted_pod_security_standard(variant):
    docs = render.render(args(**VARIANTS[variant]))
    pods = pod_specs_of(docs)
    assert len(pods) == (2 if VARIANTS[variant]["backend"] == "horovod" else 3)
    for kind, path, spec in pods:
        assert validate.restricted_problems(spec, path) == [], (kind, path)
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == render.RUN_AS != 0
        assert sc["fsGroup"] == render.RUN_AS  # the PVC and volumes are writable to that user
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"] + spec.get("initContainers", []):
            assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}, c["name"]
            # requests on every container, so that a namespace with a ResourceQuota admits it
            assert set(c["resources"]["requests"]) == {"cpu", "memory"}, c["name"]
            assert c["imagePullPolicy"] == "Always", c["name"]  # a tag: never a cached one
    for doc in docs:  # and `deeplab k8s validate` agrees
        assert validate.validate_document(doc) == [], doc["kind"]


def test_mpijob_sshd_runs_unprivileged_with_the_operators_keys():
    job, _ = render.render(args())
    spec = job["spec"]
    assert spec["sshAuthMountPath"] == render.SSH_DIR == render.HOME + "/.ssh"
    (wc,) = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    assert entrypoint_args(wc).command == ["/usr/sbin/sshd", "-De", "-f", render.SSHD_CONFIG]
    assert wc["ports"] == [{"name": "ssh", "containerPort": render.SSH_PORT, "protocol": "TCP"}]
    assert render.SSH_PORT > 1024  # a non-root sshd cannot bind below 1024 without capabilities
    docker = open(os.path.join(ROOT, "k8s", "Dockerfile")).read()
    final = docker[docker.index("FROM ${BASE}"):]
    assert "--uid %d" % render.RUN_AS in final and re.search(r"^USER 1000:1000$", final, re.M)
    for line in ("Port %d" % render.SSH_PORT, "PidFile %s/sshd.pid" % render.HOME,
                 "HostKey %s/id_rsa" % render.SSH_DIR):
        assert line in final, line
    assert "> %s" % render.SSHD_CONFIG in final
    assert "rm -f /etc/ssh/ssh_host_*_key" in final  # no host key shared by every pod
    assert 'echo "    Port %d" >> /etc/ssh/ssh_config' % render.SSH_PORT in final


def network_policy(docs):
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    return policy


@pytest.mark.parametrize("backend", ["horovod", "ps"])
def test_a_network_policy_admits_only_the_jobs_own_pods(backend):
    docs = render.render(args(backend=backend, name="job1",
                              allow_egress=["10.20.0.0/16:443", "192.0.2.7/32"]))
    policy = network_policy(docs)
    job = {"app.kubernetes.io/name": "deeplab", "app.kubernetes.io/instance": "job1"}
    assert policy["metadata"]["name"] == "job1"
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": job}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"from": [{"podSelector": {"matchLabels": job}}]}]
    assert spec["egress"] == [
        {"to": [{"podSelector": {"matchLabels": job}}]},
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"protocol": "TCP",
                                                                   "port": 443}]},
        {"to": [{"ipBlock": {"cidr": "192.0.2.7/32"}}]}]
    # every pod of the job carries the labels the policy selects (and admits) by
    for d in docs:
        for template in [d["spec"].get("template")] + [
                r["template"] for r in d["spec"].get("mpiReplicaSpecs", {}).values()]:
            if template:
                labels = template["metadata"]["labels"]
                assert {k: labels[k] for k in job} == job
    assert validate.validate_document(policy) == []


def test_no_network_policy_leaves_it_out_and_the_command_line_says_so(tmp_path):
    docs = render.render(args(network_policy=False))
    assert [d["kind"] for d in docs] == ["MPIJob"]
    path = render.render_to_dir(args(network_policy=False), str(tmp_path))
    assert "--no-network-policy" in open(path).readline()
    with pytest.raises(render.RenderError, match="--allow-egress applies to the job's "
                                                 "NetworkPolicy"):
        render.render(args(network_policy=False, allow_egress=["10.0.0.0/8"]))


def test_images_by_digest_are_accepted_and_not_pulled_again():
    digest = "registry.example.com:5000/team/deeplab@sha256:" + "ab" * 32
    docs = render.render(args(backend="ps", image=digest))
    for _, _, spec in pod_specs_of(docs):
        for c in spec["containers"] + spec.get("initContainers", []):
            assert (c["image"], c["imagePullPolicy"]) == (digest, "IfNotPresent")
    assert render.pull_policy("registry.example.com/deeplab:1") == "Always"


@pytest.mark.parametrize("image", ["deeplab@sha256:abc", "Registry.example.com/Deeplab:1",
                                   "deeplab:1 --privileged", "deeplab:"])
def test_malformed_images_are_refused(image):
    with pytest.raises(render.RenderError, match="--image must be a container image reference"):
        render.render(args(image=image))


def test_secret_env_renders_a_secret_key_ref_and_never_a_value(tmp_path):
    a = args(backend="ps", env=["WANDB_API_KEY=secret:wandb-credentials/api-key", "X=1"])
    path = render.render_to_dir(a, str(tmp_path))
    text = open(path).read()
    docs = list(yaml.safe_load_all(text))
    for _, c in containers(docs):
        env = {e["name"]: e for e in c["env"]}
        assert env["WANDB_API_KEY"] == {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": "wandb-credentials", "key": "api-key"}}}
        assert env["X"] == {"name": "X", "value": "1"}
    # the header names the reference, as the manifest does; a value is never known to us
    assert "--env WANDB_API_KEY=secret:wandb-credentials/api-key" in text.splitlines()[0]
    assert validate.validate_dir(str(tmp_path))[1] == []


@pytest.mark.parametrize("env", ["T=secret:Bad_Name/key", "T=secret:creds", "T=secret:creds/",
                                 "T=secret:creds/a b"])
def test_malformed_secret_references_are_refused(env):
    with pytest.raises(render.RenderError, match="expected NAME=secret:SECRET/KEY"):
        render.render(args(env=[env]))


@pytest.mark.parametrize("text", ["10.0.0.0", "10.0.0.0/8:http", "10.0.0.0/8:70000", "any"])
def test_malformed_allow_egress_is_refused(text):
    with pytest.raises(render.RenderError, match="--allow-egress must be CIDR"):
        render.render(args(allow_egress=[text]))
