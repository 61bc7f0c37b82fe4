"""HBONE connection pooling: many concurrent app connections between two pods share one mTLS connection."""
import pytest

from helpers import Mesh, connect, recv_exact

N = 50


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    # ZTUNNEL_WORKER_THREADS=1 on the client side: zmesh's pool may be per worker thread (workers share no
    # mutable state on the data path), and with two workers two pooled connections would be legitimate.
    # With one worker the pool key {src id, dst id, dst ip:15008} must map to exactly one connection.
    # n1p2 keeps the default (2 workers): there, one pooled connection per worker at most.
    m = Mesh(nodes=2, pods=2, pod_env={"n1p1": {"ZTUNNEL_WORKER_THREADS": "1"},
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


def _open_50(mesh, src, dst):
    """Opens N connections src -> dst:8080, checks a round trip on each, returns the HBONE connections seen
    in dst's netns while all N are open."""
    socks = []
    try:
        for i in range(N):
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
