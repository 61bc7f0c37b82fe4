"""A dying peer does not take down other connections: when one destination's ztunnel is killed, tunnels to
other destinations (on their own pooled connections) keep working, the source ztunnel survives, and new
connections to the dead peer fail cleanly until it comes back."""
import signal

import pytest

from helpers import Mesh, connect, echo_ok, recv_exact, wait_for

ECHO = 8080


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=2)
    try:
        m.up()
        for name in ("n2p1", "n2p2"):
            m.app(m.pod(name), "echo", ECHO)
        yield m
    finally:
        m.down()


def _roundtrip(s, data):
    s.sendall(data)
    return recv_exact(s, len(data)) == data


def test_killed_peer_leaves_other_tunnels_alone(mesh):
    src, dying, other = mesh.pod("n1p1"), mesh.pod("n2p1"), mesh.pod("n2p2")
    to_dying = connect(src.netns, dying.ip, ECHO)
    to_other = connect(src.netns, other.ip, ECHO)
    try:
        assert _roundtrip(to_dying, b"before-dying")
        assert _roundtrip(to_other, b"before-other")

        zt = mesh.ztunnels[dying.name]
        zt.send_signal(signal.SIGKILL)
        zt.wait(timeout=10)

        # The tunnel through the dead ztunnel ends (EOF or reset), without data.
        to_dying.settimeout(10)
        try:
            got = to_dying.recv(100)
        except (ConnectionResetError, OSError):
            got = b""
        assert got == b""
        # The other tunnel, on another pooled connection, carries on.
        assert _roundtrip(to_other, b"after-other" * 1000)
        # The source ztunnel is alive and opens new tunnels to healthy peers.
        assert mesh.ztunnels[src.name].poll() is None
        assert echo_ok(src, other, ECHO)
        # A new connection to the dead peer fails cleanly (refused by nobody listening on 15008).
        assert not echo_ok(src, dying, ECHO)
        assert mesh.ztunnels[src.name].poll() is None
    finally:
        to_dying.close()
        to_other.close()

    # The peer comes back: traffic to it flows again.
    mesh.start(dying)
    assert wait_for(lambda: echo_ok(src, dying, ECHO), timeout=10)
