"""Accept paths under abuse (issue 6 items 2, 3 and 6): descriptor exhaustion does not spin, the admin,
metrics and readiness ports cannot be locked out, and a handshake flood on 15008 does not stop established
tunnels.

n1p1 and n2p1 are meshed; n2p1 runs an echo app on 8080 and is the ztunnel under attack (restarted fresh by
each test, so a lowered descriptor limit or a full port never leaks into the next test). Attackers connect
from node 2's namespace, outside the pod. Connections to the admin ports come from 169.254.7.127, the address
Istio SNATs kubelet probes to and the in-pod rules leave alone (scripts/inpod-redirect.sh): from any other node
address they would be captured to 15006 and relayed by ztunnel with the client's address as source, and that
relay's source port can coincide with a later client's, which is a property of the test topology (one source
address on both sides of the pod), not of the ports under test."""
import os
import socket
import time

import pytest

from helpers import Mesh, connect, http_request, recv_exact, wait_for
from hbone_peer import HboneClient
from topo import netns_socket

ECHO = 8080
ZT_HANDSHAKES_MAX = 16  # src/ztunnel/proxy.h
KUBELET_IP = "169.254.7.127"


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=1)
    try:
        m.up()
        m.app(m.pod("n2p1"), "echo", ECHO)
        m.topo.run(m.topo.nodes[1], ["ip", "addr", "add", KUBELET_IP + "/32", "dev", "lo"])
        yield m
    finally:
        m.down()


def restart(mesh, pod, env=None):
    """A fresh ztunnel for pod (the old one is stopped); returns its process (pid = ztunnel's)."""
    old = mesh.ztunnels.get(pod.name)
    if old is not None:
        mesh.topo.stop(old)
    # The log file is appended to across restarts: remember where this process's lines start.
    path = old.log_path if old is not None else None
    start = os.path.getsize(path) if path and os.path.exists(path) else 0
    proc = mesh.start(pod, env=env, wait_ports=(15001, 15006, 15008, 15021))
    proc.log_start = start
    return proc


def log_since(proc):
    with open(proc.log_path, "rb") as f:
        f.seek(getattr(proc, "log_start", 0))
        return f.read().decode(errors="replace")


