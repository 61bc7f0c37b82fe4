"""Shared helpers for the end-to-end tests: a meshed topology (ztunnels + apps) and small socket utilities."""
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import time

from topo import Topology, netns_socket, tail, to_yaml

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"


class Mesh:
    """A Topology whose `meshed` pods (default: all) get the in-pod rules and a ztunnel.

    protocols: {pod name: "TCP"|"HBONE"} overrides in the config (default HBONE).
    env: extra ztunnel environment for every ztunnel; pod_env: {pod name: dict} on top of it.
    """

    def __init__(self, nodes=2, pods=2, meshed=None, protocols=None, env=None, pod_env=None,
                 extra_workloads=(), namespaces=None, workload_extra=None, services=(), policies=()):
        """namespaces: {pod name: k8s namespace} (default "default"); workload_extra: {pod name: dict of
        extra LocalConfig workload fields, e.g. services, capacity, locality, status}; services/policies:
        LocalConfig dicts. With none of the last three the config is exactly Topology.config_yaml's."""
        self.topo = Topology(nodes=nodes, pods_per_node=pods)
        self.meshed = meshed
        self.protocols = protocols or {}
        self.env = env or {}
        self.pod_env = pod_env or {}
        self.extra_workloads = extra_workloads
        self.workload_extra = workload_extra or {}
        self.services = list(services)
        self.policies = list(policies)
        self.ztunnels = {}
        self.config = None
        for name, ns in (namespaces or {}).items():
            p = self.pod(name)
            p.namespace = ns
            p.uid = "Kubernetes//Pod/%s/%s" % (ns, p.name)

    def pod(self, name):
        return next(p for p in self.topo.pods if p.name == name)

    def config_text(self):
        """The LocalConfig YAML for the current workload_extra/services/policies."""
        t = self.topo
        if not (self.workload_extra or self.services or self.policies):
            return t.config_yaml(extra_workloads=self.extra_workloads, protocols=self.protocols)
        wls = []
        for p in t.pods:
            w = p.workload(self.protocols.get(p.name, "HBONE"))
            w.update(self.workload_extra.get(p.name, {}))
            wls.append(w)
        doc = {"workloads": wls + list(self.extra_workloads)}
        if self.services:
            doc["services"] = list(self.services)
        if self.policies:
            doc["policies"] = list(self.policies)
        return to_yaml(doc)

    def up(self):
        t = self.topo
        t.up()
        t.ca()
        self.config = t.write_config(self.config_text())
        for p in t.pods:
            if self.meshed is not None and p.name not in self.meshed:
                continue
            t.inpod_rules(p)
            self.start(p)
        return self

    def start(self, pod, env=None, **kw):
        """(Re)starts pod's ztunnel with the mesh's env, pod_env and env on top; kw go to start_ztunnel."""
        e = dict(self.env)
        e.update(self.pod_env.get(pod.name, {}))
        e.update(env or {})
        self.ztunnels[pod.name] = self.topo.start_ztunnel(pod, self.config, env=e, **kw)
        return self.ztunnels[pod.name]

    def reload_count(self, pod):
        """How many "config reloaded" lines pod's ztunnel has logged."""
        return sum(1 for l in self.log_json(pod) if l.get("message") == "config reloaded")

    def reconfigure(self, text=None, services=None, policies=None, workload_extra=None, wait=True,
                    timeout=10.0):
        """Replaces the config file (temp file + rename) with text, or with config_text() after updating
        services/policies/workload_extra. With wait, waits until every live ztunnel logged one more "config
        reloaded" line (raises RuntimeError otherwise)."""
        if services is not None:
            self.services = list(services)
        if policies is not None:
            self.policies = list(policies)
        if workload_extra is not None:
            self.workload_extra = dict(workload_extra)
        live = [self.pod(n) for n, p in self.ztunnels.items() if p.poll() is None]
        before = {p.name: self.reload_count(p) for p in live}
        self.topo.write_config(self.config_text() if text is None else text)
        if not wait:
            return
        for p in live:
            if not wait_for(lambda: self.reload_count(p) > before[p.name], timeout=timeout):
                raise RuntimeError("ztunnel %s did not reload its config:\n%s" % (p.name, tail(
                    self.ztunnels[p.name].log_path)))

    def down(self):
        self.topo.down()

    def app(self, pod, kind, port):
        """Starts apps.py <kind> <port> in pod's netns and waits until it listens."""
        return start_app(self.topo, pod, kind, port)

    def log(self, pod):
        """Text of pod's ztunnel log."""
        with open(self.ztunnels[pod.name].log_path, errors="replace") as f:
            return f.read()

    def log_json(self, pod):
        """Parsed lines of pod's ztunnel log as dicts with Istio's JSON keys: JSON lines as they are, plain text
        lines (LOG_FORMAT=plain) through parse_text_line; other lines are skipped."""
        out = []
        for line in self.log(pod).splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                d = parse_text_line(line)
                if d is not None:
                    out.append(d)
        return out

    def logs_tail(self):
        return "\n".join("--- ztunnel %s ---\n%s" % (n, tail(p.log_path, 30)) for n, p in self.ztunnels.items())


