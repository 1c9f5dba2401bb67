"""Emulated hosts on one machine: N Linux network namespaces, each with its own address, its
own sshd and a shaped link, for multi-host tests, benchmarks and trying multi-host commands.

Layout of a cluster named NAME with N hosts (needs root, `ip`, `tc`, /usr/sbin/sshd):
- namespace NAME-br holds a bridge; namespaces NAME-node1 ... NAME-nodeN each hold one end of
  a veth pair (eth0, address 10.77.0.K/24) whose other end (hK) is a port of that bridge. The
  machine's own namespace is never touched: no interface, route or address is added there, and
  10.77.0.0/24 exists only inside these namespaces, so nothing leaves them.
- /etc/netns/NAME-nodeK/hosts resolves node1 ... nodeN, and /etc/netns/NAME-nodeK/ssh/ holds an
  ssh client configuration (the cluster's key, no host-key prompts, nothing written to
  ~/.ssh): `ip netns exec` mounts both over /etc/hosts and /etc/ssh for whatever runs in the
  namespace, sshd's sessions included, so `ssh node2` just works there, as on a cluster.
- each host runs its own sshd (port 22 of its own namespace) with host keys and an
  authorized key generated in the cluster's state directory, /tmp/deeplab-cluster-NAME.
Processes share the file system (like nodes with a shared volume) and the PID namespace, so
/proc shows every host's processes.

Links are shaped per host with tc (tbf, both directions) and cut by setting the bridge's port
of a host down (its traffic is silently dropped, as in a partition). Delay needs the kernel's
netem, which is not everywhere: `netem_available()` says whether it is.

Run as a script (scripts/cluster.sh wraps it): up N [--rate R] [--delay D] | exec NODE CMD... |
shape NODE [--rate R] [--delay D] [--cut|--restore] | down | status. `down` is idempotent and
leaves nothing: daemons, namespaces, /etc/netns entries and the state directory.

Standard library only, so that it runs with any python3.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

__all__ = ["Cluster", "ClusterError", "available", "netem_available"]

SUBNET = "10.77.0"  # only ever configured inside the cluster's namespaces
SSHD = "/usr/sbin/sshd"
NETNS_ETC = "/etc/netns"


class ClusterError(RuntimeError):
    """The cluster cannot be built here (not root, no namespaces, no sshd, ...)."""


def _run(cmd, check=True, **kw):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if check and proc.returncode != 0:
        raise ClusterError("%s: %s" % (" ".join(cmd), (proc.stderr or proc.stdout).strip()))
    return proc


def available():
    """None if emulated hosts can be built here, else one line saying why not."""
    if os.geteuid() != 0:
        return "emulated hosts need root (network namespaces, sshd)"
    for tool in ("ip", "tc", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return "emulated hosts need `%s` on the PATH" % tool
    if not os.access(SSHD, os.X_OK):
        return "emulated hosts need %s (Debian's openssh-server; scripts/setup_env.sh " \
               "installs it as root)" % SSHD
    probe = "deeplab-probe-%d" % os.getpid()
    made = _run(["ip", "netns", "add", probe], check=False)
    if made.returncode != 0:
        return "network namespaces are unavailable here: %s" % made.stderr.strip()
    _run(["ip", "netns", "del", probe], check=False)
    return None


def _rate_bits(rate):
    """'100mbit', '1gbit', '10gbit', '500kbit' -> bits per second."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bit": 1}
    low = rate.strip().lower()
    for unit, scale in units.items():
        if low.endswith(unit):
            try:
                return float(low[:-len(unit)]) * scale
            except ValueError:
                break
    raise ClusterError("--rate %s: expected a number with kbit, mbit or gbit, e.g. 1gbit" % rate)


