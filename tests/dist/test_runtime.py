"""dist/runtime.py: Horovod's negotiation cycle picked per config (the worker sets
HOROVOD_CYCLE_TIME before Horovod starts unless the environment already does), and each
parameter-server worker pinned to its own GPUs."""
import pytest

from conftest import TINY
from deeplab.config import CPU_CYCLE_TIME_MS, ConfigError, load_config
from deeplab.dist import runtime
from deeplab.dist.runtime import horovod_cycle_time


@pytest.mark.parametrize("overrides, gpus, expected", [
    ([], 0, 1.0),  # synchronized BN: each of its collectives waits about one cycle
    ([], 8, 0.1),  # ... and on GPU nodes the thread's share of a core is not missed
    (["dist.sync_bn=false"], 0, CPU_CYCLE_TIME_MS),  # CPU workers, a few collectives per step
    (["train.freeze_bn=true"], 0, CPU_CYCLE_TIME_MS),  # frozen BN: no BN collectives either
    (["dist.sync_bn=false"], 8, 1.0),  # GPUs: short steps, cores to spare
    (["dist.sync_bn=false", "dist.horovod_cycle_time=3.5"], 0, 3.5),  # the config wins
    (["dist.horovod_cycle_time=0.1"], 8, 0.1),
])
def test_cycle_time_follows_bn_mode_and_device(overrides, gpus, expected):
    assert horovod_cycle_time(load_config(TINY, overrides), gpus) == expected


@pytest.mark.parametrize("overrides, backend, possible, used", [
    ([], "horovod", True, True),
    ([], "local", True, False),  # one process: MXNet's BatchNorm
    ([], "ps", False, False),  # the parameter server keeps per-worker statistics
    ([], "auto", True, None),  # `deeplab doctor`: the launcher is not known yet
    (["train.freeze_bn=true"], "horovod", False, False),
    (["dist.sync_bn=false"], "horovod", True, False),
])
def test_bn_is_synchronized_only_where_possible(monkeypatch, overrides, backend, possible,
                                                used):
    cfg = load_config(TINY, overrides)
    assert runtime.sync_bn_possible(cfg, backend) == possible
    if used is not None:
        monkeypatch.setattr(runtime.comm, "backend", lambda: backend)
        assert runtime.uses_sync_bn(cfg) == used


def test_cycle_time_must_be_positive():
    with pytest.raises(ConfigError, match="dist.horovod_cycle_time"):
        load_config(TINY, ["dist.horovod_cycle_time=0"])


@pytest.mark.parametrize("local_rank, count, gpus, expected", [
    ("0", 1, 8, "0"), ("3", 1, 8, "3"), ("1", 4, 8, "4,5,6,7"), ("0", 8, 8, "0,1,2,3,4,5,6,7"),
    ("0", 1, 1, "0"),  # a pod's one GPU
    ("2", 1, 0, None),  # no GPUs: nothing to pin
])
def test_each_parameter_server_worker_sees_only_its_own_gpus(local_rank, count, gpus, expected):
    # Otherwise MXNet's kvstore puts every worker's pinned staging memory on GPU 0.
    env = {"DEEPLAB_LOCAL_RANK": local_rank}
    assert runtime.pin_visible_devices(count, gpu_count=gpus, environ=env) == expected
    assert env.get("CUDA_VISIBLE_DEVICES") == expected


def test_pinning_keeps_a_users_choice_and_names_missing_gpus():
    env = {"DEEPLAB_LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "5"}
    assert runtime.pin_visible_devices(1, gpu_count=8, environ=env) is None
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    with pytest.raises(ValueError, match="DEEPLAB_LOCAL_RANK 3 needs GPUs 3..3 .* has 2"):
        runtime.pin_visible_devices(1, gpu_count=2, environ={"DEEPLAB_LOCAL_RANK": "3"})


@pytest.mark.parametrize("overrides, environ, expected", [
    ([], {"PMI_RANK": "0"}, CPU_CYCLE_TIME_MS),  # under mpirun BN's statistics skip Horovod
    ([], {"OMPI_COMM_WORLD_RANK": "0"}, CPU_CYCLE_TIME_MS),
    (["dist.sync_bn_transport=horovod"], {"PMI_RANK": "0"}, 1.0),  # they go through Horovod
    (["dist.sync_bn_transport=mpi"], {}, CPU_CYCLE_TIME_MS),
    ([], {}, 1.0),  # horovodrun: through Horovod
])
def test_cycle_time_with_the_statistics_over_mpi(overrides, environ, expected):
    cfg = load_config(TINY, overrides)
    assert horovod_cycle_time(cfg, 0, environ) == expected
    assert runtime.sync_bn_over_mpi(cfg, environ) == (expected == CPU_CYCLE_TIME_MS)


def test_the_transport_of_one_process_and_a_bad_choice():
    from deeplab.dist import comm

    assert comm.use_transport("auto") == "local" and comm.transport() == "local"
    assert comm.use_transport("horovod") == "local"  # one process: nothing to transport
    with pytest.raises(ValueError, match="mpi needs workers launched under MPI"):
        comm.use_transport("mpi")
    with pytest.raises(ValueError, match="unknown transport 'tcp'; valid: auto, horovod, mpi"):
        comm.use_transport("tcp")
    with pytest.raises(ConfigError, match="dist.sync_bn_transport"):
        load_config(TINY, ["dist.sync_bn_transport=tcp"])
