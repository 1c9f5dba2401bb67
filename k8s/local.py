"""`deeplab k8s run-local`: starts, as processes on this machine, the commands and environment
that the pods of a rendered job would run, to exercise them without a cluster.

What is mapped, and nothing else:
- the image's repository (working directory IMAGE_SOURCE) -> the local checkout (`source`);
- paths on the PVC (MOUNT/...) in arguments and environment values -> `data_dir`/...;
- `python -m deeplab.k8s.entrypoint` (PID 1 of each pod) -> this Python's, run as an ordinary
  process, and `deeplab` -> this Python's `-m deeplab.cli`;
- pod DNS names (the scheduler's <hostname>.<subdomain>) and the downward-API pod IP -> 127.0.0.1,
  the ps-lite root port -> a free local port;
- Horovod: the MPI Operator's hostfile -> `-H localhost:SLOTS*WORKERS`, since horovodrun would
  otherwise ssh to each host (the workers' sshd is not started);
- GPUs -> CPU (CUDA_VISIBLE_DEVICES is emptied), and for several local processes
  OMP_NUM_THREADS = cores / processes unless already set.
Init containers (the parameter server's wait for the scheduler's DNS name) are not run, the
job's NetworkPolicy is not applied, and an --env NAME=secret:SECRET/KEY (a secretKeyRef) takes
the value of NAME in run-local's own environment.

SIGTERM or SIGINT to run-local does what deleting the pods does: each pod's PID 1 gets SIGTERM,
and what still runs after the pods' terminationGracePeriodSeconds is killed.
"""
import os
import shlex
import subprocess
import sys
import time

from deeplab.launch import procs as job_procs
from deeplab.utils import free_port

from .render import ENTRYPOINT, HOSTFILE, IMAGE_SOURCE, MOUNT, PS_PORT
from .validate import load_documents

__all__ = ["LocalProcess", "plan", "run_plan", "run_local"]


class LocalProcess:
    """One local process standing for one pod's container."""

    def __init__(self, name, role, argv, env, cwd, grace=30):
        self.name, self.role, self.argv, self.env, self.cwd = name, role, argv, env, cwd
        self.grace = grace  # the pod's terminationGracePeriodSeconds

    def __repr__(self):
        return "LocalProcess(%s: %s)" % (self.name, " ".join(self.argv))


class _Mapper:
    """Rewrites pod paths, names and ports into local ones."""

    def __init__(self, data_dir, source, hosts=(), port=None):
        self.data_dir = os.path.abspath(data_dir)
        self.source = os.path.abspath(source)
        self.hosts = set(hosts)
        self.port = port

    def path(self, text):
        for prefix, local in ((MOUNT, self.data_dir), (IMAGE_SOURCE, self.source)):
            if text == prefix or text.startswith(prefix + "/"):
                return local + text[len(prefix):]
        return text

    def arg(self, text):
        if "=" in text and not text.startswith("/"):  # key=/data/... as in --set data.root=...
            key, value = text.split("=", 1)
            return "%s=%s" % (key, self.path(value))
        return self.path(text)

    def env(self, container, pod_name):
        out = {}
        for item in container.get("env") or []:
            name = item["name"]
            if "value" in item:
                value = str(item["value"])
                if value in self.hosts:
                    value = "127.0.0.1"
                elif name == "DMLC_PS_ROOT_PORT" and self.port is not None:
                    value = str(self.port)
                out[name] = self.arg(value)
                continue
            source = item.get("valueFrom") or {}
            if "secretKeyRef" in source:
                if name not in os.environ:
                    raise ValueError("env %s of %s comes from Secret %s: set %s in run-local's "
                                     "environment" % (name, pod_name,
                                                      source["secretKeyRef"].get("name"), name))
                out[name] = os.environ[name]
                continue
            field = (source.get("fieldRef") or {}).get("fieldPath")
            if field == "status.podIP":
                out[name] = "127.0.0.1"
            elif field == "metadata.name":
                out[name] = pod_name
            else:
                raise ValueError("env %s of %s: run-local supports values and the downward API's "
                                 "status.podIP and metadata.name only" % (name, pod_name))
        return out

    def argv(self, container):
        cmd = list(container.get("command") or []) + list(container.get("args") or [])
        if not cmd:
            raise ValueError("container %s has no command: run-local needs the command the image "
                             "would run" % container.get("name"))
        head = []
        if cmd[:len(ENTRYPOINT)] == ENTRYPOINT and "--" in cmd:
            cut = cmd.index("--") + 1
            head = [sys.executable] + cmd[1:cut]
            cmd = cmd[cut:]
        if cmd and cmd[0] == "deeplab":
            cmd = [sys.executable, "-m", "deeplab.cli"] + cmd[1:]
        return head + [self.arg(t) for t in cmd]

    def cwd(self, container):
        return self.path(container.get("workingDir") or IMAGE_SOURCE)


