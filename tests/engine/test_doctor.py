"""`deeplab doctor`: this machine as it is (CPU build of MXNet, Horovod with Gloo, no GPU), and
GPUs faked against fake libraries (tests/engine/fake_cuda.py; the reader of their GPU code,
deeplab.cudabin: test_cudabin.py)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import types

import pytest

from conftest import ROOT, TINY
from deeplab import doctor
from deeplab.errors import EXIT_CHECK_FAILED, UserError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_cuda import cuda_elf, ptx_text, shell_script, tool_on_path, write_library  # noqa: E402

R50 = os.path.join(ROOT, "configs", "deeplabv3_r50v2-os16_bs16_30k_trainaug_513.yaml")
H100 = "NVIDIA H100 80GB HBM3"

HOROVOD = {"installed": True, "version": "0.28.1", "mxnet": True, "gloo": True, "mpi": False,
           "nccl": 0, "cuda": False}


def gpus_from_spec(text):
    """GPUs described as NAME:MAJOR.MINOR:MEMORY_GB, comma-separated ("NVIDIA H100 80GB
    HBM3:9.0:80"; empty: no GPU)."""
    gpus = []
    for i, item in enumerate(p.strip() for p in text.split(",") if p.strip()):
        try:
            name, cap, mem = item.rsplit(":", 2)
            major, minor = (int(x) for x in cap.split("."))
            memory = int(float(mem) * 1024)
        except ValueError:
            raise ValueError("GPU spec %r must look like NAME:MAJOR.MINOR:MEMORY_GB, e.g. "
                             "'NVIDIA H100 80GB HBM3:9.0:80'" % item) from None
        gpus.append(doctor.GPU(i, name, memory, (major, minor), None))
    return gpus


class FakeProbes(doctor.Probes):
    """A machine described by the test: GPUs given as a spec (gpus_from_spec), a library file
    read instead of MXNet's, a fixed Horovod report instead of the probe process, and
    optionally an MXNet report."""

    def __init__(self, gpus="", library=None, horovod=HOROVOD, mxnet=None):
        self._gpus, self._library = gpus_from_spec(gpus), library
        self._horovod, self._mxnet = dict(horovod), mxnet

    def mxnet(self):
        return self._mxnet if self._mxnet is not None else super().mxnet()

    def library(self, mx):
        return (self._library, True) if self._library else super().library(mx)

    def gpus(self):
        return list(self._gpus)

    def gpu_sources(self):
        return "GPUs described by the test"

    def horovod(self):
        return dict(self._horovod)


@pytest.fixture
def fake(monkeypatch):
    """In-process doctor runs: no cuobjdump, no inherited variables; tests pass FakeProbes (no
    GPU, a fixed Horovod report unless they say otherwise)."""
    which = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda exe, *a, **k: None if exe == "cuobjdump" else which(exe, *a, **k))
    for var in ("CUDA_VISIBLE_DEVICES", "HOROVOD_CYCLE_TIME"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def by_name(checks, name):
    found = [c for c in checks if c.name == name]
    assert found, "no %r check in %s" % (name, [c.name for c in checks])
    return found


def doctor_cli(*args, **env):
    """`deeplab doctor ARGS` as a subprocess, with `env` added to a clean environment."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DEEPLAB_DOCTOR", "CUDA_VISIBLE", "HOROVOD_", "DMLC_"))}
    clean.update(env, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "deeplab.cli", "doctor"] + list(args), cwd=ROOT,
                          env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=300)


# --- this machine ----------------------------------------------------------------------------

def test_this_machine_cpu_build_horovod_with_gloo_tiny_config_passes():
    proc = doctor_cli(TINY, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["ok"] and rep["failed"] == 0
    checks = {c["name"]: c for c in rep["checks"]}
    mx = checks["mxnet"]
    assert mx["status"] == "ok" and mx["data"]["version"] == "1.9.1"
    assert mx["data"]["features"]["MKLDNN"] is True and mx["data"]["features"]["CUDA"] is False
    assert mx["data"]["library"].endswith("libmxnet.so")
    assert checks["kernels"]["status"] == "ok" and "CPU build" in checks["kernels"]["message"]
    assert checks["kernels"]["data"]["cubins"] == checks["kernels"]["data"]["ptx"] == []
    hvd = checks["horovod"]["data"]
    assert hvd["installed"] and hvd["mxnet"] and hvd["gloo"] and hvd["version"] == "0.28.1"
    # scripts/setup_env.sh builds it with MPI too (MPICH from PyPI), mpi4py on the same library
    assert hvd["mpi"] and hvd["mpi_library"].startswith("MPICH Version: 4.")
    assert hvd["mpirun"] == os.path.join(os.path.dirname(sys.executable), "mpirun")
    assert "MPI yes (MPICH Version: 4." in checks["horovod"]["message"]
    assert checks["dataset"]["status"] == "ok"
    assert checks["dataset"]["data"]["sizes"] == {"train": 256, "val": 48}
    if shutil.which("nvidia-smi") is None:
        assert checks["gpus"]["data"]["gpus"] == [] and "gpu" not in checks
        assert "no GPU visible" in checks["gpus"]["message"]


def test_text_lines_start_with_their_status(fake):
    checks = doctor.run_checks(TINY, probes=FakeProbes())
    text = doctor.format_text(checks)
    lines = text.splitlines()
    assert lines[0].startswith("ok    mxnet: MXNet 1.9.1, CPU build, ")
    assert any(ln.startswith("      features: CUDA no, CUDNN no, NCCL no, MKLDNN yes")
               for ln in lines)
    assert "ok    horovod: Horovod 0.28.1: MXNet yes, Gloo yes, MPI no, NCCL no" in lines
    assert "ok    dataset: synthetic: train 256 images, val 48 images" in lines
    assert lines[-1] == "deeplab doctor: no check failed, 0 warnings"
    for c in checks:
        assert "%-4s  %s: %s" % (c.status, c.name, c.message) in lines
    json.dumps(doctor.report(checks))  # serializable


# --- GPUs against libraries ------------------------------------------------------------------

def test_h100_against_the_sm80_sm86_build_fails_naming_the_ngc_image(fake, tmp_path, capsys):
    lib = write_library(tmp_path, cuda_elf(80), cuda_elf(86))
    with pytest.raises(SystemExit) as exc:
        doctor.main(doctor.parse_args([]), FakeProbes(H100 + ":9.0:80", lib))
    proc = types.SimpleNamespace(returncode=exc.value.code, stdout=capsys.readouterr().out)
    assert proc.returncode == EXIT_CHECK_FAILED == 6, proc.stdout
    assert ("FAIL  gpu: GPU 0 (NVIDIA H100 80GB HBM3, compute capability 9.0) cannot run this "
            "MXNet build (kernels for sm_80, sm_86; no PTX): use the image built on NVIDIA's "
            "NGC MXNet container (docker build -f k8s/Dockerfile --build-arg BASE=ngc") \
        in proc.stdout
    assert "docs/kubernetes.md" in proc.stdout
    assert "ok    kernels: kernels for sm_80, sm_86; no PTX" in proc.stdout
    assert "deeplab doctor: 1 check failed" in proc.stdout


@pytest.mark.parametrize("capability, parts, runs", [
    ("8.0", [cuda_elf(80), cuda_elf(86)], "sm_80"),
    ("8.6", [cuda_elf(80), cuda_elf(86)], "sm_86"),
    ("8.9", [cuda_elf(86)], "sm_86"),                      # same major, lower minor
    ("9.0", [cuda_elf(80), cuda_elf(86), ptx_text(80)], "compute_80"),  # PTX of a lower arch
    ("9.0", [cuda_elf(90, abi=8)], "sm_90"),
])
def test_gpu_runs_a_cubin_of_its_major_or_lower_ptx(fake, tmp_path, capability, parts, runs):
    probes = FakeProbes("NVIDIA GPU:%s:40" % capability, write_library(tmp_path, *parts))
    checks = doctor.run_checks(probes=probes)
    (gpu,) = by_name(checks, "gpu")
    assert gpu.status == "ok", gpu.message
    assert gpu.data["runs"] == runs and gpu.data["compute_capability"] == capability
    assert not any(c.status == "FAIL" for c in checks)


@pytest.mark.parametrize("capability, parts, expected", [
    ("9.0", [cuda_elf(80), cuda_elf(86)], "NGC MXNet container"),
    ("8.6", [cuda_elf(90, abi=8)], "needs compute capability 9.0 or newer; mxnet-cu112"),
    ("9.0", [cuda_elf(86), ptx_text(100)], "NGC MXNet container"),  # PTX newer than the GPU
    ("7.0", [cuda_elf(80), cuda_elf(86)], "needs compute capability 8.0 or newer"),
])
def test_gpu_without_usable_code_fails(fake, tmp_path, capability, parts, expected):
    probes = FakeProbes("NVIDIA GPU:%s:40" % capability, write_library(tmp_path, *parts))
    (gpu,) = by_name(doctor.run_checks(probes=probes), "gpu")
    assert gpu.status == "FAIL" and expected in gpu.message
    assert gpu.message.startswith("GPU 0 (NVIDIA GPU, compute capability %s) cannot run this "
                                  "MXNet build (kernels for " % capability)


def test_cpu_build_with_a_gpu_fails_and_names_the_gpu_wheel_or_ngc(fake):
    checks = doctor.run_checks(probes=FakeProbes("Tesla V100-SXM2-16GB:7.0:16,%s:9.0:80"
                                                 % H100))
    v100, h100 = by_name(checks, "gpu")
    assert v100.status == h100.status == "FAIL"
    assert "CPU build" in v100.message and "mxnet-cu112==1.9.1" in v100.message
    assert "CPU build" in h100.message and h100.message.endswith(doctor.NGC_HINT)


def test_gpus_of_one_kind_share_a_line_and_the_json_report_lists_each(fake, tmp_path):
    checks = doctor.run_checks(probes=FakeProbes(",".join(["NVIDIA A100-SXM4-80GB:8.0:80"] * 4),
                                                 write_library(tmp_path, cuda_elf(80))))
    (gpu,) = by_name(checks, "gpu")
    assert gpu.message == ("GPUs 0-3 (NVIDIA A100-SXM4-80GB, compute capability 8.0) runs the "
                           "sm_80 kernels")
    rep = doctor.report(checks)
    gpus = [c for c in rep["checks"] if c["name"] == "gpus"][0]["data"]["gpus"]
    assert [g["index"] for g in gpus] == [0, 1, 2, 3] and gpus[0]["memory_mib"] == 80 * 1024


def test_main_exits_with_its_own_code_on_a_failure_and_0_otherwise(fake, tmp_path, capsys):
    lib = write_library(tmp_path, cuda_elf(80))
    with pytest.raises(SystemExit) as exc:
        doctor.main(doctor.parse_args(["--json"]), FakeProbes(H100 + ":9.0:80", lib))
    # Its own code: 1 means a bug (README's exit-code table).
    assert exc.value.code == EXIT_CHECK_FAILED == 6
    rep = json.loads(capsys.readouterr().out)
    assert not rep["ok"] and rep["failed"] == 1
    doctor.main(doctor.parse_args([]), FakeProbes("NVIDIA A100-SXM4-80GB:8.0:80", lib))
    assert "no check failed" in capsys.readouterr().out



def test_help_and_docstring_give_the_failed_check_exit_code(capsys):
    """Both said exit 1 once, the code of a bug; a failed check exits 6."""
    with pytest.raises(SystemExit) as exc:
        doctor.parse_args(["-h"])
    assert exc.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "0 when no check failed (warnings allowed), 6 when one did, 2 for bad flags" \
        in help_text
    doc = " ".join(doctor.__doc__.split())
    assert "6 when one did" in doc and "1 when one did" not in doc
# --- GPU probe -------------------------------------------------------------------------------

def test_fake_gpus_parse_and_refuse_a_bad_spec():
    """The tests' GPU descriptions (the machines they fake) mean what they say."""
    assert FakeProbes("NVIDIA H100 80GB HBM3:9.0:80, Tesla T4:7.5:15.5").gpus() == [
        doctor.GPU(0, H100, 81920, (9, 0), None), doctor.GPU(1, "Tesla T4", 15872, (7, 5), None)]
    assert FakeProbes("").gpus() == []
    with pytest.raises(ValueError, match="NVIDIA H100:9.*NAME:MAJOR.MINOR:MEMORY_GB"):
        FakeProbes("NVIDIA H100:9")


def test_nvidia_smi_is_read_when_nvml_is_not_there(tmp_path, monkeypatch):
    bin_dir = tool_on_path(tmp_path, monkeypatch, "nvidia-smi", 'case "$1" in *compute_cap*)\n'
            'echo "0, NVIDIA H100 80GB HBM3, 81559, GPU-aaaa-1111, 9.0"\n'
            'echo "1, NVIDIA H100 80GB HBM3, 81559, GPU-bbbb-2222, 9.0";;\n'
            '*) exit 6;;\nesac\n')
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(doctor.nvml, "gpus", lambda: None)
    gpus = doctor.gpu_list()
    assert gpus == [doctor.GPU(0, H100, 81559, (9, 0), "GPU-aaaa-1111"),
                    doctor.GPU(1, H100, 81559, (9, 0), "GPU-bbbb-2222")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g.index for g in doctor.gpu_list()] == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb,0")
    assert [g.index for g in doctor.gpu_list()] == [1, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert doctor.gpu_list() == []
    # A driver older than 510 knows no compute_cap field: the capability is unknown.
    shell_script(bin_dir, "nvidia-smi", 'case "$1" in *compute_cap*) exit 2;;\n'
            '*) echo "0, Tesla K80, 11441, GPU-cccc";;\nesac\n')
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert doctor.gpu_list() == [doctor.GPU(0, "Tesla K80", 11441, None, "GPU-cccc")]


# --- MXNet and Horovod -----------------------------------------------------------------------

def test_mxnet_that_does_not_load_fails_and_the_library_is_still_read(fake):
    checks = doctor.run_checks(TINY, probes=FakeProbes(mxnet={
        "error": "OSError: libcuda.so.1: cannot open shared object file: No such file"}))
    (mx,) = by_name(checks, "mxnet")
    assert mx.status == "FAIL" and "needs the NVIDIA driver (libcuda.so.1)" in mx.message
    (kernels,) = by_name(checks, "kernels")
    assert kernels.data["library"].endswith("libmxnet.so")  # found without importing MXNet
    (config,) = by_name(checks, "config")
    assert config.status == "warn" and "not checked" in config.message
    (mx,) = by_name(doctor.run_checks(probes=FakeProbes(mxnet={
        "error": "OSError: libcudnn.so.8: cannot open shared object file: No such file"})),
        "mxnet")
    assert mx.status == "FAIL" and "needs CUDA 11.2, cuDNN 8 and NCCL 2" in mx.message


@pytest.mark.parametrize("info, gpus, status, expected", [
    ({"installed": False, "error": "No module named 'horovod'"}, "", "warn",
     "`deeplab launch horovod` will not start"),
    (dict(HOROVOD, mxnet=False, mxnet_error="ImportError: Extension horovod.mxnet has not been "
          "built"), "", "warn", "rebuild Horovod against this MXNet"),
    (dict(HOROVOD, gloo=False, mpi=True), "", "warn", "deeplab launch horovod --mpi"),
    (dict(HOROVOD, mpi=True, mpi4py_error="ImportError: no libmpi", mpirun="/x/mpirun"), "",
     "warn", "mpi4py does not load (ImportError: no libmpi)"),
    (dict(HOROVOD, mpi=True, mpi_library="MPICH Version: 4.3.2", mpirun=None), "", "warn",
     "no mpirun beside this Python"),
    (HOROVOD, "NVIDIA A100:8.0:80", "warn", "HOROVOD_GPU_OPERATIONS=NCCL"),
    (dict(HOROVOD, nccl=21805, cuda=True), "NVIDIA A100:8.0:80", "ok", "NCCL 2.18.5"),
])
def test_horovod_findings(fake, info, gpus, status, expected):
    (hvd,) = by_name(doctor.run_checks(probes=FakeProbes(gpus, horovod=info)), "horovod")
    assert hvd.status == status and expected in " ".join([hvd.message] + hvd.notes)


# --- CONFIG ----------------------------------------------------------------------------------

def test_voc_root_missing_fails_naming_the_path(fake, tmp_path):
    root = str(tmp_path / "no-voc-here")
    checks = doctor.run_checks(R50, ["data.root=" + root], probes=FakeProbes())
    (config,) = by_name(checks, "config")
    assert config.status == "ok" and "+ 1 override(s)" in config.message
    (ds,) = by_name(checks, "dataset")
    assert ds.status == "FAIL"
    assert ds.message.startswith("voc at %s: data root %s (config key data.root) does not exist"
                                 % (root, root))
    assert "deeplab fetch voc --root DIR" in ds.message


def test_voc_val_split_missing_names_the_split_list(fake, tmp_path):
    voc = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("")
    checks = doctor.run_checks(R50, ["data.root=%s" % (tmp_path / "voc"), "data.train_split=train"],
                               probes=FakeProbes())
    (ds,) = by_name(checks, "dataset")
    assert ds.status == "FAIL" and ds.data["sizes"] == {"train": 0}
    assert "val split 'val': split list %s does not exist" % (
        voc / "ImageSets" / "Segmentation" / "val.txt") in ds.message


def test_cityscapes_and_folder_datasets_are_checked_naming_their_splits(fake, tmp_path):
    cs = os.path.join(ROOT, "configs", "deeplabv3_r50v2-os16_bs8_90k_cityscapes_769.yaml")
    root = str(tmp_path / "no-cityscapes")
    (ds,) = by_name(doctor.run_checks(cs, ["data.root=" + root], probes=FakeProbes()), "dataset")
    assert ds.status == "FAIL" and ds.message.startswith("cityscapes at %s: " % root)
    assert os.path.join(root, "leftImg8bit", "train") in ds.message
    assert "deeplab fetch cityscapes says what to download" in ds.message
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        for folder, suffix in (("images", ".jpg"), ("masks", ".png")):
            (tmp_path / "mine" / folder / split).mkdir(parents=True, exist_ok=True)
            for name in names:
                (tmp_path / "mine" / folder / split / (name + suffix)).write_bytes(b"")
    checks = doctor.run_checks(R50, ["data.name=folder", "data.root=%s" % (tmp_path / "mine"),
                                     "data.classes=[background,thing]", "model.num_classes=2",
                                     "data.train_split=train"], probes=FakeProbes())
    (ds,) = by_name(checks, "dataset")
    assert ds.status == "ok", ds.message
    assert ds.message == "folder at %s: train (train) 2 images, val (val) 1 images" % (
        tmp_path / "mine")


def test_bad_config_is_a_failed_check(fake, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 8\n")
    (config,) = by_name(doctor.run_checks(str(bad), probes=FakeProbes()), "config")
    assert config.status == "FAIL" and "unknown key train.batch_sise" in config.message


def test_weights_present_missing_and_in_the_zoo_cache(fake, tmp_path):
    from deeplab import fetch

    params = tmp_path / "final.params"
    params.write_bytes(b"x" * 2000)
    missing = tmp_path / "missing.params"
    checks = doctor.run_checks(TINY, ["model.params=%s" % params,
                                      "model.backbone_params=%s" % missing], probes=FakeProbes())
    (bb,) = by_name(checks, "model.backbone_params")
    assert bb.status == "FAIL" and bb.message == "%s does not exist" % missing
    assert by_name(checks, "model.params")[0].status == "ok"

    # zoo:NAME: MXNet's cache under $MXNET_HOME, the row's sum replaced by our file's.
    fake.setenv("MXNET_HOME", str(tmp_path / "mxnet-home"))
    weights = b"stand-in weights"
    digest = hashlib.sha1(weights).hexdigest()
    fake.setitem(fetch.TABLE, "resnet50_v2", fetch.TABLE["resnet50_v2"]._replace(sha1=digest))
    cached = tmp_path / "mxnet-home" / "models" / ("resnet50_v2-%s.params" % digest[:8])

    def backbone_check(value="zoo:resnet50_v2"):
        (bb,) = by_name(doctor.run_checks(TINY, ["model.backbone_params=" + value],
                                          probes=FakeProbes()), "model.backbone_params")
        return bb

    bb = backbone_check()
    assert bb.status == "warn" and "not in MXNet's cache (%s)" % cached in bb.message
    assert "deeplab fetch backbone resnet50_v2" in bb.message
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the weights")
    bb = backbone_check()
    assert bb.status == "warn" and "does not have the zoo's sha1" in bb.message
    cached.write_bytes(weights)
    bb = backbone_check()
    assert bb.status == "ok" and bb.message == "zoo:resnet50_v2: %s (sha1 checked)" % cached
    bb = backbone_check("zoo:resnet9000")
    assert bb.status == "FAIL" and "no model-zoo weights for backbone 'resnet9000'" in bb.message


def test_batch_against_workers_and_gpus(fake):
    (b,) = by_name(doctor.run_checks(TINY, workers=3, probes=FakeProbes()), "batch")
    assert b.status == "FAIL" and b.message.startswith(
        "train.batch_size 8 is not divisible by 3 workers (--workers)")
    assert "use 1, 2, 4, 8 workers" in b.message
    (b,) = by_name(doctor.run_checks(TINY, probes=FakeProbes("A:8.0:80,A:8.0:80")), "batch")
    assert b.status == "ok" and b.message == ("global batch 8 on 2 workers (one per visible GPU): "
                                              "4 images each")
    (b,) = by_name(doctor.run_checks(TINY, ["train.batch_size=2", "dist.sync_bn=false"],
                                     probes=FakeProbes("A:8.0:80,A:8.0:80")), "batch")
    assert b.status == "warn" and "1 image per worker" in b.notes[0]
    # dist.sync_bn asks for synchronized BN; the parameter server keeps per-worker BN anyway.
    for backend, status in (("auto", "ok"), ("ps", "warn")):
        (b,) = by_name(doctor.run_checks(TINY, ["train.batch_size=2", "dist.backend=" + backend],
                                         probes=FakeProbes("A:8.0:80,A:8.0:80")), "batch")
        assert b.status == status, backend


def test_flags():
    assert doctor.parse_args([TINY, "--workers", "4", "--set", "train.lr=0.1", "--json"]).workers \
        == 4
    for bad in (["--workers", "0"], ["--set", "train.lr=0.1"]):
        with pytest.raises(SystemExit) as exc:
            doctor.parse_args(bad)
        assert exc.value.code == 2


def test_horovod_cycle_the_workers_will_start_with(fake):
    (c,) = by_name(doctor.run_checks(TINY, probes=FakeProbes()), "cycle")
    assert c.message == ("under Horovod, workers negotiate every 1 ms (the default for "
                         "synchronized BN on CPUs)")
    (c,) = by_name(doctor.run_checks(TINY, ["train.freeze_bn=true"],
                                     probes=FakeProbes("A:8.0:80,A:8.0:80")), "cycle")
    assert c.data["cycle_ms"] == 1.0 and "unsynchronized BN on GPUs" in c.message
    (c,) = by_name(doctor.run_checks(TINY, ["dist.sync_bn=false"], probes=FakeProbes()), "cycle")
    assert c.data["cycle_ms"] == 25.0
    fake.setenv("HOROVOD_CYCLE_TIME", "3")
    (c,) = by_name(doctor.run_checks(TINY, probes=FakeProbes()), "cycle")
    assert c.data["cycle_ms"] == 3.0 and "HOROVOD_CYCLE_TIME in this environment" in c.message
