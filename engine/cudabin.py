"""The GPU code a CUDA binary (libmxnet.so) carries, read from the file: its cubins' SM
architectures and its PTX's, by `cuobjdump` when it is on the PATH, else by reading the fat
binary containers and ELF headers directly (`scan_cuda_binary`); and which GPUs can run it.

A GPU of compute capability X.Y runs a cubin built for sm_XZ with Z <= Y (binary compatibility
holds within a major version only), or PTX of any architecture up to X.Y, which the driver
compiles when the process starts.
"""
import collections
import mmap
import os
import re
import shutil
import struct
import subprocess

__all__ = ["Kernels", "EM_CUDA", "FATBIN_MAGIC", "cuda_elf_sm", "scan_cuda_binary",
           "library_archs", "describe_kernels", "supported_text", "runs_on"]

Kernels = collections.namedtuple("Kernels", "cubins ptx source")
Kernels.__doc__ = """The GPU code in a library: SM numbers (major * 10 + minor, e.g. 86) of its
cubins and of its PTX, sorted tuples; source says how they were read ('cuobjdump' or 'scan')."""



# A CUDA ELF image (cubin) names its SM in e_flags, as LLVM's llvm/BinaryFormat/ELF.h defines it:
# its number in the low byte (EF_CUDA_SM = 0xff; EF_CUDA_SM80 = 0x50, the decimal 80 for sm_80)
# under ELFABIVERSION_CUDA_V1 (e_ident[EI_ABIVERSION] 7: CUDA 11.2's cubins in mxnet-cu112), in
# bits 8-15 (EF_CUDA_SM_MASK = 0xff00) under ELFABIVERSION_CUDA_V2 (8: nvcc 13.0's cubins, sm_80
# included), whose low byte holds other flags.
EM_CUDA = 190
ELFABIVERSION_CUDA_V2 = 8
EF_CUDA_SM = 0xff
EF_CUDA_SM_MASK, EF_CUDA_SM_OFFSET = 0xff00, 8

# nvcc embeds device code in fat binary containers (NVIDIA does not document the layout; this is
# what cuobjdump reads, checked against mxnet-cu112 1.9.1's libmxnet.so and nvcc 13.0's output):
# a 16-byte header (magic, version 1, header size, size of the entries) and entries, each a
# header (kind at byte 0: 1 PTX, 2 ELF; its own size at byte 4; the payload's size at byte 8;
# the SM at byte 28) followed by its payload, often compressed: all 990 cubins of mxnet-cu112
# are, so scanning that file for ELF headers finds none; the entry headers still name them.
FATBIN_MAGIC = 0xBA55ED50
FATBIN_PTX, FATBIN_ELF = 1, 2
FATBIN_ENTRY = 64  # the smallest entry header

_PTX_TEXT = re.compile(rb"\.version\s+\d+\.\d+\s+\.target\s+sm_(\d+)")


def _plausible_sm(sm):
    return 10 <= sm <= 250


def cuda_elf_sm(header):
    """The SM number (major * 10 + minor) of the CUDA ELF image whose first bytes are `header`,
    or None if they are not those of a CUDA ELF image."""
    header = bytes(header[:64])
    if len(header) < 52 or header[:4] != b"\x7fELF" or header[5] != 1:  # little-endian only
        return None
    flags_at = {1: 36, 2: 48}.get(header[4])  # ELF32 / ELF64
    if flags_at is None or struct.unpack_from("<H", header, 18)[0] != EM_CUDA:
        return None
    flags = struct.unpack_from("<I", header, flags_at)[0]
    if header[8] >= ELFABIVERSION_CUDA_V2:
        sm = (flags & EF_CUDA_SM_MASK) >> EF_CUDA_SM_OFFSET
    else:
        sm = flags & EF_CUDA_SM
    return sm if _plausible_sm(sm) else None


def _read_fatbin(m, at, cubins, ptx):
    """Adds the SMs of the container at offset `at` of `m`; returns its end, or None if `at`
    does not start a container."""
    if at + 16 > len(m):
        return None
    _, version, header_size, size = struct.unpack_from("<IHHQ", m, at)
    end = at + header_size + size
    if version != 1 or header_size < 16 or end > len(m):
        return None
    entry = at + header_size
    while entry + FATBIN_ENTRY <= end:
        kind, _, entry_size, payload_size = struct.unpack_from("<HHIQ", m, entry)
        sm = struct.unpack_from("<I", m, entry + 28)[0]
        payload = entry + entry_size
        if entry_size < FATBIN_ENTRY or payload + payload_size > end:
            break  # not an entry header: the rest of this container is not readable
        if kind == FATBIN_PTX and _plausible_sm(sm):
            ptx.add(sm)
        elif kind == FATBIN_ELF:
            # An uncompressed cubin names its SM itself; a compressed one only in the entry.
            sm = cuda_elf_sm(m[payload:payload + 64]) or sm
            if _plausible_sm(sm):
                cubins.add(sm)
        entry = payload + payload_size
    return end


