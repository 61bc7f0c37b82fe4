"""The waypoint end to end: HBONE in from a peer zmesh did not write (Python ssl + h2), HBONE out to the
destination's ztunnel, real apps in network namespaces.

Topology (Mesh, 2 nodes x 2 pods): n1p1 runs the waypoint (service account "waypoint", Gateway "waypoint" in
"default"), n1p2 is the client (the test opens HBONE from its namespace with its own certificate, as its
ztunnel would), n2p1 and n2p2 are meshed servers (dedicated ztunnels, in-pod rules) behind service "echo"
(VIP 10.96.0.10) bound to the waypoint; service "direct" (VIP 10.96.0.11) has the same endpoints and no
waypoint. Config: LocalConfig for every process; certificates from the test's CA."""
import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest

from helpers import Mesh, start_app, start_tag_server, wait_for
from hbone_peer import HboneClient, client_context
from topo import netns_socket, tail

ECHO_VIP, DIRECT_VIP = "10.96.0.10", "10.96.0.11"
WP_HOST = "waypoint.default.svc.cluster.local"


def _svc(name, vip, ports, waypoint=True):
    s = {"name": name, "namespace": "default", "hostname": "%s.default.svc.cluster.local" % name,
         "vips": ["/" + vip], "ports": ports}
    if waypoint:
        s["waypoint"] = {"destination": "default/" + WP_HOST, "hboneMtlsPort": 15008}
    return s


SERVICES = [
    _svc("echo", ECHO_VIP, {80: 8080, 9000: 9000}),
    _svc("direct", DIRECT_VIP, {80: 8080}, waypoint=False),
    {"name": "waypoint", "namespace": "default", "hostname": WP_HOST, "vips": ["/10.96.0.2"],
     "ports": {15008: 15008}},
]


def start_waypoint(topo, pod, config, env=None, timeout=10.0):
    """Starts the waypoint in pod's netns with LocalConfig and the test CA; waits for 15008 and readiness."""
    e = dict(os.environ)
    e.update({"LOCAL_XDS_PATH": config, "LOCAL_CA_DIR": topo.ca(), "POD_NAME": pod.name,
              "POD_NAMESPACE": pod.namespace, "SERVICE_ACCOUNT": pod.sa, "INSTANCE_IP": pod.ip,
              "LOG_LEVEL": "info"})
    e.update(env or {})
    log_path = os.path.join(topo.workdir, "waypoint-%s.log" % pod.name)
    with open(log_path, "ab") as log:
        proc = topo.popen(pod.netns, [os.path.join(topo.bin_dir(), "waypoint")], env=e, stdout=log, stderr=log,
                          stdin=subprocess.DEVNULL)
    proc.log_path = log_path
    if not topo.wait_listen(pod.netns, (15008, 15021), timeout, proc):
        raise RuntimeError("waypoint did not listen (exit %s):\n%s" % (proc.poll(), tail(log_path)))
    return proc


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    extra = {
        "n2p1": {"services": {"default/echo.default.svc.cluster.local": {80: 8080, 9000: 9000},
                              "default/direct.default.svc.cluster.local": {80: 8080}}},
        "n2p2": {"services": {"default/echo.default.svc.cluster.local": {80: 8080, 9000: 9000},
                              "default/direct.default.svc.cluster.local": {80: 8080}}},
        "n1p1": {"services": {"default/" + WP_HOST: {15008: 15008}}},
    }
    m = Mesh(nodes=2, pods=2, meshed=["n2p1", "n2p2"], workload_extra=extra, services=SERVICES)
    m.pod("n1p1").sa = "waypoint"
    try:
        m.up()
        t = m.topo
        for name in ("n2p1", "n2p2"):
            start_tag_server(t, m.pod(name), 8080, name)
            start_app(t, m.pod(name), "echo", 9000)
        m.waypoint = start_waypoint(t, m.pod("n1p1"), m.config)
        client = m.pod("n1p2")
        m.client_cert = t.mint(client.spiffe, "client")
        assert wait_for(lambda: ready(m), timeout=10), tail(m.waypoint.log_path)
        yield m
    finally:
        m.down()


def ready(m):
    try:
        return http_get(m, "/healthz/ready", 15021)[0] == 200
    except OSError:
        return False


def http_get(m, path, port):
    """GET on the waypoint's admin/metrics/readiness port from its own namespace."""
    wp = m.pod("n1p1")
    s = netns_socket(wp.netns)
    s.settimeout(5)
    s.connect(("127.0.0.1" if port == 15000 else wp.ip, port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def hbone(m, authority, identity_cert=None):
    """An HBONE CONNECT to the waypoint from the client pod; returns (client, stream id, status)."""
    cert, key = identity_cert or m.client_cert
    s = netns_socket(m.pod("n1p2").netns)
    s.settimeout(10)
    s.connect((m.pod("n1p1").ip, 15008))
    c = HboneClient(s, cert, key, os.path.join(m.topo.ca(), "root-cert.pem"))
    sid = c.request([(b":method", b"CONNECT"), (b":authority", authority.encode())])
    status, _ = c.response(sid)
    return c, sid, status


def recv_until(c, sid, pred, timeout=10):
    data = b""
    deadline = time.time() + timeout
    while time.time() < deadline and not pred(data):
        b = c.recv(sid)
        if not b:
            break
        data += b
    return data


def test_tcp_passthrough_through_waypoint(mesh):
    """A declared... undeclared non-HTTP port: the client speaks first with bytes that are not HTTP, so the
    waypoint relays them to an endpoint of the service over HBONE, through the endpoint's ztunnel."""
    c, sid, status = hbone(mesh, "%s:9000" % ECHO_VIP)
    assert status == 200
    c.send(sid, b"\x00\x01binary-hello")
    assert recv_until(c, sid, lambda d: len(d) >= 14) == b"\x00\x01binary-hello"
    c.close()


def test_server_first_after_sniff_timeout(mesh):
    """A client that sends nothing is taken for a server-first protocol after the detection timeout; the
    tunnel then works both ways (the echo app answers what is sent afterwards)."""
    c, sid, status = hbone(mesh, "%s:9000" % ECHO_VIP)
    assert status == 200
    time.sleep(1.3)
    c.send(sid, b"later")
    assert recv_until(c, sid, lambda d: len(d) >= 5) == b"later"
    c.close()


def test_unbound_service_refused(mesh):
    """A service not bound to this waypoint, and an unknown address: 503, as ztunnel answers what it does
    not serve; a malformed authority: 400."""
    for auth, want in (("%s:80" % DIRECT_VIP, 503), ("10.99.0.1:80", 503), ("not-an-ip", 400)):
        c, sid, status = hbone(mesh, auth)
        assert status == want, auth
        c.close()


def test_untrusted_client_refused(mesh):
    """A client certificate from another CA fails the handshake: the waypoint takes only mesh identities."""
    t = mesh.topo
    other = t.ca("other")
    cert = t.mint("spiffe://cluster.local/ns/default/sa/intruder", "intruder", root_dir=other)
    with pytest.raises(Exception):
        hbone(mesh, "%s:9000" % ECHO_VIP, identity_cert=cert)


def test_readiness_and_config_dump(mesh):
    status, _ = http_get(mesh, "/healthz/ready", 15021)
    assert status == 200
    status, body = http_get(mesh, "/config_dump", 15000)
    assert status == 200
    d = json.loads(body)
    assert d["identity"] == "spiffe://cluster.local/ns/default/sa/waypoint"
    assert d["hostname"] == WP_HOST
    assert [s["name"] for s in d["services"]] == ["echo"]
    assert d["certificates"][0]["state"] == "Available"
