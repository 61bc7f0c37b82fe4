"""Shared helpers for the end-to-end tests: a meshed topology (ztunnels + apps) and small socket utilities."""
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import time

from topo import Topology, netns_socket, tail

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"


class Mesh:
    """A Topology whose `meshed` pods (default: all) get the in-pod rules and a ztunnel.

    protocols: {pod name: "TCP"|"HBONE"} overrides in the config (default HBONE).
    env: extra ztunnel environment for every ztunnel; pod_env: {pod name: dict} on top of it.
    """

    def __init__(self, nodes=2, pods=2, meshed=None, protocols=None, env=None, pod_env=None,
                 extra_workloads=()):
        self.topo = Topology(nodes=nodes, pods_per_node=pods)
        self.meshed = meshed
        self.protocols = protocols or {}
        self.env = env or {}
        self.pod_env = pod_env or {}
        self.extra_workloads = extra_workloads
        self.ztunnels = {}
        self.config = None

    def pod(self, name):
        return next(p for p in self.topo.pods if p.name == name)

    def up(self):
        t = self.topo
        t.up()
        t.ca()
        self.config = t.write_config(t.config_yaml(extra_workloads=self.extra_workloads,
                                                   protocols=self.protocols))
        for p in t.pods:
            if self.meshed is not None and p.name not in self.meshed:
                continue
            t.inpod_rules(p)
            env = dict(self.env)
            env.update(self.pod_env.get(p.name, {}))
            self.ztunnels[p.name] = t.start_ztunnel(p, self.config, env=env)
        return self

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
        """Parsed JSON lines of pod's ztunnel log (non-JSON lines skipped)."""
        out = []
        for line in self.log(pod).splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def logs_tail(self):
        return "\n".join("--- ztunnel %s ---\n%s" % (n, tail(p.log_path, 30)) for n, p in self.ztunnels.items())


def start_app(topo, pod, kind, port, timeout=10):
    p = topo.popen(pod.netns, [PY, os.path.join(HERE, "apps.py"), kind, str(port)],
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
