"""Services: a client in a meshed pod connects to a service VIP (no route or DNS involved: the outbound
capture takes it first) and reaches one endpoint's target port over HBONE (istio/ztunnel src/state.rs load_balance).

Pods (2 nodes x 3 pods):
  n1p1  the client, locality r1/z1
  n1p2  endpoint, r1/z1        n2p1  endpoint, r2/z3        n2p2  endpoint, r1/z2
  n1p3  endpoint of svc-none only, Unhealthy (must never be picked)
  n2p3  no ztunnel: runs the Python HBONE server, endpoint of svc-peer (to see the CONNECT headers)
Every endpoint with a ztunnel runs a "tag" server on 8080 that answers its own pod name.

Services (port 80 -> 8080):
  svc-spread  10.96.0.10  n1p2 (capacity 1), n2p1 (1), n2p2 (2); Standard mode: random, weighted
  svc-peer    10.96.0.11  n2p3 only
  svc-fo      10.96.0.12  n1p2, n2p2, n2p1; Failover over [Region, Zone]
  svc-none    10.96.0.13  n1p3 (Unhealthy): no healthy endpoint
"""
import collections
import json
import os
import socket

import pytest

from helpers import Mesh, closed_without_data, connect, recv_all, start_hbone_server, start_tag_server, \
    wait_for

TARGET = 8080
SPREAD, PEER, FO, NONE = "10.96.0.10", "10.96.0.11", "10.96.0.12", "10.96.0.13"


def _host(name):
    return "%s.default.svc.cluster.local" % name


def _svc(name, vip, lb=None):
    s = {"name": name, "namespace": "default", "hostname": _host(name), "vips": ["/" + vip],
         "ports": {80: TARGET}}
    if lb:
        s["loadBalancer"] = lb
    return s


SERVICES = [
    _svc("svc-spread", SPREAD),
    _svc("svc-peer", PEER),
    _svc("svc-fo", FO, {"routingPreferences": ["Region", "Zone"], "mode": "Failover",
                        "healthPolicy": "OnlyHealthy"}),
    _svc("svc-none", NONE),
]


def _workload_extra(unhealthy=()):
    def member(*names):
        return {"default/" + _host(n): {80: TARGET} for n in names}
    extra = {
        "n1p1": {"locality": {"region": "r1", "zone": "z1"}},
        "n1p2": {"locality": {"region": "r1", "zone": "z1"}, "capacity": 1,
                 "services": member("svc-spread", "svc-fo")},
        "n2p1": {"locality": {"region": "r2", "zone": "z3"}, "capacity": 1,
                 "services": member("svc-spread", "svc-fo")},
        "n2p2": {"locality": {"region": "r1", "zone": "z2"}, "capacity": 2,
                 "services": member("svc-spread", "svc-fo")},
        "n1p3": {"locality": {"region": "r1", "zone": "z1"}, "status": "Unhealthy",
                 "services": member("svc-none")},
        "n2p3": {"services": member("svc-peer")},
    }
    for n in unhealthy:
        extra[n] = dict(extra[n], status="Unhealthy")
    return extra


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=3, meshed=["n1p1", "n1p2", "n1p3", "n2p1", "n2p2"],
             workload_extra=_workload_extra(), services=SERVICES)
    try:
        m.up()
        t = m.topo
        for name in ("n1p2", "n1p3", "n2p1", "n2p2"):
            start_tag_server(t, m.pod(name), TARGET, name)
        peer = m.pod("n2p3")
        cert, key = t.mint(peer.spiffe, "peer-n2p3")
        m.record = os.path.join(t.workdir, "record-n2p3.jsonl")
        start_hbone_server(t, peer, cert, key, os.path.join(t.ca(), "root-cert.pem"), m.record)
        yield m
    finally:
        m.down()


def _which(mesh, vip, port=80):
    """Connects from the client to vip:port; returns the tag the endpoint answered."""
    s = connect(mesh.pod("n1p1").netns, vip, port)
    try:
        return recv_all(s).decode().strip()
    finally:
        s.close()


def _spread(mesh, vip, n):
    return collections.Counter(_which(mesh, vip) for _ in range(n))


def test_vip_spread_follows_capacity(mesh):
    n = 300
    got = _spread(mesh, SPREAD, n)
    assert set(got) <= {"n1p2", "n2p1", "n2p2"}, got
    assert sum(got.values()) == n, got
    # Capacities 1:1:2 over two nodes: expected 75/75/150 (sd ~7.5/7.5/8.7). Every endpoint gets some, and
    # the heavy one clearly more than a uniform pick would give (100 expected if weights were ignored).
    for name in ("n1p2", "n2p1", "n2p2"):
        assert got[name] >= 30, "endpoint %s got %d of %d: %r" % (name, got[name], n, got)
    assert got["n2p2"] >= 0.4 * n, "capacity 2 endpoint got only %d of %d: %r" % (got["n2p2"], n, got)
    assert got["n2p2"] > got["n1p2"] and got["n2p2"] > got["n2p1"], got


