"""A model of data-parallel scaling efficiency for the DeepLabV3 recipe on GPU clusters: from
measured terms (model FLOPs, gradient bytes, BN layers: counted on the networks by
`model_costs`; Horovod's software cost per allreduce: `benchmarks/allreduce.py`; per call of a
synchronized-BN-sized collective as a function of HOROVOD_CYCLE_TIME, and over the MPI
transport: `benchmarks/collective_latency.py`) and published figures (GPU throughput, link
bandwidths and latencies), the predicted time of each part of a step and the efficiency.

Every published constant is in CONSTANTS below with its source; the formulas are the functions
`ring_allreduce_s`, `hierarchical_allreduce_s`, `ring_allgather_s`, `mpi_exchange_s`,
`ps_pushpull_s`, `inprocess_reduce_s`, `step_terms`, `mpi_syncbn_s`, `inprocess_terms`,
`design_terms` and `efficiency`, each stating its model. The designs compared for synchronized
BN (all workers, Horovod process sets of one node, a tuned Horovod cycle, the statistics straight
over MPI instead of through Horovod, one process per node synchronizing its devices in-process)
are DESIGNS. `benchmarks/scaling_report.py` writes benchmarks/SCALING.md from these numbers.
"""
import math

MiB = 1 << 20

# Published constants. `value` in SI units (bytes, seconds, FLOP/s); `source` says where it is from.
CONSTANTS = {
    "peak_tf32_flops": {
        "value": 156e12, "text": "156 TFLOP/s",
        "what": "A100 SXM peak, TF32 tensor cores (dense): what MXNet's float32 convolutions use "
                "on Ampere",
        "source": "NVIDIA A100 Tensor Core GPU datasheet (TF32 Tensor Core: 156 TFLOPS, 312 with "
                  "sparsity)"},
    "rn50_images_per_s": {
        "value": 1022.0, "text": "1022 images/s",
        "what": "ResNet-50 v1.5 training throughput of one A100 80GB, MXNet, TF32, batch 256",
        "source": "NVIDIA DeepLearningExamples, MxNet/Classification/RN50v1.5/README.md, "
                  "'Training performance: NVIDIA DGX A100 (8x A100 80GB)', 1 GPU, TF32 "
                  "(mxnet-20.12-py3 container)"},
    "gpus_per_node": {
        "value": 8, "text": "8",
        "what": "GPUs per node, all-to-all NVLink through NVSwitch",
        "source": "NVIDIA DGX A100 / AWS p4d.24xlarge (8x A100 with NVSwitch)"},
    "nvlink_busbw": {
        "value": 235e9, "text": "235 GB/s",
        "what": "achievable NCCL bus bandwidth inside an A100 node (link: 600 GB/s total, "
                "both directions)",
        "source": "NVIDIA/nccl src/graph/tuning.cc (`if (compCap80) busBw = std::min(busBw, "
                  "235.0f)`); NVIDIA A100 datasheet (NVLink 600 GB/s)"},
    "pcie_bw": {
        "value": 32e9, "text": "32 GB/s",
        "what": "GPU <-> host copy bandwidth, one direction (PCIe Gen4 x16)",
        "source": "NVIDIA A100 datasheet (PCIe Gen4: 64 GB/s, both directions)"},
    "network_gbps": {
        "value": [25, 100, 400], "text": "25, 100, 400 Gb/s",
        "what": "network bandwidth per node (all its NICs together), full duplex",
        "source": "AWS p3.16xlarge (25 Gb/s), p3dn.24xlarge (100 Gb/s): AWS Compute Blog "
                  "'Optimizing deep learning on P3 and P3dn with EFA'; p4d.24xlarge (400 Gb/s "
                  "EFA): AWS Compute Blog 'Amazon EC2 P4d instances deep dive'"},
    "lat_large": {
        "value": {"base": 8.4e-6, "nvlink": 3.4e-6, "net": 9.6e-6},
        "text": "8.4 us per call + 3.4 us per NVLink hop + 9.6 us per network hop",
        "what": "collective latency for large messages (NCCL ring, Simple protocol)",
        "source": "NVIDIA/nccl src/graph/tuning.cc, baseLat and hwLat tables (Ring/Simple), "
                  "commit 01afd20a"},
    "lat_small": {
        "value": {"base": 3.6e-6, "nvlink": 0.47e-6, "net": 2.7e-6},
        "text": "3.6 us per call + 0.47 us per NVLink hop + 2.7 us per network hop",
        "what": "collective latency for small messages (NCCL ring, LL protocol): SyncBN's",
        "source": "NVIDIA/nccl src/graph/tuning.cc, baseLat and hwLat tables (Ring/LL), "
                  "commit 01afd20a"},
    "fusion_threshold": {
        "value": 128 * MiB, "text": "128 MiB",
        "what": "Horovod tensor-fusion buffer: gradients ready together go in one allreduce of "
                "at most this size",
        "source": "horovod/common/operations.cc (`SetTensorFusionThresholdBytes(128 * 1024 * "
                  "1024)`); Horovod CHANGELOG v0.21.0 (#2468: 64 MB -> 128 MB); "
                  "docs/tensor-fusion.rst still says 64 MB"},
    "horovod_cycle_time": {
        "value": 1e-3, "text": "1 ms",
        "what": "Horovod's background loop period (HOROVOD_CYCLE_TIME default): a call waits "
                "for the next cycle to be negotiated; the designs at this cycle use the per-call "
                "cost measured at it",
        "source": "horovod/common/operations.cc (`SetCycleTimeMs(1)`); Horovod CHANGELOG "
                  "v0.21.0 (#2468: 5 ms -> 1 ms)"},
    "tuned_cycle_time": {
        "value": 1e-4, "text": "0.1 ms",
        "what": "HOROVOD_CYCLE_TIME of the tuned-cycle designs: the shortest cycle "
                "benchmarks/collective_latency.py measured",
        "source": "choice; per-call costs at it measured in "
                  "benchmarks/results/collective_latency.json"},
    "inprocess_sync_s": {
        "value": 50e-6, "text": "50 us per BN layer and pass",
        "what": "MXNet's SyncBatchNorm across the devices of one process, forward and backward "
                "each: the C-sized statistics copied GPU -> host (a copy that waits for the "
                "device's stream), a barrier of the device threads, their mean on the host, the "
                "copy back",
        "source": "assumption, not measured (MXNet 1.9's SyncBatchNorm deadlocks across CPU "
                  "device ids, so it has not run in this repository, which has no GPU): a few "
                  "small synchronous "
                  "copies and one condition-variable barrier, tens of microseconds; mechanism: "
                  "apache/mxnet src/operator/contrib/sync_batch_norm-inl.h (Forward, Backward: "
                  "mshadow::Copy to a host SharedND, Barrier::Wait, Pop)"},
    "gpu_host_copy_s": {
        "value": 10e-6, "text": "10 us per copy",
        "what": "one small synchronous copy between GPU and host memory (a few kB over PCIe: "
                "launch, transfer, wait): synchronized BN's MPI transport makes two per call, "
                "the statistics to the host and the result back",
        "source": "assumption, not measured (this repository has no GPU): a small cudaMemcpy "
                  "costs microseconds to ten, more through MXNet's asnumpy, which waits for the "
                  "array's stream; the same kind of copies `inprocess_sync_s` includes; "
                  "mechanism: deeplab/dist/mpi.py (asnumpy, _sync_copyfrom)"},
    "reference_gpus": {
        "value": 8, "text": "8",
        "what": "GPUs the recipe's global batch is spread over; the per-GPU batch is then kept "
                "as GPUs are added (weak scaling)",
        "source": "assumption (one 8-GPU node runs the recipe as written)"},
}
CONFIGS = {1: "configs/deeplabv3_r50v2-os16_bs16_30k_trainaug_513.yaml",
           2: "configs/deeplabv3_r50v2-os8_bs8_30k_trainaug_513_frozenbn.yaml"}
