"""`deeplab launch horovod --mpi`: MPICH's mpirun (Hydra) with one `deeplab.launch.mpi_rank`
per rank. Its command line, the rank wrapper's output and exit statuses, the launcher's reading
of them, and a run of the deeplab command under it (the fault table under mpirun is in
test_faults.py, the equivalence of N workers and one in tests/dist/test_equivalence.py)."""
import io
import os
import shlex
import signal
import sys

from deeplab.launch import cli, horovod, mpi_rank


def test_mpirun_command_runs_each_rank_through_the_wrapper():
    cmd = horovod.mpirun_command(2, ["train", "c.yaml", "--workdir", "w w"], python="/e/python")
    assert cmd[1:] == ["-np", "2", "/e/python", "-m", "deeplab.launch.mpi_rank",
                       "/e/python -m deeplab.cli train c.yaml --workdir 'w w'"]
    # one argument: the wrapper's own command line does not look like a training process
    assert shlex.split(cmd[-1])[3:] == ["train", "c.yaml", "--workdir", "w w"]


def test_mpirun_command_places_ranks_on_the_hosts(tmp_path):
    cmd = horovod.mpirun_command(4, ["eval"], hosts="n1:2,n2:2", python="py")
    assert cmd[3:7] == ["-hosts", "n1:2,n2:2", "-launcher", "ssh"]
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# horovodrun's format\nn1 slots=3\nn2\n")
    cmd = horovod.mpirun_command(4, ["eval"], hostfile=str(hostfile), python="py")
    assert cmd[3:5] == ["-hosts", "n1:3,n2:1"]
    local = horovod.mpirun_command(2, ["eval"], hosts="localhost:2", python="py")
    assert "-launcher" not in local


def test_mpirun_command_for_open_mpi_passes_the_environment_and_lets_ranks_exit(tmp_path):
    """NGC's image has Open MPI: hosts with --host, every variable with -x (Open MPI passes
    nothing to ranks started over ssh), its own ones left out, and a rank's non-zero exit does
    not end the others (4.x and 5.x spell that differently)."""
    env = ["DEEPLAB_JOB", "PATH", "OMPI_MCA_foo", "PMIX_X", "BASH_FUNC_f%%", "NCCL_DEBUG"]
    cmd = horovod.mpirun_command(4, ["train", "c.yaml"], hosts="n1:2,n2:2", python="/e/py",
                                 flavour=("openmpi", 4), env=env, network_interface="eth1")
    assert cmd[1:5] == ["-np", "4", "--host", "n1:2,n2:2"]
    assert ["--bind-to", "none"] == cmd[5:7] and "--map-by" in cmd
    xs = [cmd[i + 1] for i, c in enumerate(cmd) if c == "-x"]
    assert xs == ["DEEPLAB_JOB", "NCCL_DEBUG", "PATH"]
    assert "orte_abort_on_non_zero_status" in cmd and "--prtemca" not in cmd
    assert cmd[cmd.index("btl_tcp_if_include") + 1] == "eth1"
    assert cmd[cmd.index("oob_tcp_if_include") - 1] == "--mca"
    assert cmd[-3:-1] == ["-m", "deeplab.launch.mpi_rank"]
    five = horovod.mpirun_command(2, ["eval"], python="py", flavour=("openmpi", 5), env=[],
                                  network_interface="eth1")
    assert five[3:5] == ["--host", "localhost:2"]  # slots for every rank, no oversubscription
    assert five[five.index("state_base_error_non_zero_exit") - 1] == "--prtemca"
    assert five[five.index("oob_tcp_if_include") - 1] == "--prtemca"
    assert ("--allow-run-as-root" in five) == (os.geteuid() == 0)


def test_mpi_flavour_is_read_from_mpirun_version(tmp_path):
    def fake(text):
        path = tmp_path / "mpirun"
        path.write_text("#!/bin/sh\ncat <<'X'\n%s\nX\n" % text)
        path.chmod(0o755)
        return str(path)

    assert horovod.mpi_flavour(fake("mpirun (Open MPI) 4.1.7a1\n\nReport bugs to ...")) \
        == ("openmpi", 4)
    assert horovod.mpi_flavour(fake("HYDRA build details:\n    Version: 4.3.2")) \
        == ("mpich", None)
    import pytest
    from deeplab.errors import LaunchError

    with pytest.raises(LaunchError, match="neither MPICH's .* nor Open MPI's"):
        horovod.mpi_flavour(fake("Intel(R) MPI Library"))


def test_the_mpi_flag_is_parsed_and_mpich_settings_are_defaults():
    args = cli.parse_args(["horovod", "--mpi", "-np", "2", "--", "train", "c.yaml"])
    assert args.mpi and args.np == 2
    env = horovod.mpi_env({"MPIR_CVAR_POLLS_BEFORE_YIELD": "5"})
    assert env["MPIR_CVAR_POLLS_BEFORE_YIELD"] == "5"  # the user's setting wins
    assert set(horovod.MPI_ENV) <= set(env)


def test_the_worker_sees_horovods_rank_variables():
    env = mpi_rank.child_environ({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1",
                                  "MPI_LOCALNRANKS": "2", "KEEP": "x"})
    assert (env["HOROVOD_RANK"], env["HOROVOD_SIZE"], env["HOROVOD_LOCAL_RANK"],
            env["HOROVOD_LOCAL_SIZE"], env["KEEP"]) == ("3", "4", "1", "2", "x")