def _base_env(environ, processes):
    env = dict(os.environ if environ is None else environ)
    env["CUDA_VISIBLE_DEVICES"] = ""
    if "OMP_NUM_THREADS" not in env and processes > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    return env


def _one_container(spec, what):
    containers = (spec or {}).get("containers") or []
    if len(containers) != 1:
        raise ValueError("%s: run-local expects one container per pod, found %d"
                         % (what, len(containers)))
    return containers[0]


def _plan_mpijob(job, mapper, environ):
    spec = job["spec"]
    replicas = spec["mpiReplicaSpecs"]
    workers = int(replicas["Worker"].get("replicas", 1))
    slots = int(spec.get("slotsPerWorker", 1))
    launcher = _one_container(replicas["Launcher"]["template"]["spec"], "MPIJob launcher")
    argv = mapper.argv(launcher)
    if "--hostfile" not in argv or argv[argv.index("--hostfile") + 1] != HOSTFILE:
        raise ValueError("the MPIJob launcher does not run `--hostfile %s`; run-local replaces "
                         "that hostfile with local slots" % HOSTFILE)
    i = argv.index("--hostfile")
    argv[i:i + 2] = ["-H", "localhost:%d" % (slots * workers)]
    env = _base_env(environ, 1)  # horovodrun shares the cores among its local workers
    name = "%s-launcher" % job["metadata"]["name"]
    env.update(mapper.env(launcher, name))
    notes = ["MPIJob %s: %d worker pod(s) x %d slot(s) -> horovodrun -H localhost:%d (no ssh; "
             "the workers' sshd is not started)" % (job["metadata"]["name"], workers, slots,
                                                     slots * workers)]
    grace = replicas["Launcher"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    return [LocalProcess(name, "launcher", argv, env, mapper.cwd(launcher), grace)], notes


def _plan_ps(docs, mapper_args, environ):
    jobs = [d for d in docs if d["kind"] == "Job"]
    roles = {}
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        container = _one_container(pod, "Job %s" % job["metadata"]["name"])
        role = {e["name"]: e.get("value") for e in container.get("env") or []}.get("DMLC_ROLE")
        if role not in ("scheduler", "server", "worker"):
            raise ValueError("Job %s has no DMLC_ROLE scheduler/server/worker"
                             % job["metadata"]["name"])
        roles[role] = (job, pod, container)
    missing = [r for r in ("scheduler", "server", "worker") if r not in roles]
    if missing:
        raise ValueError("the parameter-server manifests lack the %s Job(s)" % ", ".join(missing))
    sched_pod = roles["scheduler"][1]
    hosts = set()
    if sched_pod.get("hostname") and sched_pod.get("subdomain"):
        short = "%s.%s" % (sched_pod["hostname"], sched_pod["subdomain"])
        hosts = {short, short + ".svc", short + ".svc.cluster.local"}
    mapper = _Mapper(*mapper_args, hosts=hosts, port=free_port())
    workers = int(roles["worker"][0]["spec"].get("completions", 1))
    procs, notes = [], []
    for role in ("scheduler", "server", "worker"):
        job, pod, container = roles[role]
        count = int(job["spec"].get("completions", 1))
        indexed = job["spec"].get("completionMode") == "Indexed"
        base = job["metadata"]["name"]
        for index in range(count):
            name = "%s-%d" % (base, index) if indexed else base
            env = _base_env(environ, workers if role == "worker" else 1)
            if indexed:
                env["JOB_COMPLETION_INDEX"] = str(index)
            env.update(mapper.env(container, name))
            procs.append(LocalProcess(name, role, mapper.argv(container), env,
                                      mapper.cwd(container),
                                      pod.get("terminationGracePeriodSeconds", 30)))
    notes.append("parameter server: %s -> 127.0.0.1, port %s -> %d, pod IPs -> 127.0.0.1"
                 % (" / ".join(sorted(hosts)) or "(no scheduler DNS name)", PS_PORT, mapper.port))
    if any(roles[r][1].get("initContainers") for r in roles):
        notes.append("init containers (waiting for the scheduler's DNS name) are not run: "
                     "127.0.0.1 needs no waiting")
    return procs, notes


def plan(directory, data_dir, source, environ=None):
    """The local processes standing for the pods of the job rendered in `directory`, and notes
    on what was mapped. Raises ValueError for manifests run-local cannot stand in for."""
    from .validate import ManifestError

    paths = sorted(p for p in os.listdir(directory) if p.endswith((".yaml", ".yml"))) \
        if os.path.isdir(directory) else []
    if not paths:
        raise ManifestError("%s holds no *.yaml manifests (render them with deeplab k8s render)"
                            % directory)
    docs = [d for p in paths for d in load_documents(os.path.join(directory, p))
            if d["kind"] != "NetworkPolicy"]  # local processes: nothing to apply it to
    mapper_args = (data_dir, source)
    notes = ["paths: %s/ -> %s/, %s -> %s" % (MOUNT, os.path.abspath(data_dir), IMAGE_SOURCE,
                                              os.path.abspath(source)),
             "GPUs -> CPU (CUDA_VISIBLE_DEVICES='')"]
    mpijobs = [d for d in docs if d["kind"] == "MPIJob"]
    if mpijobs:
        if len(mpijobs) > 1 or len(docs) > 1:
            raise ValueError("%s: run-local runs one job: an MPIJob alone, or the Service and "
                             "Jobs of one parameter-server job" % directory)
        procs, more = _plan_mpijob(mpijobs[0], _Mapper(*mapper_args), environ)
    else:
        procs, more = _plan_ps(docs, mapper_args, environ)
    return procs, notes + more


class _Pods(job_procs.Policy):
    """The Supervisor's policy for run-local: every PID 1 stopped as a pod's deletion would,
    the first process that fails stops the job."""

    def __init__(self, procs, timeout, finish_grace, poll, log):
        self.procs, self.timeout, self.finish_grace, self.poll, self.log = \
            procs, timeout, finish_grace, poll, log
        # Every process of the run carries it, whichever session or parent it ends up with.
        self.marker = job_procs.new_job_id()
        self.running = []
        self.started = None

    def _say(self, text):
        print("run-local: %s" % text, file=self.log, flush=True)

    def start(self, sup):
        for proc in self.procs:
            self._say("%s: %s" % (proc.name, " ".join(shlex.quote(t) for t in proc.argv)))
            env = dict(proc.env, DEEPLAB_RUN_LOCAL=self.marker)
            # Own session, as a pod has its own PID namespace.
            self.running.append((proc, subprocess.Popen(proc.argv, env=env, cwd=proc.cwd,
                                                        start_new_session=True)))
        self.started = time.monotonic()
        # The pods' terminationGracePeriodSeconds
        sup.grace = max([pr.grace for pr, _ in self.running] or [sup.grace])

    def targets(self, sup):
        if not sup.signalled:
            self._say("%s: stopping the pods as their deletion would (SIGTERM to each PID 1, "
                      "SIGKILL after %s s)" % (sup.stopping[1], sup.grace))
        return [p.pid for _, p in self.running if p.poll() is None]

    def check(self, sup, now):
        if sup.stopping is not None:
            return None
        for proc, p in self.running:
            code = p.poll()
            # A scheduler or server may leave as soon as the workers finalize, before they
            # exit; a lost one that exits 0 early leaves the workers waiting: the timeout.
            if code not in (None, 0):
                self._say("%s failed (%s); stopping the job"
                          % (proc.name, job_procs.describe_status(code)))
                return 1
        if self.timeout is not None and now - self.started > self.timeout:
            self._say("timed out after %.0f s; stopping the job" % self.timeout)
            return 124
        return None

    def ended(self, sup):
        return all(p.poll() is not None for pr, p in self.running
                   if pr.role in ("launcher", "worker"))

    def finish(self, sup, outcome):
        if outcome == sup.ENDED and sup.stopping is None:
            # ps-lite's scheduler and servers leave once every worker has finalized.
            job_procs.wait_for_exit([p for _, p in self.running], self.finish_grace,
                                    self.poll)

    def teardown(self, sup):
        job_procs.stop_groups([p for _, p in self.running])

    def leftovers(self):
        return job_procs.job_processes(self.marker, "DEEPLAB_RUN_LOCAL")

    def report(self, sup, outcome):
        if isinstance(outcome, int):
            return outcome
        return sup.stop.exit_code if sup.stopping is not None else 0


def run_plan(procs, timeout=None, finish_grace=30.0, poll=0.2, log=sys.stderr):
    """Runs `procs` until the training processes (launcher, or ps workers) finish; returns 0 on
    success, 1 if a process failed, 124 on timeout, 128 + N after signal N (SIGTERM, SIGINT,
    SIGHUP). Stops every process before returning."""
    pods = _Pods(procs, timeout, finish_grace, poll, log)
    return job_procs.Supervisor(pods, 30.0, poll, say=pods._say).run()


def run_local(directory, data_dir, source, timeout=None, dry_run=False, log=sys.stderr):
    """Plans and (unless `dry_run`) runs the job in `directory`; returns the exit code."""
    procs, notes = plan(directory, data_dir, source)
    for note in notes:
        print("run-local: %s" % note, file=log, flush=True)
    if dry_run:
        for proc in procs:
            print("run-local: %s: %s" % (proc.name, " ".join(shlex.quote(t) for t in proc.argv)),
                  file=log, flush=True)
        return 0
    os.makedirs(data_dir, exist_ok=True)
    return run_plan(procs, timeout=timeout, log=log)