MODELS = ("deeplabv3_resnet50_v2", "deeplabv3_resnet101_v2")
GPUS = (8, 64, 512)
VARIANTS = (("ring", 4), ("ring", 2), ("hierarchical", 4), ("hierarchical", 2))  # bytes per value
SHORT = {"deeplabv3_resnet50_v2": "R50", "deeplabv3_resnet101_v2": "R101"}

# The ways to train phase 1 compared in the design tables. backend: horovod (one worker per GPU,
# ring allreduce, fp32 gradients: the defaults), ps (MXNet dist_sync, one server per node) or
# node (one process per node driving its GPUs: `local` on one node, `ps` beyond); bn: whose
# statistics a BN layer normalises with (all workers, the GPUs of one node through a Horovod
# process set, each GPU alone, or the node's GPUs synchronized in-process by MXNet's
# SyncBatchNorm); cycle: HOROVOD_CYCLE_TIME, the default or the tuned one; transport (Horovod
# designs): how BN's statistics travel, through Horovod's collectives (absent: the default) or
# "mpi", straight over MPI (`dist.sync_bn_transport: mpi` under `deeplab launch horovod --mpi`:
# point-to-point messages, no Horovod negotiation); the gradients stay with Horovod at its
# default cycle, the worker's default on GPUs when the statistics go over MPI
# (deeplab/dist/runtime.py, horovod_cycle_time).
DESIGNS = (
    {"key": "all", "backend": "horovod", "bn": "all", "cycle": "horovod_cycle_time",
     "column": "Horovod, SyncBN all, 1 ms",
     "label": "Horovod, SyncBN over all workers, Horovod's default cycle"},
    {"key": "all-tuned", "backend": "horovod", "bn": "all", "cycle": "tuned_cycle_time",
     "column": "Horovod, SyncBN all, 0.1 ms",
     "label": "Horovod, SyncBN over all workers, tuned cycle (the worker's default on GPUs)"},
    {"key": "all-mpi", "backend": "horovod", "bn": "all", "cycle": "horovod_cycle_time",
     "transport": "mpi", "column": "Horovod, SyncBN all over MPI",
     "label": "Horovod for the gradients (default cycle), SyncBN over all workers, statistics "
              "straight over MPI"},
    {"key": "node", "backend": "horovod", "bn": "node", "cycle": "horovod_cycle_time",
     "column": "Horovod, SyncBN node, 1 ms",
     "label": "Horovod, SyncBN in process sets of one node, default cycle"},
    {"key": "node-tuned", "backend": "horovod", "bn": "node", "cycle": "tuned_cycle_time",
     "column": "Horovod, SyncBN node, 0.1 ms",
     "label": "Horovod, SyncBN in process sets of one node, tuned cycle"},
    {"key": "node-mpi", "backend": "horovod", "bn": "node", "cycle": "horovod_cycle_time",
     "transport": "mpi", "column": "Horovod, SyncBN node over MPI",
     "label": "Horovod for the gradients (default cycle), SyncBN over the workers of one node, "
              "statistics straight over MPI"},
    {"key": "gpu", "backend": "horovod", "bn": "gpu", "cycle": "horovod_cycle_time",
     "column": "Horovod, per-GPU BN, 1 ms",
     "label": "Horovod, per-GPU BN (no SyncBN), default cycle: reference"},
    {"key": "ps", "backend": "ps", "bn": "gpu", "cycle": None,
     "column": "PS, 1 worker per GPU",
     "label": "parameter server, one worker per GPU, one server per node, per-GPU BN"},
    {"key": "inprocess", "backend": "node", "bn": "inprocess", "cycle": None,
     "column": "1 process per node, D = 8",
     "label": "one process per node driving its 8 GPUs: in-process SyncBN across the node, "
              "gradients summed in-process, one push/pull per node"},
)


