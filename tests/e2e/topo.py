"""A small network-namespace topology for zmesh end-to-end tests, the demo and the benchmarks.

Layout (N nodes x M pods, defaults 2 x 2), all names prefixed by a per-run prefix such as ``zm1234``::

    <prefix>-br           bridge namespace: br0 with one port n<i> per node
    <prefix>-n<i>         node i (1-based): eth0 = 172.30.0.<i>/24 toward the bridge, p<j> toward pod j,
                          ip_forward on, routes 10.0.<k>.0/24 via 172.30.0.<k> for every other node k
    <prefix>-n<i>p<j>     pod j (1-based) of node i: eth0 = 10.0.<i>.<j+1>/32, default route via 10.0.<i>.1
                          (the node keeps 10.0.<i>.1/32 on each pod-facing veth)

rp_filter is off everywhere (ztunnel spoofs source addresses toward apps). Every namespace has lo up.

Plain Python standard library only (run with /usr/bin/python3, as root). Typical use::

    from topo import Topology
    t = Topology(); t.up()
    try:
        cfg = t.write_config(t.config_yaml())
        for p in t.pods:
            t.inpod_rules(p)
            t.start_ztunnel(p, cfg)
        ...
    finally:
        t.down()
"""
import atexit
import contextlib
import ctypes
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRUST_DOMAIN = "cluster.local"
SO_MARK_ZTUNNEL = 0x539
_CLONE_NEWNET = 0x40000000
_counter = [0]
_live = []          # topologies that are up, for the atexit/signal cleanup
temp_workdirs = []  # workdirs this process created with mkdtemp (down() keeps them; callers may delete them)


