"""What crosses the wire between nodes: for HBONE destinations only mTLS to port 15008, never the plaintext;
for a plain TCP destination (control) the plaintext is visible, which proves the capture would catch a leak."""
import os
import socket

import pytest

from helpers import Mesh, connect, recv_exact
from topo import ipv4_tcp_ports, read_pcap

MARKER = b"ZMESH-SECRET-MARKER-7f3a9c1e"


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    # n1p1 (client) and n2p1 are meshed HBONE workloads; n2p2 is a plain TCP workload without ztunnel.
    m = Mesh(nodes=2, pods=2, meshed=["n1p1", "n2p1"], protocols={"n2p2": "TCP"})
    try:
        m.up()
        m.app(m.pod("n2p1"), "echo", 8080)
        m.app(m.pod("n2p2"), "echo", 8080)
        yield m
    finally:
        m.down()


def _send_markers(m, dst, pcap):
    src = m.pod("n1p1")
    with m.topo.capture(m.topo.nodes[0], "eth0", "", pcap):
        for _ in range(3):
            s = connect(src.netns, dst.ip, 8080)
            s.sendall(MARKER * 50)
            assert recv_exact(s, len(MARKER) * 50) == MARKER * 50
            s.shutdown(socket.SHUT_WR)
            s.close()
    return read_pcap(pcap)


def test_hbone_traffic_is_only_mtls_to_15008(mesh, tmp_path):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    lt, pkts = _send_markers(mesh, dst, str(tmp_path / "hbone.pcap"))
    raw = b"".join(pkts)
    assert MARKER not in raw, "plaintext marker leaked onto the node uplink"
    tcp = [ipv4_tcp_ports(lt, p) for p in pkts]
    tcp = [x for x in tcp if x]
    assert tcp, "captured no TCP at all"
    bad = [x[:4] for x in tcp if 15008 not in (x[1], x[3])]
    assert not bad, "TCP without port 15008 on the uplink: %s" % bad[:5]
    # Pod to pod, with the pod IPs on the wire (no node-level NAT), payload carried to the peer's 15008.
    assert any(x[0] == src.ip and x[2] == dst.ip and x[3] == 15008 and x[4] for x in tcp)
    assert any(x[0] == dst.ip and x[1] == 15008 and x[2] == src.ip and x[4] for x in tcp)


def test_control_plain_tcp_destination_shows_the_marker(mesh, tmp_path):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p2")
    lt, pkts = _send_markers(mesh, dst, str(tmp_path / "plain.pcap"))
    assert MARKER in b"".join(pkts), "control failed: the capture did not see plaintext to a TCP workload"
    tcp = [x for x in (ipv4_tcp_ports(lt, p) for p in pkts) if x]
    assert any(x[0] == src.ip and x[2] == dst.ip and x[3] == 8080 for x in tcp)
    assert not any(15008 in (x[1], x[3]) for x in tcp)
    assert os.path.getsize(str(tmp_path / "plain.pcap")) > 24