def c(name):
    return CONSTANTS[name]["value"]


# ---------------------------------------------------------------------------------------------
# Inputs counted on the networks

def model_costs():
    """FLOPs, gradient bytes and BN layers of both models in both phases, and ResNet-50's forward
    multiply-adds (the utilization reference), counted with deeplab.bench.costs on networks built as
    training builds them (phase 1: synchronized BN; phase 2: frozen BN, gamma/beta not trained).
    """
    import mxnet as mx
    from gluoncv.model_zoo import resnet50_v1b

    from deeplab import dist
    from deeplab.build import training_network
    from deeplab.config import load_config
    from deeplab.bench.costs import TRAIN_FLOPS_PER_FORWARD, count_costs
    from deeplab.dist.syncbn import SyncBatchNorm

    dist.init("local")
    rn50 = resnet50_v1b(pretrained=False)  # ResNet-50 v1.5: stride 2 in the 3x3 convolutions
    rn50.initialize()
    ref = count_costs(rn50, (1, 3, 224, 224))
    out = {"reference": {"name": "ResNet-50 v1.5 (gluoncv resnet50_v1b), 224x224",
                         "forward_macs_per_image": ref["forward_macs_per_image"],
                         "train_flops_per_forward": TRAIN_FLOPS_PER_FORWARD},
           "phases": []}
    for phase, path in sorted(CONFIGS.items()):
        for name in MODELS:
            cfg = load_config(path, ["model.name=" + name])
            crop = cfg["data"]["crop_size"]
            net = training_network(cfg, mx.cpu(), sync_bn=True)
            costs = count_costs(net, (1, 3, crop, crop))
            sync = []
            net.apply(lambda b: sync.append(b.gamma.shape[0])
                      if isinstance(b, SyncBatchNorm) else None)
            out["phases"].append({
                "phase": phase, "config": path, "model": name,
                "output_stride": cfg["model"]["output_stride"], "crop": crop,
                "global_batch": cfg["train"]["batch_size"], "freeze_bn": cfg["train"]["freeze_bn"],
                "forward_gflops_per_image": costs["forward_gflops_per_image"],
                "train_gflops_per_image": costs["train_gflops_per_image"],
                "grad_bytes": costs["grad_bytes"], "syncbn_channels": sync})
    return out


# ---------------------------------------------------------------------------------------------
# The model

def nodes_and_local(n, gpus_per_node):
    """(nodes, GPUs per node used) for n GPUs filling nodes of gpus_per_node."""
    local = min(n, gpus_per_node)
    if n % local:
        raise ValueError("%d GPUs do not fill nodes of %d" % (n, gpus_per_node))
    return n // local, local