def cpu_seconds(pid):
    """utime + stime of every thread of pid, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def echo_once(sock, payload):
    sock.sendall(payload)
    return recv_exact(sock, len(payload))


def open_many(netns, ip, port, n, first=b"", src=None):
    """n connected sockets (the connect completes in the kernel's backlog even when ztunnel accepts none),
    bound to src if given."""
    out = []
    for _ in range(n):
        s = netns_socket(netns)
        s.settimeout(5)
        if src:
            s.bind((src, 0))
        s.connect((ip, port))
        if first:
            s.sendall(first)
        out.append(s)
    return out


def kubelet_get(netns, ip, port, path):
    """GET path from KUBELET_IP, as a kubelet probe; returns (status, headers, body)."""
    import http.client
    conn = http.client.HTTPConnection(ip, port, timeout=5)
    conn.sock = open_many(netns, ip, port, 1, src=KUBELET_IP)[0]
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


# ---- item 2: descriptor exhaustion --------------------------------------------------------------------------

def test_fd_exhaustion_pauses_listeners(mesh):
    dst, src = mesh.pod("n2p1"), mesh.pod("n1p1")
    node = mesh.topo.nodes[1]
    proc = restart(mesh, dst)
    assert wait_for(lambda: "set file descriptor limits from" in log_since(proc), timeout=5), log_since(proc)[-2000:]
    # Leave room for a few relayed connections only: each one costs ztunnel its socket, the app socket and
    # two pipes.
    limit = nfds(proc.pid) + 24
    mesh.topo.run(dst.netns, ["prlimit", "--pid", str(proc.pid), "--nofile=%d:%d" % (limit, limit)])
    socks = []
    try:
        # Inbound plaintext (captured to 15006) until the table is full, then more waiting on 15001 (from the
        # pod's own app side) and 15008: every listener has a connection it cannot take.
        socks += open_many(node, dst.ip, ECHO, 40)
        socks += open_many(node, dst.ip, 15008, 5)
        socks += [connect(dst.netns, src.ip, ECHO, timeout=5) for _ in range(5)]
        assert wait_for(lambda: "Too many open files" in log_since(proc), timeout=5), log_since(proc)[-2000:]
        # Long enough for the log limiter's interval (10 s) to roll over, so the "suppressed" count shows.
        # Meanwhile keep connections arriving: a descriptor that ztunnel frees (a stalled handshake closed
        # after 1 s, a relay that failed to set up) would otherwise let the backlog drain and the listeners
        # stop failing. A new 15008 connection takes such a descriptor and holds it (its handshake never
        # starts), so the table stays full.
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        while time.monotonic() - t0 < 11:
            socks += open_many(node, dst.ip, 15008, 1) + open_many(node, dst.ip, ECHO, 1)
            time.sleep(0.2)
        cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        lines = [l for l in log_since(proc).splitlines() if "Too many open files" in l and "accept" in l]
        print("out of descriptors for %.1f s: %.1f%% of a core, %d accept error lines, log %d bytes"
              % (time.monotonic() - t0, cpu * 100, len(lines), len(log_since(proc))))
        # Spinning was about two cores and millions of lines; paused listeners wake ~10 times a second.
        assert cpu < 0.3, "ztunnel used %.0f%% of a core while out of descriptors" % (cpu * 100)
        assert 1 <= len(lines) <= 12, "%d accept error lines:\n%s" % (len(lines), "\n".join(lines[:20]))
        assert any("more suppressed" in l for l in lines), "\n".join(lines)
        assert proc.poll() is None, "ztunnel died"
    finally:
        close_all(socks)
    # Descriptors are back: a new connection through each path works.
    def works():
        try:
            s = connect(node, dst.ip, ECHO, timeout=3)
            try:
                return echo_once(s, b"after-emfile") == b"after-emfile"
            finally:
                s.close()
        except OSError:
            return False
    assert wait_for(works, timeout=10), "no echo after descriptors were freed:\n" + log_since(proc)[-2000:]
    s = connect(src.netns, dst.ip, ECHO, timeout=5)   # n1p1 -> n2p1 over HBONE (15008 accepts again)
    try:
        assert echo_once(s, b"hbone-after-emfile") == b"hbone-after-emfile"
    finally:
        s.close()


# ---- item 3: admin, metrics and readiness -------------------------------------------------------------------

def test_trickling_connections_do_not_lock_out_readiness(mesh):
    dst = mesh.pod("n2p1")
    node = mesh.topo.nodes[1]
    restart(mesh, dst)
    socks = []
    try:
        # More connections than the old shared limit (256), each with a request begun and never finished.
        socks += open_many(node, dst.ip, 15021, 100, first=b"GET /healthz/ready HTTP/1.1\r\nX-Slow: ",
                           src=KUBELET_IP)
        socks += open_many(node, dst.ip, 15020, 100, first=b"GET /metrics HTTP/1.1\r\nX-Slow: ", src=KUBELET_IP)
        socks += open_many(dst.netns, "127.0.0.1", 15000, 100, first=b"GET / HTTP/1.1\r\nX-Slow: ")
        for s in socks:          # one more byte each, as a trickler would
            try:
                s.sendall(b"a")
            except OSError:
                pass             # already closed to make room: fine
        status, _, body = kubelet_get(node, dst.ip, 15021, "/healthz/ready")
        assert (status, body) == (200, b"ready\n")
        status, _, body = kubelet_get(node, dst.ip, 15020, "/metrics")
        assert status == 200 and b"istio_tcp_connections_opened_total" in body
        status, _, _ = http_request(dst.netns, "127.0.0.1", 15000, "/config_dump", timeout=5)
        assert status == 200
    finally:
        close_all(socks)


def test_slowloris_request_is_closed_at_the_deadline(mesh):
    dst = mesh.pod("n2p1")
    node = mesh.topo.nodes[1]
    restart(mesh, dst)
    s = open_many(node, dst.ip, 15021, 1, src=KUBELET_IP)[0]
    got, closed = b"", False
    try:
        s.sendall(b"GET /healthz/ready HTTP/1.1\r\n")
        # One header line every 250 ms, for up to 10 s (the old idle timer, 60 s and restarted by every byte,
        # never fired); the request deadline is 2 s from its first byte.
        for _ in range(40):
            time.sleep(0.25)
            try:
                s.sendall(b"X-Slow: 1\r\n")
                s.settimeout(0.01)
                b = s.recv(4096)
                if not b:
                    closed = True
                    break
                got += b
            except socket.timeout:
                pass
            except OSError:
                closed = True
                break
    finally:
        s.close()
    assert closed, "a request trickled for 10 s was never closed"
    assert got == b"", "a request that never ended got an answer: %r" % got


def test_keepalive_idle_connection_outlives_the_request_deadline(mesh):
    dst = mesh.pod("n2p1")
    node = mesh.topo.nodes[1]
    restart(mesh, dst)
    # The listeners open before the first certificate arrives; readiness says so until it is here.
    assert wait_for(lambda: http_request(dst.netns, dst.ip, 15021, "/healthz/ready")[0] == 200, timeout=10)
    import http.client
    conn = http.client.HTTPConnection(dst.ip, 15021, timeout=5)
    conn.sock = open_many(node, dst.ip, 15021, 1, src=KUBELET_IP)[0]
    try:
        conn.request("GET", "/healthz/ready")
        assert conn.getresponse().read() == b"ready\n"
        time.sleep(3)  # idle between requests: longer than the 2 s request deadline, far below keep-alive
        conn.request("GET", "/healthz/ready")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"ready\n")
    finally:
        conn.close()


# ---- item 6: handshake flood --------------------------------------------------------------------------------

def test_half_open_handshakes_are_bounded_and_tunnels_flow(mesh):
    dst, src = mesh.pod("n2p1"), mesh.pod("n1p1")
    node = mesh.topo.nodes[1]
    proc = restart(mesh, dst, env={"ZTUNNEL_WORKER_THREADS": "1", "RUST_LOG": "debug"})
    tunnel = connect(src.netns, dst.ip, ECHO, timeout=5)   # established before the flood
    cert, key = mesh.topo.mint(src.spiffe, "flood-" + src.name)
    root = os.path.join(mesh.topo.ca(), "root-cert.pem")
    flood = []
    try:
        assert echo_once(tunnel, b"before") == b"before"
        fds0 = nfds(proc.pid)
        # 100 TLS clients that connect and never send a ClientHello.
        flood = open_many(node, dst.ip, 15008, 100)
        bound_line = "%d TLS handshakes in progress on worker 0 (the bound)" % ZT_HANDSHAKES_MAX
        assert wait_for(lambda: bound_line in log_since(proc), timeout=5), log_since(proc)[-3000:]
        time.sleep(0.5)
        # Only the bound was taken from the backlog (plus nothing else opened meanwhile).
        taken = nfds(proc.pid) - fds0
        assert taken <= ZT_HANDSHAKES_MAX + 2, "%d sockets accepted during the flood" % taken
        for i in range(20):
            msg = b"during-flood-%d" % i
            assert echo_once(tunnel, msg) == msg
        # A new HBONE connection, queued behind the half-open ones, still gets through: at the bound, a
        # handshake stalled for ZT_HANDSHAKE_STALL_MS (1 s) is closed to make room (16 a second here).
        c = HboneClient(connect(node, dst.ip, 15008, timeout=30), cert, key, root, timeout=30)
        try:
            sid = c.connect("%s:%d" % (dst.ip, ECHO))
            assert c.response(sid, timeout=10)[0] == 200
            c.send(sid, b"through-the-flood")
            assert c.recv(sid, n=17, timeout=5) == b"through-the-flood"
        finally:
            c.close()
        assert "TLS handshake stalled while the handshake bound was reached" in log_since(proc)
    finally:
        close_all(flood)
        tunnel.close()
    # The half-open ones ended (EOF during the handshake): more handshakes than the bound complete, one after
    # another, each while the previous connections stay open (only a finished handshake frees its slot).
    clients = []
    try:
        for i in range(ZT_HANDSHAKES_MAX + 4):
            c = HboneClient(connect(node, dst.ip, 15008, timeout=10), cert, key, root, timeout=10)
            clients.append(c)
            sid = c.connect("%s:%d" % (dst.ip, ECHO))
            assert c.response(sid, timeout=10)[0] == 200
            c.send(sid, b"n%d" % i)
            assert c.recv(sid, n=len(b"n%d" % i), timeout=5) == b"n%d" % i
    finally:
        for c in clients:
            c.close()
