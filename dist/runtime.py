"""Starting a worker for a config: its backend, the devices it may see, Horovod's negotiation
cycle and the synchronized-BN groups, all before any network or trainer exists; and which BN
the config trains with under that backend."""
import os

import mxnet as mx

from deeplab import nvml
from deeplab.config import CPU_CYCLE_TIME_MS

from . import comm
from .syncbn import configure_sync_bn

__all__ = ["sync_bn_requested", "sync_bn_possible", "uses_sync_bn", "sync_bn_over_mpi",
           "horovod_cycle_time", "pin_visible_devices", "start_workers"]


def sync_bn_requested(cfg):
    """BN trained with dist.sync_bn set: what Horovod workers synchronize."""
    return not cfg["train"]["freeze_bn"] and cfg["dist"]["sync_bn"]


def sync_bn_possible(cfg, backend):
    """Whether BN can be synchronized across workers for this config under `backend` (a name of
    comm.BACKENDS, or 'auto' where the launcher is not known yet): BN trained, and any backend
    but the parameter server, which keeps per-worker statistics by design (its servers sum
    gradients; there is no worker-to-worker path for the statistics). The one place that rule
    is spelled: training (`uses_sync_bn`), `deeplab doctor` and `deeplab bench --compare bn`
    ask it."""
    return not cfg["train"]["freeze_bn"] and backend != "ps"


def uses_sync_bn(cfg):
    """Whether training normalizes with the global batch's statistics (SyncBatchNorm): BN
    trained, dist.sync_bn set, under Horovod (one Horovod worker included, so that 1 and N
    workers run the same layer). The local backend uses MXNet's BatchNorm; the parameter server
    keeps per-worker statistics by design (`sync_bn_possible`)."""
    backend = comm.backend()
    # One process (local) normalizes with MXNet's BatchNorm, or its SyncBatchNorm across the
    # process's devices (deeplab.build).
    return sync_bn_requested(cfg) and sync_bn_possible(cfg, backend) and backend != "local"