def ring_allreduce_s(nbytes, n, net_bw, gpus_per_node, nvlink_bw, lat):
    """One ring allreduce of nbytes over n GPUs (NCCL's flat ring, Horovod's default).

    2(n-1) steps each pass nbytes/n to the next GPU: bytes term 2(n-1)/n * nbytes / bw, with bw
    the slowest link on the ring -- NVLink inside one node, else the node's network (a ring enters
    and leaves each node once per step; NCCL's parallel rings share the node's NICs). Latency as
    NCCL's tuning model: a base per call plus one hop latency per step, NVLink steps inside a
    node and 2(nodes-1) network steps.
    """
    if n == 1:
        return 0.0
    nodes, _ = nodes_and_local(n, gpus_per_node)
    bw = nvlink_bw if nodes == 1 else min(nvlink_bw, net_bw)
    latency = lat["base"] + 2 * (n - nodes) * lat["nvlink"] + 2 * (nodes - 1) * lat["net"]
    return latency + 2 * (n - 1) / n * nbytes / bw


def hierarchical_allreduce_s(nbytes, n, net_bw, gpus_per_node, nvlink_bw, pcie_bw, lat):
    """Horovod's HOROVOD_HIERARCHICAL_ALLREDUCE (horovod/common/ops/nccl_operations.cc,
    NCCLHierarchicalAllreduce): NCCL reduce-scatter inside the node, a copy of each GPU's 1/local
    share to host memory, MPI allreduce of that share across nodes (the `local` GPUs of a node in
    parallel, sharing its network: 2(nodes-1)/nodes * nbytes / net_bw in all), the copy back, NCCL
    allgather inside the node. MPI's per-hop latency is taken as NCCL's network hop.
    """
    if n == 1:
        return 0.0
    nodes, local = nodes_and_local(n, gpus_per_node)
    intra = lat["base"] + (local - 1) * lat["nvlink"] + (local - 1) / local * nbytes / nvlink_bw
    copies = 2 * nbytes / local / pcie_bw
    cross = 2 * (nodes - 1) * lat["net"] + 2 * (nodes - 1) / nodes * nbytes / net_bw
    return 2 * intra + copies + cross


def ring_allgather_s(nbytes_per_gpu, n, net_bw, gpus_per_node, nvlink_bw, lat):
    """Ring allgather of nbytes_per_gpu from each of n GPUs (output n * nbytes_per_gpu): n-1 steps
    of nbytes_per_gpu each, the same links and hop latencies as the ring allreduce."""
    if n == 1:
        return 0.0
    nodes, _ = nodes_and_local(n, gpus_per_node)
    bw = nvlink_bw if nodes == 1 else min(nvlink_bw, net_bw)
    latency = lat["base"] + (n - nodes) * lat["nvlink"] + (nodes - 1) * lat["net"]
    return latency + (n - 1) * nbytes_per_gpu / bw


def mpi_exchange_s(piece_bytes, g, summed, net_bw, gpus_per_node, pcie_bw, lat, copy_s=0.0):
    """One call of synchronized BN's MPI transport (deeplab/dist/mpi.py, `_exchange`) over a
    group of g GPUs: every member sends its piece of piece_bytes to each of the g-1 others with
    point-to-point messages (Isend/Irecv, all posted at once) and receives theirs; an allreduce
    is the same exchange followed by a sum on the host (summed=True), so it moves g/2 times the
    bytes of a ring allreduce. Modelled as per-peer messages, because that is what crosses the
    links: no ring, no hierarchy, no NVLink.

    - bytes over the network: each node's NIC carries each of its `local` members' piece to each
      of the g - local members on other nodes, local x (g - local) x piece_bytes each way (full
      duplex): L (g - L) / (g - 1) times a ring allgather's, where each piece enters a node
      once (about L times with many nodes);
    - bytes inside a node: the (local - 1) pieces of the node's other members, through host
      shared memory, charged at the PCIe rate (CONSTANTS has no host-memory figure; on one
      node these are a few tens of kilobytes per call);
    - copies between GPU and host (the transport copies the statistics to the host and back,
      no CUDA-aware MPI): the piece down, then the g gathered pieces (allgather) or their sum
      (allreduce) up, at the PCIe bandwidth, each also paying copy_s (CONSTANTS
      gpu_host_copy_s, assumed);
    - latency: one small-message hop per peer, in sequence, as the ring's: a_base + (g - N)
      a_nv + (N - 1) a_net. The messages' flight times overlap, but each call posts and matches
      2 (g - 1) messages one by one, and the per-message software cost beyond the one peer
      measured (2 workers) is not measured; NCCL's hop latencies stand for it (of the order of
      MPI's per-message overhead, a few microseconds; not a measurement).
    """
    if g == 1:
        return 0.0
    nodes, local = nodes_and_local(g, gpus_per_node)
    latency = lat["base"] + (g - nodes) * lat["nvlink"] + (nodes - 1) * lat["net"]
    network = local * (g - local) * piece_bytes / net_bw
    shared = (local - 1) * piece_bytes / pcie_bw
    copies = 2 * copy_s + (piece_bytes + (1 if summed else g) * piece_bytes) / pcie_bw
    return latency + network + shared + copies


