#!/usr/bin/env bash
# The GPU checks CI cannot run (it has no GPU), for whoever has a machine with 2 or more NVIDIA
# GPUs: `deeplab doctor`, 2-GPU Horovod training with synchronized BN, float16 gradient
# compression at crop 321, a run stopped by SIGTERM and resumed (each rank on its own GPU),
# evaluation on 1 and 2 GPUs, `deeplab bench`, and synchronized BN's statistics over MPI. Each
# step prints what to look for; the script stops at the first failure. Not run in CI.
#
# Needs the GPU environment, activated: `DEEPLAB_VARIANT=gpu HOROVOD_GPU_OPERATIONS=NCCL bash
# scripts/setup_env.sh && source .venv/bin/activate` (or the image of k8s/Dockerfile). About 10
# minutes on two recent GPUs.
#
#   bash scripts/gpu_smoke.sh [OUT]      # OUT: default runs/gpu-smoke, emptied first
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${1:-runs/gpu-smoke}
tiny=configs/tiny_synthetic.yaml
r50=configs/deeplabv3_r50v2-os16_bs16_30k_trainaug_513.yaml

fail() { echo "gpu_smoke: FAILED: $*" >&2; exit 1; }
step() {
  printf '\n=== %s\n' "$1"
  shift
  for line in "$@"; do printf '    look for: %s\n' "$line"; done
}

command -v deeplab >/dev/null || fail "no deeplab command: activate the GPU environment first"
py=$(dirname "$(command -v deeplab)")/python  # the Python of that environment
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: no NVIDIA driver here"
gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
[ "$gpus" -ge 2 ] || fail "found $gpus GPU(s) (nvidia-smi -L); this script needs 2"
rm -rf "$out"
mkdir -p "$out"

# gpu_watch JOB_PID WORKDIR: samples nvidia-smi every 2 s while the job runs; lists which GPUs
# the processes training into WORKDIR used; exits 1 if one process used several GPUs or two
# processes shared one (every rank must keep to GPU local_rank), 2 if it saw fewer than 2.
gpu_watch() {
  "$py" - "$1" "$2" <<'EOF'
import collections, os, subprocess, sys, time
job, workdir = int(sys.argv[1]), sys.argv[2].rstrip("/")
used, peak = collections.defaultdict(set), collections.Counter()
while os.path.exists("/proc/%d" % job):
    rows = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory",
                           "--format=csv,noheader,nounits"], stdout=subprocess.PIPE,
                          text=True).stdout.splitlines()
    for row in rows:
        fields = [x.strip() for x in row.split(",")]
        if len(fields) != 3:
            continue
        pid, uuid, mem = fields
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # not this job's (or not visible from this PID namespace)
        if " train " in cmd and (workdir in cmd or os.path.abspath(workdir) in cmd):
            used[pid].add(uuid)
            peak[pid] = max(peak[pid], int(mem) if mem.isdigit() else 0)
    time.sleep(2)
for pid, uuids in sorted(used.items()):
    print("  worker pid %s: GPU %s, peak %d MiB" % (pid, ", ".join(sorted(uuids)), peak[pid]))
owners = collections.Counter(u for uuids in used.values() for u in uuids)
if any(len(u) > 1 for u in used.values()) or any(n > 1 for n in owners.values()):
    print("  a worker used several GPUs, or two workers shared one")
    sys.exit(1)
if len(used) < 2:
    print("  saw %d training process(es) on the GPUs (in a container, nvidia-smi may list no "
          "processes: then watch nvidia-smi on the host)" % len(used))
    sys.exit(2)
EOF
}

# train_2gpu WORKDIR ARGS...: 2-GPU training into WORKDIR, its GPU use checked by gpu_watch;
# $launcher (default: horovod -np 2) picks deeplab launch's backend.
train_2gpu() {
  local dir=$1 job watcher rc=0
  shift
  # shellcheck disable=SC2086  # the launcher's words
  deeplab launch ${launcher:-horovod -np 2} -- train "$tiny" --workdir "$dir" "$@" &
  job=$!
  gpu_watch "$job" "$dir" > "$dir.gpus.txt" &
  watcher=$!
  wait "$job" || fail "training into $dir exited with $?"
  wait "$watcher" || rc=$?
  cat "$dir.gpus.txt"
  [ "$rc" -ne 1 ] || fail "ranks did not keep to their own GPU (see $dir.gpus.txt)"
}

# miou RESULTS.json: its mIoU.
miou() { "$py" -c 'import json, sys; print("%.4f" % json.load(open(sys.argv[1]))["mIoU"])' "$1"; }

