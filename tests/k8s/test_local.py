"""deeplab k8s run-local: the pods' commands and environment, mapped to local processes on
loopback, train the tiny model for both backends."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from deeplab.k8s import cli, local, render
from deeplab.launch import procs

ROOT = render.source_root()
TINY = os.path.join(ROOT, "configs", "tiny_synthetic.yaml")
FEW_STEPS = ["train.iterations=4", "data.synthetic.train_size=16", "data.synthetic.val_size=4",
             "train.log_every=2"]


def rendered(tmp_path, backend, **kw):
    out = str(tmp_path / ("manifests-" + backend))
    a = dict(config=TINY, backend=backend, nodes=2, gpus_per_node=1, image="deeplab:test",
             data_pvc="data", overrides=FEW_STEPS, name="tiny")
    a.update(kw)
    render.render_to_dir(a, out)
    return out


def test_horovod_plan_replaces_the_hostfile_and_maps_paths(tmp_path):
    procs, notes = local.plan(rendered(tmp_path, "horovod"), str(tmp_path / "pvc"), ROOT)
    (launcher,) = procs
    # The pod's PID 1, then the launcher, both run by this Python.
    assert launcher.argv[:3] == [sys.executable, "-m", "deeplab.k8s.entrypoint"]
    pod_command = launcher.argv[launcher.argv.index("--") + 1:]
    assert pod_command[:3] == [sys.executable, "-m", "deeplab.cli"]
    argv = pod_command[3:]
    assert argv[:6] == ["launch", "horovod", "-np", "2", "-H", "localhost:2"]
    assert render.HOSTFILE not in argv
    assert argv[argv.index("--workdir") + 1] == str(tmp_path / "pvc" / "runs" / "tiny")
    assert launcher.cwd == ROOT
    assert launcher.env["CUDA_VISIBLE_DEVICES"] == ""
    assert any("horovodrun -H localhost:2" in n for n in notes)


def test_ps_plan_maps_names_ports_and_pod_ips(tmp_path):
    out = rendered(tmp_path, "ps", servers=1,
                   overrides=FEW_STEPS + ["model.params=/data/init.params"])
    procs, _ = local.plan(out, str(tmp_path / "pvc"), ROOT)
    assert [p.name for p in procs] == ["tiny-scheduler", "tiny-server-0", "tiny-worker-0",
                                       "tiny-worker-1"]
    ports = {p.env["DMLC_PS_ROOT_PORT"] for p in procs}
    assert len(ports) == 1 and ports != {str(render.PS_PORT)}
    for p in procs:
        assert p.env["DMLC_PS_ROOT_URI"] == "127.0.0.1"
        assert p.env["DMLC_NUM_WORKER"] == "2" and p.env["DMLC_NUM_SERVER"] == "1"
        assert "--set" in p.argv and "model.params=%s/init.params" % (tmp_path / "pvc") in p.argv
    workers = [p for p in procs if p.role == "worker"]
    assert [w.env["JOB_COMPLETION_INDEX"] for w in workers] == ["0", "1"]
    assert all(w.env["DMLC_NODE_HOST"] == "127.0.0.1" for w in workers)
    assert {p.env["DMLC_ROLE"] for p in procs} == {"scheduler", "server", "worker"}


@pytest.mark.multiproc  # runs the rendered pods as processes
@pytest.mark.parametrize("backend", ["horovod", "ps"])
def test_run_local_trains_a_few_steps(backend, tmp_path):
    out = rendered(tmp_path, backend, servers=1 if backend == "ps" else None)
    pvc = tmp_path / "pvc"
    tic = time.time()
    cli.main(cli.parse_args(["run-local", out, "--data-dir", str(pvc), "--source", ROOT,
                             "--timeout", "150"]))
    run = pvc / "runs" / "tiny"
    assert (run / "final.params").is_file()
    info = json.loads((run / "run.json").read_text())  # the pods really ran the backend
    assert (info["backend"], info["world_size"]) == (backend, 2)
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["mIoU"] <= 1.0 and 0.0 <= results["pixAcc"] <= 1.0
    assert time.time() - tic < 150


def test_a_failing_process_stops_the_job(tmp_path):
    marker = tmp_path / "still-running"
    sleeper = local.LocalProcess(
        "server", "server",
        [sys.executable, "-c", "import time, pathlib; time.sleep(60); "
                               "pathlib.Path(%r).touch()" % str(marker)],
        dict(os.environ), str(tmp_path))
    failing = local.LocalProcess("worker", "worker", [sys.executable, "-c", "raise SystemExit(3)"],
                                 dict(os.environ), str(tmp_path))
    tic = time.time()
    assert local.run_plan([sleeper, failing], timeout=30) == 1
    assert time.time() - tic < 20 and not marker.exists()


def test_a_hung_job_times_out(tmp_path):
    hung = local.LocalProcess("worker", "worker", [sys.executable, "-c", "import time; "
                                                   "time.sleep(60)"], dict(os.environ),
                              str(tmp_path))
    assert local.run_plan([hung], timeout=1) == 124


def test_manifests_run_local_cannot_stand_in_for_are_refused(tmp_path):
    out = rendered(tmp_path, "horovod")
    path = os.path.join(out, render.MANIFEST)
    job, policy = yaml.safe_load_all(open(path))
    assert policy["kind"] == "NetworkPolicy"  # not run: nothing local to apply it to
    launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    cut = launcher["args"].index("--hostfile")
    del launcher["args"][cut:cut + 2]
    with open(path, "w") as f:
        yaml.safe_dump_all([job, policy], f)
    with pytest.raises(ValueError, match="does not run `--hostfile /etc/mpi/hostfile`"):
        local.plan(out, str(tmp_path / "pvc"), ROOT)
    with pytest.raises(ValueError, match="holds no"):
        local.plan(str(tmp_path / "nothing"), str(tmp_path / "pvc"), ROOT)


_STOP_PLAN = textwrap.dedent("""
    import os, sys
    from deeplab.k8s import local
    pod = local.LocalProcess("tiny-launcher", "launcher", [
        sys.executable, "-m", "deeplab.k8s.entrypoint", "--grace", "20", "--",
        sys.executable, "-c", "import os, signal, sys, time; "
        "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), "
        "open(os.environ['STOPPED'], 'w').close(), sys.exit(143))); "
        "open(os.environ['READY'], 'w').close(); time.sleep(600)"],
        dict(os.environ), os.getcwd(), grace=30)
    sys.exit(local.run_plan([pod]))