def ps_pushpull_s(nbytes, n, servers, net_bw, gpus_per_node, lat):
    """MXNet dist_sync: every worker pushes its whole gradient and pulls the whole sum; the keys
    are spread evenly over `servers` server machines with net_bw each. One worker process per GPU
    (as `deeplab launch ps` runs it), so a node's workers share its network: worker side 2 nbytes
    / (net_bw / local), server side 2 n nbytes / (servers net_bw). Push, then pull (the server
    sums all n pushes of a key before any pull of it): the two add. Latency: one network hop
    each way (ps-lite's own software cost is not measured, which favours the PS).
    """
    _, local = nodes_and_local(n, gpus_per_node)
    worker = 2 * nbytes / (net_bw / local)
    server = 2 * n * nbytes / (servers * net_bw)
    return max(worker, server) + 2 * lat["net"]


def compute_s(train_gflops_per_image, batch, reference):
    """Seconds of one training step on one GPU: the step's FLOPs at the FLOP rate the published
    ResNet-50 throughput implies (utilization = that rate / peak)."""
    return train_gflops_per_image * 1e9 * batch / (c("peak_tf32_flops") * utilization(reference))


def utilization(reference):
    """Fraction of TF32 peak that MXNet's ResNet-50 training reaches on an A100: images/s x
    training FLOPs per image / peak, with the FLOPs counted by the same rule as ours."""
    flops = reference["train_flops_per_forward"] * 2 * reference["forward_macs_per_image"]
    return c("rn50_images_per_s") * flops / c("peak_tf32_flops")


def inprocess_reduce_s(nbytes, devices, nvlink_bw):
    """Sum of nbytes of gradients over the `devices` GPUs of one process, the result on every
    device: MXNet's 'device' kvstore (also inside dist_device_sync), whose CommDevice gives each
    key a merge buffer on one of the devices (spread by size), copies the other devices' gradients
    there over NVLink (peer to peer), sums, and copies the sum back. Each device sends and receives
    (D-1)/D of the bytes in each half: 2 (D-1)/D x nbytes / B_nv, at the NCCL bus bandwidth;
    copies of different keys overlap, so no per-copy latency is counted."""
    if devices == 1:
        return 0.0
    return 2 * (devices - 1) / devices * nbytes / nvlink_bw


def step_terms(costs, n, gbps, algorithm, value_bytes, software_s, sync_bn, reference,
               sync_call_s=None, sync_group=None, coordination_s=0.0):
    """Seconds per step on n GPUs under Horovod: compute, gradient communication, SyncBN's
    collectives.

    Gradients (value_bytes per value: 4, or 2 with fp16 compression) go in ceil(bytes / fusion
    threshold) allreduces, each paying the software cost software_s. SyncBN (if on): per BN layer
    of C channels one allgather of 3C float32 (forward) and one allreduce of 2C (backward) over
    the sync_group GPUs of the layer's process set (default: all n), each a separate Horovod call
    with the software costs sync_call_s = (allgather, allreduce) (default: software_s each); they
    sit between layers, so they are never hidden behind computation. coordination_s is added to
    every call when the job spans nodes: each Horovod cycle coordinates every process set, the
    global one included, across the network (horovod/common/operations.cc, RunLoopOnce;
    controller.cc, CoordinateCacheAndState).
    """
    batch = costs["global_batch"] // c("reference_gpus")
    net_bw = gbps * 1e9 / 8
    hw = dict(net_bw=net_bw, gpus_per_node=c("gpus_per_node"), nvlink_bw=c("nvlink_busbw"))
    extra = coordination_s if n > c("gpus_per_node") else 0.0

    def allreduce(nbytes, lat, m):
        if algorithm == "ring":
            return ring_allreduce_s(nbytes, m, lat=lat, **hw)
        return hierarchical_allreduce_s(nbytes, m, pcie_bw=c("pcie_bw"), lat=lat, **hw)

    wire = costs["grad_bytes"] * value_bytes // 4
    calls = math.ceil(wire / c("fusion_threshold"))
    grad = calls * (software_s + extra + allreduce(wire / calls, c("lat_large"), n))
    sync = 0.0
    if sync_bn:
        gather_s, reduce_s = (software_s, software_s) if sync_call_s is None else sync_call_s
        group = n if sync_group is None else sync_group
        for ch in costs["syncbn_channels"]:
            sync += (gather_s + reduce_s + 2 * extra + allreduce(2 * ch * 4, c("lat_small"), group)
                     + ring_allgather_s(3 * ch * 4, group, lat=c("lat_small"), **hw))
    return {"compute": compute_s(costs["train_gflops_per_image"], batch, reference),
            "grad": grad, "syncbn": sync, "calls": calls}