step "1/9 deeplab doctor" \
  "no FAIL line, exit code 0" \
  "'gpu: GPUs 0-N (NAME, compute capability X.Y) runs the sm_XY kernels' (or through PTX)" \
  "'horovod: Horovod 0.28.1: MXNet yes, Gloo yes, ..., NCCL 2.x.y' (NCCL not 'no')" \
  "'mxnet: ... CUDA build', features CUDA yes, CUDNN yes"
deeplab doctor "$tiny" --workers 2 | tee "$out/doctor.txt"

step "2/9 train on 2 GPUs, synchronized BN (tiny model, 300 iterations)" \
  "'training on 2 worker(s) (dist.backend horovod), global batch 8, synchronized BN'" \
  "loss falling, 'mem' a few hundred MB (device memory), then 'pixAcc ... mIoU ...' near the" \
  "README's CPU run (mIoU about 0.6; background everywhere would score 0.17)" \
  "below: two worker pids, each on its own GPU"
train_2gpu "$out/syncbn" --set dist.sync_bn=true train.checkpoint_every=50
grep -q "training on 2 worker(s) (dist.backend horovod), global batch 8, synchronized BN" \
  "$out/syncbn/train.log" || fail "$out/syncbn/train.log shows no 2 workers with synchronized BN"
m=$(miou "$out/syncbn/results.json")
echo "mIoU $m"
"$py" -c 'import sys; sys.exit(float(sys.argv[1]) < 0.3)' "$m" ||
  fail "mIoU $m: the tiny model did not learn (synchronized BN or the allreduce is wrong on GPU)"

step "3/9 float16 gradient compression at crop 321" \
  "exit code 0 (3 would mean a non-finite loss or parameters), loss falling as in step 2" \
  "'all N parameter arrays finite' below"
train_2gpu "$out/fp16" --no-eval --set dist.fp16_compression=true data.crop_size=321 \
  "data.synthetic.image_size=[321,321]" train.iterations=200
"$py" - "$out/fp16/final.params" <<'EOF'
import sys
import mxnet as mx
import numpy as np
params = mx.nd.load(sys.argv[1])
bad = [k for k, v in params.items() if not np.isfinite(v.asnumpy()).all()]
if bad:
    sys.exit("non-finite parameters: %s" % ", ".join(bad))
print("all %d parameter arrays finite, largest |value| %.3g"
      % (len(params), max(np.abs(v.asnumpy()).max() for v in params.values())))
EOF

step "4/9 stop with SIGTERM after the first checkpoint, then --resume" \
  "the launcher's 'stopped by SIGTERM' and exit code 143; then 'resuming from ...iter_N.params'" \
  "below: two worker pids, each on its own GPU; then the difference to step 2's parameters" \
  "(small: GPU kernels are not bitwise deterministic; large means the resume lost state)"
dir=$out/resume
deeplab launch horovod -np 2 -- train "$tiny" --workdir "$dir" \
  --set dist.sync_bn=true train.checkpoint_every=50 &
job=$!
for _ in $(seq 600); do
  compgen -G "$dir/checkpoints/iter_*.json" >/dev/null && break
  kill -0 "$job" 2>/dev/null || fail "training into $dir ended before its first checkpoint"
  sleep 1
done
compgen -G "$dir/checkpoints/iter_*.json" >/dev/null || fail "no checkpoint in $dir after 600 s"
kill -TERM "$job"
rc=0
wait "$job" || rc=$?
[ "$rc" -eq 143 ] || fail "the launcher exited with $rc after SIGTERM, expected 143"
train_2gpu "$dir" --resume --set dist.sync_bn=true train.checkpoint_every=50
grep -q "resuming from .* at iteration" "$dir/train.log" || fail "$dir/train.log shows no resume"
"$py" - "$out/syncbn/final.params" "$dir/final.params" <<'EOF'
import sys
import mxnet as mx
import numpy as np
a, b = (mx.nd.load(p) for p in sys.argv[1:])
diff = max(float(np.abs(a[k].asnumpy() - b[k].asnumpy()).max() / (np.abs(a[k].asnumpy()).max()
                                                                   + 1e-12)) for k in a)
print("largest difference to the uninterrupted run: %.2g of an array's scale" % diff)
EOF

step "5/9 evaluation on 1 GPU and on 2" \
  "'pixAcc ... mIoU ... (48 images, ...)' both times: the 2-GPU split neither pads nor" \
  "duplicates images; both mIoU equal to step 2's (or within a few pixels' worth)"
deeplab eval "$tiny" --checkpoint "$out/syncbn/final.params" --out "$out/eval_1gpu.json" --quiet
deeplab launch horovod -np 2 -- eval "$tiny" --checkpoint "$out/syncbn/final.params" \
  --out "$out/eval_2gpu.json" --quiet
