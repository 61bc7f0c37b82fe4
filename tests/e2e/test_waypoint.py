"""The waypoint end to end: HBONE in from a peer zmesh did not write (Python ssl + h2), HBONE out to the
destination's ztunnel, real apps in network namespaces.

Topology (Mesh, 2 nodes x 2 pods): n1p1 runs the waypoint (service account "waypoint", Gateway "waypoint" in
"default"), n1p2 is the meshed client: its app's connections go through its ztunnel, which sends traffic for
service "echo" (VIP 10.96.0.10, bound to the waypoint) to the waypoint; the test also opens HBONE to the
waypoint itself from n1p2's namespace with n1p2's certificate (marked so the pod's rules leave it alone), as a
peer zmesh did not write. n2p1 and n2p2 are meshed servers (dedicated ztunnels, in-pod rules) behind "echo";
service "direct" (VIP 10.96.0.11) has the same endpoints and no waypoint. Config: LocalConfig for every
process; certificates from the test's CA."""
import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest

import hashlib
import re

from helpers import Mesh, http_request, parse_prometheus, start_app, wait_for
from hbone_peer import HboneClient, client_context
from topo import netns_socket, tail

ECHO_VIP, DIRECT_VIP, EMPTY_VIP, ROUTED_VIP = "10.96.0.10", "10.96.0.11", "10.96.0.12", "10.96.0.13"
WP_HOST = "waypoint.default.svc.cluster.local"


def _svc(name, vip, ports, waypoint=True):
    s = {"name": name, "namespace": "default", "hostname": "%s.default.svc.cluster.local" % name,
         "vips": ["/" + vip], "ports": ports}
    if waypoint:
        s["waypoint"] = {"destination": "default/" + WP_HOST, "hboneMtlsPort": 15008}
    return s


SERVICES = [
    _svc("echo", ECHO_VIP, {80: 8080, 81: 8081, 82: 8082, 9000: 9000}),
    _svc("direct", DIRECT_VIP, {80: 8080}, waypoint=False),
    _svc("empty", EMPTY_VIP, {80: 8080}),
    _svc("routed", ROUTED_VIP, {80: 8080}),
    _svc("routed-a", "10.96.0.14", {80: 8080}, waypoint=False),
    _svc("routed-b", "10.96.0.15", {80: 8080}, waypoint=False),
    {"name": "waypoint", "namespace": "default", "hostname": WP_HOST, "vips": ["/10.96.0.2"],
     "ports": {15008: 15008}},
]


# Kubernetes manifests for LOCAL_L7_PATH, converted by the waypoint with zmeshd's conversion: a route on
# "routed" (header x-pick: b -> routed-b; PathPrefix /a -> routed-a with a request header added and a copy
# mirrored to routed-b; nothing else matches) and a policy on the Service that denies DELETE.
L7_MANIFESTS = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: routed, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: routed, port: 80}]
  rules:
  - matches: [{headers: [{name: x-pick, value: b}]}]
    backendRefs: [{name: routed-b, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /a}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-routed, value: a}]}
    - type: RequestMirror
      requestMirror: {backendRef: {name: routed-b, port: 80}}
    backendRefs: [{name: routed-a, port: 80}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: routed}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
