"""The Python HBONE peers against each other (no ztunnel). Proves that the test client and server the zmesh
tests rely on do what they claim: TLS 1.3 + ALPN h2, client certificates required, CONNECT recorded."""
import json
import os
import time

import pytest

from helpers import connect, start_hbone_server, wait_for
from hbone_peer import HboneClient, HboneError
from topo import Topology


@pytest.fixture(scope="module")
def env():
    t = Topology(nodes=2, pods_per_node=1)
    try:
        t.up()
        a, b = t.pod(1, 1), t.pod(2, 1)
        ca = os.path.join(t.ca(), "root-cert.pem")
        scert, skey = t.mint(b.spiffe, "server")
        record = os.path.join(t.workdir, "peer-record.jsonl")
        start_hbone_server(t, b, scert, skey, ca, record)
        yield t, a, b, ca, record
    finally:
        t.down()


def _records(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def test_connect_echo_and_recorded_headers(env):
    t, a, b, ca, record = env
    cert, key = t.mint(a.spiffe, "client")
    s = connect(a.netns, b.ip, 15008, mark=0x539)
    c = HboneClient(s, cert, key, ca)
    assert c.server_uris() == [b.spiffe]
    sid = c.connect("%s:8080" % b.ip, [(b"forwarded", b'for="10.0.1.2:1234"')])
    status, _ = c.response(sid)
    assert status == 200
    c.send(sid, b"ping" * 100000)
    got = b""
    while len(got) < 400000:
        got += c.recv(sid)
    assert got == b"ping" * 100000
    c.send(sid, b"", end_stream=True)
    assert c.recv(sid) == b""
    c.close()
    rec = wait_for(lambda: [r for r in _records(record) if r.get("method") == "CONNECT"])
    r = rec[-1]
    assert r["authority"] == "%s:8080" % b.ip and r["pseudo"] == [":method", ":authority"]
    assert r["tls_version"] == "TLSv1.3" and r["alpn"] == "h2" and r["peer_uris"] == [a.spiffe]
    assert r["headers"]["forwarded"] == 'for="10.0.1.2:1234"'


def test_get_gets_400(env):
    t, a, b, ca, _ = env
    cert, key = t.mint(a.spiffe, "client2")
    c = HboneClient(connect(a.netns, b.ip, 15008, mark=0x539), cert, key, ca)
    sid = c.request([(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", b.ip)],
                    end_stream=True)
    assert c.response(sid)[0] == 400
    c.close()


def test_server_without_client_cert_is_detected_as_rejection(env):
    t, a, b, ca, record = env
    s = connect(a.netns, b.ip, 15008, mark=0x539)
    with pytest.raises((HboneError, OSError)):
        c = HboneClient(s, None, None, ca)
        sid = c.connect("%s:8080" % b.ip)
        c.response(sid, timeout=5)
    assert wait_for(lambda: any("handshake_error" in r for r in _records(record)))