"$py" - "$out/syncbn/results.json" "$out/eval_1gpu.json" "$out/eval_2gpu.json" <<'EOF'
import json, sys
runs = [json.load(open(p)) for p in sys.argv[1:]]
for path, r in zip(sys.argv[1:], runs):
    print("%-40s mIoU %.4f  pixAcc %.4f  %d images" % (path, r["mIoU"], r["pixAcc"],
                                                      r["num_images"]))
if {r["num_images"] for r in runs} != {48}:
    sys.exit("evaluations did not see the 48 validation images exactly once")
EOF

step "6/9 deeplab bench, ResNet-50 recipe at crop 321, 4 images per GPU, 20 steps" \
  "img/s per worker and in total, the step breakdown, 'GPU memory of this process'" \
  "2 GPUs: scaling efficiency against 1 GPU (on one node, well above 0.8; far lower: the" \
  "allreduce or synchronized BN's collectives are slow)"
# The baseline runs under Horovod too, so that both measure synchronized BN.
deeplab launch horovod -np 1 -- bench "$r50" --batch-per-worker 4 --crop 321 --steps 20 \
  --out "$out/bench_1gpu.json"
deeplab launch horovod -np 2 -- bench "$r50" --batch-per-worker 4 --crop 321 --steps 20 \
  --baseline "$out/bench_1gpu.json" --out "$out/bench_2gpu.json"

step "7/9 parameter server: 2 workers + 1 server, BN frozen (tiny model, 300 iterations)" \
  "'training on 2 worker(s) (dist.backend ps)', then 'pixAcc ... mIoU ...'" \
  "below: two worker pids, each on its own GPU (each worker sees only its GPU: MXNet's" \
  "kvstore would otherwise stage every worker's transfers in pinned memory of GPU 0)"
launcher="ps --workers 2 --servers 1" train_2gpu "$out/ps" --set train.freeze_bn=true

step "8/9 one process driving 2 GPUs, BN trained (MXNet's SyncBatchNorm across them)" \
  "the parameters after 4 iterations equal one GPU's on the same global batch (tests on CPU" \
  "prove this for frozen BN only: MXNet's SyncBatchNorm deadlocks on CPU device ids)"
few="train.iterations=4 data.synthetic.train_size=24 train.batch_size=6 train.checkpoint_every=1000"
# shellcheck disable=SC2086  # the settings' words
deeplab train "$tiny" --workdir "$out/devices1" --no-eval --set $few dist.devices_per_worker=1
# shellcheck disable=SC2086
deeplab train "$tiny" --workdir "$out/devices2" --no-eval --set $few dist.devices_per_worker=2
"$py" - "$out/devices1/final.params" "$out/devices2/final.params" <<'EOF' ||
import sys
import mxnet as mx
import numpy as np
a, b = (mx.nd.load(p) for p in sys.argv[1:])
worst = max(np.abs(a[k].asnumpy() - b[k].asnumpy()).max() / (np.abs(a[k].asnumpy()).max() + 1e-7)
            for k in a)
print("  largest difference, relative to each array's scale: %.2g (bound 1e-3)" % worst)
sys.exit(int(worst > 1e-3))  # numpy bools are not exit codes
EOF
  fail "2 GPUs in one process with BN trained differ from 1 GPU (see above)"

step "9/9 synchronized BN's statistics over MPI (deeplab launch horovod --mpi)" \
  "'training on 2 worker(s) ..., synchronized BN; BN statistics over mpi' (copied to the host" \
  "and back each layer: no CUDA-aware MPI is used), mIoU near step 2's, each rank on its GPU;" \
  "in the BASE=ngc image this is its Open MPI 4.1 (the launcher's first line: mpirun -np 2" \
  "--host localhost:2 ... --mca orte_abort_on_non_zero_status 0), never run on this project's" \
  "machines"
launcher="horovod --mpi -np 2" train_2gpu "$out/mpi" --set dist.sync_bn=true \
  dist.sync_bn_transport=mpi train.checkpoint_every=50
grep -q "BN statistics over mpi" "$out/mpi/train.log" ||
  fail "$out/mpi/train.log does not say the statistics went over MPI"
m=$(miou "$out/mpi/results.json")
echo "mIoU $m"
"$py" -c 'import sys; sys.exit(float(sys.argv[1]) < 0.3)' "$m" ||
  fail "mIoU $m: the tiny model did not learn with the MPI transport on GPU"

printf '\ngpu_smoke: all steps passed; outputs in %s\n' "$out"