_RUST_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "\\": "\\", '"': '"', "'": "'"}


def _unescape_debug(s):
    """Undoes Rust's Debug escaping of a str (the body of a quoted text-log value)."""
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            e = s[i + 1]
            if e == "u" and s[i + 2:i + 3] == "{":
                end = s.index("}", i)
                out.append(chr(int(s[i + 3:end], 16)))
                i = end + 1
                continue
            out.append(_RUST_ESCAPES.get(e, e))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_text_line(line):
    """One line of Istio ztunnel's plain layout, "<time>\t<level>\t<target>\t<message>\t<k=v ...>", as a dict
    with the JSON layout's keys (level, time, scope, message, fields; quoted values unescaped, bare all-digit
    values as ints). The text layout drops the "ztunnel::" prefix of targets; scope is as written. None when
    the line does not have that shape."""
    parts = line.split("\t", 4)
    if len(parts) < 4 or len(parts[0]) != 27 or parts[1] not in ("error", "warn", "info", "debug", "trace"):
        return None
    d = {"time": parts[0], "level": parts[1], "scope": parts[2], "message": parts[3]}
    rest = parts[4] if len(parts) > 4 else ""
    i = 0
    while i < len(rest):
        eq = rest.index("=", i)
        key = rest[i:eq]
        j = eq + 1
        if rest[j:j + 1] == '"':
            k = j + 1
            while rest[k] != '"':
                k += 2 if rest[k] == "\\" else 1
            d[key] = _unescape_debug(rest[j + 1:k])
            i = k + 2
        else:
            k = rest.find(" ", j)
            k = len(rest) if k < 0 else k
            v = rest[j:k]
            d[key] = int(v) if v.isdigit() else (v == "true" if v in ("true", "false") else v)
            i = k + 1
    return d


