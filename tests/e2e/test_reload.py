"""Live reload of the local config (LOCAL_XDS_PATH): ztunnel watches the file's directory, applies a new
version (written to a temp file and renamed over the old one) as a new snapshot without touching open
connections, and keeps the previous config when the new file is broken.

n1p1 (client) and n2p1 (server: echo on 8080), both meshed. A DENY policy for n1p1 is the observable
change: when it is in force, n1p1's new connections to the server are closed."""
import os
import re
import socket

import pytest

from helpers import Mesh, connect, denied, echo_ok, recv_all, recv_exact, wait_for

ECHO = 8080


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=1)
    try:
        m.up()
        m.app(m.pod("n2p1"), "echo", ECHO)
        yield m
    finally:
        m.down()


def _deny_n1p1(mesh):
    return [{"name": "deny-n1p1", "namespace": "default", "scope": "Namespace", "action": "Deny",
             "rules": [[[{"principals": [{"Exact": mesh.pod("n1p1").spiffe[len("spiffe://"):]}]}]]]}]


def _reloads(mesh, pod):
    return [l for l in mesh.log_json(pod) if l.get("message") == "config reloaded"]


def _failures(mesh, pod):
    return [l for l in mesh.log_json(pod)
            if l.get("message") == "config reload failed, keeping the previous config"]


def test_reload_applies_and_keeps_open_connections(mesh):
    cli, srv = mesh.pod("n1p1"), mesh.pod("n2p1")
    s = connect(cli.netns, srv.ip, ECHO)
    try:
        s.sendall(b"before reload")
        assert recv_exact(s, 13) == b"before reload"
        # A reload that changes nothing relevant to this connection (a new service) leaves it alone.
        mesh.reconfigure(services=[{"name": "extra", "namespace": "default",
                                    "hostname": "extra.default.svc.cluster.local", "vips": ["/10.96.7.7"],
                                    "ports": {80: 8080}}])
        s.sendall(b"after reload")
        assert recv_exact(s, 12) == b"after reload"
        mesh.reconfigure(services=[])
        s.sendall(b"after second reload")
        assert recv_exact(s, 19) == b"after second reload"
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b""
    finally:
        s.close()
    for pod in (cli, srv):
        lines = _reloads(mesh, pod)
        assert len(lines) >= 2
        versions = [l.get("version") for l in lines]
        assert all(v not in (None, "") for v in versions), lines
        nums = [int(v) for v in versions]
        assert nums == sorted(nums) and len(set(nums)) == len(nums), "versions do not increase: %r" % nums
        assert all(l.get("level") == "info" for l in lines)
    assert echo_ok(cli, srv)


def test_policy_change_is_applied_by_reload(mesh):
    cli, srv = mesh.pod("n1p1"), mesh.pod("n2p1")
    assert echo_ok(cli, srv)
    mesh.reconfigure(policies=_deny_n1p1(mesh))
    assert denied(cli, srv), "the DENY written by a reload was not applied"
    mesh.reconfigure(policies=[])
    assert echo_ok(cli, srv), "removing the DENY by a reload did not re-allow the client"


def _line_of(text, needle):
    for i, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError("%r not in config" % needle)


@pytest.mark.parametrize("breakage", ["bad_ip", "bad_yaml", "bad_enum"])
def test_broken_file_keeps_previous_config(mesh, breakage):
    cli, srv = mesh.pod("n1p1"), mesh.pod("n2p1")
    mesh.reconfigure(policies=_deny_n1p1(mesh))
    assert denied(cli, srv)
    good = mesh.config_text()
    if breakage == "bad_ip":
        text = good.replace('"%s"' % srv.ip, '"10.0.2.x"', 1)
        field = r"workloads\[1\]\.workloadIps\[0\]"
        line = _line_of(text, "10.0.2.x")
    elif breakage == "bad_enum":
        text = good.replace("action: Deny", "action: Maybe", 1)
        field = r"policies\[0\]\.action"
        line = _line_of(text, "Maybe")
    else:
        text = good + "policies: [unclosed\n"
        field, line = None, None
    before = {p.name: len(_failures(mesh, p)) for p in (cli, srv)}
    mesh.reconfigure(text=text, wait=False)
    for pod in (cli, srv):
        assert wait_for(lambda: len(_failures(mesh, pod)) > before[pod.name], timeout=10), \
            "no 'config reload failed' line from %s" % pod.name
        l = _failures(mesh, pod)[-1]
        assert l.get("level") == "error"
        err = l.get("error", "")
        m = re.match(r"^(.*):(\d+):(\d+): (.+)$", err)
        assert m, "error is not <file>:<line>:<col>: ...: %r" % err
        assert os.path.basename(m.group(1)) == os.path.basename(mesh.config), err
        if field:
            assert int(m.group(2)) == line, "wrong line in %r (the bad value is on line %d)" % (err, line)
            assert re.match(field + r": \S", m.group(4)), "error does not name %s: %r" % (field, err)
        assert mesh.ztunnels[pod.name].poll() is None, "ztunnel exited on a broken config"
    # The previous config (with the DENY) is still in force: not reverted, not emptied.
    assert denied(cli, srv), "a broken file dropped the policy of the previous config"
    # Fixing the file applies again.
    mesh.reconfigure(policies=[])
    assert echo_ok(cli, srv)


def test_rapid_writes_last_one_wins(mesh):
    cli, srv = mesh.pod("n1p1"), mesh.pod("n2p1")
    for i in range(6):
        mesh.policies = _deny_n1p1(mesh) if i % 2 == 0 else []
        mesh.topo.write_config(mesh.config_text())
    # The last write has no policy; the one before it denied n1p1. Wait for the dust to settle.
    assert wait_for(lambda: echo_ok(cli, srv), timeout=10, interval=0.3)
    mesh.reconfigure(policies=_deny_n1p1(mesh))
    for i in range(5):
        mesh.policies = [] if i % 2 == 0 else _deny_n1p1(mesh)
        mesh.topo.write_config(mesh.config_text())
    assert wait_for(lambda: denied(cli, srv), timeout=10, interval=0.3), \
        "after a burst of writes ending with a DENY, the DENY is not in force"
    mesh.reconfigure(policies=[])
