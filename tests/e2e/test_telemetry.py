"""L4 telemetry (istio/ztunnel src/proxy/metrics.rs): Istio's TCP metrics on :15020/metrics (and /stats/prometheus), scraped from
inside the pod netns, with the values checked against the bytes the test actually sent.

n1p1 (client) and n1p2 (a second client) on node 1, n2p1 (server: echo 8080, sink 8082) and n2p2 on node 2;
all meshed. The client's ztunnel reports as "source", the server's as "destination". Tests run one after
the other and look at deltas of the series of one (client, server) pair, so earlier traffic does not
matter."""
import re
import subprocess
import socket

import pytest

from helpers import Mesh, connect, denied, echo_ok, http_request, parse_prometheus, recv_all, send_stream, \
    wait_for

ECHO, SINK = 8080, 8082
OPENED, CLOSED = "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"
RECEIVED, SENT = "istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total"
FAILED = "istio_tcp_connections_failed_total"
LABELS = ["reporter",
          "source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
          "source_principal", "source_app", "source_version", "source_cluster",
          "destination_service", "destination_service_namespace", "destination_service_name",
          "destination_workload", "destination_canonical_service", "destination_canonical_revision",
          "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
          "destination_cluster",
          "request_protocol", "response_flags", "connection_security_policy"]
LOCALITY = ["source_region", "source_zone", "destination_region", "destination_zone"]


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=2)
    try:
        m.up()
        srv = m.pod("n2p1")
        m.app(srv, "echo", ECHO)
        m.app(srv, "sink", SINK)
        yield m
    finally:
        m.down()


def scrape(pod, path="/metrics"):
    status, headers, body = http_request(pod.netns, pod.ip, 15020, path)
    assert status == 200, "GET %s on %s: %d %r" % (path, pod.name, status, body[:200])
    return parse_prometheus(body.decode())