class Cluster:
    """N emulated hosts named node1 ... nodeN (see the module docstring).

    Args:
        n: number of hosts (1 to 200).
        name: prefix of the namespaces and of the state directory; distinct clusters (distinct
            names) can run side by side, each with its own bridge.
    """

    def __init__(self, n, name="deeplab"):
        if not 1 <= int(n) <= 200:
            raise ClusterError("the number of hosts must be between 1 and 200, got %s" % n)
        self.n, self.name = int(n), name
        self.dir = "/tmp/deeplab-cluster-%s" % name
        self.hosts = ["node%d" % k for k in range(1, self.n + 1)]

    # ---- names ----
    def ns(self, host):
        """The namespace of `host` ('node2' or 2)."""
        return "%s-%s" % (self.name, self._host(host))

    @property
    def bridge_ns(self):
        return "%s-br" % self.name

    def address(self, host):
        return "%s.%d" % (SUBNET, self.hosts.index(self._host(host)) + 1)

    def _host(self, host):
        host = "node%d" % host if isinstance(host, int) else host
        if host not in self.hosts:
            raise ClusterError("no host %s in this cluster (%s)" % (host, ", ".join(self.hosts)))
        return host

    def _port(self, host):
        return "h%d" % (self.hosts.index(self._host(host)) + 1)

    @property
    def key(self):
        """The private key that every host's sshd accepts."""
        return os.path.join(self.dir, "id_ed25519")

    @property
    def ssh_config(self):
        """The ssh client configuration the hosts use (also usable with `ssh -F`)."""
        return os.path.join(self.dir, "ssh_config")

    # ---- life cycle ----
    def up(self, rate=None, delay=None):
        """Builds the cluster (tearing down any leftover of the same name first)."""
        why = available()
        if why:
            raise ClusterError(why)
        self.down()
        os.makedirs(self.dir, mode=0o700)
        try:
            self._keys()
            self._network()
            for host in self.hosts:
                self._sshd(host)
            with open(os.path.join(self.dir, "state.json"), "w") as f:
                json.dump({"n": self.n, "name": self.name}, f)
            for host in self.hosts:
                self.wait_ssh(host)
            if rate or delay:
                for host in self.hosts:
                    self.shape(host, rate=rate, delay=delay)
        except BaseException:
            self.down()
            raise
        return self

    def _keys(self):
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deeplab-cluster",
              "-f", self.key])
        shutil.copy(self.key + ".pub", os.path.join(self.dir, "authorized_keys"))
        # No ServerAliveInterval: ssh's default, so that a cut-off host is found the way it is
        # on most clusters, by the workers' stall watchdog, not by the ssh sessions' keep-alive.
        with open(self.ssh_config, "w") as f:
            f.write("Host *\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n"
                    "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                    "  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n"
                    "  ConnectTimeout 10\n" % self.key)

    def _network(self):
        br = self.bridge_ns
        _run(["ip", "netns", "add", br])
        _run(["ip", "-n", br, "link", "set", "lo", "up"])
        _run(["ip", "-n", br, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", br, "link", "set", "br0", "up"])
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            "%s %s\n" % (self.address(h), h) for h in self.hosts)
        # The namespaces share the machine's host name (no UTS namespace); Gloo resolves it,
        # so on each host it names that host's own address, as on a real machine.
        me = socket.gethostname()
        for host in self.hosts:
            ns, port = self.ns(host), self._port(host)
            _run(["ip", "netns", "add", ns])
            # Both ends are created inside the bridge's namespace and one is moved: no
            # interface ever appears in the machine's own namespace.
            _run(["ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                  "netns", ns])
            _run(["ip", "-n", br, "link", "set", port, "master", "br0", "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "addr", "add", self.address(host) + "/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            etc = os.path.join(NETNS_ETC, ns)
            os.makedirs(os.path.join(etc, "ssh"), exist_ok=True)
            with open(os.path.join(etc, "hosts"), "w") as f:
                f.write(hosts_file + "%s %s\n" % (self.address(host), me))
            # `ip netns exec` mounts this folder over /etc/ssh: the client configuration, plus
            # sshd's moduli so that it finds what it expects there.
            shutil.copy(self.ssh_config, os.path.join(etc, "ssh", "ssh_config"))
            if os.path.exists("/etc/ssh/moduli"):
                shutil.copy("/etc/ssh/moduli", os.path.join(etc, "ssh", "moduli"))

    def _sshd(self, host):
        d = os.path.join(self.dir, host)
        os.makedirs(d)
        hostkey = os.path.join(d, "ssh_host_ed25519_key")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostkey])
        config = os.path.join(d, "sshd_config")
        with open(config, "w") as f:
            f.write("Port 22\nListenAddress 0.0.0.0\nHostKey %s\nPidFile %s\n"
                    "AuthorizedKeysFile %s\nPermitRootLogin prohibit-password\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                    "StrictModes no\nPrintMotd no\nAcceptEnv none\nMaxStartups 200:30:400\n"
                    "MaxSessions 200\nLogLevel INFO\n"
                    % (hostkey, os.path.join(d, "sshd.pid"),
                       os.path.join(self.dir, "authorized_keys")))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        _run(["ip", "netns", "exec", self.ns(host), SSHD, "-f", config,
              "-E", os.path.join(d, "sshd.log")])

    def wait_ssh(self, host, timeout=20):
        """Waits until `host`'s sshd answers (from the host itself)."""
        deadline = time.time() + timeout
        while True:
            proc = self.exec(host, ["ssh", self._host(host), "true"], check=False,
                             timeout=timeout)
            if proc.returncode == 0:
                return
            if time.time() > deadline:
                raise ClusterError("sshd on %s does not answer: %s" % (host, proc.stderr.strip()))
            time.sleep(0.2)

    def namespaces(self):
        """This cluster's namespaces that exist now."""
        listed = _run(["ip", "netns", "list"], check=False).stdout.split("\n")
        names = {line.split()[0] for line in listed if line.strip()}
        prefix = self.name + "-"
        return sorted(n for n in names if n.startswith(prefix)
                      and (n == self.bridge_ns or n[len(prefix):].startswith("node")))

    def pids(self):
        """Pids of every process running in one of the cluster's namespaces."""
        out = []
        for ns in self.namespaces():
            listed = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
            out += [int(p) for p in listed if p.isdigit()]
        return out

    def down(self):
        """Stops every process in the cluster's namespaces (sshd and whatever runs there) and
        removes the namespaces, their /etc/netns entries and the state directory. Idempotent."""
        for _ in range(50):
            left = [p for p in self.pids() if p != os.getpid()]
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)
        for ns in self.namespaces():
            _run(["ip", "netns", "del", ns], check=False)
            shutil.rmtree(os.path.join(NETNS_ETC, ns), ignore_errors=True)
        prefix = self.name + "-"
        if os.path.isdir(NETNS_ETC):
            for entry in os.listdir(NETNS_ETC):
                if entry.startswith(prefix) and (entry == self.bridge_ns
                                                 or entry[len(prefix):].startswith("node")):
                    shutil.rmtree(os.path.join(NETNS_ETC, entry), ignore_errors=True)
            try:
                os.rmdir(NETNS_ETC)  # only if empty: other clusters may be up
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- use ----
    def command(self, host, cmd):
        """`cmd` (a list) prefixed so that it runs on `host`."""
        return ["ip", "netns", "exec", self.ns(host)] + list(cmd)

    def exec(self, host, cmd, check=True, **kw):
        """Runs `cmd` on `host`; returns the CompletedProcess (text)."""
        return _run(self.command(host, cmd), check=check, **kw)

    def popen(self, host, cmd, **kw):
        """Starts `cmd` on `host`; returns the Popen."""
        return subprocess.Popen(self.command(host, cmd), **kw)

    def shape(self, host, rate=None, delay=None, burst=None):
        """Limits `host`'s link to `rate` (e.g. '1gbit') in both directions and, where the
        kernel has netem, adds `delay` (e.g. '1ms') each way; both None: no shaping."""
        ns, br, port = self.ns(host), self.bridge_ns, self._port(host)
        for where, dev in (((["-n", ns]), "eth0"), ((["-n", br]), port)):
            _run(["tc"] + where + ["qdisc", "del", "dev", dev, "root"], check=False)
            if delay:
                if not netem_available():
                    raise ClusterError("--delay needs the kernel's netem qdisc, which this "
                                       "kernel lacks")
                _run(["tc"] + where + ["qdisc", "add", "dev", dev, "root", "handle", "1:",
                                       "netem", "delay", delay] +
                     (["rate", rate] if rate else []))
            elif rate:
                bits = _rate_bits(rate)
                # A bucket of at least 1 ms of traffic (and 64 KiB, above one GSO segment), so
                # that the timer's granularity does not lower the rate at 10 Gbit/s.
                burst = burst or max(64 * 1024, int(bits / 8 / 1000))
                _run(["tc"] + where + ["qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                                       "burst", str(burst), "latency", "100ms"])

    def cut(self, host):
        """Cuts `host` off: its bridge port goes down and its traffic is dropped silently."""
        _run(["ip", "-n", self.bridge_ns, "link", "set", self._port(host), "down"])

    def restore(self, host, timeout=10):
        """Reconnects a cut host: its bridge port up and forwarding, and every host's neighbour
        cache forgotten (an entry that failed while the link was down answers "No route to
        host" at once instead of asking again)."""
        port = self._port(host)
        _run(["ip", "-n", self.bridge_ns, "link", "set", port, "up"])
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = subprocess.run(["ip", "-n", self.bridge_ns, "-o", "link", "show", port],
                                   stdout=subprocess.PIPE, text=True).stdout
            if "state UP" in state or "LOWER_UP" in state.split(">")[0]:
                break
            time.sleep(0.1)
        for h in self.hosts:
            _run(["ip", "-n", self.ns(h), "neigh", "flush", "all"], check=False)

    def logins(self, host):
        """The ssh logins `host`'s sshd accepted so far (lines of its log)."""
        try:
            with open(os.path.join(self.dir, self._host(host), "sshd.log")) as f:
                return [line.strip() for line in f if "Accepted publickey" in line]
        except OSError:
            return []

    def stop_sshd(self, host):
        """Stops `host`'s sshd (a host that cannot be reached over ssh)."""
        try:
            with open(os.path.join(self.dir, self._host(host), "sshd.pid")) as f:
                os.kill(int(f.read().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass


_NETEM = None


def netem_available():
    """True if the kernel has the netem qdisc (delay, loss)."""
    global _NETEM
    if _NETEM is None:
        probe = "deeplab-netem-%d" % os.getpid()
        _run(["ip", "netns", "add", probe])
        try:
            _NETEM = _run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem",
                           "delay", "1ms"], check=False).returncode == 0
        finally:
            _run(["ip", "netns", "del", probe], check=False)
    return _NETEM


def _load(name):
    try:
        with open("/tmp/deeplab-cluster-%s/state.json" % name) as f:
            return Cluster(json.load(f)["n"], name)
    except (OSError, ValueError, KeyError):
        raise ClusterError("no cluster %s is up (scripts/cluster.sh up N)" % name) from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="cluster.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default=os.environ.get("DEEPLAB_CLUSTER", "deeplab"),
                   help="cluster name (default $DEEPLAB_CLUSTER or 'deeplab')")
    sub = p.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="start N hosts node1..nodeN")
    up.add_argument("n", type=int)
    for q in (up, sub.add_parser("shape", help="shape, cut or restore one host's link")):
        q.add_argument("--rate", help="link rate each way, e.g. 100mbit, 1gbit, 10gbit")
        q.add_argument("--delay", help="added delay each way, e.g. 1ms (needs netem)")
    shape = sub.choices["shape"]
    shape.add_argument("node")
    shape.add_argument("--cut", action="store_true", help="cut the host off (link down)")
    shape.add_argument("--restore", action="store_true", help="reconnect a cut host")
    ex = sub.add_parser("exec", help="run a command on a host")
    ex.add_argument("node")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("down", help="stop everything and remove the cluster")
    sub.add_parser("status", help="the hosts, their addresses and namespaces")
    return p.parse_args(argv)


def main(args):
    try:
        if args.action == "up":
            c = Cluster(args.n, args.name).up(rate=args.rate, delay=args.delay)
            print("up: %s (ssh config %s; run with: scripts/cluster.sh exec node1 CMD...)"
                  % (", ".join("%s=%s" % (h, c.address(h)) for h in c.hosts), c.ssh_config))
            return 0
        if args.action == "down":
            try:
                c = _load(args.name)
            except ClusterError:
                c = Cluster(1, args.name)
            c.down()
            return 0
        c = _load(args.name)
        if args.action == "status":
            for h in c.hosts:
                print("%s %s netns %s" % (h, c.address(h), c.ns(h)))
            return 0
        if args.action == "shape":
            if args.cut:
                c.cut(args.node)
            elif args.restore:
                c.restore(args.node)
            else:
                c.shape(args.node, rate=args.rate, delay=args.delay)
            return 0
        if not args.cmd:
            raise ClusterError("exec NODE CMD...: no command given")
        cmd = args.cmd[1:] if args.cmd[0] == "--" else args.cmd
        os.execvp("ip", c.command(args.node, cmd))
    except ClusterError as err:
        print("cluster.sh: error: %s" % err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(parse_args()))