def test_the_worker_sees_horovods_rank_variables_under_open_mpi():
    env = mpi_rank.child_environ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4",
                                  "OMPI_COMM_WORLD_LOCAL_RANK": "0",
                                  "OMPI_COMM_WORLD_LOCAL_SIZE": "2"})
    assert (env["HOROVOD_RANK"], env["HOROVOD_SIZE"], env["HOROVOD_LOCAL_RANK"],
            env["HOROVOD_LOCAL_SIZE"]) == ("2", "4", "0", "2")
    assert mpi_rank._rank(env) == "2"


def _launcher_reads(text):
    out, output = io.StringIO(), horovod._MpiOutput()
    output.pump(io.StringIO(text), out)
    return output, out.getvalue()


def test_the_launcher_reads_the_ranks_and_leaves_hydras_banner_out():
    banner = ("=" * 83 + "\n=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n"
              "=   PID 9254 RUNNING AT vm\n=   KILLED BY SIGNAL: 9 (Killed)\n" + "=" * 83 + "\n"
              "YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)\n"
              "This typically refers to a problem with your application.\n"
              "Please see the FAQ page for debugging suggestions\n")
    output, shown = _launcher_reads(
        "[0]<stdout>:iter 4/80\n[1]<stderr>:deeplab: stalled: no progress for 20 s\n"
        "Process 1 exit with status code 137.\n" + banner)
    assert [(r, s) for r, s, _ in output.failures] == [(1, 137)]
    assert output.errors[1][0] == 4  # the stall's documented exit
    assert "BAD TERMINATION" not in shown and "FAQ" not in shown
    assert "[0]<stdout>:iter 4/80" in shown


def test_a_failed_rank_is_reported_though_open_mpis_mpirun_exits_0():
    """Open MPI, told to let the other ranks be, exits 0 after a rank failed: the rank's own
    line is the job's outcome."""
    from deeplab.launch import procs

    output, _ = _launcher_reads("[1]<stderr>:deeplab train: error: the disk is full\n"
                                "Process 1 exit with status code 2.\n")
    code = horovod._report(output, 0, procs.StopSignals(), False, [])
    assert code == 2


def test_the_launcher_leaves_open_mpis_message_about_a_rank_out_and_keeps_others():
    rule = "-" * 74 + "\n"
    about = (rule + "prterun noticed that process rank 1 with PID 0 on node vm exited on\n"
             "signal 9 (Killed).\n" + rule)
    other = rule + "There are not enough slots available in the system\n" + rule
    output, shown = _launcher_reads("[0]<stdout>:iter 1\nProcess 1 exit with status code 137.\n"
                                    + about + other + "[0]<stdout>:done\n")
    assert [(r, s) for r, s, _ in output.failures] == [(1, 137)]
    assert "noticed" not in shown and "not enough slots" in shown and shown.endswith("done\n")


def test_rank_wrapper_prefixes_lines_and_dies_of_its_workers_signal(tmp_path):
    """Without MPI: the wrapper's child prints on both streams, then kills itself."""
    import subprocess

    script = tmp_path / "w.py"
    script.write_text("import os, sys, signal\nprint('out', flush=True)\n"
                      "print('err', file=sys.stderr, flush=True)\n"
                      "os.kill(os.getpid(), signal.SIGUSR1)\n")
    proc = subprocess.run([sys.executable, "-m", "deeplab.launch.mpi_rank",
                           "%s %s" % (sys.executable, script)], capture_output=True, text=True,
                          env=dict(os.environ, PMI_RANK="1"), timeout=60)
    assert proc.stdout == "[1]<stdout>:out\n"
    assert proc.stderr == "[1]<stderr>:err\nProcess 1 exit with status code %d.\n" % (
        128 + signal.SIGUSR1)
    assert proc.returncode == -signal.SIGUSR1  # what Hydra sees: it ends the other ranks


def test_relay_outlives_a_closed_output(tmp_path):
    """mpirun behind the relay finishes even when the relay's own output is gone."""
    import subprocess

    done = tmp_path / "done"
    child = "import time\nfor i in range(3): print('x' * 1000, flush=True); time.sleep(0.2)\n" \
            "open(%r, 'w').write('ok')\n" % str(done)
    proc = subprocess.Popen([sys.executable, "-m", "deeplab.launch.mpi_rank", "--relay",
                             sys.executable, "-c", child], stdout=subprocess.PIPE)
    proc.stdout.close()  # the launcher, killed
    assert proc.wait(timeout=60) == 0 and done.read_text() == "ok"


def test_launch_horovod_mpi_runs_and_leaves_nothing(tmp_path, dl):
    """Two workers under mpirun, rank-prefixed output, nothing left of the job."""
    from deeplab.launch import procs

    job = "test-%d" % os.getpid()
    r = dl.deeplab("launch", "horovod", "--mpi", "-np", "2", "--", "train", dl.TINY,
                   "--workdir", tmp_path / "run", "--no-eval",
                   *dl.sets("train.iterations=2", "data.synthetic.train_size=8",
                            "data.num_workers=0", "train.batch_size=2", "train.log_every=1"),
                   MPI_TEST_JOB=job)
    assert "mpirun -np 2" in r.stdout and "deeplab.launch.mpi_rank" in r.stdout
    assert "[0]<stdout>:" in r.stdout and "BN statistics over mpi" in r.stdout, r.stdout[-3000:]
    assert not procs.job_processes(job, var="MPI_TEST_JOB")
