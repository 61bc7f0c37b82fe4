"""Traffic through zmesh between meshed pods (every pod runs a ztunnel; every workload is HBONE):
integrity at several sizes, HTTP, the source address the app sees, half-close, and the access log."""
import hashlib
import http.client
import re
import socket
import time

import pytest

from apps import pattern_bytes
from helpers import Mesh, connect, recv_all, recv_exact, send_stream, wait_for

ECHO, HTTP, SINK, WHOAMI, EOF = 8080, 8081, 8082, 8083, 8084


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=2)
    try:
        m.up()
        srv, local = m.pod("n2p1"), m.pod("n1p2")
        for port, kind in ((ECHO, "echo"), (HTTP, "http"), (SINK, "sink"), (WHOAMI, "whoami"), (EOF, "eof")):
            m.app(srv, kind, port)
        m.app(local, "echo", ECHO)
        m.app(local, "whoami", WHOAMI)
        yield m
    finally:
        m.down()


def _echo_roundtrip(m, src, dst, data):
    s = connect(src.netns, dst.ip, ECHO)
    try:
        s.sendall(data)
        got = recv_exact(s, len(data))
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"", "echo app sent more than it got"
        return got
    finally:
        s.close()


@pytest.mark.parametrize("size", [1, 1 << 20])
def test_echo_across_nodes_intact(mesh, size):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    data = hashlib.sha256(b"%d" % size).digest() * (size // 32) + b"x" * (size % 32)
    got = _echo_roundtrip(mesh, src, dst, data)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


def test_echo_same_node_intact(mesh):
    """Same-node traffic also goes through HBONE (no fast path) and must arrive intact."""
    data = pattern_bytes(300000)
    assert _echo_roundtrip(mesh, mesh.pod("n1p1"), mesh.pod("n1p2"), data) == data


def test_100mib_to_sink_across_nodes(mesh):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    s = connect(src.netns, dst.ip, SINK, timeout=60)
    try:
        digest = send_stream(s, 100 << 20)
        s.shutdown(socket.SHUT_WR)
        reply = recv_all(s).decode()
    finally:
        s.close()
    assert reply == "%s %d\n" % (digest, 100 << 20)


def test_http_get_and_post_across_nodes(mesh):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    conn = http.client.HTTPConnection(dst.ip, HTTP, timeout=10)
    conn.sock = connect(src.netns, dst.ip, HTTP)
    conn.request("GET", "/bytes/200000")
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200 and body == pattern_bytes(200000)
    assert r.getheader("X-Body-Sha256") == hashlib.sha256(body).hexdigest()
    # Second request on the same keep-alive connection.
    payload = pattern_bytes(70000)[::-1]
    conn.request("POST", "/upload", body=payload)
    r = conn.getresponse()
    assert r.status == 200
    assert r.read().decode() == "%s %d\n" % (hashlib.sha256(payload).hexdigest(), len(payload))
    conn.close()


def test_http_with_curl_inside_the_pod(mesh):
    """A real client program started in the pod netns (captured by the rules like any app)."""
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    out = mesh.topo.run(src.netns, ["curl", "-sS", "--max-time", "10", "-D", "-", "-o", "/dev/null",
                                    "http://%s:%d/bytes/5000" % (dst.ip, HTTP)]).stdout
    assert out.startswith("HTTP/1.1 200")
    assert "x-body-sha256: %s" % hashlib.sha256(pattern_bytes(5000)).hexdigest() in out.lower()
    assert re.search(r"x-client-addr: %s:\d+" % re.escape(src.ip), out.lower())


def test_app_sees_source_pod_ip(mesh):
    src = mesh.pod("n1p1")
    for dst in (mesh.pod("n2p1"), mesh.pod("n1p2")):
        s = connect(src.netns, dst.ip, WHOAMI)
        local_port = s.getsockname()[1]
        seen = recv_all(s).decode().strip()
        s.close()
        ip, port = seen.rsplit(":", 1)
        assert ip == src.ip, "app on %s saw %s, not the source pod %s" % (dst.name, seen, src.ip)
        assert ip not in ("127.0.0.1", "172.30.0.1", "172.30.0.2")
        assert int(port) > 0 and local_port > 0
    conn = http.client.HTTPConnection(mesh.pod("n2p1").ip, HTTP, timeout=10)
    conn.sock = connect(src.netns, mesh.pod("n2p1").ip, HTTP)
    conn.request("GET", "/bytes/1")
    r = conn.getresponse()
    r.read()
    assert r.getheader("X-Client-Addr").rsplit(":", 1)[0] == src.ip
    conn.close()


def test_half_close_server_replies_after_eof(mesh):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    s = connect(src.netns, dst.ip, EOF)
    try:
        data = pattern_bytes(65536)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        # The app only answers once it has seen EOF, so a reply proves the FIN crossed the mesh; the full
        # 1 MiB afterwards proves the other direction stayed open.
        reply = recv_all(s)
    finally:
        s.close()
    head = ("%s %d\n" % (hashlib.sha256(data).hexdigest(), len(data))).encode()
    assert reply[:len(head)] == head
    assert reply[len(head):] == pattern_bytes(1 << 20)


def test_access_log_outbound_and_inbound(mesh):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    before = len(mesh.log_json(src))
    s = connect(src.netns, dst.ip, ECHO)
    s.sendall(b"access-log-check")
    assert recv_exact(s, 16) == b"access-log-check"
    s.close()
    assert any("listeners ready" in str(l.get("message", "")) for l in mesh.log_json(src))

    def outbound():
        # Lines written since `before`, not matched by src.addr: the REDIRECT's NAT may remap the source port.
        # Matched by destination: a previous test's connection (to another port) may be logged after `before`.
        return [l for l in mesh.log_json(src)[before:] if l.get("message") == "connection complete"
                and l.get("direction") == "outbound" and l.get("dst.hbone_addr") == "%s:%d" % (dst.ip, ECHO)]
    lines = wait_for(outbound, timeout=5)
    assert lines, "no outbound access log line"
    l = lines[-1]
    assert l["src.addr"].startswith(src.ip + ":"), l
    assert l["dst.hbone_addr"] == "%s:%d" % (dst.ip, ECHO)
    assert l["dst.addr"] == "%s:15008" % dst.ip
    assert l["src.identity"] == src.spiffe and l["dst.identity"] == dst.spiffe
    assert int(l["bytes_sent"]) == 16 and int(l["bytes_recv"]) == 16
    assert l.get("scope") == "access" and l.get("level") == "info"

    def inbound():
        return [l for l in mesh.log_json(dst) if l.get("message") == "connection complete"
                and l.get("direction") == "inbound" and l.get("src.addr", "").startswith(src.ip + ":")]
    assert wait_for(inbound, timeout=5), "no inbound access log line on %s" % dst.name
    assert any(l.get("src.identity") == src.spiffe for l in inbound())


def _tls_conns(pod, records):
    from helpers import http_request, parse_prometheus
    status, _, body = http_request(pod.netns, pod.ip, 15020, "/metrics")
    assert status == 200
    return sum(v for n, ls, v in parse_prometheus(body.decode())
               if n == "zmesh_tls_connections_total" and dict(ls).get("records") == records)


def test_tls_records_sealed_by_zmesh(mesh):
    """After the handshake, both ztunnels seal and open the HBONE connection's TLS records themselves
    (src/tls/record.c), not through OpenSSL's SSL_read/SSL_write; the bytes arrive intact both ways."""
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    data = pattern_bytes(3 * 16384 + 777)  # full records, a short one, records cut by reads
    assert _echo_roundtrip(mesh, src, dst, data) == data
    for pod in (src, dst):
        assert _tls_conns(pod, "zmesh") >= 1, pod.name
        assert _tls_conns(pod, "openssl") == 0, pod.name
