"""ztunnel's inbound HBONE listener (15008) against an independent client (Python ssl + h2) that plays
another node's ztunnel: certificate checks, then request validation and status codes.

The client runs in pod n1p1's netns with SO_MARK 0x539 so the in-pod rules do not capture it; only n2p1 runs
a ztunnel (with an echo app on 8080)."""
import os

import pytest

from helpers import Mesh, connect
from hbone_peer import HboneClient, HboneError

ECHO = 8080


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=1, meshed=["n2p1"])
    try:
        m.up()
        m.app(m.pod("n2p1"), "echo", ECHO)
        m.topo.inpod_rules(m.pod("n1p1"))   # the client pod is captured like any pod; the mark exempts it
        yield m
    finally:
        m.down()


def _root(m):
    return os.path.join(m.topo.ca(), "root-cert.pem")


def _client(m, cert=None, key=None, verify=True):
    src, dst = m.pod("n1p1"), m.pod("n2p1")
    s = connect(src.netns, dst.ip, 15008, mark=0x539)
    return HboneClient(s, cert, key, _root(m) if verify else None, timeout=10)


def _valid_client(m):
    src = m.pod("n1p1")
    return _client(m, *m.topo.mint(src.spiffe, "valid-" + src.name))


def _attempt(m, cert, key):
    """Returns the status of a CONNECT to the echo app with this client cert, or the error that stopped it."""
    dst = m.pod("n2p1")
    try:
        c = _client(m, cert, key)
        sid = c.connect("%s:%d" % (dst.ip, ECHO))
        status, _ = c.response(sid, timeout=5)
        if status == 200:
            c.send(sid, b"x")
            c.recv(sid, timeout=3)
        c.close()
        return status
    except (HboneError, OSError) as e:
        return "rejected: %s" % e


def test_valid_client_gets_200_and_echo(mesh):
    dst = mesh.pod("n2p1")
    c = _valid_client(mesh)
    assert c.server_uris() == [dst.spiffe], "server must present the destination pod's identity"
    assert c.tls.version() == "TLSv1.3" and c.tls.selected_alpn_protocol() == "h2"
    sid = c.connect("%s:%d" % (dst.ip, ECHO), [(b"forwarded", b'for="%s:4242"' % mesh.pod("n1p1").ip.encode())])
    assert c.response(sid)[0] == 200
    c.send(sid, b"hello over hbone")
    got = b""
    while len(got) < 16:
        got += c.recv(sid)
    assert got == b"hello over hbone"
    c.send(sid, b"", end_stream=True)
    assert c.recv(sid) == b""   # the app's FIN comes back as END_STREAM
    c.close()


def test_client_cert_from_other_trust_domain_is_rejected(mesh):
    cert, key = mesh.topo.mint("spiffe://evil.example/ns/default/sa/sa-n1p1", "other-td")
    result = _attempt(mesh, cert, key)
    assert result != 200 and str(result).startswith("rejected"), result


def test_client_cert_from_other_root_is_rejected(mesh):
    other = mesh.topo.ca("other-ca")
    cert, key = mesh.topo.mint(mesh.pod("n1p1").spiffe, "other-root", root_dir=other)
    result = _attempt(mesh, cert, key)
    assert result != 200 and str(result).startswith("rejected"), result


def test_no_client_cert_is_rejected(mesh):
    result = _attempt(mesh, None, None)
    assert result != 200 and str(result).startswith("rejected"), result


def test_client_cert_without_spiffe_san_is_rejected(mesh):
    cert, key = mesh.topo.mint(None, "no-san")
    result = _attempt(mesh, cert, key)
    assert result != 200 and str(result).startswith("rejected"), result


def _status(m, headers, end_stream=False):
    c = _valid_client(m)
    try:
        sid = c.request(headers, end_stream=end_stream)
        return c.response(sid, timeout=12)[0]
    finally:
        c.close()


def test_get_is_400(mesh):
    dst = mesh.pod("n2p1")
    assert _status(mesh, [(":method", "GET"), (":scheme", "https"), (":path", "/"),
                          (":authority", "%s:%d" % (dst.ip, ECHO))], end_stream=True) == 400


def test_connect_to_other_ip_is_400(mesh):
    assert _status(mesh, [(":method", "CONNECT"), (":authority", "10.0.2.99:%d" % ECHO)]) == 400


@pytest.mark.parametrize("authority", ["10.0.2.2", "10.0.2.2:http", "[::1"])
def test_connect_with_bad_authority_is_400(mesh, authority):
    """Authorities that are neither ip:port nor host:port. (An authority that is not even valid HTTP/2, such
    as one with spaces, may instead be reset as malformed by the HTTP/2 layer, as Istio's h2 stack does.)"""
    assert _status(mesh, [(":method", "CONNECT"), (":authority", authority)]) == 400


@pytest.mark.parametrize("port", [15001, 15006, 15008])
def test_connect_to_ztunnel_port_is_503(mesh, port):
    dst = mesh.pod("n2p1")
    assert _status(mesh, [(":method", "CONNECT"), (":authority", "%s:%d" % (dst.ip, port))]) == 503


def test_connect_to_closed_port_is_503(mesh):
    dst = mesh.pod("n2p1")
    assert _status(mesh, [(":method", "CONNECT"), (":authority", "%s:9999" % dst.ip)]) == 503


def test_several_streams_on_one_connection(mesh):
    """Two CONNECTs multiplexed on one TLS connection, interleaved, each echoing its own bytes."""
    dst = mesh.pod("n2p1")
    c = _valid_client(mesh)
    s1 = c.connect("%s:%d" % (dst.ip, ECHO))
    s2 = c.connect("%s:%d" % (dst.ip, ECHO))
    assert c.response(s1)[0] == 200 and c.response(s2)[0] == 200
    c.send(s1, b"one" * 1000)
    c.send(s2, b"two" * 1000)
    for sid, want in ((s1, b"one" * 1000), (s2, b"two" * 1000)):
        got = b""
        while len(got) < len(want):
            got += c.recv(sid)
        assert got == want
    c.close()
