"""The topology and the in-pod rules on their own (no ztunnel): addressing, routing, and where the rules send
connections. These run before the binary exists and catch harness bugs early."""
import socket
import struct

import pytest

from helpers import connect
from topo import Topology, netns_socket

SO_ORIGINAL_DST = 80


@pytest.fixture(scope="module")
def t():
    topo = Topology()
    try:
        topo.up()
        yield topo
    finally:
        topo.down()


def _listener(netns, port):
    s = netns_socket(netns)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    s.settimeout(5)
    return s


def _orig_dst(conn):
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, = struct.unpack("!H", raw[2:4])
    return socket.inet_ntoa(raw[4:8]), port


def test_every_pod_reaches_every_pod_with_its_own_source_ip(t):
    for dst in t.pods:
        ls = _listener(dst.netns, 9000)
        try:
            for src in t.pods:
                c = connect(src.netns, dst.ip, 9000, timeout=3)
                conn, addr = ls.accept()
                assert addr[0] == src.ip, (src, dst, addr)
                c.close()
                conn.close()
        finally:
            ls.close()


def test_names_and_addresses(t):
    assert len(t.pods) == 4 and len(t.nodes) == 2
    assert [p.ip for p in t.pods] == ["10.0.1.2", "10.0.1.3", "10.0.2.2", "10.0.2.3"]
    assert t.pod(2, 1).netns == t.prefix + "-n2p1"
    addrs = t.run(t.nodes[0], ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert "172.30.0.1/24" in addrs
    assert t.run(t.nodes[1], ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"


def test_inpod_rules_redirect_outbound_to_15001_and_inbound_to_15006(t):
    a, b = t.pod(1, 1), t.pod(2, 1)
    t.inpod_rules(a)
    t.inpod_rules(a)  # idempotent: a second install must not duplicate rules
    try:
        saved = t.run(a.netns, ["iptables-save"]).stdout
        assert saved.count("-j REDIRECT --to-ports 15001") == 1
        assert saved.count("-j REDIRECT --to-ports 15006") == 1
        assert saved.count("-A PREROUTING -j ISTIO_PRERT") == 2  # mangle + nat
        assert "fwmark 0x111/0xfff lookup 100" in t.run(a.netns, ["ip", "rule"]).stdout
        assert "local default dev lo" in t.run(a.netns, ["ip", "route", "show", "table", "100"]).stdout

        out_l, in_l, hb_l = _listener(a.netns, 15001), _listener(a.netns, 15006), _listener(a.netns, 15008)
        b_l = _listener(b.netns, 8080)
        try:
            # Outbound from the pod: captured, original destination preserved.
            c = connect(a.netns, b.ip, 8080)
            conn, _ = out_l.accept()
            assert _orig_dst(conn) == (b.ip, 8080)
            c.close(), conn.close()
            # ztunnel's own sockets (mark 0x539) are not captured.
            c = connect(a.netns, b.ip, 8080, mark=0x539)
            conn, addr = b_l.accept()
            assert addr[0] == a.ip
            c.close(), conn.close()
            # Inbound to the pod: any port but 15008 lands on 15006 with its original destination.
            c = connect(b.netns, a.ip, 8080)
            conn, addr = in_l.accept()
            assert addr[0] == b.ip and _orig_dst(conn) == (a.ip, 8080)
            c.close(), conn.close()
            c = connect(b.netns, a.ip, 15008)
            conn, addr = hb_l.accept()
            assert addr[0] == b.ip
            c.close(), conn.close()
            # Loopback traffic inside the pod is left alone.
            lo_l = _listener(a.netns, 7070)
            c = connect(a.netns, "127.0.0.1", 7070)
            conn, _ = lo_l.accept()
            c.close(), conn.close(), lo_l.close()
        finally:
            for s in (out_l, in_l, hb_l, b_l):
                s.close()
    finally:
        t.inpod_rules(a, remove=True)
    saved = t.run(a.netns, ["iptables-save"]).stdout
    assert "ISTIO" not in saved
    assert "lookup 100" not in t.run(a.netns, ["ip", "rule"]).stdout


def test_capture_sees_plaintext_on_the_node_uplink(t, tmp_path):
    from topo import ipv4_tcp_ports, read_pcap
    a, b = t.pod(1, 1), t.pod(2, 1)
    ls = _listener(b.netns, 9001)
    pcap = str(tmp_path / "uplink.pcap")
    try:
        with t.capture(t.nodes[0], "eth0", "tcp", pcap):
            c = connect(a.netns, b.ip, 9001)
            conn, _ = ls.accept()
            c.sendall(b"ZMESH-TOPOLOGY-MARKER")
            assert conn.recv(100) == b"ZMESH-TOPOLOGY-MARKER"
            c.close(), conn.close()
    finally:
        ls.close()
    lt, pkts = read_pcap(pcap)
    assert any(b"ZMESH-TOPOLOGY-MARKER" in p for p in pkts)
    assert any((ipv4_tcp_ports(lt, p) or ())[:4] == (a.ip, ipv4_tcp_ports(lt, p)[1], b.ip, 9001)
               for p in pkts if ipv4_tcp_ports(lt, p))


def test_down_is_idempotent_and_removes_namespaces():
    t2 = Topology(nodes=1, pods_per_node=1)
    t2.up()
    p = t2.popen(t2.pods[0].netns, ["sleep", "60"])
    t2.down()
    t2.down()
    assert p.poll() is not None
    import subprocess
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert t2.prefix + "-" not in names
