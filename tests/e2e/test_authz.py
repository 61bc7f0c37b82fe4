"""L4 authorization (istio/ztunnel src/rbac.rs and src/state.rs assert_rbac) enforced by the destination's ztunnel, with policies applied by live
reload of the local config.

Pods: n1p1 (namespace default), n1p2 (namespace "other"), n2p1 (default, the server: echo on 8080 and 8081),
n2p2 (default). Every pod is meshed. Each test writes the policy set it needs; the module starts with none.
HBONE denials are checked with the independent Python h2 peer (401), meshed clients see their connection
closed without data, and a plaintext connection to 15006 that is denied is closed."""
import os

import pytest

from hbone_peer import HboneClient
from helpers import Mesh, closed_without_data, connect, denied, echo_ok, recv_exact, wait_for

ECHO2 = 8081
ECHO = 8080  # helpers.echo_ok's default port


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=2, namespaces={"n1p2": "other"})
    try:
        m.up()
        srv = m.pod("n2p1")
        m.app(srv, "echo", ECHO)
        m.app(srv, "echo", ECHO2)
        m.root = os.path.join(m.topo.ca(), "root-cert.pem")
        yield m
    finally:
        m.down()


@pytest.fixture
def policies(mesh):
    """Applies a policy set (live reload); the module's config goes back to no policies afterwards."""
    def apply(pols):
        mesh.reconfigure(policies=pols)
    yield apply
    if mesh.policies:
        mesh.reconfigure(policies=[])


def _policy(name, action, rules, ns="default", scope="Namespace"):
    return {"name": name, "namespace": ns, "scope": scope, "action": action, "rules": rules}


def _principal(pod):
    return pod.spiffe[len("spiffe://"):]


def h2_peer(mesh, src, dst, identity, name, port=ECHO):
    """CONNECTs to dst:15008 from src's netns (marked, not captured) with a certificate for identity;
    returns (status, echoed bytes or None)."""
    cert, key = mesh.topo.mint(identity, name)
    c = HboneClient(connect(src.netns, dst.ip, 15008, mark=0x539), cert, key, mesh.root)
    try:
        sid = c.connect("%s:%d" % (dst.ip, port))
        status, _ = c.response(sid)
        if status != 200:
            return status, None
        c.send(sid, b"h2-peer-hello")
        got = b""
        while len(got) < 13:
            b = c.recv(sid, timeout=5)
            if not b:
                break
            got += b
        return status, got
    finally:
        c.close()


def inbound_errors(mesh, src):
    """Inbound access-log errors on the server's ztunnel for connections from src."""
    return [l.get("error") for l in mesh.log_json(mesh.pod("n2p1"))
            if l.get("message") == "connection complete" and l.get("direction") == "inbound"
            and str(l.get("src.addr", "")).startswith(src.ip + ":") and l.get("error")]


def test_no_policy_allows_everyone(mesh, policies):
    srv = mesh.pod("n2p1")
    for src in (mesh.pod("n1p1"), mesh.pod("n1p2"), mesh.pod("n2p2")):
        assert echo_ok(src, srv), src
    assert h2_peer(mesh, mesh.pod("n1p1"), srv, "spiffe://cluster.local/ns/other/sa/anyone", "anyone") == \
        (200, b"h2-peer-hello")
    # Plaintext (not captured on the client side, so it reaches the server pod's 15006).
    assert echo_ok(mesh.pod("n1p1"), srv, mark=0x539)


def test_deny_by_namespace(mesh, policies):
    srv, same_ns, other_ns = mesh.pod("n2p1"), mesh.pod("n1p1"), mesh.pod("n1p2")
    policies([_policy("deny-other", "Deny", [[[{"namespaces": [{"Exact": "other"}]}]]])])
    assert denied(other_ns, srv), "a pod of namespace other reached the server despite the DENY"
    assert echo_ok(same_ns, srv), "the DENY for namespace other also blocked namespace default"
    assert echo_ok(mesh.pod("n2p2"), srv)
    # The independent peer with an identity of namespace other gets Istio's 401; default's gets through.
    assert h2_peer(mesh, same_ns, srv, "spiffe://cluster.local/ns/other/sa/intruder", "intruder")[0] == 401
    assert h2_peer(mesh, same_ns, srv, "spiffe://cluster.local/ns/default/sa/friend", "friend") == \
        (200, b"h2-peer-hello")
    errs = wait_for(lambda: inbound_errors(mesh, other_ns))
    assert errs and all("policy" in e for e in errs), errs


def test_allow_by_principal(mesh, policies):
    srv, allowed, kept_out = mesh.pod("n2p1"), mesh.pod("n1p1"), mesh.pod("n2p2")
    policies([_policy("allow-n1p1", "Allow", [[[{"principals": [{"Exact": _principal(allowed)}]}]]])])
    assert echo_ok(allowed, srv)
    assert denied(kept_out, srv), "a pod without an ALLOW match reached the server"
    assert denied(mesh.pod("n1p2"), srv)
    # Same thing seen by the Python h2 peer: n1p1's identity gets 200, another one 401.
    assert h2_peer(mesh, kept_out, srv, allowed.spiffe, "as-n1p1") == (200, b"h2-peer-hello")
    status, data = h2_peer(mesh, allowed, srv, kept_out.spiffe, "as-n2p2")
    assert status == 401 and data is None
    # Plaintext to 15006 carries no principal: closed.
    assert denied(allowed, srv, mark=0x539), "a plaintext connection passed an ALLOW-by-principal policy"


def test_deny_on_app_port_wins_over_allow(mesh, policies):
    """destinationPorts is the app port (not 15008), and a matching DENY beats a matching ALLOW."""
    srv, src = mesh.pod("n2p1"), mesh.pod("n1p1")
    policies([_policy("allow-n1p1", "Allow", [[[{"principals": [{"Exact": _principal(src)}]}]]]),
              # One rule, two clauses (AND): this principal and this app port.
              _policy("deny-echo2", "Deny", [[[{"principals": [{"Exact": _principal(src)}]}],
                                               [{"destinationPorts": [ECHO2]}]]])])
    assert echo_ok(src, srv, ECHO)
    assert denied(src, srv, ECHO2)


def test_policy_added_while_connection_open_closes_it(mesh, policies):
    srv, victim, bystander = mesh.pod("n2p1"), mesh.pod("n1p1"), mesh.pod("n2p2")
    a = connect(victim.netns, srv.ip, ECHO)
    b = connect(bystander.netns, srv.ip, ECHO)
    try:
        for s in (a, b):
            s.sendall(b"before")
            assert recv_exact(s, 6) == b"before"
        policies([_policy("deny-n1p1", "Deny", [[[{"principals": [{"Exact": _principal(victim)}]}]]])])
        closed, got = closed_without_data(a, timeout=5)
        if not closed:
            # Maybe the close is only noticed on the next write.
            try:
                a.sendall(b"after")
                closed, got = closed_without_data(a, timeout=5)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed and got == b"", "the open connection survived a DENY that matches it (got %r)" % got
        # The connection the new policy does not match is untouched.
        b.sendall(b"still here")
        assert recv_exact(b, 10) == b"still here"
        assert denied(victim, srv), "a new connection was allowed after the DENY"
    finally:
        a.close()
        b.close()
    lines = wait_for(lambda: [l for l in mesh.log_json(srv) if "policy change" in str(l.get("error", ""))])
    assert lines, "no access log line says the connection was closed due to a policy change"
    assert lines[-1].get("error") == "connection closed due to policy change"
    assert str(lines[-1].get("src.addr", "")).startswith(victim.ip + ":")
