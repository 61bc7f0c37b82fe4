"""Graceful drain on SIGTERM (istio/ztunnel src/drain.rs and src/signal.rs): the listeners close at once (new connections are refused), open
connections keep working until they end or until CONNECTION_TERMINATION_DEADLINE, then ztunnel exits 0 and
whatever is still open is closed.

n1p1/n1p2 on node 1, n2p1 (echo server)/n2p2 on node 2, all meshed. Every test stops one ztunnel, so each
test first (re)starts the ztunnels it uses. Only event order is asserted, plus wall-clock margins far wider
than the deadline they check."""
import socket
import time

import pytest

from helpers import Mesh, closed_without_data, connect, echo_ok, recv_all, recv_exact, wait_for

ECHO = 8080
DEADLINE = 3.0


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=2, env={"CONNECTION_TERMINATION_DEADLINE": "%gs" % DEADLINE})
    try:
        m.up()
        m.app(m.pod("n2p1"), "echo", ECHO)
        yield m
    finally:
        m.down()


def _ensure_running(mesh, *pods, env=None):
    for p in pods:
        proc = mesh.ztunnels.get(p.name)
        if env is not None and proc is not None and proc.poll() is None:
            mesh.topo.stop(proc)
        if proc is None or proc.poll() is not None or env is not None:
            mesh.start(p, env=env)


def _refused(netns, ip, port, mark=None):
    """True if a TCP connect is refused (the probe is closed at once if it is accepted)."""
    try:
        s = connect(netns, ip, port, mark=mark, timeout=3)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    s.close()
    return False


def _echo(s, data):
    s.sendall(data)
    return recv_exact(s, len(data)) == data


def _cut(s, timeout):
    """Waits for EOF or reset on s; returns (closed, time it was seen)."""
    closed, got = closed_without_data(s, timeout=timeout)
    assert got == b"", "unexpected data %r" % got
    return closed, time.time()


def test_sigterm_on_client_side(mesh):
    cli, srv = mesh.pod("n1p1"), mesh.pod("n2p1")
    _ensure_running(mesh, cli, srv)
    proc = mesh.ztunnels[cli.name]
    finishing = connect(cli.netns, srv.ip, ECHO, timeout=15)
    lingering = connect(cli.netns, srv.ip, ECHO, timeout=15)
    try:
        assert _echo(finishing, b"hello") and _echo(lingering, b"hello")
        t0 = time.time()
        proc.terminate()
        # The open connections still work right after the signal.
        assert _echo(lingering, b"still open after SIGTERM")
        # New connections are refused (15001 is closed; the pod's rules still redirect there).
        assert wait_for(lambda: _refused(cli.netns, srv.ip, ECHO), timeout=5, interval=0.1), \
            "new outbound connections are still accepted after SIGTERM"
        # A connection that finishes within the grace period completes intact, both ways.
        big = bytes(range(256)) * 1024
        assert _echo(finishing, big)
        finishing.shutdown(socket.SHUT_WR)
        assert recv_all(finishing) == b""
        t_finished = time.time()
        assert proc.poll() is None, "ztunnel exited while a connection was still open before the deadline"
        # The one that stays open is cut at the deadline and ztunnel exits 0.
        closed, t_cut = _cut(lingering, timeout=DEADLINE + 20)
        assert closed, "the lingering connection was not closed after the deadline"
        assert proc.wait(timeout=20) == 0
        assert t_finished <= t_cut
        assert t_cut - t0 >= DEADLINE / 3, "cut %.2fs after SIGTERM, well before the %gs deadline" % (
            t_cut - t0, DEADLINE)
    finally:
        finishing.close()
        lingering.close()


def test_sigterm_on_server_side(mesh):
    cli, srv = mesh.pod("n1p1"), mesh.pod("n2p1")
    _ensure_running(mesh, cli, srv)
    proc = mesh.ztunnels[srv.name]
    s = connect(cli.netns, srv.ip, ECHO, timeout=15)
    try:
        assert _echo(s, b"hello")
        t0 = time.time()
        proc.terminate()
        assert _echo(s, b"inbound stream still open after SIGTERM")
        # 15008 no longer accepts: a fresh TCP connection (not captured, as a peer ztunnel's) is refused.
        assert wait_for(lambda: _refused(cli.netns, srv.ip, 15008, mark=0x539), timeout=5, interval=0.1), \
            "15008 still accepts connections after SIGTERM"
        assert _echo(s, b"and still working")
        closed, t_cut = _cut(s, timeout=DEADLINE + 20)
        assert closed, "the inbound connection was not closed after the deadline"
        assert proc.wait(timeout=20) == 0
        assert t_cut - t0 >= DEADLINE / 3
    finally:
        s.close()


def test_idle_ztunnel_exits_at_once(mesh):
    """With nothing open there is nothing to wait for (an idle pooled HBONE connection does not count):
    exit 0 long before a 60 s deadline."""
    pod, srv = mesh.pod("n1p2"), mesh.pod("n2p1")
    _ensure_running(mesh, srv)
    _ensure_running(mesh, pod, env={"CONNECTION_TERMINATION_DEADLINE": "60s"})
    proc = mesh.ztunnels[pod.name]
    assert echo_ok(pod, srv)
    time.sleep(0.2)
    proc.terminate()
    assert proc.wait(timeout=20) == 0
    # And a drained, restarted ztunnel serves again.
    _ensure_running(mesh, mesh.pod("n1p1"), mesh.pod("n2p1"))
    assert echo_ok(mesh.pod("n1p1"), mesh.pod("n2p1"))