def sync_bn_over_mpi(cfg, environ=None):
    """Whether synchronized BN's statistics will travel straight over MPI (dist.
    sync_bn_transport mpi, or auto in a worker started by an MPI launcher), not through
    Horovod's negotiation: then Horovod's cycle paces only the gradients. Known before Horovod
    starts (its cycle is read then); `comm.use_transport` decides for good after."""
    environ = os.environ if environ is None else environ
    choice = cfg["dist"]["sync_bn_transport"]
    return choice == "mpi" or (choice == "auto" and any(
        k in environ for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")))


def horovod_cycle_time(cfg, gpus, environ=None):
    """Horovod's negotiation cycle (ms) for this config: dist.horovod_cycle_time, or by default
    from the measurements in docs/distributed.md ("Horovod's negotiation cycle"):

    - synchronized BN: each of its ~114 collectives per step (ResNet-50) waits about one cycle
      (benchmarks/collective_latency.py: 1.1 ms at a 1 ms cycle, 0.5 ms at 0.1 ms). On GPUs
      0.1 ms (a node has cores to spare for the thread); on CPUs Horovod's 1 ms: at 0.1 ms the
      thread takes 0.27 of a core and the step took 17% longer on 2 workers here.
    - otherwise a step makes a few collectives: Horovod's 1 ms on GPUs, CPU_CYCLE_TIME_MS on
      CPUs, whose cores all compute while the thread wakes every cycle (2-worker efficiency
      0.64-0.74 at 1 ms, 0.84-0.91 at 25 ms: benchmarks/RESULTS.md). The same holds with
      synchronized BN over MPI (`sync_bn_over_mpi`): Horovod then carries the gradients only.
    """
    value = cfg["dist"]["horovod_cycle_time"]
    if value is not None:
        return float(value)
    if sync_bn_requested(cfg) and not sync_bn_over_mpi(cfg, environ):
        return 0.1 if gpus else 1.0
    return 1.0 if gpus else CPU_CYCLE_TIME_MS


def pin_visible_devices(count=1, gpu_count=None, environ=None):
    """Shows this worker only its own GPUs: CUDA_VISIBLE_DEVICES = local rank x count, ...
    (DEEPLAB_LOCAL_RANK), unless already set or there are no GPUs. Returns the value set, or
    None. Call it before anything asks CUDA (mx.context.num_gpus() included).

    Why: MXNet's kvstore stages the parameter server's transfers in page-locked host memory of
    Context::CPUPinned(0) (src/kvstore/comm.h), and allocating it makes GPU 0 current: every
    worker of a node would open a CUDA context (and its memory) on GPU 0.

    Raises ValueError when the worker's GPUs are not there (e.g. local rank 3 of 2 GPUs).
    """
    environ = os.environ if environ is None else environ
    if environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return None
    gpu_count = nvml.gpu_count() if gpu_count is None else gpu_count
    if not gpu_count:
        return None
    first = int(environ.get("DEEPLAB_LOCAL_RANK", "0")) * count
    if first + count > gpu_count:
        raise ValueError("worker with DEEPLAB_LOCAL_RANK %s needs GPUs %d..%d (%d per worker), "
                         "but this machine has %d" % (environ.get("DEEPLAB_LOCAL_RANK", "0"),
                                                      first, first + count - 1, count,
                                                      gpu_count))
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(count))
    return environ["CUDA_VISIBLE_DEVICES"]


def start_workers(cfg):
    """COLLECTIVE. Starts the config's backend and, with synchronized BN, its BN groups (both
    before any network or trainer exists)."""
    from deeplab.errors import ConfigError

    backend = comm.resolve_backend(cfg["dist"]["backend"])
    if backend == "ps":  # before anything asks CUDA (below: num_gpus)
        try:
            pin_visible_devices(cfg["dist"]["devices_per_worker"])
        except ValueError as err:
            raise ConfigError("dist.devices_per_worker: %s" % err) from None
    if backend == "horovod" and not os.environ.get("HOROVOD_CYCLE_TIME"):
        # Read by Horovod's background thread when it starts (hvd.init).
        os.environ["HOROVOD_CYCLE_TIME"] = "%g" % horovod_cycle_time(cfg, mx.context.num_gpus())
    comm.init(cfg["dist"]["backend"])
    devices = cfg["dist"]["devices_per_worker"]
    if devices > 1 and comm.backend() == "horovod":
        raise ConfigError("dist.devices_per_worker is %d, but Horovod's trainer reduces the "
                          "gradients of one device per worker: under Horovod run one worker "
                          "per device, or use dist.backend local or ps" % devices)
    if devices > 1 and cfg["train"]["batch_size"] % (devices * comm.size()):
        raise ConfigError("train.batch_size (%d) must be divisible by the %d device(s) of the "
                          "%d worker(s)" % (cfg["train"]["batch_size"], devices * comm.size(),
                                            comm.size()))
    if devices > 1 and not cfg["train"]["freeze_bn"] and not uses_sync_bn(cfg) \
            and not mx.context.num_gpus():
        # Measured: MXNet 1.9's contrib SyncBatchNorm never completes across CPU device ids
        # (forward and backward are queued, the engine waits forever).
        raise ConfigError("dist.devices_per_worker %d with BN trained needs GPUs: MXNet's "
                          "SyncBatchNorm across devices deadlocks on CPU device ids; on CPUs "
                          "use it with train.freeze_bn: true" % devices)
    if uses_sync_bn(cfg):
        try:
            comm.use_transport(cfg["dist"]["sync_bn_transport"])
        except ValueError as err:
            raise ConfigError("dist.sync_bn_transport: %s" % err) from None
        try:
            configure_sync_bn(cfg["dist"]["sync_bn_group"])
        except ValueError as err:
            raise ConfigError("dist.sync_bn_group: %s" % err) from None