def mpi_syncbn_s(channels, group, gbps, call_s):
    """Seconds per step of synchronized BN's collectives over the MPI transport: per BN layer of
    C channels one exchange of 3C float32 (forward allgather) and one of 2C (backward allreduce)
    over the `group` GPUs of the layer's group (`mpi_exchange_s`), each plus the software cost
    per call measured on 2 workers (on CPUs), call_s = (allgather, allreduce)
    (`mpi_call_costs`), and on GPUs two copies between GPU and host per call. No
    Horovod term: no negotiation cycle and no coordination round trip (MPI matches the messages
    by tag as they arrive), on one node or across nodes."""
    hw = dict(net_bw=gbps * 1e9 / 8, gpus_per_node=c("gpus_per_node"), pcie_bw=c("pcie_bw"),
              lat=c("lat_small"), copy_s=c("gpu_host_copy_s"))
    gather_s, reduce_s = call_s
    return sum(gather_s + reduce_s + mpi_exchange_s(3 * ch * 4, group, False, **hw)
               + mpi_exchange_s(2 * ch * 4, group, True, **hw) for ch in channels)


def inprocess_terms(costs, n, gbps, reference):
    """Seconds per step with one process per node driving its L GPUs (dist.devices_per_worker =
    L; `local` backend on one node, `ps` beyond). Gradients: summed over the node's GPUs in-process
    (`inprocess_reduce_s`), then, with several nodes, one push/pull of the node's sum per node
    (`ps_pushpull_s` with one worker per node and one server per node). BN trained: MXNet's
    SyncBatchNorm synchronizes each layer across the node's devices in-process, forward and
    backward, at CONSTANTS inprocess_sync_s each, exposed like SyncBN; no Horovod call at all."""
    batch = costs["global_batch"] // c("reference_gpus")
    nodes, local = nodes_and_local(n, c("gpus_per_node"))
    grad = inprocess_reduce_s(costs["grad_bytes"], local, c("nvlink_busbw"))
    if nodes > 1:
        grad += ps_pushpull_s(costs["grad_bytes"], nodes, nodes, gbps * 1e9 / 8, 1,
                              c("lat_large"))
    sync = 0.0 if costs["freeze_bn"] else (
        2 * len(costs["syncbn_channels"]) * c("inprocess_sync_s"))
    return {"compute": compute_s(costs["train_gflops_per_image"], batch, reference),
            "grad": grad, "syncbn": sync, "calls": 0}


def sync_call_costs(latency):
    """Software cost per synchronized-BN call, from benchmarks/collective_latency.py's report:
    {cycle in seconds: {"allgather": s, "allreduce": s}}, each the median per-call latency of a
    (3, C) float32 collective on 2 workers over all workers with Horovod's response cache on (its
    default), averaged over the C measured (the size barely matters)."""
    out = {}
    for r in latency["results"]:
        env = r.get("environment", {})
        if (r["workers"] != 2 or r.get("sets", "none") != "none"
                or "HOROVOD_CACHE_CAPACITY" in env or "HOROVOD_CYCLE_TIME" not in env):
            continue
        out[float(env["HOROVOD_CYCLE_TIME"]) * 1e-3] = _all_workers_call_s(r)
    return out


def _all_workers_call_s(result):
    """{"allgather": s, "allreduce": s} of one collective_latency.py result: the median
    per-call latency over all workers, averaged over the channel counts measured."""
    ops = {}
    for key, v in result["calls"].items():
        op, _, group = key.split(" ")
        if group == "all":
            ops.setdefault(op, []).append(v["median_us"] * 1e-6)
    return {op: sum(v) / len(v) for op, v in ops.items()}


def mpi_call_costs(latency_mpi):
    """Software cost per synchronized-BN call of the MPI transport, from
    benchmarks/collective_latency.py's report of it (`--only mpi`): {"allgather": s,
    "allreduce": s}, each the median per-call latency of a (3, C) float32 exchange on 2 workers
    over all workers with MPICH's defaults (the result with sets "mpi" and no environment, as
    the launcher runs it), averaged over the C measured, as `sync_call_costs` does for Horovod.
    It includes the copies between MXNet and numpy arrays (on the CPU)."""
    for r in latency_mpi["results"]:
        if r["workers"] != 2 or r.get("sets") != "mpi" or r.get("environment"):
            continue
        return _all_workers_call_s(r)
    raise KeyError("no 2-worker result of the MPI transport with MPICH's defaults (sets 'mpi', "
                   "no environment) in the report")


