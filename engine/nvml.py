"""NVIDIA's management library (NVML, the nvidia-ml-py package's `pynvml`): the GPUs the driver
shows this process, and the memory a process holds on them. NVML opens no CUDA context, so these
may be asked before MXNet touches a GPU. Without the package or a driver every function says
so (None, 0) instead of raising.
"""
import collections
import contextlib

__all__ = ["GPU", "gpus", "gpu_count", "process_memory"]

GPU = collections.namedtuple("GPU", "index name memory_mib capability uuid")
GPU.__doc__ = """A GPU as the driver lists it: index (nvidia-smi's), name, memory in MiB,
compute capability as (major, minor) or None when the driver does not say, UUID or None."""


@contextlib.contextmanager
def _session():
    """pynvml, initialized for the block and shut down after it; None when NVML is not usable
    (not installed, no driver: NVMLError_LibraryNotFound, ...)."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # noqa: B902 - ImportError, pynvml.NVMLError
        yield None
        return
    try:
        yield pynvml
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: B902
            pass


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def gpus():
    """Every GPU the driver shows (a list of GPU), or None when NVML is not usable or a query
    fails (then another probe, e.g. nvidia-smi, may still tell)."""
    with _session() as nvml:
        if nvml is None:
            return None
        try:
            out = []
            for i in range(nvml.nvmlDeviceGetCount()):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                out.append(GPU(i, _text(nvml.nvmlDeviceGetName(h)),
                               nvml.nvmlDeviceGetMemoryInfo(h).total // 2 ** 20,
                               tuple(nvml.nvmlDeviceGetCudaComputeCapability(h)),
                               _text(nvml.nvmlDeviceGetUUID(h))))
            return out
        except Exception:  # noqa: B902 - a driver that fails a query
            return None


def gpu_count():
    """How many GPUs the driver shows this process; 0 without NVML or a driver."""
    with _session() as nvml:
        if nvml is None:
            return 0
        try:
            return nvml.nvmlDeviceGetCount()
        except Exception:  # noqa: B902
            return 0


def process_memory(pid):
    """Bytes of GPU memory process `pid` holds over every GPU, or None when NVML is not usable
    or does not list the process (a container's PID namespace hides it)."""
    with _session() as nvml:
        if nvml is None:
            return None
        try:
            used, seen = 0, False
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid:
                        used, seen = used + (proc.usedGpuMemory or 0), True
            return used if seen else None
        except Exception:  # noqa: B902
            return None
