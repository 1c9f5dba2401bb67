"""deeplab.cudabin, the reader of the GPU code in a library (MXNet's): CUDA ELF headers, fat
binary containers with compressed entries (as mxnet-cu112's), PTX text, cuobjdump's listing
when it is on the PATH, and, where nvcc is installed, a library nvcc builds; then which GPUs
the kernels found run on. `deeplab doctor`'s verdicts from them: test_doctor.py."""
import glob
import os
import shutil
import struct
import subprocess
import sys

import pytest

from deeplab import cudabin

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_cuda import cuda_elf, fatbin, ptx_text, shell_script, tool_on_path, write_library  # noqa: E402


def test_elf_e_flags_as_llvm_defines_them():
    # EF_CUDA_SM80 = 0x50, EF_CUDA_SM86 = 0x56, EF_CUDA_SM90 = 0x5a (LLVM's BinaryFormat/ELF.h)
    assert [cudabin.cuda_elf_sm(cuda_elf(sm)) for sm in (0x32, 0x50, 0x56, 0x5a)] == \
        [50, 80, 86, 90]
    # nvcc 13.0's cubins (ELFABIVERSION_CUDA_V2): sm_80 had e_flags 0x05005004
    v2 = bytearray(cuda_elf(80, abi=8))
    assert struct.unpack_from("<I", v2, 48)[0] == 0x05005004
    assert cudabin.cuda_elf_sm(v2) == 80
    host = bytearray(cuda_elf(80))
    host[18] = 62  # EM_X86_64
    assert cudabin.cuda_elf_sm(host) is None
    assert cudabin.cuda_elf_sm(cuda_elf(80)[:40]) is None


def test_scan_finds_cubins_ptx_and_compressed_fatbin_entries(tmp_path):
    assert cudabin.scan_cuda_binary(write_library(tmp_path, cuda_elf(80), cuda_elf(86))) == \
        cudabin.Kernels((80, 86), (), "scan")
    assert cudabin.scan_cuda_binary(write_library(tmp_path, ptx_text(70))) == \
        cudabin.Kernels((), (70,), "scan")
    # As in mxnet-cu112's libmxnet.so: every cubin compressed (no ELF header to find), the
    # entries' headers naming them; here also a compressed PTX and an uncompressed cubin.
    packed = b"\xa2\x7fELF\x02\x01\x013\x07\x00\x01" + bytes(range(200))
    container = fatbin(*[(2, sm, packed, 0x2011) for sm in (50, 60, 70, 80, 86)],
                       (1, 80, b"\x28\xb5\x2f\xfd" + bytes(50), 0x8011),
                       (2, 75, cuda_elf(75) + bytes(100), 0x11))
    lib = write_library(tmp_path, b"junk", container, container)
    assert cudabin.scan_cuda_binary(lib) == cudabin.Kernels((50, 60, 70, 75, 80, 86), (80,), "scan")
    assert cudabin.scan_cuda_binary(write_library(tmp_path, b"no device code")) == \
        cudabin.Kernels((), (), "scan")
    empty = tmp_path / "empty.so"
    empty.write_bytes(b"")
    assert cudabin.scan_cuda_binary(str(empty)) == cudabin.Kernels((), (), "scan")
    truncated = tmp_path / "truncated.so"  # a container longer than the file is not read
    truncated.write_bytes(container[:-300])
    assert cudabin.scan_cuda_binary(str(truncated)) == cudabin.Kernels((), (), "scan")


def _nvcc():
    """nvcc on the PATH, else the newest CUDA toolkit's under /usr/local, else None."""
    found = [shutil.which("nvcc")] + sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)
    return next((path for path in found if path), None)


@pytest.mark.skipif(_nvcc() is None, reason="needs nvcc (the CUDA toolkit)")
def test_scan_reads_a_library_nvcc_builds(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text("__global__ void add(float *x) { x[threadIdx.x] += 1.0f; }\n"
                   "void launch(float *x) { add<<<1, 32>>>(x); }\n")
    lib = str(tmp_path / "libk.so")
    subprocess.run([_nvcc(), "-shared", "-Xcompiler", "-fPIC", "-o", lib, str(src),
                    "-gencode", "arch=compute_80,code=sm_80",
                    "-gencode", "arch=compute_86,code=sm_86",
                    "-gencode", "arch=compute_90,code=compute_90"], check=True, timeout=300,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert cudabin.scan_cuda_binary(lib) == cudabin.Kernels((80, 86), (90,), "scan")


def test_cuobjdump_is_used_when_on_the_path(tmp_path, monkeypatch):
    bin_dir = tool_on_path(tmp_path, monkeypatch, "cuobjdump", 'case "$1" in\n'
            '--list-elf) printf "ELF file    1: libmxnet.1.sm_50.cubin\\n'
            'ELF file    2: libmxnet.2.sm_90a.cubin\\n";;\n'
            '--list-ptx) printf "PTX file    1: libmxnet.1.sm_90.ptx\\n";;\nesac\n')
    lib = write_library(tmp_path, cuda_elf(80))
    assert cudabin.library_archs(lib) == cudabin.Kernels((50, 90), (90,), "cuobjdump")
    shell_script(bin_dir, "cuobjdump", "echo broken >&2; exit 3\n")
    assert cudabin.library_archs(lib) == cudabin.Kernels((80,), (), "scan")


def test_runs_on_and_the_supported_range():
    k = cudabin.Kernels((50, 60, 70, 80, 86), (), "scan")
    assert cudabin.supported_text(k) == ("runs on compute capability 5.x, 6.x, 7.x, 8.x; nothing "
                                        "newer (no PTX)")
    assert [cudabin.runs_on(c, k) for c in [(5, 2), (7, 5), (8, 9), (9, 0), (3, 7)]] == \
        ["sm_50", "sm_70", "sm_86", None, None]
    k = cudabin.Kernels((86,), (80,), "scan")
    assert cudabin.supported_text(k) == ("runs on compute capability 8.6-8.x, any of 8.0 or "
                                        "newer through PTX")
    assert [cudabin.runs_on(c, k) for c in [(8, 0), (8, 6), (12, 0), (7, 5)]] == \
        ["compute_80", "sm_86", "compute_80", None]