def start_app(topo, pod, kind, port, timeout=10, args=()):
    p = topo.popen(pod.netns, [PY, os.path.join(HERE, "apps.py"), kind, str(port)] + list(args),
                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    r, _, _ = select.select([p.stdout], [], [], timeout)
    line = p.stdout.readline() if r else b""
    if not line.startswith(b"ready"):
        raise RuntimeError("app %s:%d in %s did not start" % (kind, port, pod.name))
    return p


def start_hbone_server(topo, pod, cert, key, ca, record, port=15008, timeout=10):
    """Runs hbone_peer.py server in pod's netns; returns the Popen once it listens."""
    p = topo.popen(pod.netns, [PY, os.path.join(HERE, "hbone_peer.py"), "server", "--port", str(port),
                               "--cert", cert, "--key", key, "--ca", ca, "--record", record],
                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    r, _, _ = select.select([p.stdout], [], [], timeout)
    line = p.stdout.readline() if r else b""
    if not line.startswith(b"ready"):
        raise RuntimeError("hbone server in %s did not start" % pod.name)
    return p


def connect(netns, ip, port, mark=None, timeout=10):
    """A TCP socket created in netns and connected to ip:port (captured by the pod rules unless mark)."""
    s = netns_socket(netns, mark=mark)
    s.settimeout(timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.connect((ip, port))
    return s


def recv_all(s, limit=None):
    """Reads until EOF (or limit bytes)."""
    buf = bytearray()
    while limit is None or len(buf) < limit:
        b = s.recv(1 << 18 if limit is None else min(1 << 18, limit - len(buf)))
        if not b:
            break
        buf += b
    return bytes(buf)


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        b = s.recv(min(1 << 18, n - len(buf)))
        if not b:
            raise EOFError("EOF after %d of %d bytes" % (len(buf), n))
        buf += b
    return bytes(buf)


def send_stream(s, total, chunk=1 << 20, seed=b"zmesh"):
    """Sends `total` pseudo-random bytes (deterministic per seed) and returns their sha256 hex digest."""
    h = hashlib.sha256()
    block = hashlib.sha256(seed).digest() * (chunk // 32)
    sent, i = 0, 0
    while sent < total:
        n = min(chunk, total - sent)
        data = (i.to_bytes(8, "big") + block)[:n]
        s.sendall(data)
        h.update(data)
        sent += n
        i += 1
    return h.hexdigest()


def wait_for(pred, timeout=5.0, interval=0.05):
    """Polls pred() until truthy (returns its value) or timeout (returns the last value)."""
    deadline = time.time() + timeout
    v = pred()
    while not v and time.time() < deadline:
        time.sleep(interval)
        v = pred()
    return v


def ensure_path():
    if HERE not in sys.path:
        sys.path.insert(0, HERE)


def start_tag_server(topo, pod, port, tag, timeout=10):
    """Runs a tiny server in pod's netns that answers every connection with "<tag>\n" and closes (tells a
    client which endpoint it reached). Returns the Popen once it listens."""
    code = ("import socket,sys\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('0.0.0.0', %d)); s.listen(512); print('ready', flush=True)\n"
            "while True:\n"
            "    c, _ = s.accept()\n"
            "    try:\n"
            "        c.sendall(%r)\n"
            "    except OSError:\n"
            "        pass\n"
            "    c.close()\n" % (port, (tag + "\n").encode()))
    p = topo.popen(pod.netns, [PY, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    r, _, _ = select.select([p.stdout], [], [], timeout)
    line = p.stdout.readline() if r else b""
    if not line.startswith(b"ready"):
        raise RuntimeError("tag server %s:%d in %s did not start" % (tag, port, pod.name))
    return p


def http_request(netns, ip, port, path, method="GET", mark=None, timeout=10, headers=None):
    """One HTTP/1.1 request from inside netns; returns (status, headers dict with lower-case names, body)."""
    import http.client
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    conn.sock = connect(netns, ip, port, mark=mark, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


def parse_prometheus(text):
    """Prometheus text exposition -> [(name, [(label, value), ...] in order, float value)]; comments skipped."""
    import re
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$', line)
        if not m:
            raise ValueError("bad metrics line: %r" % line)
        labels = [(k, bytes(v, "utf-8").decode("unicode_escape"))
                  for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or "")]
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def echo_ok(src, dst, port=8080, data=b"echo-check", mark=None):
    """True if an echo round trip src -> dst:port works (False if the connection fails or closes)."""
    try:
        s = connect(src.netns, dst.ip, port, mark=mark, timeout=5)
    except OSError:
        return False
    try:
        s.sendall(data)
        return recv_exact(s, len(data)) == data
    except (OSError, EOFError):
        return False
    finally:
        s.close()


def closed_without_data(s, timeout=5.0):
    """Waits until s reports EOF or a reset; returns (closed, bytes received before that)."""
    got = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        s.settimeout(max(0.05, deadline - time.time()))
        try:
            b = s.recv(4096)
        except socket.timeout:
            break
        except (ConnectionResetError, BrokenPipeError):
            return True, got
        if not b:
            return True, got
        got += b
    return False, got


def denied(src, dst, port=8080, mark=None):
    """True if a connection src -> dst:port is closed (EOF or reset) without any byte of echo."""
    try:
        s = connect(src.netns, dst.ip, port, mark=mark, timeout=5)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    try:
        try:
            s.sendall(b"must-not-be-echoed")
        except (BrokenPipeError, ConnectionResetError):
            return True
        closed, got = closed_without_data(s)
        assert got == b"", "denied connection %s -> %s:%d got data %r" % (src.name, dst.name, port, got)
        return closed
    finally:
        s.close()
