"""`deeplab launch`: argument checks, the horovodrun command line and the environments the
launchers give their processes (no process is started here)."""
import os

import pytest

from deeplab.launch import cli, horovod, ps


def test_command_must_follow_a_double_dash():
    with pytest.raises(SystemExit, match="after '--'"):
        cli.parse_args(["horovod", "-np", "2", "train", "c.yaml"])


def test_only_train_and_eval_can_be_launched(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["horovod", "-np", "2", "--", "k8s", "render"])
    assert "must be a deeplab subcommand: train, eval or bench" in capsys.readouterr().err


def test_hosts_and_hostfile_exclude_each_other():
    with pytest.raises(SystemExit):
        cli.parse_args(["horovod", "-np", "2", "-H", "a:1,b:1", "--hostfile", "f", "--", "train"])


def test_horovodrun_command_runs_this_python_with_gloo_and_raised_timeouts():
    cmd = horovod.horovod_command(4, ["train", "c.yaml", "--workdir", "w"],
                                  hosts="n1:2,n2:2", start_timeout=300, python="/env/bin/python")
    assert cmd[1:] == ["-np", "4", "--start-timeout", "300", "-H", "n1:2,n2:2", "--gloo",
                       "--gloo-timeout-seconds", "300", "/env/bin/python", "-m", "deeplab.cli",
                       "train", "c.yaml", "--workdir", "w"]
    mpi = horovod.horovod_command(2, ["eval"], hostfile="hosts.txt", mpi=True, python="py")
    assert ["--hostfile", "hosts.txt", "--mpi"] == mpi[5:8] and "--gloo" not in mpi


def test_worker_env_sets_the_backend_and_shares_cores_only_on_one_machine():
    env = horovod.worker_env(2, environ={})
    assert env["DEEPLAB_DIST_BACKEND"] == "horovod"
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert "OMP_NUM_THREADS" not in horovod.worker_env(2, hosts="n1:1,n2:1", environ={})
    assert horovod.worker_env(2, environ={"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"


def test_ps_node_env_wires_dmlc_and_drops_port():
    env = ps.node_env("server", 4, 2, "sched", 9091, environ={"PORT": "8080", "KEEP": "1"})
    assert "PORT" not in env and env["KEEP"] == "1"
    assert {k: env[k] for k in ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT",
                                "DMLC_NUM_WORKER", "DMLC_NUM_SERVER", "DEEPLAB_DIST_BACKEND")} \
        == {"DMLC_ROLE": "server", "DMLC_PS_ROOT_URI": "sched", "DMLC_PS_ROOT_PORT": "9091",
            "DMLC_NUM_WORKER": "4", "DMLC_NUM_SERVER": "2", "DEEPLAB_DIST_BACKEND": "ps"}


def test_cluster_node_names_the_missing_dmlc_variables(monkeypatch, capsys):
    for k in ("DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_WORKER", "DMLC_NUM_SERVER"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DMLC_ROLE", "worker")
    monkeypatch.setenv("DMLC_NUM_WORKER", "2")
    assert ps.run_node(["train"]) == 2
    err = capsys.readouterr().err
    assert "DMLC_PS_ROOT_URI, DMLC_PS_ROOT_PORT, DMLC_NUM_SERVER" in err


def test_cluster_node_rejects_an_unknown_role(monkeypatch, capsys):
    for k, v in dict(DMLC_ROLE="boss", DMLC_PS_ROOT_URI="h", DMLC_PS_ROOT_PORT="1",
                     DMLC_NUM_WORKER="1", DMLC_NUM_SERVER="1").items():
        monkeypatch.setenv(k, v)
    assert ps.run_node(["train"]) == 2
    assert "DMLC_ROLE must be scheduler, server or worker, got 'boss'" in capsys.readouterr().err