def calls_at(calls, cycle_s):
    """The measured per-call costs at cycle_s seconds (KeyError if that cycle was not run)."""
    for cycle, costs in calls.items():
        if math.isclose(cycle, cycle_s, rel_tol=1e-6):
            return costs
    raise KeyError("no per-call latency measured at HOROVOD_CYCLE_TIME = %g ms: %s"
                   % (cycle_s * 1e3, ", ".join("%g" % (k * 1e3) for k in sorted(calls))))


def coordination_s():
    """Cross-node negotiation added to each Horovod call in a job of several nodes: one network
    round trip (the coordinator's exchange of cache bits each cycle), a lower bound."""
    return 2 * c("lat_large")["net"]


def design_terms(costs, n, gbps, design, alpha_s, calls, reference, mpi_calls=None):
    """Seconds per step of one of DESIGNS (ring allreduce, fp32 gradients under Horovod).

    Horovod: SyncBN calls cost what collective_latency.py measured at the design's cycle;
    gradient calls cost the allreduce benchmark's alpha (measured at the default cycle) plus the
    change the cycle made to the measured small allreduce; SyncBN over all n GPUs or over the
    min(n, L) of one node. With the MPI transport (design "transport": "mpi") the gradients are
    the same (Horovod at its cycle, the coordination round trip beyond one node) and the SyncBN
    term is `mpi_syncbn_s` with the per-call costs mpi_calls (`mpi_call_costs`): no negotiation,
    no coordination. PS: `ps_pushpull_s` with one server per node (one server when n <= L). One
    process per node: `inprocess_terms`. With BN frozen no design has SyncBN collectives.
    """
    if design["backend"] == "node":
        return inprocess_terms(costs, n, gbps, reference)
    if design["backend"] == "ps":
        batch = costs["global_batch"] // c("reference_gpus")
        nodes, _ = nodes_and_local(n, c("gpus_per_node"))
        return {"compute": compute_s(costs["train_gflops_per_image"], batch, reference),
                "grad": ps_pushpull_s(costs["grad_bytes"], n, nodes, gbps * 1e9 / 8,
                                      c("gpus_per_node"), c("lat_large")),
                "syncbn": 0.0, "calls": 0}
    per_call = calls_at(calls, c(design["cycle"]))
    grad_s = alpha_s + per_call["allreduce"] - calls_at(calls, c("horovod_cycle_time"))[
        "allreduce"]
    sync = not costs["freeze_bn"] and design["bn"] in ("all", "node")
    group = n if design["bn"] == "all" else min(n, c("gpus_per_node"))
    if design.get("transport") == "mpi":
        if sync and mpi_calls is None:
            raise ValueError("design %s needs the MPI transport's per-call costs (mpi_calls)"
                             % design["key"])
        t = step_terms(costs, n, gbps, "ring", 4, grad_s, False, reference,
                       coordination_s=coordination_s())
        if sync:
            t["syncbn"] = mpi_syncbn_s(costs["syncbn_channels"], group, gbps,
                                       (mpi_calls["allgather"], mpi_calls["allreduce"]))
        return t
    return step_terms(costs, n, gbps, "ring", 4, grad_s, sync, reference,
                      sync_call_s=(per_call["allgather"], per_call["allreduce"]),
                      sync_group=group, coordination_s=coordination_s())


def bn_images(design, n, costs):
    """Images one BN layer's statistics come from (None with BN frozen: running statistics)."""
    if costs["freeze_bn"]:
        return None
    batch = costs["global_batch"] // c("reference_gpus")
    spans = {"all": n, "node": min(n, c("gpus_per_node")), "gpu": 1,
             "inprocess": min(n, c("gpus_per_node"))}
    return batch * spans[design["bn"]]


def efficiency(terms, overlap):
    """compute / (compute + exposed communication). Without overlap everything is exposed; with
    full overlap the gradient communication hides behind backward (2/3 of the compute: backward
    costs twice the forward) and only its excess is exposed. SyncBN is always exposed."""
    grad = terms["grad"]
    if overlap:
        grad = max(0.0, grad - 2.0 / 3.0 * terms["compute"])
    return terms["compute"] / (terms["compute"] + grad + terms["syncbn"])


# ---------------------------------------------------------------------------------------------
# The report

def predictions(costs, software_s, calls=None):
    """Every table cell: {(phase, model, n, gbps, algorithm, value_bytes, sync_bn): terms}.
    Gradient calls cost software_s; SyncBN calls what `calls` (sync_call_costs) measured at the
    default cycle, or software_s too without it; multi-node jobs add the coordination round trip
    to every call (none without `calls`)."""
    sync_call = extra = None
    if calls is not None:
        default = calls_at(calls, c("horovod_cycle_time"))
        sync_call, extra = (default["allgather"], default["allreduce"]), coordination_s()
    out = {}
    for entry in costs["phases"]:
        sync_options = (False,) if entry["freeze_bn"] else (True, False)
        for n in GPUS:
            for gbps in c("network_gbps"):
                for algorithm, vb in VARIANTS:
                    for sync in sync_options:
                        key = (entry["phase"], entry["model"], n, gbps, algorithm, vb, sync)
                        out[key] = step_terms(entry, n, gbps, algorithm, vb, software_s, sync,
                                              costs["reference"], sync_call_s=sync_call,
                                              coordination_s=extra or 0.0)
    return out