"""


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
        "n2p1": {"services": {"default/echo.default.svc.cluster.local": {80: 8080, 81: 8081, 82: 8082, 9000: 9000},
                              "default/direct.default.svc.cluster.local": {80: 8080},
                              "default/routed.default.svc.cluster.local": {80: 8080},
                              "default/routed-a.default.svc.cluster.local": {80: 8080}}},
        "n2p2": {"services": {"default/echo.default.svc.cluster.local": {80: 8080, 81: 8081, 82: 8082, 9000: 9000},
                              "default/direct.default.svc.cluster.local": {80: 8080},
                              "default/routed.default.svc.cluster.local": {80: 8080},
                              "default/routed-b.default.svc.cluster.local": {80: 8080}}},
        "n1p1": {"services": {"default/" + WP_HOST: {15008: 15008}}},
    }
    m = Mesh(nodes=2, pods=2, meshed=["n1p2", "n2p1", "n2p2"], workload_extra=extra, services=SERVICES)
    m.pod("n1p1").sa = "waypoint"
    try:
        m.up()
        t = m.topo
        for name in ("n2p1", "n2p2"):
            start_app(t, m.pod(name), "httpinfo", 8080, args=[name, os.path.join(t.workdir, "requests-%s.log" % name)])
            start_app(t, m.pod(name), "echo", 9000)
            start_app(t, m.pod(name), "h2info", 8081, args=[name])
            start_app(t, m.pod(name), "upgrade", 8082)
        l7dir = os.path.join(t.workdir, "l7")
        os.makedirs(l7dir)
        with open(os.path.join(l7dir, "l7.yaml"), "w") as f:
            f.write(L7_MANIFESTS)
        m.waypoint = start_waypoint(t, m.pod("n1p1"), m.config, env={"LOCAL_L7_PATH": l7dir})
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
    s = netns_socket(m.pod("n1p2").netns, mark=0x539)
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
    # Envoy's default access log line for a TCP stream once it ends: no request fields, the upstream cluster
    def logged():
        with open(mesh.waypoint.log_path) as f:
            return any(l.startswith("[") and '"- - -" 0 - ' in l and "inbound-vip|9000|tcp|echo" in l for l in f)
    assert wait_for(logged, timeout=5)


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
    assert sorted(s["name"] for s in d["services"]) == ["echo", "empty", "routed"]
    assert d["certificates"][0]["state"] == "Available"


class Http:
    """HTTP/1.1 over one HBONE stream (keep-alive: several requests in sequence)."""

    def __init__(self, c, sid):
        self.c, self.sid, self.buf = c, sid, b""

    def _fill(self):
        b = self.c.recv(self.sid)
        if not b:
            raise EOFError("stream ended")
        self.buf += b

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, raw):
        self.c.send(self.sid, raw)

    def request(self, method, path, headers=None, body=b"", raw_body=None):
        h = {"host": "echo.default.svc.cluster.local"}
        h.update(headers or {})
        if raw_body is None and (body or method in ("POST", "PUT")):
            h.setdefault("content-length", str(len(body)))
        req = "%s %s HTTP/1.1\r\n" % (method, path) + "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
        self.send(req.encode() + (raw_body if raw_body is not None else body))
        return self.response(head=method == "HEAD")

    def response(self, head=False):
        """(status, headers with lower-case names, body); 1xx responses are returned as they come."""
        status = int(self._line().split()[1])
        hdrs = {}
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.decode().partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if head or status < 200 or status in (204, 304):
            return status, hdrs, b""
        if hdrs.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                n = int(self._line().split(b";")[0], 16)
                if n == 0:
                    while self._line():
                        pass
                    return status, hdrs, body
                body += self._exact(n)
                self._line()
        if "content-length" in hdrs:
            return status, hdrs, self._exact(int(hdrs["content-length"]))
        while True:
            try:
                self._fill()
            except EOFError:
                body, self.buf = self.buf, b""
                return status, hdrs, body


def http_tunnel(m, port=80, vip=ECHO_VIP):
    c, sid, status = hbone(m, "%s:%d" % (vip, port))
    assert status == 200
    return c, Http(c, sid)


def test_http_get_routed_to_an_endpoint(mesh):
    """An HTTP/1.1 GET through the waypoint reaches one of the service's endpoints through its ztunnel, with
    x-request-id generated (a UUID v4), x-forwarded-proto added, and x-envoy-upstream-service-time back."""
    c, h = http_tunnel(mesh)
    status, hdrs, body = h.request("GET", "/hello?x=1")
    assert status == 200, (status, body)
    info = json.loads(body)
    assert info["tag"] in ("n2p1", "n2p2")
    assert info["path"] == "/hello?x=1" and info["method"] == "GET"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        info["headers"]["x-request-id"]), info["headers"]
    assert info["headers"]["x-forwarded-proto"] == "http"
    assert int(hdrs["x-envoy-upstream-service-time"]) >= 0
    # the app sees the waypoint's address: waypoints do not impersonate the client
    assert info["client"].split(":")[0] == mesh.pod("n1p1").ip
    c.close()


def test_http_keepalive_load_balanced(mesh):
    """Forty requests on one downstream connection: every one answered, a client's x-request-id passed
    through unchanged, and both endpoints served some (least-request/random choice per request)."""
    c, h = http_tunnel(mesh)
    seen = set()
    for i in range(40):
        status, _, body = h.request("GET", "/r%d" % i, headers={"x-request-id": "req-%d" % i})
        assert status == 200
        info = json.loads(body)
        assert info["headers"]["x-request-id"] == "req-%d" % i
        assert info["path"] == "/r%d" % i
        seen.add(info["tag"])
    assert seen == {"n2p1", "n2p2"}
    c.close()


def test_http_bodies_streamed(mesh):
    """A 3 MiB Content-Length body and a chunked body reach the app intact; a 5 MB chunked response comes
    back intact (the app's pattern)."""
    c, h = http_tunnel(mesh)
    body = os.urandom(3 << 20)
    status, _, out = h.request("POST", "/upload", body=body)
    assert status == 200
    info = json.loads(out)
    assert (info["body_len"], info["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    chunks = [b"a" * 10, b"b" * 70000, b"c"]
    raw = b"".join(b"%x\r\n%s\r\n" % (len(x), x) for x in chunks) + b"0\r\n\r\n"
    status, _, out = h.request("POST", "/chunked", headers={"transfer-encoding": "chunked"}, raw_body=raw)
    info = json.loads(out)
    whole = b"".join(chunks)
    assert status == 200 and (info["body_len"], info["body_sha256"]) == (len(whole), hashlib.sha256(whole).hexdigest())
    assert info["headers"].get("transfer-encoding") == "chunked"
    status, hdrs, out = h.request("GET", "/bytes/5000000")
    assert status == 200 and len(out) == 5000000
    from apps import pattern_bytes
    assert out == pattern_bytes(5000000)
    c.close()


def test_http_expect_continue_head_and_status(mesh):
    """Expect: 100-continue is answered by the waypoint (as Envoy does) before the body is sent; HEAD gets
    the headers without a body; an upstream status passes through."""
    c, h = http_tunnel(mesh)
    h.send(b"POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
    status, _, _ = h.response()
    assert status == 100
    h.send(b"hello")
    status, _, out = h.response()
    info = json.loads(out)
    assert status == 200 and info["body_len"] == 5 and "expect" not in info["headers"]
    status, hdrs, out = h.request("HEAD", "/head")
    assert status == 200 and out == b"" and int(hdrs["content-length"]) > 0
    status, _, _ = h.request("GET", "/status/418")
    assert status == 418
    c.close()


def test_http_hop_by_hop_removed(mesh):
    """Hop-by-hop headers, and the ones the Connection header names, do not reach the app."""
    c, h = http_tunnel(mesh)
    status, _, out = h.request("GET", "/hop", headers={"connection": "keep-alive, x-secret", "x-secret": "1",
                                                       "keep-alive": "timeout=5", "x-kept": "yes"})
    info = json.loads(out)
    assert status == 200
    assert "x-secret" not in info["headers"] and "keep-alive" not in info["headers"]
    assert info["headers"]["x-kept"] == "yes"
    c.close()


def test_http10_refused_as_envoy(mesh):
    """HTTP/1.0 gets Envoy's 426 (accept_http_10 is off in Istio) and the connection closes."""
    c, h = http_tunnel(mesh)
    h.send(b"GET /old HTTP/1.0\r\n\r\n")
    status, hdrs, _ = h.response()
    assert status == 426 and hdrs.get("connection") == "close"
    c.close()


def test_http_malformed_and_no_upstream(mesh):
    """A malformed request gets 400 and the connection closes; a service with no endpoint gets Envoy's 503
    `no healthy upstream`."""
    c, h = http_tunnel(mesh)
    h.send(b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")
    status, _, _ = h.response()
    assert status == 400
    c.close()
    c, h = http_tunnel(mesh, vip=EMPTY_VIP)
    status, _, body = h.request("GET", "/")
    assert (status, body) == (503, b"no healthy upstream")
    c.close()


class H2c:
    """An h2c client (python3-h2) speaking inside one HBONE stream."""

    def __init__(self, c, sid):
        import h2.config
        import h2.connection
        self.c, self.sid = c, sid
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True,
                                                                                 header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(16 << 20)
        self._flush()

    def _flush(self):
        out = self.conn.data_to_send()
        if out:
            self.c.send(self.sid, out)

    def exchange(self, headers, body=b"", end=True):
        """Sends a request on a new stream; returns (headers dict, body, trailers dict)."""
        import h2.events
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self._flush()
        resp, data, trailers = None, b"", {}
        deadline = time.time() + 10
        while time.time() < deadline:
            b = self.c.recv(self.sid)
            if not b:
                raise EOFError("tunnel ended")
            for ev in self.conn.receive_data(b):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    resp = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    data += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                    trailers = dict(ev.headers)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    self._flush()
                    return resp, data, trailers
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    raise EOFError("stream reset %s" % ev.error_code)
            self._flush()
        raise TimeoutError("no response")


def test_h2c_detected_and_multiplexed(mesh):
    """The HTTP/2 preface is detected on an undeclared port: requests on one h2c connection are proxied to
    the endpoints as HTTP/2 (headers, a body, and the app's trailers, as gRPC needs), each stream with its own
    x-request-id, and large responses stream back."""
    c, sid, status = hbone(mesh, "%s:81" % ECHO_VIP)
    assert status == 200
    h = H2c(c, sid)
    seen = set()
    for i in range(12):
        hdrs, body, trailers = h.exchange([(":method", "POST"), (":scheme", "http"), (":authority", "echo"),
                                           (":path", "/h2/%d" % i), ("content-type", "application/grpc")],
                                          body=b"x" * (1000 + i))
        assert hdrs[":status"] == "200"
        assert "x-envoy-upstream-service-time" in hdrs
        info = json.loads(body)
        assert info["path"] == "/h2/%d" % i and info["body_len"] == 1000 + i
        assert "x-request-id" in info["headers"]
        assert trailers == {"x-trailer": info["tag"], "grpc-status": "0"}
        seen.add(info["tag"])
    assert seen == {"n2p1", "n2p2"}
    hdrs, body, _ = h.exchange([(":method", "GET"), (":scheme", "http"), (":authority", "echo"),
                                (":path", "/bytes/3000000")])
    from apps import pattern_bytes
    assert hdrs[":status"] == "200" and body == pattern_bytes(3000000)
    c.close()


def test_ztunnel_sends_service_traffic_through_waypoint(mesh):
    """The real path: the client app's plain HTTP to the service VIP is captured by its ztunnel, sent over
    HBONE to the waypoint (the service is bound to it), which routes it to an endpoint over HBONE: the app
    sees the waypoint's address and a generated x-request-id, and the waypoint logged the client's identity."""
    status, hdrs, body = http_request(mesh.pod("n1p2").netns, ECHO_VIP, 80, "/via-ztunnel")
    assert status == 200, body
    info = json.loads(body)
    assert info["path"] == "/via-ztunnel"
    assert info["client"].split(":")[0] == mesh.pod("n1p1").ip
    assert "x-request-id" in info["headers"] and "x-envoy-upstream-service-time" in hdrs
    with open(mesh.waypoint.log_path) as f:
        lines = [l for l in f if '"GET /via-ztunnel HTTP/1.1" 200' in l]
    assert lines, "no access log line"
    # the waypoint saw the client ztunnel's connection from the client pod, with the client's identity
    assert " %s:" % mesh.pod("n1p2").ip in lines[-1]
    status, body = http_get(mesh, "/metrics", 15020)
    assert any(n == "istio_requests_total" and dict(l)["source_principal"] ==
               "spiffe://cluster.local/ns/default/sa/sa-n1p2" for n, l, _ in parse_prometheus(body.decode()))


def test_curl_h2c_through_ztunnel_and_waypoint(mesh):
    """curl (a client zmesh did not write) with HTTP/2 prior knowledge through the client's ztunnel and the
    waypoint to the h2c app; the app's trailers come back."""
    out = mesh.topo.run(mesh.pod("n1p2").netns, ["curl", "-sS", "--http2-prior-knowledge", "-D", "-",
                                                 "http://%s:81/curl" % ECHO_VIP], check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("HTTP/2 200"), out.stdout[:200]
    body = out.stdout.replace("\r\n", "\n").split("\n\n", 1)[1]
    info = json.loads(body[:body.rindex("}") + 1])
    assert info["path"] == "/curl" and info["tag"] in ("n2p1", "n2p2")


def test_metrics_and_access_log(mesh):
    """Istio's HTTP metrics with reporter="waypoint" and Istio's labels, counted per request and code; the TCP
    metrics for passthrough; Envoy's default access log line on stdout for each request."""
    c, h = http_tunnel(mesh)
    for i in range(3):
        assert h.request("GET", "/metric-%d" % i)[0] == 200
    assert h.request("GET", "/status/503")[0] == 503
    c.close()
    status, body = http_get(mesh, "/metrics", 15020)
    assert status == 200
    text = body.decode()
    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    problems = [l for l in (r.stdout + r.stderr).decode().splitlines()
                if l.strip() and "istio_request_duration_milliseconds" not in l]
    assert not problems, problems
    samples = parse_prometheus(text)
    def total(code):
        return sum(v for n, labels, v in samples if n == "istio_requests_total" and dict(labels)["response_code"] == code
                   and dict(labels)["destination_service"] == "echo.default.svc.cluster.local")
    assert total("200") >= 3 and total("503") >= 1
    one = next(dict(l) for n, l, v in samples if n == "istio_requests_total" and dict(l)["response_code"] == "503"
               and dict(l)["destination_service"] == "echo.default.svc.cluster.local")
    assert one["reporter"] == "waypoint"
    assert one["source_principal"] == "spiffe://cluster.local/ns/default/sa/sa-n1p2"
    assert one["destination_principal"] in ("spiffe://cluster.local/ns/default/sa/sa-n2p1",
                                            "spiffe://cluster.local/ns/default/sa/sa-n2p2")
    assert one["destination_workload_namespace"] == "default"
    assert one["request_protocol"] == "http" and one["connection_security_policy"] == "mutual_tls"
    names = [n for n, _, _ in samples]
    assert "istio_request_duration_milliseconds_bucket" in names and "istio_tcp_connections_opened_total" in names
    with open(mesh.waypoint.log_path) as f:
        lines = [l for l in f if '"GET /metric-1 HTTP/1.1" 200' in l]
    assert lines, "no access log line"
    assert "envoy://connect_originate/10.0.2." in lines[-1] and "inbound-vip|80|http|echo.default.svc.cluster.local" in lines[-1]


def test_http_upgrade_passed_through(mesh):
    """An Upgrade request (WebSocket's handshake) reaches the app with its Upgrade and Connection headers; after
    the app's 101 the connection carries opaque bytes both ways through the waypoint."""
    c, h = http_tunnel(mesh, port=82)
    h.send(b"GET /ws HTTP/1.1\r\nhost: echo\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
    status, hdrs, _ = h.response(head=True)
    assert status == 101 and hdrs["upgrade"] == "websocket"
    h.send(b"\x81\x05hello-frame")
    got = h.buf
    deadline = time.time() + 5
    while len(got) < 13 and time.time() < deadline:
        got += c.recv(h.sid)
    assert got == b"\x81\x05hello-frame"
    c.close()


def test_local_l7_routes_and_policy(mesh):
    """LOCAL_L7_PATH: an HTTPRoute and an AuthorizationPolicy from Kubernetes manifests, converted by the
    waypoint as zmeshd converts them: a header match picks one backend Service, a path prefix another (with a
    request header added), a request matching no rule gets Envoy's 404, and DELETE is denied with 403."""
    c, h = http_tunnel(mesh, vip=ROUTED_VIP)
    for _ in range(6):
        status, _, body = h.request("GET", "/a/x")
        info = json.loads(body)
        assert status == 200 and info["tag"] == "n2p1" and info["headers"]["x-routed"] == "a"
        status, _, body = h.request("GET", "/whatever", headers={"x-pick": "b"})
        assert status == 200 and json.loads(body)["tag"] == "n2p2"
    # each /a request was also shadowed to routed-b (n2p2) with "-shadow" on its Host, as Envoy mirrors
    def shadows():
        with open(os.path.join(mesh.topo.workdir, "requests-n2p2.log")) as f:
            return sum(1 for l in f if l.split() == ["GET", "/a/x", "echo.default.svc.cluster.local-shadow"])
    assert wait_for(lambda: shadows() == 6, timeout=5), shadows()
    status, _, body = h.request("POST", "/a/upload", body=b"m" * 100000)
    assert status == 200 and json.loads(body)["body_len"] == 100000
    status, _, body = h.request("GET", "/nomatch")
    assert (status, body) == (404, b"")
    status, _, body = h.request("DELETE", "/a/x")
    assert (status, body) == (403, b"RBAC: access denied")
    c.close()
    status, body = http_get(mesh, "/metrics", 15020)
    codes = {dict(l)["response_code"] for n, l, _ in parse_prometheus(body.decode())
             if n == "istio_requests_total" and dict(l)["destination_service"].startswith("routed")}
    assert {"200", "404", "403"} <= codes