""")


def test_sigterm_to_run_local_stops_the_pods_as_their_deletion_would(tmp_path):
    """run-local's SIGTERM reaches each pod's PID 1 (the entrypoint), which stops the pod's
    command; the run ends with 143 and leaves nothing behind."""
    ready, stopped = tmp_path / "ready", tmp_path / "stopped"
    marker = "run-local-%d" % os.getpid()
    env = dict(os.environ, READY=str(ready), STOPPED=str(stopped), LOCAL_TEST=marker)
    proc = subprocess.Popen([sys.executable, "-c", _STOP_PLAN], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.stdout.read() if proc.poll() is not None else "not ready"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, out
    assert stopped.exists(), out
    assert "stopping the pods as their deletion would" in out
    time.sleep(0.5)
    assert not [pid for pid in procs.all_pids() if procs.alive(pid)
                and procs.environ(pid).get("LOCAL_TEST") == marker]


def test_secret_env_comes_from_run_locals_environment(tmp_path, monkeypatch):
    out = rendered(tmp_path, "ps", servers=1, env=["API_TOKEN=secret:creds/token"])
    monkeypatch.delenv("API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="API_TOKEN of tiny-scheduler comes from Secret creds"):
        local.plan(out, str(tmp_path / "pvc"), ROOT)
    monkeypatch.setenv("API_TOKEN", "s3cr3t")
    procs, _ = local.plan(out, str(tmp_path / "pvc"), ROOT)
    assert all(p.env["API_TOKEN"] == "s3cr3t" for p in procs)
    assert "s3cr3t" not in open(os.path.join(out, render.MANIFEST)).read()
