"""HBONE connection pooling: many concurrent app connections between two pods share one mTLS connection, at most
100 streams each; unused pooled connections are released after POOL_UNUSED_RELEASE_TIMEOUT."""
import time

import pytest

from helpers import Mesh, connect, recv_exact

N = 50


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    # ZTUNNEL_WORKER_THREADS=1 on the client side: zmesh's pool may be per worker thread (workers share no
    # mutable state on the data path), and with two workers two pooled connections would be legitimate.
    # With one worker the pool key {src id, dst id, dst ip:15008} must map to exactly one connection.
    # n1p2 keeps the default (2 workers): there, one pooled connection per worker at most.
    # n1p1 also releases unused pooled connections after 2 s instead of Istio's 5 min, so the test can see it.
    m = Mesh(nodes=2, pods=2, pod_env={"n1p1": {"ZTUNNEL_WORKER_THREADS": "1", "POOL_UNUSED_RELEASE_TIMEOUT": "2"},
                                       "n1p2": {"ZTUNNEL_WORKER_THREADS": "2"}})
    try:
        m.up()
        m.app(m.pod("n2p1"), "echo", 8080)
        m.app(m.pod("n2p2"), "echo", 8080)
        yield m
    finally:
        m.down()


def _hbone_conns(m, pod):
    out = m.topo.run(pod.netns, ["ss", "-tnH", "state", "established", "( sport = :15008 )"]).stdout
    return [l for l in out.splitlines() if l.strip()]


def _open_50(mesh, src, dst, n=N):
    """Opens n connections src -> dst:8080, checks a round trip on each, returns the HBONE connections seen
    in dst's netns while all n are open."""
    socks = []
    try:
        for i in range(n):
            socks.append(connect(src.netns, dst.ip, 8080))
        # A round trip on every connection proves each stream is established end to end.
        for i, s in enumerate(socks):
            s.sendall(b"conn-%03d" % i)
        for i, s in enumerate(socks):
            assert recv_exact(s, 8) == b"conn-%03d" % i
        return _hbone_conns(mesh, dst)
    finally:
        for s in socks:
            s.close()


def test_50_concurrent_connections_share_one_tls_connection(mesh):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    conns = _open_50(mesh, src, dst)
    assert len(conns) == 1, "expected one pooled HBONE connection, found:\n" + "\n".join(conns)
    assert src.ip in conns[0]


def test_two_workers_use_at_most_two_connections(mesh):
    src, dst = mesh.pod("n1p2"), mesh.pod("n2p2")
    conns = _open_50(mesh, src, dst)
    assert 1 <= len(conns) <= 2, "expected at most one pooled connection per worker:\n" + "\n".join(conns)
    assert all(src.ip in c for c in conns)


def test_more_than_100_streams_open_a_second_connection(mesh):
    """Istio's POOL_MAX_STREAMS_PER_CONNECTION: 150 concurrent tunnels from one worker need two connections."""
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    conns = _open_50(mesh, src, dst, n=150)
    assert len(conns) == 2, "expected two pooled HBONE connections for 150 streams:\n" + "\n".join(conns)


def test_unused_connection_is_released(mesh):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    assert len(_open_50(mesh, src, dst, n=3)) >= 1
    assert len(_hbone_conns(mesh, dst)) >= 1  # still pooled right after the apps closed
    deadline = time.time() + 15
    while _hbone_conns(mesh, dst) and time.time() < deadline:
        time.sleep(0.25)
    assert _hbone_conns(mesh, dst) == [], "the unused pooled connection was not released"
    # The next connection dials a new one and works.
    assert len(_open_50(mesh, src, dst, n=1)) == 1