def design_predictions(costs, alpha_s, calls, mpi_calls):
    """Every design cell: {(phase, model, n, gbps, design key): terms}; calls: Horovod's
    per-call costs (`sync_call_costs`), mpi_calls: the MPI transport's (`mpi_call_costs`)."""
    out = {}
    for entry in costs["phases"]:
        for n in GPUS:
            for gbps in c("network_gbps"):
                for d in DESIGNS:
                    out[(entry["phase"], entry["model"], n, gbps, d["key"])] = design_terms(
                        entry, n, gbps, d, alpha_s, calls, costs["reference"],
                        mpi_calls=mpi_calls)
    return out


def design_groups(dp, phase):
    """DESIGNS grouped by identical predictions in `phase` over every model and cluster (with BN
    frozen several coincide): [[design, ...], ...] in DESIGNS order."""
    groups = []
    for d in DESIGNS:
        cells = [(efficiency(t, False), efficiency(t, True)) for (p, _, _, _, k), t in
                 sorted(dp.items()) if p == phase and k == d["key"]]
        for g in groups:
            if g[0] == cells:
                g[1].append(d)
                break
        else:
            groups.append((cells, [d]))
    return [members for _, members in groups]


def settings(design, n, phase):
    """What to set for a design: config keys, Horovod's environment, the launch."""
    nodes = n // min(n, c("gpus_per_node"))
    if design["backend"] == "node":
        if nodes == 1:
            return "`dist.backend: local`, `dist.devices_per_worker: %d`" % c("gpus_per_node")
        return ("`dist.backend: ps`, `dist.devices_per_worker: %d`, one worker and one server "
                "per node" % c("gpus_per_node"))
    if design["backend"] == "ps":
        return "`dist.backend: ps`, one worker per GPU, %s" % (
            "one server" if nodes == 1 else "one server per node")
    parts = ["`dist.backend: horovod`"]
    if phase == 1:
        parts.append("`dist.sync_bn: false`" if design["bn"] == "gpu"
                     else "`dist.sync_bn_group: %s`" % design["bn"])
        if design.get("transport") == "mpi":
            parts.append("`dist.sync_bn_transport: mpi`, launched by `deeplab launch horovod "
                         "--mpi`")
    cycle = c(design["cycle"])
    parts.append("`HOROVOD_CYCLE_TIME=%g`" % (cycle * 1e3)
                 if design["cycle"] != "horovod_cycle_time"
                 else "HOROVOD_CYCLE_TIME default (%g ms)" % (cycle * 1e3))
    return ", ".join(parts)


def recommend(dp, costs, phase, model, n, gbps):
    """The design with the best predicted efficiency (no overlap, then full overlap) among those
    whose BN statistics span at least the recipe's phase-1 global batch (the paper's 16 images);
    with BN frozen every design qualifies."""
    need = phase_entry(costs, 1, model)["global_batch"]
    entry = phase_entry(costs, phase, model)
    best = None
    for d in DESIGNS:
        images = bn_images(d, n, entry)
        if images is not None and images < need:
            continue
        t = dp[(phase, model, n, gbps, d["key"])]
        score = (round(efficiency(t, False), 6), round(efficiency(t, True), 6))
        if best is None or score > best[0]:
            best = (score, d)
    return best[1]


def ps_predictions(costs):
    """PS cells for phase 1 (per-worker BN: the parameter server has no SyncBN):
    {(model, n, gbps, servers): terms}."""
    out = {}
    for entry in costs["phases"]:
        if entry["phase"] != 1:
            continue
        batch = entry["global_batch"] // c("reference_gpus")
        t_c = compute_s(entry["train_gflops_per_image"], batch, costs["reference"])
        for n in GPUS:
            for gbps in c("network_gbps"):
                for m in ps_servers(n):
                    t = ps_pushpull_s(entry["grad_bytes"], n, m, gbps * 1e9 / 8,
                                      c("gpus_per_node"), c("lat_large"))
                    out[(entry["model"], n, gbps, m)] = {"compute": t_c, "grad": t,
                                                         "syncbn": 0.0}
    return out


def ps_servers(n):
    """Server counts shown: one, one per worker node, one per GPU."""
    return sorted({1, max(1, n // c("gpus_per_node")), n})


def phase_entry(costs, phase, model):
    return next(e for e in costs["phases"] if e["phase"] == phase and e["model"] == model)