def _sh(cmd, check=True, **kw):
    """Runs cmd (list) and returns the CompletedProcess; raises with stderr on failure when check."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    r = subprocess.run(cmd, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s%s" % (r.returncode, " ".join(cmd),
                                                              r.stdout or "", r.stderr or ""))
    return r


def netns_socket(netns, family=socket.AF_INET, type=socket.SOCK_STREAM, mark=None):
    """Returns a new socket created inside network namespace `netns` (its traffic uses that namespace for
    its whole life), optionally with SO_MARK set (0x539 = ztunnel's mark, so pod rules do not capture it).
    The caller owns the socket. Works from any thread: the namespace switch happens in a helper thread."""
    out = {}

    def worker():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open("/run/netns/" + netns, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, "setns(%s): %s" % (netns, os.strerror(e)))
            finally:
                os.close(fd)
            s = socket.socket(family, type)
            if mark is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            out["sock"] = s
        except BaseException as e:  # handed to the caller's thread
            out["err"] = e

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    if "err" in out:
        raise out["err"]
    return out["sock"]


def _yaml_scalar(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-/]*", s) and s.lower() not in (
            "true", "false", "yes", "no", "on", "off", "null", "y", "n"):
        return s
    return json.dumps(s)


def _yaml_lines(obj, indent):
    pad = " " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = _yaml_scalar(k)
            if isinstance(v, dict) and v:
                out.append("%s%s:" % (pad, key))
                out += _yaml_lines(v, indent + 2)
            elif isinstance(v, (list, tuple)) and v and any(isinstance(x, (dict, list, tuple)) for x in v):
                out.append("%s%s:" % (pad, key))
                out += _yaml_lines(list(v), indent)
            elif isinstance(v, (list, tuple)):
                out.append("%s%s: [%s]" % (pad, key, ", ".join(_yaml_scalar(x) for x in v)))
            elif isinstance(v, dict):
                out.append("%s%s: {}" % (pad, key))
            else:
                out.append("%s%s: %s" % (pad, key, _yaml_scalar(v)))
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            sub = _yaml_lines(item, indent + 2)
            if isinstance(item, (dict, list, tuple)) and sub:
                out.append("%s- %s" % (pad, sub[0][indent + 2:]))
                out += sub[1:]
            else:
                out.append("%s- %s" % (pad, _yaml_scalar(item)))
    else:
        out.append(pad + _yaml_scalar(obj))
    return out


def to_yaml(obj):
    """Renders dicts/lists/scalars as block YAML (strings that are not plain identifiers are double-quoted)."""
    return "\n".join(_yaml_lines(obj, 0)) + "\n"


class Pod:
    """One pod: its Kubernetes-ish identity and where it lives."""

    def __init__(self, name, netns, ip, node, node_netns, namespace="default", sa=None):
        self.name = name                    # e.g. "n1p2"
        self.netns = netns                  # e.g. "zm1234-n1p2"
        self.ip = ip                        # e.g. "10.0.1.3"
        self.node = node                    # node index, 1-based
        self.node_netns = node_netns        # e.g. "zm1234-n1"
        self.namespace = namespace
        self.sa = sa or ("sa-" + name)
        self.uid = "Kubernetes//Pod/%s/%s" % (namespace, name)

    @property
    def spiffe(self):
        return "spiffe://%s/ns/%s/sa/%s" % (TRUST_DOMAIN, self.namespace, self.sa)

    def workload(self, protocol="HBONE"):
        """This pod as a LocalConfig workload (dict)."""
        return {"uid": self.uid, "name": self.name, "namespace": self.namespace, "serviceAccount": self.sa,
                "workloadIps": [self.ip], "protocol": protocol, "node": "node%d" % self.node,
                "trustDomain": TRUST_DOMAIN}

    def __repr__(self):
        return "Pod(%s %s)" % (self.name, self.ip)


class Topology:
    """Nodes, pods and a bridge in network namespaces; see the module docstring."""

    def __init__(self, prefix=None, nodes=2, pods_per_node=2, workdir=None):
        if prefix is None:
            prefix = "zm%d" % (os.getpid() % 10000)
            if _counter[0]:
                prefix += "_%d" % _counter[0]
            _counter[0] += 1
        self.prefix = prefix
        self.nnodes = nodes
        self.npods = pods_per_node
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix=prefix + "-")
            temp_workdirs.append(workdir)
        self.workdir = workdir
        os.makedirs(self.workdir, exist_ok=True)
        self.bridge = prefix + "-br"
        self.nodes = ["%s-n%d" % (prefix, i) for i in range(1, nodes + 1)]
        self.pods = []
        for i in range(1, nodes + 1):
            for j in range(1, pods_per_node + 1):
                name = "n%dp%d" % (i, j)
                self.pods.append(Pod(name, "%s-%s" % (prefix, name), "10.0.%d.%d" % (i, j + 1), i,
                                     self.nodes[i - 1]))
        self._procs = []
        self._lock = threading.Lock()
        self._is_up = False

    # ---- lookup -------------------------------------------------------------------------------------------
    def pod(self, node, index):
        """The pod with 1-based node and pod indexes."""
        return self.pods[(node - 1) * self.npods + (index - 1)]

    def node_ip(self, node):
        return "172.30.0.%d" % node

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def _all_netns(self):
        return [p.netns for p in self.pods] + self.nodes + [self.bridge]

    def up(self):
        """Creates every namespace, link, address and route. Removes leftovers with the same prefix first."""
        self.down()
        _live.append(self)
        _install_handlers()
        self._is_up = True
        for ns in [self.bridge] + self.nodes + [p.netns for p in self.pods]:
            _sh(["ip", "netns", "add", ns])
            self._sysctl(ns, {"net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0})
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        _sh(["ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge"])
        _sh(["ip", "-n", self.bridge, "link", "set", "br0", "up"])
        for i, node in enumerate(self.nodes, start=1):
            self._sysctl(node, {"net.ipv4.ip_forward": 1})
            _sh(["ip", "link", "add", "eth0", "netns", node, "type", "veth", "peer", "name", "n%d" % i,
                 "netns", self.bridge])
            _sh(["ip", "-n", self.bridge, "link", "set", "n%d" % i, "master", "br0", "up"])
            _sh(["ip", "-n", node, "addr", "add", "%s/24" % self.node_ip(i), "dev", "eth0"])
            _sh(["ip", "-n", node, "link", "set", "eth0", "up"])
            for k in range(1, self.nnodes + 1):
                if k != i:
                    _sh(["ip", "-n", node, "route", "add", "10.0.%d.0/24" % k, "via", self.node_ip(k)])
        for p in self.pods:
            node = p.node_netns
            j = int(p.name.split("p")[1])
            gw = "10.0.%d.1" % p.node
            _sh(["ip", "link", "add", "p%d" % j, "netns", node, "type", "veth", "peer", "name", "eth0",
                 "netns", p.netns])
            _sh(["ip", "-n", node, "addr", "add", gw + "/32", "dev", "p%d" % j])
            _sh(["ip", "-n", node, "link", "set", "p%d" % j, "up"])
            _sh(["ip", "-n", node, "route", "add", p.ip + "/32", "dev", "p%d" % j, "src", gw])
            _sh(["ip", "-n", p.netns, "addr", "add", p.ip + "/32", "dev", "eth0"])
            _sh(["ip", "-n", p.netns, "link", "set", "eth0", "up"])
            _sh(["ip", "-n", p.netns, "route", "add", gw, "dev", "eth0", "scope", "link"])
            _sh(["ip", "-n", p.netns, "route", "add", "default", "via", gw, "dev", "eth0", "src", p.ip])
        # Per-interface rp_filter: the effective value is max(all, iface), so clear both.
        for ns in self.nodes + [p.netns for p in self.pods]:
            _sh(["ip", "netns", "exec", ns, "sh", "-c",
                 "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done"])
        return self

    def _sysctl(self, ns, kv):
        args = ["ip", "netns", "exec", ns, "sysctl", "-q", "-w"] + ["%s=%s" % (k, v) for k, v in kv.items()]
        _sh(args)

    def down(self):
        """Stops every process started through this object or running in its namespaces, then deletes the
        namespaces (and with them every link). Idempotent; safe from atexit and signal handlers."""
        with self._lock:
            procs, self._procs = self._procs, []
        for p in procs:
            if p.poll() is None:
                try:
                    p.terminate()
                except OSError:
                    pass
        deadline = time.time() + 2
        for p in procs:
            try:
                p.wait(timeout=max(0.05, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                try:
                    p.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
        existing = set(l.split()[0] for l in _sh(["ip", "netns", "list"], check=False).stdout.splitlines()
                       if l.strip())
        mine = [ns for ns in self._all_netns() if ns in existing]
        for ns in mine:
            pids = _sh(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        for ns in mine:
            _sh(["ip", "netns", "del", ns], check=False)
        self._is_up = False
        if self in _live:
            _live.remove(self)

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()

    # ---- commands -----------------------------------------------------------------------------------------
    def run(self, netns, cmd, **kw):
        """Runs cmd (list, or str for sh -c) in netns; returns CompletedProcess (text, captured output).
        Raises RuntimeError on a non-zero exit unless check=False."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        check = kw.pop("check", True)
        return _sh(["ip", "netns", "exec", netns] + list(cmd), check=check, **kw)

    def popen(self, netns, cmd, **kw):
        """Starts cmd (list, or str for sh -c) in netns; the process is stopped by down()."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        p = subprocess.Popen(["ip", "netns", "exec", netns] + list(cmd), **kw)
        with self._lock:
            self._procs.append(p)
        return p

    def listening(self, netns):
        """Set of TCP ports listening in netns."""
        out = self.run(netns, ["ss", "-ltnH"], check=False).stdout
        ports = set()
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 4 and ":" in cols[3]:
                try:
                    ports.add(int(cols[3].rsplit(":", 1)[1]))
                except ValueError:
                    pass
        return ports

    def wait_listen(self, netns, ports, timeout=10.0, proc=None):
        """Waits until every port in ports listens in netns; returns False on timeout or if proc exited."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if set(ports) <= self.listening(netns):
                return True
            if proc is not None and proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    # ---- certificates -------------------------------------------------------------------------------------
    def ca(self, name="ca"):
        """Creates (once) workdir/<name>/{root-cert.pem,root-key.pem}, an EC P-256 self-signed root, with the
        openssl CLI. Returns the directory. Use another name for an unrelated root."""
        d = os.path.join(self.workdir, name)
        cert, key = os.path.join(d, "root-cert.pem"), os.path.join(d, "root-key.pem")
        if os.path.exists(cert) and os.path.exists(key):
            return d
        os.makedirs(d, exist_ok=True)
        cnf = os.path.join(d, "openssl.cnf")
        with open(cnf, "w") as f:
            f.write("[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nO=zmesh-e2e-%s\n"
                    "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
                    "subjectKeyIdentifier=hash\n" % name)
        _sh(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])
        os.chmod(key, 0o600)
        _sh(["openssl", "req", "-x509", "-new", "-config", cnf, "-extensions", "v3_ca", "-key", key,
             "-sha256", "-days", "3650", "-out", cert])
        return d

    def mint(self, spiffe_id, name, root_dir=None, days=1):
        """Mints a leaf (EC P-256, PKCS#8 key) with URI SAN spiffe_id and EKU serverAuth+clientAuth, signed by
        root_dir (default: self.ca()). spiffe_id None gives a leaf without SAN. Returns (cert_path,
        key_path) under workdir/certs/."""
        root_dir = root_dir or self.ca()
        d = os.path.join(self.workdir, "certs")
        os.makedirs(d, exist_ok=True)
        cert, key = os.path.join(d, name + ".pem"), os.path.join(d, name + "-key.pem")
        csr, ext = os.path.join(d, name + ".csr"), os.path.join(d, name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n")
            if spiffe_id:
                f.write("subjectAltName=URI:%s\n" % spiffe_id)
        _sh(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])
        _sh(["openssl", "req", "-new", "-key", key, "-subj", "/O=zmesh-e2e/CN=%s" % name, "-out", csr])
        _sh(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(root_dir, "root-cert.pem"),
             "-CAkey", os.path.join(root_dir, "root-key.pem"), "-set_serial", str(int.from_bytes(
                 os.urandom(8), "big")), "-days", str(days), "-sha256", "-extfile", ext, "-out", cert])
        return cert, key

    # ---- configuration ------------------------------------------------------------------------------------
    def config_yaml(self, extra_workloads=(), protocol="HBONE", protocols=None, services=(), policies=()):
        """LocalConfig YAML with every pod as a workload (protocol, or protocols[pod.name] for overrides),
        plus extra_workloads/services/policies (dicts in LocalConfig's camelCase form)."""
        protocols = protocols or {}
        doc = {"workloads": [p.workload(protocols.get(p.name, protocol)) for p in self.pods]
               + list(extra_workloads)}
        if services:
            doc["services"] = list(services)
        if policies:
            doc["policies"] = list(policies)
        return to_yaml(doc)

    def write_config(self, text, name="config.yaml"):
        """Writes text to workdir/<name> and returns the path."""
        path = os.path.join(self.workdir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.rename(path + ".tmp", path)
        return path

    # ---- ztunnel ------------------------------------------------------------------------------------------
    def inpod_rules(self, pod, remove=False):
        """Installs (or removes) the in-pod redirection rules with scripts/inpod-redirect.sh."""
        cmd = [os.path.join(REPO, "scripts", "inpod-redirect.sh"), pod.netns] + (["--remove"] if remove else [])
        _sh(cmd)

    @staticmethod
    def bin_dir():
        return os.environ.get("ZMESH_BIN") or os.path.join(REPO, "build", "bin")

    def start_ztunnel(self, pod, config_path, env=None, log_format="json", timeout=10.0,
                      wait_ports=(15001, 15006, 15008)):
        """Starts ztunnel for pod inside its netns (dedicated mode, local config and local CA); stdout and
        stderr go to workdir/ztunnel-<pod>.log (the path is in proc.log_path). Waits until every port in
        wait_ports (default 15001, 15006 and 15008) listens; raises RuntimeError with the log tail otherwise.
        The process is stopped by down()."""
        e = dict(os.environ)
        e.update({"PROXY_MODE": "dedicated",
                  "PROXY_WORKLOAD_INFO": "%s/%s/%s" % (pod.namespace, pod.name, pod.sa),
                  "LOCAL_XDS_PATH": config_path, "LOCAL_CA_DIR": self.ca(),
                  "LOG_FORMAT": log_format, "RUST_LOG": "info"})
        e.update(env or {})
        log_path = os.path.join(self.workdir, "ztunnel-%s.log" % pod.name)
        log = open(log_path, "ab")
        try:
            proc = self.popen(pod.netns, [os.path.join(self.bin_dir(), "ztunnel")], env=e,
                              stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        proc.log_path = log_path
        proc.pod = pod
        if not self.wait_listen(pod.netns, tuple(wait_ports), timeout, proc):
            rc = proc.poll()
            if rc is None:
                proc.kill()
                proc.wait()
            raise RuntimeError("ztunnel for %s did not listen on %s (exit %s); log tail:\n%s"
                               % (pod.name, "/".join(str(p) for p in wait_ports), rc, tail(log_path)))
        return proc

    def stop(self, proc, timeout=5.0):
        """Terminates a process started here and waits for it; returns its exit code."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)
        return proc.returncode

    # ---- capture ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def capture(self, netns, iface, bpf_filter, path):
        """Context manager: runs `tcpdump -U -w path` on iface in netns (full snap length) while the block
        runs, then stops it with SIGINT so the pcap is complete. Yields the path."""
        cmd = ["tcpdump", "-i", iface, "--immediate-mode", "-U", "-s", "0", "-n", "-Z", "root", "-w", path]
        if bpf_filter:
            cmd.append(bpf_filter)
        p = self.popen(netns, cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sel = selectors.DefaultSelector()
        sel.register(p.stderr, selectors.EVENT_READ)
        buf = b""
        deadline = time.time() + 5
        while b"listening on" not in buf:
            if p.poll() is not None or time.time() > deadline:
                raise RuntimeError("tcpdump did not start: %s" % (buf + p.stderr.read()).decode(errors="replace"))
            if sel.select(timeout=0.1):
                chunk = os.read(p.stderr.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        sel.close()
        try:
            yield path
        finally:
            time.sleep(0.3)     # let the last packets reach the capture buffer
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stderr.close()
            with self._lock:
                if p in self._procs:
                    self._procs.remove(p)


def tail(path, n=40):
    """Last n lines of a file, or a note if it cannot be read."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return "(%s)" % e


def read_pcap(path, times=False):
    """Parses a classic pcap file; returns (linktype, [packet bytes]), or with times (linktype,
    [(timestamp in seconds, packet bytes)])."""
    import struct
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return None, []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("%s: not a pcap file" % path)
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    pkts, off = [], 24
    while off + 16 <= len(data):
        sec, frac, incl = struct.unpack(endian + "III", data[off:off + 12])
        pkt = data[off + 16:off + 16 + incl]
        pkts.append((sec + frac / (1e9 if nano else 1e6), pkt) if times else pkt)
        off += 16 + incl
    return linktype, pkts


def ipv4_tcp(linktype, pkt):
    """For an Ethernet (1) or Linux cooked (113) IPv4 TCP packet: (src ip, sport, dst ip, dport, flags,
    payload); for anything else: None."""
    import struct
    if linktype == 1:
        if len(pkt) < 14:
            return None
        etype, off = struct.unpack("!H", pkt[12:14])[0], 14
        if etype == 0x8100:
            etype, off = struct.unpack("!H", pkt[16:18])[0], 18
    elif linktype == 113:
        etype, off = struct.unpack("!H", pkt[14:16])[0], 16
    else:
        return None
    if etype != 0x0800 or len(pkt) < off + 20:
        return None
    ihl = (pkt[off] & 0xF) * 4
    if pkt[off + 9] != 6:
        return None
    src, dst = socket.inet_ntoa(pkt[off + 12:off + 16]), socket.inet_ntoa(pkt[off + 16:off + 20])
    t = off + ihl
    sport, dport = struct.unpack("!HH", pkt[t:t + 4])
    doff = (pkt[t + 12] >> 4) * 4
    return src, sport, dst, dport, pkt[t + 13], pkt[t + doff:]


def ipv4_tcp_ports(linktype, pkt):
    """ipv4_tcp without the flags: (src ip, sport, dst ip, dport, payload), or None."""
    r = ipv4_tcp(linktype, pkt)
    return r and r[:4] + r[5:]


_handlers_installed = [False]


def _cleanup_all():
    for t in list(_live):
        try:
            t.down()
        except Exception:
            pass


def _on_signal(signum, frame):
    _cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers():
    if _handlers_installed[0]:
        return
    _handlers_installed[0] = True
    atexit.register(_cleanup_all)
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(s) in (signal.SIG_DFL, None):
                signal.signal(s, _on_signal)


if __name__ == "__main__":
    # Manual check: bring a topology up, ping across nodes, tear it down.
    t = Topology()
    t.up()
    try:
        a, b = t.pods[0], t.pods[-1]
        print(t.run(a.netns, ["ping", "-c", "1", "-W", "2", b.ip]).stdout)
    finally:
        t.down()