def value(samples, name, **labels):
    """Sum of the samples of name whose labels include every given label=value."""
    return sum(v for n, ls, v in samples if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


class Pair:
    """Deltas of the pair (src -> dst) as reported by src's ztunnel (source) and dst's (destination)."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.base = self.snap()

    def snap(self):
        return {"source": scrape(self.src), "destination": scrape(self.dst)}

    def delta(self, reporter, name, now=None, **labels):
        now = now or self.snap()
        sel = dict(labels, reporter=reporter, source_principal=self.src.spiffe,
                   destination_principal=self.dst.spiffe)
        return value(now[reporter], name, **sel) - value(self.base[reporter], name, **sel)


def test_metrics_endpoints_serve_prometheus_text(mesh):
    cli, srv = mesh.pod("n1p1"), mesh.pod("n2p1")
    assert echo_ok(cli, srv)
    for pod in (cli, srv):
        for path in ("/metrics", "/stats/prometheus"):
            def get():
                status, headers, body = http_request(pod.netns, pod.ip, 15020, path)
                assert status == 200
                assert headers.get("content-type", "").startswith("text/plain"), headers
                return body.decode()

            def missing(text):
                return [f for f in (OPENED, CLOSED, RECEIVED, SENT) if not re.search(r"^%s\{" % f, text, re.M)]
            # The close of the echo connection is counted once ztunnel saw both ends finish: poll a little.
            text = wait_for(lambda: (lambda t: t if not missing(t) else None)(get()), timeout=5)
            assert text, "%s on %s lacks samples of %s" % (path, pod.name, missing(get()))
            assert re.search(r"^# TYPE istio_tcp_connections_opened(_total)? counter$", text, re.M)
            # The exposition format as Prometheus itself parses it (promtool, Debian's prometheus package).
            r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
            assert r.returncode == 0, (r.stdout + r.stderr).decode()
        # OpenMetrics on request.
        status, headers, body = http_request(pod.netns, pod.ip, 15020, "/metrics",
                                             headers={"Accept": "application/openmetrics-text"})
        assert status == 200 and body.decode().endswith("# EOF\n")
        assert "openmetrics" in headers.get("content-type", "")


def _check_labels(ls, reporter, src, dst):
    names = [k for k, _ in ls]
    assert names[:len(LABELS)] == LABELS, "label order differs from Istio's: %r" % names
    assert names[len(LABELS):] in ([], LOCALITY), names
    d = dict(ls)
    assert d["reporter"] == reporter
    assert d["source_principal"] == src.spiffe and d["destination_principal"] == dst.spiffe, d
    assert d["source_workload_namespace"] == "default" and d["destination_workload_namespace"] == "default"
    assert d["request_protocol"] == "tcp"
    assert d["connection_security_policy"] == "mutual_tls"
    assert all(v != "" for v in d.values()), "empty label value (Istio writes unknown): %r" % d


def test_labels_in_istio_order(mesh):
    cli, srv = mesh.pod("n1p1"), mesh.pod("n2p1")
    assert echo_ok(cli, srv)
    for pod, reporter in ((cli, "source"), (srv, "destination")):
        series = [ls for n, ls, v in scrape(pod) if n == OPENED and dict(ls).get("reporter") == reporter
                  and dict(ls).get("source_principal") == cli.spiffe]
        assert series, "no %s sample with reporter=%s on %s" % (OPENED, reporter, pod.name)
        for ls in series:
            _check_labels(ls, reporter, cli, srv)
        assert any(dict(ls)["response_flags"] == "-" for ls in series)


def test_byte_counters_match_the_bytes_sent(mesh):
    cli, srv = mesh.pod("n1p1"), mesh.pod("n2p1")
    pair = Pair(cli, srv)
    n = 300001
    before = len(mesh.log_json(cli))
    s = connect(cli.netns, srv.ip, SINK)
    try:
        digest = send_stream(s, n, chunk=65536)
        s.shutdown(socket.SHUT_WR)
        reply = recv_all(s)
    finally:
        s.close()
    assert reply.decode() == "%s %d\n" % (digest, n)

    def closed_both():
        now = pair.snap()
        return all(pair.delta(r, CLOSED, now) >= 1 for r in ("source", "destination")) and now
    now = wait_for(closed_both, timeout=10)
    assert now, "the close was not counted on both sides"
    for r in ("source", "destination"):
        assert pair.delta(r, OPENED, now) == 1, r
        assert pair.delta(r, CLOSED, now) == 1, r
        assert pair.delta(r, CLOSED, now, response_flags="-") == 1, r
        assert pair.delta(r, RECEIVED, now) == n, "%s: received_bytes (client->server) != %d" % (r, n)
        assert pair.delta(r, SENT, now) == len(reply), "%s: sent_bytes (server->client) != %d" % (r, len(reply))
        assert pair.delta(r, FAILED, now) == 0, r
    # The access log agrees.
    # Lines written since `before`, not matched by src.addr: the REDIRECT's NAT may remap the source port.
    # (A connection of an earlier test may also end in this window: one line must carry exactly these bytes.)
    def ours():
        return [l for l in mesh.log_json(cli)[before:] if l.get("message") == "connection complete"
                and l.get("direction") == "outbound" and l.get("dst.hbone_addr") == "%s:%d" % (srv.ip, SINK)
                and {int(l["bytes_sent"]), int(l["bytes_recv"])} == {n, len(reply)}]
    assert wait_for(ours), "no outbound access log line with %d bytes sent and %d received" % (n, len(reply))


def test_counters_move_while_the_connection_is_open(mesh):
    cli, srv = mesh.pod("n1p1"), mesh.pod("n2p1")
    pair = Pair(cli, srv)
    mib = 1 << 20
    s = connect(cli.netns, srv.ip, SINK)
    try:
        digest = send_stream(s, mib, chunk=65536)
        # The sink replies only after EOF: the connection stays open while we scrape.
        for r in ("source", "destination"):
            got = wait_for(lambda: pair.delta(r, RECEIVED) >= mib, timeout=10)
            assert got, "%s: received_bytes did not reach 1 MiB while the connection is open (now %d)" % (
                r, pair.delta(r, RECEIVED))
            now = pair.snap()
            assert pair.delta(r, OPENED, now) == 1, r
            assert pair.delta(r, CLOSED, now) == 0, "%s counted a close for an open connection" % r
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s).decode() == "%s %d\n" % (digest, mib)
    finally:
        s.close()


def test_deny_is_reported_with_response_flags(mesh):
    cli, srv = mesh.pod("n1p2"), mesh.pod("n2p1")
    pair = Pair(cli, srv)
    mesh.reconfigure(policies=[{"name": "deny-n1p2", "namespace": "default", "scope": "Namespace",
                                "action": "Deny",
                                "rules": [[[{"principals": [{"Exact": cli.spiffe[len("spiffe://"):]}]}]]]}])
    try:
        assert denied(cli, srv)
    finally:
        mesh.reconfigure(policies=[])

    def deny_seen():
        now = pair.snap()
        return sum(pair.delta("destination", m, now, response_flags="DENY") for m in (CLOSED, FAILED)) >= 1
    assert wait_for(deny_seen, timeout=10), "no destination-side sample with response_flags=DENY"
    now = pair.snap()
    assert pair.delta("destination", RECEIVED, now) == 0, "bytes of a denied connection reached the app"


def test_failed_connection_is_counted(mesh):
    cli, srv = mesh.pod("n1p1"), mesh.pod("n2p1")
    pair = Pair(cli, srv)
    s = connect(cli.netns, srv.ip, 9)  # nothing listens on 9 in the server pod
    try:
        s.sendall(b"x")
    except OSError:
        pass
    s.settimeout(5)
    try:
        assert s.recv(10) == b""
    except ConnectionResetError:
        pass
    finally:
        s.close()
    assert wait_for(lambda: pair.delta("source", FAILED) + pair.delta("destination", FAILED) >= 1,
                    timeout=10), "a connection to a closed port was not counted as failed"
