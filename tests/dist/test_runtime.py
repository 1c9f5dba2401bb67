"""dist/runtime.py: Horovod's negotiation cycle picked per config (the worker sets
HOROVOD_CYCLE_TIME before Horovod starts unless the environment already does)."""
import pytest

from conftest import TINY
from deeplab.config import CPU_CYCLE_TIME_MS, ConfigError, load_config
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


def test_cycle_time_must_be_positive():
    with pytest.raises(ConfigError, match="dist.horovod_cycle_time"):
        load_config(TINY, ["dist.horovod_cycle_time=0"])
