"""zmesh's outbound HBONE client against an independent HBONE server (Python ssl + h2).

n1p1 is meshed (ztunnel + rules). n2p1 and n2p2 are declared HBONE workloads that run no ztunnel: each runs
hbone_peer.py on 15008. n2p1's server presents n2p1's SPIFFE id; n2p2's presents another identity, so zmesh
must refuse it (the client checks the server's URI SAN against the destination's identity)."""
import json
import os
import re
import socket
import time

import pytest

from helpers import Mesh, connect, recv_all, start_hbone_server, wait_for


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=2, meshed=["n1p1"])
    try:
        m.up()
        t = m.topo
        ca = os.path.join(t.ca(), "root-cert.pem")
        good, bad = m.pod("n2p1"), m.pod("n2p2")
        m.records = {}
        for pod, ident in ((good, good.spiffe), (bad, "spiffe://cluster.local/ns/default/sa/impostor")):
            cert, key = t.mint(ident, "peer-" + pod.name)
            m.records[pod.name] = os.path.join(t.workdir, "record-%s.jsonl" % pod.name)
            start_hbone_server(t, pod, cert, key, ca, m.records[pod.name])
        yield m
    finally:
        m.down()


def _records(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def test_connect_request_matches_istio(mesh):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    s = connect(src.netns, dst.ip, 8080)
    client = "%s:%d" % s.getsockname()[:2]
    s.sendall(b"hello hbone server")
    got = b""
    while len(got) < 18:
        b = s.recv(100)
        assert b, "connection closed before the echo"
        got += b
    assert got == b"hello hbone server"
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == b""   # our FIN -> END_STREAM -> echoed END_STREAM -> FIN
    s.close()

    recs = wait_for(lambda: [r for r in _records(mesh.records["n2p1"]) if r.get("method")])
    assert len(recs) == 1, recs
    r = recs[0]
    assert r["method"] == "CONNECT"
    assert r["authority"] == "%s:8080" % dst.ip
    assert r["scheme"] is None and r["path"] is None
    assert sorted(r["pseudo"]) == [":authority", ":method"]
    h = r["headers"]
    assert h.get("forwarded") == 'for="%s"' % client, h
    assert "k8s.namespace.name=default" in h.get("baggage", ""), h
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", h.get("traceparent", "")), h
    assert not [k for k in h if k.startswith("x-istio")]
    assert r["alpn"] == "h2"
    assert r["tls_version"] == "TLSv1.3"
    assert r["peer_uris"] == [src.spiffe]
    assert r["peer_addr"].startswith(src.ip + ":")


def test_server_with_wrong_identity_is_refused(mesh):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p2")
    s = connect(src.netns, dst.ip, 8080, timeout=5)
    got = b""
    try:
        s.sendall(b"must not arrive")
        deadline = time.time() + 5
        while time.time() < deadline:
            b = s.recv(100)
            if not b:
                break
            got += b
    except (socket.timeout, ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    assert got == b"", "bytes echoed through a server with the wrong identity"
    # zmesh aborted before sending any CONNECT to the impostor.
    assert not [r for r in _records(mesh.records["n2p2"]) if r.get("method")]
