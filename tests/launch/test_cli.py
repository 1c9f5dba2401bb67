"""`deeplab launch`: help and argument checks, the horovodrun command line, the environments the
launchers give their processes, how a launcher tells training processes from the rest in /proc
and words for exit statuses (no training process is started here)."""
import os
import signal
import subprocess
import sys

import pytest

from deeplab.launch import cli, horovod, procs, ps


def test_command_must_follow_a_double_dash(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["horovod", "-np", "2", "train", "c.yaml"])
    assert exit_.value.code == 2
    assert "deeplab launch horovod: error: put the deeplab command after '--'" \
        in capsys.readouterr().err


@pytest.mark.parametrize("argv, shown", [
    (["-h"], "{horovod,ps}"),
    (["horovod", "-h"], "usage: deeplab launch horovod -np N"),
    (["ps", "--help"], "usage: deeplab launch ps"),
])
def test_help_needs_no_double_dash(argv, shown):
    proc = subprocess.run([sys.executable, "-m", "deeplab.cli", "launch", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert shown in proc.stdout and "--grace" in proc.stdout and not proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["horovod", "-np", "0", "--", "train", "c.yaml"],
     "deeplab launch horovod: error: argument -np: expected an integer >= 1, got '0'"),
    (["horovod", "-np", "4", "-H", "a:1,b:2", "--", "train", "c.yaml"],
     "deeplab launch: error: -np 4 needs 4 slots, but -H a:1,b:2 gives 3"),
    (["horovod", "-np", "2", "-H", "a:x", "--", "train", "c.yaml"],
     "deeplab launch: error: -H a:x: expected host:slots,... with slots >= 1"),
    (["horovod", "-np", "2", "--hostfile", "/nonexistent/hosts", "--", "train", "c.yaml"],
     "deeplab launch: error: --hostfile /nonexistent/hosts does not exist"),
    (["ps", "--workers", "2", "--grace", "-1", "--", "train", "c.yaml"],
     "deeplab launch ps: error: argument --grace: expected a number of seconds >= 0"),
    (["ps", "--", "k8s"],
     "must be a deeplab subcommand: train, eval, bench or predict, got 'k8s'"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, message):
    proc = subprocess.run([sys.executable, "-m", "deeplab.cli", "launch", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("usage:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    # nothing of horovodrun ran (its name appears in the usage only as --horovodrun-arg)
    assert "Traceback" not in proc.stderr
    assert "horovodrun" not in proc.stderr.replace("--horovodrun-arg", "")


def test_only_train_and_eval_can_be_launched(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["horovod", "-np", "2", "--", "k8s", "render"])
    assert "must be a deeplab subcommand: train, eval, bench or predict" in capsys.readouterr().err


def test_hosts_and_hostfile_exclude_each_other():
    with pytest.raises(SystemExit):
        cli.parse_args(["horovod", "-np", "2", "-H", "a:1,b:1", "--hostfile", "f", "--", "train"])


def test_horovodrun_command_runs_this_python_with_gloo_and_raised_timeouts():
    cmd = horovod.horovod_command(4, ["train", "c.yaml", "--workdir", "w"],
                                  hosts="n1:2,n2:2", start_timeout=300, python="/env/bin/python")
    assert cmd[1:] == ["-np", "4", "--start-timeout", "300", "-H", "n1:2,n2:2", "--gloo",
                       "--gloo-timeout-seconds", str(horovod.GLOO_TIMEOUT), "/env/bin/python",
                       "-m", "deeplab.cli",
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


def test_worker_env_marks_every_process_of_the_job():
    env = horovod.worker_env(2, environ={}, job_id="job-1")
    assert env[procs.JOB_ENV] == "job-1"
    assert horovod.worker_env(2, environ={})[procs.JOB_ENV] != \
        horovod.worker_env(2, environ={})[procs.JOB_ENV]


@pytest.mark.parametrize("argv, command", [
    (["/env/bin/python", "-m", "deeplab.cli", "train", "c.yaml"], "train"),
    (["python3", "-u", "-X", "dev", "-m", "deeplab.cli", "eval"], "eval"),
    (["/env/bin/python", "/env/bin/deeplab", "bench", "c.yaml"], "bench"),
    (["/env/bin/python", "-m", "deeplab.cli", "launch", "horovod"], "launch"),
    # horovodrun and the shell it starts workers with end with a deeplab command line
    (["/env/bin/python", "/env/bin/horovodrun", "-np", "2", "python", "-m", "deeplab.cli",
      "train"], None),
    (["/bin/sh", "-c", "env HOROVOD_RANK=0 python -m deeplab.cli train c.yaml"], None),
    (["env", "A=1", "python", "-m", "deeplab.cli", "train"], None),
    (["python", "-c", "import deeplab"], None),
])
def test_deeplab_commands_are_recognised_from_the_command_line(argv, command):
    assert procs._deeplab_command(argv) == command


def test_a_forked_copy_is_a_loader_not_a_training_process(tmp_path):
    """A training process is recognised; its forked copies (loader processes) are not, even
    before they rename themselves."""
    code = ("import os, sys, time\n"
            "if os.fork() == 0:\n"
            "    time.sleep(60)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    fake = tmp_path / "deeplab"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "cli.py").write_text(code)
    proc = subprocess.Popen([sys.executable, "-m", "deeplab.cli", "train", "c.yaml"],
                            cwd=str(tmp_path), stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        (child,) = procs.descendants(proc.pid)
        assert procs.is_training_process(proc.pid)
        assert not procs.is_training_process(child)
        assert procs.training_processes(among=[proc.pid, child]) == [proc.pid]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_the_loader_name_is_the_one_the_loader_sets():
    from deeplab.data import loader

    assert procs.LOADER_NAME == loader.LOADER_NAME and len(procs.LOADER_NAME) <= 15


@pytest.mark.parametrize("code, words", [
    (4, "stalled (exit code 4)"), (3, "diverged (non-finite loss) (exit code 3)"),
    (2, "bad input (exit code 2)"), (143, "stopped by SIGTERM (exit code 143)"),
    (-15, "stopped by SIGTERM"), (137, "killed by SIGKILL (signal 9, exit code 137)"),
    (-9, "killed by SIGKILL (signal 9)"), (1, "exit code 1"),
])
def test_exit_statuses_are_described(code, words):
    assert procs.describe_status(code) == words


def test_horovod_tools_pass_through_to_horovodrun():
    from deeplab.launch import horovod

    args = cli.parse_args(["horovod", "-np", "2", "--timeline", "/tmp/t.json", "--autotune",
                           "tune.csv", "--horovodrun-arg=--cycle-time-ms",
                           "--horovodrun-arg=5", "--", "train", "c.yaml"])
    cmd = horovod.horovod_command(args.np, args.command, timeline=args.timeline,
                                  autotune=args.autotune, extra=args.horovodrun_args)
    i = cmd.index("--timeline-filename")
    assert cmd[i + 1] == "/tmp/t.json"
    j = cmd.index("--autotune")
    assert cmd[j + 1:j + 3] == ["--autotune-log-file", "tune.csv"]
    k = cmd.index("--cycle-time-ms")
    assert cmd[k + 1] == "5" and k < cmd.index("-m")
    assert cmd[-2:] == ["train", "c.yaml"]
    plain = cli.parse_args(["horovod", "-np", "2", "--autotune", "--", "train", "c.yaml"])
    cmd = horovod.horovod_command(plain.np, plain.command, autotune=plain.autotune)
    assert "--autotune" in cmd and "--autotune-log-file" not in cmd
    assert cmd[cmd.index("--gloo-timeout-seconds") + 1] == str(horovod.GLOO_TIMEOUT)


def test_network_interface_reaches_the_horovodrun_command(monkeypatch):
    """On bare metal the workers' traffic stays on the interface named, and the launcher's
    lifeline is told it (horovodrun's rendezvous cannot be: it binds every interface)."""
    from deeplab.launch import horovod

    seen = {}

    def supervise(cmd, env, grace, **kw):
        seen.update(cmd=cmd, **kw)
        return 0

    monkeypatch.setattr(horovod, "supervise", supervise)
    args = cli.parse_args(["horovod", "-np", "2", "--network-interface", "lo", "--", "train",
                           "c.yaml"])
    assert horovod.run(args) == 0
    cmd = seen["cmd"]
    i = cmd.index("--network-interface")
    assert cmd[i + 1] == "lo" and i < cmd.index("-m") and cmd[-2:] == ["train", "c.yaml"]
    assert seen["network_interface"] == "lo"
    plain = cli.parse_args(["horovod", "-np", "2", "--", "train", "c.yaml"])
    assert "--network-interface" not in horovod.horovod_command(plain.np, plain.command)


def test_bad_network_interface_is_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as err:
        cli.parse_args(["horovod", "-np", "2", "--network-interface", "eth0; rm -rf /", "--",
                        "train", "c.yaml"])
    assert err.value.code == 2
    assert "--network-interface" in capsys.readouterr().err


@pytest.mark.parametrize("launcher", [["horovod", "-np", "3"], ["ps", "--workers", "3"]])
def test_a_global_batch_that_does_not_split_is_one_line_before_any_worker(launcher, tmp_path):
    """Regression: -np 3 with a global batch of 8 buried the reason under ~90 lines of three
    ranks' tracebacks and Horovod's shutdown, and left a run directory behind."""
    from conftest import TINY

    work = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "deeplab.cli", "launch", *launcher, "--",
                           "train", TINY, "--workdir", str(work)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "deeplab launch: error: train.batch_size 8 (the global batch) does not split over %s: "
        "use a number of workers among 1, 2, 4, 8, or a train.batch_size that is a multiple of "
        "3; no worker was started" % ("-np 3" if launcher[0] == "horovod" else "3 workers")]
    assert not work.exists()


from conftest import ROOT  # noqa: E402

PREFLIGHT = """
import os, sys
os.environ.update(DMLC_ROLE=sys.argv[1])
from deeplab.launch import cli
cli.preflight(cli.parse_args(["ps", "--", "train", "configs/tiny_synthetic.yaml",
                              "--workdir", "runs/never"]))
print("mxnet" in sys.modules)
"""


@pytest.mark.parametrize("role, imported", [("server", "False"), ("scheduler", "False"),
                                            ("worker", "True")])
def test_a_server_or_scheduler_node_does_not_import_mxnet_before_its_child(role, imported):
    """`import mxnet` with DMLC_ROLE=server|scheduler turns the importing process into the
    ps-lite node: the node's launcher (`deeplab launch ps` on a cluster node, or started over
    ssh by `deeplab launch ps -H`) would serve in place of its supervised child. Only a worker
    node checks the config (which imports the model)."""
    proc = subprocess.run([sys.executable, "-c", PREFLIGHT, role], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.stdout.split() == [imported], proc.stderr[-2000:]


def test_parameter_server_nodes_are_placed_like_horovodrun_and_mxnets_tracker():
    from deeplab.errors import LaunchError
    from deeplab.launch import hosts

    workers, servers = ps.place(3, 2, hosts.slots("a:2,b:2"))
    assert workers == ["a", "a", "b"] and servers == ["a", "b"]
    assert ps.place(2, 3, hosts.slots("a,b")) == (["a", "b"], ["a", "b", "a"])
    with pytest.raises(LaunchError, match="--workers 5 needs 5 slots, but -H gives 4"):
        ps.place(5, 1, hosts.slots("a:2,b:2"))
    assert ps.place(2, 1, hosts.slots("b:1,c:1"), ["a"]) == (["b", "c"], ["a"])
    args = cli.parse_args(["ps", "-H", "a:1,b:1", "--server-hosts", "c", "--", "train", "c.yaml"])
    assert (args.hosts, args.server_hosts) == ("a:1,b:1", "c")
    with pytest.raises(LaunchError, match="--server-hosts needs -H"):
        ps.run(cli.parse_args(["ps", "--server-hosts", "c", "--", "train", "c.yaml"]))


def test_a_remote_node_gets_the_launchers_environment_but_not_its_sessions():
    cmd = ps._remote_command(["python", "-m", "deeplab.cli", "train", "a b.yaml"],
                             {"DMLC_ROLE": "worker", "OMP_NUM_THREADS": "1", "PWD": "/x",
                              "SSH_CONNECTION": "1 2 3 4", "CUDA_VISIBLE_DEVICES": "0",
                              "X": "it's"})
    assert cmd.startswith("cd %s && exec env " % os.getcwd())
    assert "DMLC_ROLE=worker" in cmd and "OMP_NUM_THREADS=1" in cmd
    assert "'X=it'\"'\"'s'" in cmd and "'a b.yaml'" in cmd
    for dropped in ("PWD=", "SSH_CONNECTION", "CUDA_VISIBLE_DEVICES"):
        assert dropped not in cmd


def test_network_interface_with_mpi_becomes_mpiruns_iface_of_the_first(monkeypatch, capsys):
    """MPICH's Hydra takes one interface (-iface): the first of --network-interface's, as its
    help says; the lifeline is told all of them."""
    from deeplab.launch import horovod

    cmd = horovod.mpirun_command(4, ["eval"], hosts="n1:2,n2:2", python="py",
                                 network_interface="ib0,eth1")
    i = cmd.index("-iface")
    assert cmd[i + 1] == "ib0" and "eth1" not in cmd and i < cmd.index("py")
    assert "-iface" not in horovod.mpirun_command(4, ["eval"], hosts="n1:2,n2:2", python="py")
    seen = {}

    def supervise(cmd, env, grace, **kw):
        seen.update(cmd=cmd, **kw)
        return 0

    monkeypatch.setattr(horovod, "supervise", supervise)
    monkeypatch.setattr(horovod, "_mpirun", lambda python: sys.executable)  # found
    monkeypatch.setattr(horovod, "mpi_flavour", lambda mpirun: ("mpich", None))  # Hydra
    args = cli.parse_args(["horovod", "--mpi", "-np", "2", "--network-interface", "lo,eth0",
                           "--", "train", "c.yaml"])
    assert horovod.run(args) == 0
    assert seen["cmd"][seen["cmd"].index("-iface") + 1] == "lo"
    assert seen["mpi"] and seen["network_interface"] == "lo,eth0"
    with pytest.raises(SystemExit):
        cli.parse_args(["horovod", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "with --mpi only the first" in text
    assert "rendezvous still listens on all interfaces" in text