def scan_cuda_binary(path):
    """The GPU code in the file `path`, read without NVIDIA's tools: the entries of its fat
    binary containers, CUDA ELF images outside them, and plain PTX text (`.version` then
    `.target sm_XY`). Returns Kernels; raises OSError if the file cannot be read."""
    cubins, ptx = set(), set()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return Kernels((), (), "scan")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            magic = struct.pack("<I", FATBIN_MAGIC)
            at = m.find(magic)
            while at != -1:
                end = _read_fatbin(m, at, cubins, ptx)
                at = m.find(magic, end if end else at + 4)
            at = m.find(b"\x7fELF")
            while at != -1:
                sm = cuda_elf_sm(m[at:at + 64])
                if sm:
                    cubins.add(sm)
                at = m.find(b"\x7fELF", at + 4)
            at = m.find(b".version")
            while at != -1:
                match = _PTX_TEXT.match(m, at)
                if match and _plausible_sm(int(match.group(1))):
                    ptx.add(int(match.group(1)))
                at = m.find(b".version", at + 8)
    return Kernels(tuple(sorted(cubins)), tuple(sorted(ptx)), "scan")


def _cuobjdump(path, exe):
    """Kernels as `cuobjdump --list-elf` / `--list-ptx` name them (FILE.N.sm_XY.cubin / .ptx),
    or None if cuobjdump fails."""
    found = {"--list-elf": set(), "--list-ptx": set()}
    for flag, sms in found.items():
        try:
            proc = subprocess.run([exe, flag, path], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0 and "does not contain device code" not in proc.stdout:
            return None
        sms.update(int(n) for n in re.findall(r"\.sm_(\d+)[a-z]?\.(?:cubin|ptx)\b",
                                              proc.stdout))
    return Kernels(tuple(sorted(found["--list-elf"])), tuple(sorted(found["--list-ptx"])),
                   "cuobjdump")


def library_archs(path):
    """The GPU code libmxnet.so (or any CUDA binary) at `path` carries: `cuobjdump` when it is
    on the PATH, else `scan_cuda_binary`. Raises OSError if the file cannot be read."""
    exe = shutil.which("cuobjdump")
    if exe:
        kernels = _cuobjdump(path, exe)
        if kernels is not None:
            return kernels
    return scan_cuda_binary(path)


def _sm_names(sms, prefix="sm_"):
    return ", ".join("%s%d" % (prefix, s) for s in sms)


def describe_kernels(kernels):
    """'kernels for sm_80, sm_86; PTX for compute_80' / '...; no PTX'."""
    text = "kernels for %s" % (_sm_names(kernels.cubins) or "no architecture")
    return text + ("; PTX for %s" % _sm_names(kernels.ptx, "compute_") if kernels.ptx
                   else "; no PTX")


def supported_text(kernels):
    """The compute capabilities a build runs on, e.g. '5.x, 6.x, 7.x, 8.x; nothing newer'."""
    parts = []
    for major in sorted({s // 10 for s in kernels.cubins}):
        low = min(s % 10 for s in kernels.cubins if s // 10 == major)
        parts.append("%d.x" % major if low == 0 else "%d.%d-%d.x" % (major, low, major))
    if kernels.ptx:
        low = min(kernels.ptx)
        parts.append("any of %d.%d or newer through PTX" % (low // 10, low % 10))
    elif kernels.cubins:
        parts[-1] += "; nothing newer (no PTX)"
    return "runs on compute capability " + ", ".join(parts)


def runs_on(capability, kernels):
    """How a GPU of `capability` (major, minor) runs this code: 'sm_XY' (a cubin of its major
    with a minor up to its own), 'compute_XY' (PTX up to its capability, compiled by the
    driver), or None (it cannot)."""
    major, minor = capability
    same = [s for s in kernels.cubins if s // 10 == major and s % 10 <= minor]
    if same:
        return "sm_%d" % max(same)
    lower = [s for s in kernels.ptx if s <= major * 10 + minor]
    return "compute_%d" % max(lower) if lower else None