def test_access_log_names_the_service(mesh):
    cli = mesh.pod("n1p1")
    before = len(mesh.log_json(cli))
    s = connect(cli.netns, SPREAD, 80)
    tag = recv_all(s).decode().strip()
    s.close()
    dst = mesh.pod(tag)

    # Lines written since `before`, not matched by src.addr: the REDIRECT's NAT may remap the source port.
    # (Connections of earlier tests may also end in this window: look for the one to the endpoint that answered.)
    def line():
        return [l for l in mesh.log_json(cli)[before:] if l.get("message") == "connection complete"
                and l.get("direction") == "outbound" and l.get("dst.workload") == tag]
    lines = wait_for(line)
    assert lines, "no outbound access log line for the connection to %s" % tag
    assert lines[-1]["src.addr"].startswith(cli.ip + ":"), lines[-1]
    l = lines[-1]
    assert l.get("dst.service") == _host("svc-spread"), l
    assert l.get("dst.hbone_addr") == "%s:%d" % (dst.ip, TARGET), l
    assert l.get("dst.addr") == "%s:15008" % dst.ip, l
    assert l.get("dst.workload") == tag, l
    assert not l.get("error"), l


def test_connect_to_endpoint_carries_service_host(mesh):
    """The CONNECT goes to the endpoint's IP and target port; forwarded carries ;host=<service hostname>."""
    cli, peer = mesh.pod("n1p1"), mesh.pod("n2p3")
    s = connect(cli.netns, PEER, 80)
    client = "%s:%d" % s.getsockname()[:2]
    s.sendall(b"via the service")
    got = b""
    while len(got) < 15:
        b = s.recv(100)
        assert b, "closed before the echo"
        got += b
    assert got == b"via the service"
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == b""
    s.close()

    def recs():
        if not os.path.exists(mesh.record):
            return []
        with open(mesh.record) as f:
            return [json.loads(x) for x in f if x.strip() and '"method"' in x]
    r = wait_for(recs)
    assert r, "the HBONE server got no request"
    r = r[-1]
    assert r["method"] == "CONNECT"
    assert r["authority"] == "%s:%d" % (peer.ip, TARGET)
    assert r["peer_uris"] == [cli.spiffe]
    fwd = r["headers"].get("forwarded", "")
    parts = [p.strip() for p in fwd.split(";")]
    assert 'for="%s"' % client in parts, fwd
    assert "host=%s" % _host("svc-peer") in parts, fwd


def test_failover_follows_locality_and_health(mesh):
    try:
        # All healthy: only the best-ranked endpoint (same region and zone) is eligible.
        got = _spread(mesh, FO, 20)
        assert got == {"n1p2": 20}, "failover picked outside the client's zone: %r" % got
        # Local zone unhealthy: same region, other zone (rank 1) before the other region (rank 0).
        mesh.reconfigure(workload_extra=_workload_extra(unhealthy=("n1p2",)))
        got = _spread(mesh, FO, 20)
        assert got == {"n2p2": 20}, "with n1p2 unhealthy: %r" % got
        # The whole region unhealthy: the other region.
        mesh.reconfigure(workload_extra=_workload_extra(unhealthy=("n1p2", "n2p2")))
        got = _spread(mesh, FO, 20)
        assert got == {"n2p1": 20}, "with region r1 unhealthy: %r" % got
        # Healthy again: back to the local endpoint.
        mesh.reconfigure(workload_extra=_workload_extra())
        got = _spread(mesh, FO, 10)
        assert got == {"n1p2": 10}, "after recovery: %r" % got
    finally:
        if mesh.workload_extra != _workload_extra():
            mesh.reconfigure(workload_extra=_workload_extra())


def test_unhealthy_endpoint_left_out_of_standard_spread(mesh):
    try:
        mesh.reconfigure(workload_extra=_workload_extra(unhealthy=("n2p2",)))
        got = _spread(mesh, SPREAD, 40)
        assert "n2p2" not in got and set(got) <= {"n1p2", "n2p1"}, got
    finally:
        mesh.reconfigure(workload_extra=_workload_extra())


def test_no_healthy_endpoint_closes_the_connection(mesh):
    cli = mesh.pod("n1p1")

    def failed_lines():
        return [l for l in mesh.log_json(cli) if l.get("dst.service") == "svc-none.default.svc.cluster.local"
                and l.get("direction") == "outbound" and l.get("error")]

    before = len(failed_lines())
    try:
        s = connect(cli.netns, NONE, 80, timeout=5)
    except (ConnectionRefusedError, ConnectionResetError):
        s = None
    if s is not None:
        # Not matched by src.addr: the REDIRECT's NAT may remap the source port when the tuple clashes with
        # an earlier connection's, so ztunnel can see another port than getsockname() shows.
        try:
            try:
                s.sendall(b"anyone there?")
            except (BrokenPipeError, ConnectionResetError):
                pass
            closed, got = closed_without_data(s, timeout=5)
        finally:
            s.close()
        assert closed and got == b"", "a VIP without a healthy endpoint gave %r (closed: %s)" % (got, closed)
        lines = wait_for(lambda: failed_lines()[before:])
        assert lines, "no access log error for the connection to a service without healthy endpoint"
        assert lines[-1]["src.addr"].startswith(cli.ip + ":")
        assert lines[-1].get("level") == "error"
    # The unhealthy endpoint's app never saw a connection through the service.
    assert not [l for l in mesh.log_json(mesh.pod("n1p3"))
                if l.get("message") == "connection complete" and l.get("direction") == "inbound"]
