"""Istio's VirtualService through the waypoint, end to end on `zmesh up` (src/zmeshd/vs.c converts it,
src/waypoint/route.c applies it): the cluster of test_waypoint_l7.py (namespace `l7` with its waypoint, pods v1 and
v2 running apps.py `l7app`, a client pod), with Services of its own per test so the VirtualServices never meet.

Checked: weights (80/20 within tolerance over 200 requests), also by DestinationRule subset, and on a TCP port (tcp
routes, 200 connections); uri prefix (a plain string prefix), exact, regex,
ignoreUriCase, header and withoutHeaders matches; first match in the order written (a catch-all shadows what
follows); redirect (301, Location); rewrite uri (Envoy's prefix_rewrite), uriRegexRewrite and authority; request and
response headers set/add/remove; directResponse status and body; fault abort 503 at 50 % (within tolerance over 400
requests) with `FI` and `fault_filter_abort` in the waypoint's access log; a fixed delay (at least the delay, never
an upper bound) with `DI`, over HTTP/1.1 and over gRPC (h2c); a gRPC abort as a grpc-status; CORS preflight and
Access-Control-Allow-Origin on a simple request; a VirtualService and an HTTPRoute on one Service (the HTTPRoute
applies, zmeshd says so, and the VirtualService's status has zmesh.io/RouteConflict); authority, scheme,
sourceLabels and sourceNamespace matches; per-destination headers and Host; response flags as a set (UT,DI); a mirror
under a fault delay leaves after it, over HTTP/1.1 and h2c, and an aborted request is never mirrored;
retryIgnorePreviousHosts (statistically, over 80 requests each way); a tcp route's subset; tls routes as Istio's
waypoint applies them.

Addresses of its own: prefix zv<hex>, state /run/zmesh-upvs-<hex>, nodes 172.25.<o>.0/24, pods 10.<o>.0.0/16 with o in
1..19 (see test_waypoint_l7.py for the others' ranges). Run under `flock /tmp/zmesh-up.lock`.
"""
import json
import os
import random
import shutil
import subprocess
import tempfile
import time

import pytest

from test_up import _force_cleanup, poll
from test_waypoint_l7 import (APPLY_WAIT, GRPC, HTTP, NS, L7Cluster, _try, app_log, counts, info, manifests, req,
                              route, mark, service)

SERVICES = ("vs-w", "vs-m", "vs-r", "vs-d", "vs-f", "vs-c", "vs-x", "vs-mi", "vs-sub", "vs-rt", "vs-src", "vs-hd", "vs-rh")


class VSCluster(L7Cluster):
    def __init__(self, manifests_dir):
        super().__init__(manifests_dir)
        tag = "%04x" % random.randrange(1 << 16)
        self.prefix = "zv" + tag
        self.state = "/run/zmesh-upvs-" + tag
        octet = random.randrange(1, 20)
        self.node_subnet = "172.25.%d.0" % octet
        self.pod_subnet = "10.%d.0.0" % octet
        self.host_ip = "172.25.%d.1" % octet
        self.work = tempfile.mkdtemp(prefix="zmesh-upvs-w-")


@pytest.fixture(scope="module")
def cluster():
    d = tempfile.mkdtemp(prefix="zmesh-upvs-m-")
    docs = [manifests(d)] + [service(n, {"app": "svc"}) for n in SERVICES] + [service("vs-g", {"app": "svc"},
                                                                                       grpc=True)]
    # One port only, not 80: a destination without a port takes it (Istio's GetDestinationCluster).
    # A TCP port (appProtocol tcp: relayed, not parsed) for the tcp routes.
    docs.append("apiVersion: v1\nkind: Service\nmetadata: {name: vs-t, namespace: %s}\nspec:\n"
                "  selector: {app: svc}\n"
                "  ports: [{name: tcp, port: 81, targetPort: %d, appProtocol: tcp}]\n" % (NS, HTTP))
    docs.append("apiVersion: v1\nkind: Service\nmetadata: {name: vs-p8, namespace: %s}\nspec:\n"
                "  selector: {app: svc, version: v2}\n"
                "  ports: [{name: http, port: 8081, targetPort: %d, appProtocol: http}]\n" % (NS, HTTP))
    with open(os.path.join(d, "vs.yaml"), "w") as f:
        f.write("---\n".join(docs))
    c = VSCluster(d)
    c.app_logs = d
    try:
        c.up()
        p = c.run("waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait", "--waypoint-timeout", "60s",
                  check=False, timeout=90)
        assert p.returncode == 0, p.stdout + p.stderr
        poll(lambda: _try(c, "/", svc="svc"), timeout=APPLY_WAIT, what="svc answering through the waypoint")
        yield c
    finally:
        if os.environ.get("ZMESH_KEEP_CLUSTER") == "1":
            print("kept cluster: --state-dir %s, manifests %s" % (c.state, d))
        else:
            _force_cleanup(c)
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(c.work, ignore_errors=True)


def vs(name, host, http, extra=""):
    """A VirtualService in NS for host with the http routes written as YAML (a list)."""
    return ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: %s, namespace: %s}\n"
            "spec:\n  hosts: [%s]\n%s  http:\n%s" % (name, NS, host, extra, "".join(
                "  " + l + "\n" for l in http.strip("\n").splitlines())))


def tagged(value):
    """Route-level response headers that tag a VirtualService rule's answers."""
    return "headers: {response: {set: {x-route: %s}}}" % value


def waypoint_log(c):
    return c.pod_log(c.waypoint_pods()[0]["metadata"]["name"], "istio-proxy")


def served(resp):
    status, headers, body = resp
    assert status == 200, resp
    return json.loads(body)["tag"], headers.get("x-route")


# -- weights --------------------------------------------------------------------------------------------------------

def test_weights(cluster):
    c = cluster
    d = c.apply(vs("weights", "vs-w", """
- %s
  route:
  - {destination: {host: svc-v1}, weight: 80}
  - {destination: {host: svc-v2.l7.svc.cluster.local, port: {number: 80}}, weight: 20}
""" % tagged("w8020")))
    until_marked(c, "/", "w8020", svc="vs-w")
    got = counts(c, 200, svc="vs-w")
    # 80% of 200 is 160; the binomial's standard deviation is 5.7: four of them either way.
    assert set(got) <= {"v1", "v2"}, got
    assert 137 <= got.get("v1", 0) <= 183, got
    c.delete(d)


def test_weights_by_subset(cluster):
    """The issue's 80/20 split by subset: a DestinationRule defines subsets v1 and v2 of one Service (by the pods'
    version label) and the VirtualService weighs them."""
    c = cluster
    d1 = c.apply("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: vs-sub, namespace: %s}\n"
                 "spec:\n  host: vs-sub\n  subsets:\n  - {name: v1, labels: {version: v1}}\n"
                 "  - {name: v2, labels: {version: v2}}\n" % NS)
    d2 = c.apply(vs("subsets", "vs-sub", """
- %s
  route:
  - {destination: {host: vs-sub, subset: v1}, weight: 80}
  - {destination: {host: vs-sub, subset: v2}, weight: 20}
""" % tagged("sub8020")))
    try:
        until_marked(c, "/", "sub8020", svc="vs-sub")
        got = counts(c, 200, svc="vs-sub")
        assert set(got) <= {"v1", "v2"}, got
        assert 137 <= got.get("v1", 0) <= 183, got
    finally:
        c.delete(d2)
        c.delete(d1)


def until_marked(c, path, value, **kw):
    poll(lambda: (lambda r: r if r is not None and r[1].get("x-route") == value else None)(_try(c, path, **kw)),
         timeout=APPLY_WAIT, every=0.1, what="the VirtualService marked %s" % value)


# -- matches, order -------------------------------------------------------------------------------------------------

MATCHES = """
- match: [{uri: {prefix: /api}, headers: {x-env: {exact: canary}}}]
  %s
  route: [{destination: {host: svc-v2}}]
- match: [{uri: {prefix: /api}, withoutHeaders: {x-debug: {exact: "1"}}}]
  %s
  route: [{destination: {host: svc-v1}}]
- match: [{uri: {exact: /Exact}, ignoreUriCase: true}]
  %s
  route: [{destination: {host: svc-v2}}]
- match: [{uri: {regex: "/re/[0-9]+"}}]
  %s
  route: [{destination: {host: svc-v2}}]
- %s
  route: [{destination: {host: svc-v1}}]
- match: [{uri: {exact: /shadowed}}]
  %s
  route: [{destination: {host: svc-v2}}]
""" % (tagged("hdr"), tagged("without"), tagged("exact"), tagged("regex"), tagged("any"), tagged("shadowed"))


def test_matches_first_match_order(cluster):
    c = cluster
    d = c.apply(vs("matches", "vs-m", MATCHES))
    try:
        until_marked(c, "/api", "without", svc="vs-m")
        g = lambda path, **kw: served(req(c, path, svc="vs-m", **kw))  # noqa: E731
        assert g("/api", headers={"X-Env": "canary"}) == ("v2", "hdr")
        assert g("/api") == ("v1", "without")
        assert g("/apix/y") == ("v1", "without")                        # a string prefix, not path elements
        assert g("/api", headers={"x-debug": "1"}) == ("v1", "any")     # withoutHeaders excludes it
        assert g("/EXACT") == ("v2", "exact")                           # ignoreUriCase
        assert g("/exact?q=1") == ("v2", "exact")
        assert g("/exact/more") == ("v1", "any")
        assert g("/re/123") == ("v2", "regex")
        assert g("/re/12a") == ("v1", "any")                            # a full match
        # VirtualService routes are tried in order: the catch-all before /shadowed wins (Gateway API's precedence
        # would pick the exact match).
        assert g("/shadowed") == ("v1", "any")
    finally:
        c.delete(d)


def test_authority_scheme_source_matches(cluster):
    """authority (a prefix on Host), scheme ("http" inside the waypoint), sourceLabels (the client pod's labels, found
    by its address) and sourceNamespace (its identity's namespace), each narrowing its route."""
    c = cluster
    d = c.apply(vs("sources", "vs-src", """
- match: [{sourceLabels: {app: other}}]
  %s
  route: [{destination: {host: svc-v2}}]
- match: [{authority: {prefix: alt.}}]
  %s
  route: [{destination: {host: svc-v2}}]
- match: [{sourceNamespace: elsewhere}]
  %s
  route: [{destination: {host: svc-v2}}]
- match: [{scheme: {exact: https}}]
  %s
  route: [{destination: {host: svc-v2}}]
- match: [{scheme: {exact: http}, sourceNamespace: %s}]
  %s
  route: [{destination: {host: svc-v1}}]
""" % (tagged("src-other"), tagged("authority"), tagged("ns-elsewhere"), tagged("https"), NS, tagged("http-ns"))))
    try:
        until_marked(c, "/", "http-ns", svc="vs-src")
        g = lambda **kw: served(req(c, "/", svc="vs-src", **kw))  # noqa: E731
        assert g() == ("v1", "http-ns")
        assert g(headers={"Host": "alt.example"}) == ("v2", "authority")
        assert g(headers={"Host": "ALT.example"}) == ("v1", "http-ns")  # case-sensitive, as Envoy's matcher
        assert g(src="other") == ("v2", "src-other")
        assert g(src="other", headers={"Host": "alt.example"}) == ("v2", "src-other")  # first match wins
    finally:
        c.delete(d)


def test_per_destination_headers(cluster):
    """A weighted route's per-destination headers apply only when that destination is picked: its request and
    response header operations and its Host (Envoy's per-cluster host rewrite); a route's rewrite.authority wins."""
    c = cluster
    d = c.apply(vs("dest-headers", "vs-hd", """
- match: [{uri: {prefix: /routehost}}]
  rewrite: {authority: route.example}
  route:
  - destination: {host: svc-v1}
    weight: 50
    headers: {request: {set: {Host: one.example}}}
  - destination: {host: svc-v2}
    weight: 50
    headers: {request: {set: {Host: two.example}}}
- %s
  route:
  - destination: {host: svc-v1}
    weight: 50
    headers: {request: {set: {Host: one.example, x-dest: one}}, response: {set: {x-picked: one}}}
  - destination: {host: svc-v2}
    weight: 50
    headers: {request: {set: {Host: two.example, x-dest: two}}, response: {set: {x-picked: two}}}
""" % tagged("dest")))
    try:
        until_marked(c, "/", "dest", svc="vs-hd")
        seen_tags = set()
        for i in range(40):
            path = "/dest/%04x/%d/headers" % (random.randrange(1 << 16), i)
            status, headers, body = req(c, path, svc="vs-hd")
            assert status == 200, (status, headers, body)
            got = json.loads(body)
            tag = got["tag"]
            seen_tags.add(tag)
            want = {"v1": "one", "v2": "two"}[tag]
            sent = {k.lower(): v for k, v in got["headers"]}
            assert headers.get("x-picked") == want, (tag, headers)
            assert sent.get("x-dest") == want and sent.get("host") == want + ".example", (tag, sent)
        assert seen_tags == {"v1", "v2"}, seen_tags  # both picked in 40 requests (2^-39 to fail by chance)
        for i in range(10):
            path = "/routehost/%04x/%d/headers" % (random.randrange(1 << 16), i)
            got = info(req(c, path, svc="vs-hd"))
            assert {k.lower(): v for k, v in got["headers"]}.get("host") == "route.example", got
    finally:
        c.delete(d)


# -- redirect, rewrite, headers -------------------------------------------------------------------------------------

def test_redirect_rewrite_headers(cluster):
    c = cluster
    d = c.apply(vs("rewrites", "vs-r", """
- match: [{uri: {prefix: /moved}}]
  redirect: {uri: /landing, authority: elsewhere.example}
- match: [{uri: {prefix: /perm}}]
  redirect: {uri: /p2, redirectCode: 308}
- match: [{uri: {prefix: /old}}]
  rewrite: {uri: /new, authority: rewritten.example}
  route: [{destination: {host: svc-v1}}]
  %s
- match: [{uri: {prefix: /rx/}}]
  rewrite: {uriRegexRewrite: {match: "^/rx/([a-z]+)/([0-9]+)", rewrite: "/v2/\\\\2/\\\\1"}}
  route: [{destination: {host: svc-v1}}]
- match: [{uri: {prefix: /hdr}}]
  headers:
    request: {set: {x-set: from-vs}, add: {x-add: added}, remove: [x-remove]}
    response: {set: {x-route: hdr}, add: {x-resp-add: resp}}
  route:
  - destination: {host: svc-v1}
    headers: {request: {set: {x-dest: v1}}, response: {remove: [x-served-by]}}
""" % tagged("rw")))
    try:
        until_marked(c, "/old/x", "rw", svc="vs-r")
        r = req(c, "/moved/a?q=1", svc="vs-r")
        assert r[0] == 301, r                                           # HTTPRedirect's default code
        assert r[1]["location"] == "http://elsewhere.example/landing?q=1", r
        r = req(c, "/perm", svc="vs-r")
        assert r[0] == 308 and r[1]["location"].endswith("/p2"), r
        # rewrite.uri is Envoy's prefix_rewrite: the matched "/old" replaced as written.
        body = info(req(c, "/oldpath/x?k=v", svc="vs-r"))
        assert body["path"] == "/newpath/x?k=v", body
        assert body["headers"]["host"] == "rewritten.example", body
        body = info(req(c, "/rx/abc/42/tail", svc="vs-r"))
        assert body["path"] == "/v2/42/abc/tail", body
        status, headers, raw = req(c, "/hdr", svc="vs-r", headers={"x-remove": "gone", "x-set": "client"})
        body = json.loads(raw)
        assert status == 200 and headers["x-route"] == "hdr" and headers["x-resp-add"] == "resp", headers
        assert "x-served-by" not in headers, headers                  # the destination's response remove
        assert body["headers"]["x-set"] == "from-vs", body
        assert body["headers"]["x-add"] == "added", body
        assert body["headers"]["x-dest"] == "v1", body
        assert "x-remove" not in body["headers"], body
    finally:
        c.delete(d)


# -- mirror -----------------------------------------------------------------------------------------------------------

def test_mirror(cluster):
    """mirror + mirrorPercentage: the request goes to its destination and a copy (Host with "-shadow", Envoy's
    shadowing) to the mirror; the client sees only the destination's answer."""
    c = cluster
    d = c.apply(vs("mirror", "vs-mi", """
- %s
  route: [{destination: {host: svc-v1}}]
  mirror: {host: svc-v2}
  mirrorPercentage: {value: 100.0}
""" % tagged("mirror")))
    try:
        until_marked(c, "/", "mirror", svc="vs-mi")
        tag = "/mirrored/once-%04x" % random.randrange(1 << 16)
        assert info(req(c, tag, svc="vs-mi", headers={"Host": "mi.example"}))["tag"] == "v1"
        poll(lambda: ["GET", tag, "mi.example-shadow"] in app_log(c, "v2"), timeout=10, what="the shadow copy at v2")
        assert ["GET", tag, "mi.example"] in app_log(c, "v1")
        assert ["GET", tag, "mi.example"] not in app_log(c, "v2")
    finally:
        c.delete(d)


# -- direct response -------------------------------------------------------------------------------------------------

def test_direct_response(cluster):
    c = cluster
    d = c.apply(vs("direct", "vs-d", """
- match: [{uri: {exact: /teapot}}]
  directResponse: {status: 418, body: {string: "short and stout"}}
  %s
- match: [{uri: {prefix: /oneport}}]
  route: [{destination: {host: vs-p8}}]
- route: [{destination: {host: svc-v1}}]
""" % tagged("direct")))
    try:
        r = poll(lambda: (lambda r: r if r and r[0] == 418 else None)(_try(c, "/teapot", svc="vs-d")),
                 timeout=APPLY_WAIT, what="the direct response")
        assert r[2] == b"short and stout", r
        assert r[1]["x-route"] == "direct", r                          # the route's response headers apply
        assert info(req(c, "/other", svc="vs-d"))["tag"] == "v1"
        # The destination has one port (8081) and none is given: that port, not the request's 80.
        assert info(req(c, "/oneport", svc="vs-d"))["tag"] == "v2"
        line = poll(lambda: [l for l in waypoint_log(c).splitlines() if '"GET /teapot HTTP/1.1" 418 - direct_response'
                             in l], timeout=10, what="the direct response's access log line")
        assert line
    finally:
        c.delete(d)


# -- retries ---------------------------------------------------------------------------------------------------------

def test_retries_per_try_timeout(cluster):
    """retries with perTryTimeout: an endpoint that takes 3 s is abandoned after 300 ms and the request is tried on
    the other one (retryOn gateway-error: Envoy judges a per-try timeout as the 504 it would answer), so every
    request is answered by v2; v1's own log shows the tries it got. On a rule without retries (Istio's default
    policy, which does not retry a slow answer) the slow endpoint's late answer is the answer."""
    c = cluster
    d = c.apply(vs("retries", "vs-rt", """
- match: [{uri: {prefix: /rt/}}]
  route: [{destination: {host: vs-rt}}]
  retries: {attempts: 2, perTryTimeout: 300ms, retryOn: gateway-error}
  %s
- route: [{destination: {host: vs-rt}}]
""" % tagged("rt")))
    try:
        until_marked(c, "/rt/x", "rt", svc="vs-rt")
        run = "%04x" % random.randrange(1 << 16)
        for i in range(12):
            tag, _ = served(req(c, "/rt/sleep-on/v1/3000/%s-%d" % (run, i), svc="vs-rt"))
            assert tag == "v2", i
        # v1 logs a request once it has answered it (after its 3 s), long after the waypoint gave up on it.
        poll(lambda: [l for l in app_log(c, "v1") if l[1].startswith("/rt/sleep-on/v1/3000/%s-" % run)],
             timeout=60, what="the tries v1 got (none: the random pick never chose it, nothing was exercised)")
        for i in range(40):
            t0 = time.monotonic()
            tag, _ = served(req(c, "/plain/sleep-on/v1/500/%s-%d" % (run, i), svc="vs-rt"))
            if tag == "v1":
                assert time.monotonic() - t0 >= 0.5
                break
        else:
            pytest.fail("v1 never answered a request of the rule without retries")
    finally:
        c.delete(d)


def test_retry_ignore_previous_hosts(cluster):
    """retries.retryIgnorePreviousHosts: true (Istio's default) makes the one retry look for an endpoint not tried
    (up to 5 picks, Istio's host_selection_retry_max_attempts), false lets it pick v1 again. With the
    DestinationRule's RANDOM choice and v1 failing every request, a request fails when its first try and its retry
    both land on v1: 1/2 x 1/32 = 1/64 with the predicate, 1/2 x 1/2 = 1/4 without. Over 80 requests each: at most
    6 failures with it (more has probability 3e-4), at least 7 without (fewer: 5e-5), and the two counts differ the
    right way. retries.backoff is accepted (no WARN)."""
    c = cluster
    d1 = c.apply("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: vs-rh, namespace: %s}\n"
                 "spec:\n  host: vs-rh\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n" % NS)
    d2 = c.apply(vs("retry-hosts", "vs-rh", """
- match: [{headers: {x-same: {exact: "1"}}}]
  retries: {attempts: 1, retryOn: 5xx, retryIgnorePreviousHosts: false, backoff: 5ms}
  %s
  route: [{destination: {host: vs-rh}}]
- %s
  retries: {attempts: 1, retryOn: 5xx, backoff: 5ms}
  route: [{destination: {host: vs-rh}}]
""" % (tagged("same"), tagged("other"))))
    try:
        until_marked(c, "/x", "same", svc="vs-rh", headers={"x-same": "1"})
        until_marked(c, "/x", "other", svc="vs-rh")
        run = "%04x" % random.randrange(1 << 16)
        other = [req(c, "/fail-on/v1/503/other-%s-%d" % (run, i), svc="vs-rh")[0] for i in range(80)]
        same = [req(c, "/fail-on/v1/503/same-%s-%d" % (run, i), svc="vs-rh", headers={"x-same": "1"})[0]
                for i in range(80)]
        assert set(other) | set(same) <= {200, 503}, (other, same)
        assert other.count(503) <= 6, other
        assert same.count(503) >= 7, same
        # v1 got the retries of its own failures: some "same" path twice
        paths = [l[1] for l in app_log(c, "v1") if len(l) > 1 and l[1].startswith("/fail-on/v1/503/same-%s-" % run)]
        assert len(paths) > len(set(paths)), paths
        assert "retryIgnorePreviousHosts" not in c.log("zmeshd") and "retries.backoff" not in c.log("zmeshd")
    finally:
        c.delete(d2)
        c.delete(d1)


# -- fault injection -------------------------------------------------------------------------------------------------

def test_fault_abort_fraction(cluster):
    import http.client
    from helpers import connect
    c = cluster
    d = c.apply(vs("abort", "vs-f", """
- match: [{uri: {prefix: /abort}}]
  fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
  route: [{destination: {host: svc-v1}}]
  %s
- match: [{uri: {prefix: /all}}]
  fault: {abort: {httpStatus: 503}}
  route: [{destination: {host: svc-v1}}]
""" % tagged("abort")))
    try:
        poll(lambda: (lambda r: r if r and r[0] == 503 else None)(_try(c, "/all", svc="vs-f")), timeout=APPLY_WAIT,
             what="the abort fault")
        tag = "/abort/%04x" % random.randrange(1 << 16)
        vip = c.vip("vs-f")
        conn = http.client.HTTPConnection(vip, 80, timeout=15)
        conn.sock = connect(c.netns_of("client"), vip, 80, timeout=15)
        got = {}
        try:
            for _ in range(400):
                conn.request("GET", tag)
                r = conn.getresponse()
                body = r.read()
                got[r.status] = got.get(r.status, 0) + 1
                if r.status == 503:
                    assert body == b"fault filter abort", body
        finally:
            conn.close()
        # 50% of 400 is 200; the standard deviation is 10: five of them either way.
        assert set(got) <= {200, 503}, got
        assert 150 <= got.get(503, 0) <= 250, got
        n503 = got[503]
        lines = poll(lambda: (lambda ls: ls if len(ls) >= n503 else None)(
            [l for l in waypoint_log(c).splitlines() if '"GET %s HTTP/1.1" 503 FI fault_filter_abort' % tag in l]),
            timeout=10, what="FI in the waypoint's access log")
        assert len(lines) == n503
    finally:
        c.delete(d)


def seen(c, version, path):
    """Whether the app of version logged a request for path."""
    return any(len(e) > 1 and e[1] == path for e in app_log(c, version))


def test_fault_delay(cluster):
    c = cluster
    d = c.apply(vs("delay", "vs-x", """
- match: [{uri: {prefix: /slowabort}}]
  fault: {delay: {fixedDelay: 600ms}, abort: {httpStatus: 429}}
  route: [{destination: {host: svc-v1}}]
- match: [{uri: {prefix: /slowdirect}}]
  fault: {delay: {fixedDelay: 600ms}}
  directResponse: {status: 202, body: {string: later}}
- match: [{uri: {prefix: /slowtimeout}}]
  fault: {delay: {fixedDelay: 300ms}}
  timeout: 400ms
  route: [{destination: {host: svc-v1}}]
- match: [{uri: {prefix: /abortmirror}}]
  fault: {abort: {httpStatus: 503}}
  route: [{destination: {host: svc-v1}}]
  mirror: {host: svc-v2}
- match: [{uri: {prefix: /slowmirror}}]
  fault: {delay: {fixedDelay: 1500ms}}
  route: [{destination: {host: svc-v1}}]
  mirror: {host: svc-v2}
- match: [{uri: {prefix: /slow}}]
  fault: {delay: {fixedDelay: 700ms, percentage: {value: 100}}}
  route: [{destination: {host: svc-v1}}]
  %s
- %s
  route: [{destination: {host: svc-v1}}]
""" % (tagged("slow"), tagged("fast"))))
    try:
        until_marked(c, "/", "fast", svc="vs-x")
        tag = "/slow/%04x" % random.randrange(1 << 16)
        t0 = time.monotonic()
        r = req(c, tag, svc="vs-x")
        took = time.monotonic() - t0
        assert r[0] == 200 and r[1]["x-route"] == "slow", r
        assert took >= 0.7, took                                        # a lower bound only
        poll(lambda: [l for l in waypoint_log(c).splitlines() if '"GET %s HTTP/1.1" 200 DI' % tag in l],
             timeout=10, what="DI in the waypoint's access log")
        # Envoy's fault filter delays, then aborts (flags DI,FI); a direct response comes after the delay too.
        for path, status, flags, details in (("/slowabort", 429, "DI,FI", "fault_filter_abort"),
                                             ("/slowdirect", 202, "DI", "direct_response")):
            t = "%s/%04x" % (path, random.randrange(1 << 16))
            t0 = time.monotonic()
            r = req(c, t, svc="vs-x")
            took = time.monotonic() - t0
            assert r[0] == status and took >= 0.6, (r, took)
            poll(lambda: [l for l in waypoint_log(c).splitlines()
                          if '"GET %s HTTP/1.1" %d %s %s' % (t, status, flags, details) in l],
                 timeout=10, what="%s in the waypoint's access log" % flags)
        # A request body sent during the delay still arrives whole.
        body = b"x" * 100000
        r = req(c, tag + "/post", svc="vs-x", method="POST", body=body)
        assert r[0] == 200 and json.loads(r[2])["body_len"] == len(body), r[:2]
        # Flags are a set: the route's timeout (which starts after the delay) fires, and DI stays: "UT,DI" in
        # Envoy's order.
        t = "/slowtimeout/%04x/sleep/2000" % random.randrange(1 << 16)
        r = req(c, t, svc="vs-x")
        assert r[0] == 504 and r[2] == b"upstream request timeout", r
        poll(lambda: [l for l in waypoint_log(c).splitlines() if '"GET %s HTTP/1.1" 504 UT,DI ' % t in l],
             timeout=10, what="UT,DI in the waypoint's access log")
        # The fault filter runs before the router: the shadow leaves only after the delay (it is not at v2 while
        # the delay runs, a lower bound), and an aborted request is never mirrored.
        import threading
        t = "/slowmirror/%04x" % random.randrange(1 << 16)
        got = {}
        th = threading.Thread(target=lambda: got.update(r=req(c, t, svc="vs-x")))
        t0 = time.monotonic()
        th.start()
        time.sleep(0.5)
        early = seen(c, "v2", t)
        th.join(15)
        assert time.monotonic() - t0 >= 1.5 and got["r"][0] == 200, got
        assert not early, "the shadow reached v2 before the fault delay was over"
        poll(lambda: seen(c, "v2", t), timeout=10, what="the shadow after the delay")
        # A body under the delay reaches both: the client's answer is v1's with the whole body, and v2 gets its shadow.
        tp = "/slowmirror/%04x/post" % random.randrange(1 << 16)
        r = req(c, tp, svc="vs-x", method="POST", body=b"y" * 100000)
        assert r[0] == 200 and json.loads(r[2])["body_len"] == 100000 and json.loads(r[2])["tag"] == "v1", r[:2]
        poll(lambda: seen(c, "v2", tp), timeout=10, what="the POST's shadow after the delay")
        ta = "/abortmirror/%04x" % random.randrange(1 << 16)
        assert req(c, ta, svc="vs-x")[0] == 503
        tb = "/slowmirror/%04x" % random.randrange(1 << 16)  # a later mirrored request: its shadow is a barrier
        assert req(c, tb, svc="vs-x")[0] == 200
        poll(lambda: seen(c, "v2", tb), timeout=10, what="the later shadow")
        assert not seen(c, "v2", ta) and not seen(c, "v1", ta), "an aborted request was sent on"
    finally:
        c.delete(d)


GRPC_TIMED = r'''
import json, sys, time
import grpc
out = {}
with grpc.insecure_channel(sys.argv[1]) as ch:
    grpc.channel_ready_future(ch).result(timeout=10)
    for name in ("Unary", "Stream", "Slow"):
        t0 = time.monotonic()
        try:
            if name == "Unary":
                out[name] = ch.unary_unary("/l7test.Echo/Unary")(b"hello", timeout=10).decode()
            elif name == "Slow":
                out[name] = ch.unary_unary("/l7test.Echo/Missing")(b"", timeout=10).decode()
            else:
                out[name] = [m.decode() for m in ch.unary_stream("/l7test.Echo/Stream")(b"2", timeout=10)]
        except grpc.RpcError as e:
            out[name] = [e.code().name, e.details()]
        out[name + "_s"] = time.monotonic() - t0
print(json.dumps(out))
'''


def test_grpc_abort_and_delay(cluster):
    """Over h2c: a grpcStatus abort is a trailers-only grpc-status, a delay holds the call; a match on the other
    service port (80) does not apply to these calls (9090)."""
    c = cluster
    d = c.apply(vs("grpc", "vs-g", """
- match: [{port: 80}]
  directResponse: {status: 418, body: {string: "port 80 only"}}
- match: [{uri: {exact: /l7test.Echo/Unary}}]
  fault: {abort: {grpcStatus: UNAVAILABLE}}
  route: [{destination: {host: svc-v1}}]
- match: [{uri: {prefix: /l7test.Echo/Stream}}]
  fault: {delay: {fixedDelay: 800ms}}
  route: [{destination: {host: svc-v1}}]
- match: [{uri: {prefix: /l7test.Echo/Missing}}]
  fault: {delay: {fixedDelay: 500ms}, abort: {grpcStatus: RESOURCE_EXHAUSTED}}
  route: [{destination: {host: svc-v1}}]
"""))
    try:
        def call():
            p = subprocess.run(["ip", "netns", "exec", c.netns_of("client"), "/usr/bin/python3", "-c", GRPC_TIMED,
                                "%s:%d" % (c.vip("vs-g"), GRPC)], capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p.stderr
            return json.loads(p.stdout)
        out = poll(lambda: (lambda o: o if isinstance(o["Unary"], list) else None)(call()), timeout=APPLY_WAIT,
                   what="the gRPC abort")
        assert out["Unary"] == ["UNAVAILABLE", "fault filter abort"], out
        assert out["Stream"] == ["v1:0", "v1:1"], out
        assert out["Stream_s"] >= 0.8, out                             # a lower bound only
        assert out["Slow"] == ["RESOURCE_EXHAUSTED", "fault filter abort"] and out["Slow_s"] >= 0.5, out
        # The match on port 80 applies to that service port only.
        r = req(c, "/l7test.Echo/Unary", svc="vs-g")
        assert (r[0], r[2]) == (418, b"port 80 only"), r
    finally:
        c.delete(d)


def test_grpc_mirror_after_delay(cluster):
    """Over h2c: a call under a fault delay is shadowed only once the delay is over (the router, which shadows, runs
    after the fault filter): at v2 no shadow while the delay runs (a lower bound), then exactly one with the call's
    whole body and the shadow :authority; the caller gets v1's answer."""
    from test_waypoint_l7 import grpc_calls, grpc_mirror_call
    import threading
    c = cluster
    d = c.apply(vs("grpc-mirror-delay", "vs-g", """
- match: [{uri: {prefix: /l7test.Echo/}}]
  fault: {delay: {fixedDelay: 1500ms}}
  route: [{destination: {host: svc-v1, port: {number: %d}}}]
  mirror: {host: svc-v2, port: {number: %d}}
  %s
""" % (GRPC, GRPC, tagged("gmd"))))
    try:
        def in_force():
            try:  # an earlier test's VirtualService (an abort) may still be in force for a moment
                return ["x-route", "gmd"] in grpc_mirror_call(c, "vs-g", 16)["initial"]
            except AssertionError:
                return False
        poll(in_force, timeout=APPLY_WAIT, what="the VirtualService with the delayed mirror in force")
        before = len(grpc_calls(c, "v2"))
        got = {}
        th = threading.Thread(target=lambda: got.update(out=grpc_mirror_call(c, "vs-g", 64 << 10)))
        t0 = time.monotonic()
        th.start()
        time.sleep(0.7)
        # the 64 KiB call's shadow (a late shadow of the poll's 16-byte calls is not it)
        early = [l for l in grpc_calls(c, "v2")[before:] if l[2:3] == [str(64 << 10)]]
        th.join(60)
        assert time.monotonic() - t0 >= 3.0, "two calls, each delayed 1.5 s"
        out = got["out"]
        assert out["echoed"] and out["answer"] == "v1:", out
        assert not early, "a shadow reached v2 before the fault delay was over: %s" % early
        shadow = "%s-shadow:%d" % (c.vip("vs-g"), GRPC)
        want = ["/l7test.Echo/Unary", shadow, str(out["len"]), out["sha"]]
        poll(lambda: want in grpc_calls(c, "v2", out["sha"]), timeout=10, what="the shadow call at v2")
        assert grpc_calls(c, "v2", out["sha"]) == [want]
    finally:
        c.delete(d)


# -- CORS ---------------------------------------------------------------------------------------------------------

def test_cors(cluster):
    c = cluster
    d = c.apply(vs("cors", "vs-c", """
- match: [{uri: {prefix: /ignored}}]
  route: [{destination: {host: svc-v1}}]
  corsPolicy: {allowOrigins: [{exact: "https://ok.example"}], allowMethods: ["*"], unmatchedPreflights: IGNORE}
- match: [{uri: {prefix: /aborted}}]
  fault: {abort: {httpStatus: 503}}
  route: [{destination: {host: svc-v1}}]
  corsPolicy: {allowOrigins: [{exact: "https://ok.example"}]}
- %s
  route: [{destination: {host: svc-v1}}]
  corsPolicy:
    allowOrigins: [{exact: "https://ok.example"}, {regex: "https://.*\\\\.good\\\\.example"}]
    allowMethods: [GET, POST]
    allowHeaders: [x-custom]
    exposeHeaders: [x-served-by]
    maxAge: 24h
    allowCredentials: true
"""  % tagged("cors")))
    try:
        until_marked(c, "/", "cors", svc="vs-c")
        pre = {"Origin": "https://ok.example", "Access-Control-Request-Method": "POST"}
        r = req(c, "/x", svc="vs-c", method="OPTIONS", headers=pre)
        assert r[0] == 200 and r[2] == b"", r
        h = r[1]
        assert h["access-control-allow-origin"] == "https://ok.example", h
        assert h["access-control-allow-methods"] == "GET,POST", h
        assert h["access-control-allow-headers"] == "x-custom", h
        assert h["access-control-max-age"] == "86400", h
        assert h["access-control-allow-credentials"] == "true", h
        # A preflight from an origin not allowed goes on to the backend (unmatchedPreflights FORWARD), without CORS
        # headers from the waypoint.
        r = req(c, "/x", svc="vs-c", method="OPTIONS",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in r[1], r
        # A simple request from an allowed origin gets allow-origin and expose-headers on the backend's answer.
        status, h, raw = req(c, "/y", svc="vs-c", headers={"Origin": "https://a.good.example"})
        assert status == 200 and json.loads(raw)["tag"] == "v1"
        assert h["access-control-allow-origin"] == "https://a.good.example", h
        assert h["access-control-expose-headers"] == "x-served-by", h
        assert "access-control-allow-methods" not in h, h
        status, h, raw = req(c, "/y", svc="vs-c", headers={"Origin": "https://bad.example"})
        assert status == 200 and "access-control-allow-origin" not in h, h
        # unmatchedPreflights IGNORE: the waypoint answers 200 itself, without allow-origin, and "*" echoes the
        # requested method; the backend never sees it.
        tag = "/ignored/%04x" % random.randrange(1 << 16)
        r = req(c, tag, svc="vs-c", method="OPTIONS",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PATCH"})
        assert r[0] == 200 and r[2] == b"" and "access-control-allow-origin" not in r[1], r
        assert r[1]["access-control-allow-methods"] == "PATCH", r
        r = req(c, tag + "/2", svc="vs-c")                              # a marker request that reaches v1
        poll(lambda: [l for l in app_log(c, "v1") if l[1:2] == [tag + "/2"]], timeout=10, what="v1's log")
        assert not [l for l in app_log(c, "v1") if l[1:2] == [tag]], "the IGNOREd preflight reached v1"
        # The cors filter's headers reach a fault abort's local reply too.
        r = req(c, "/aborted", svc="vs-c", headers={"Origin": "https://ok.example"})
        assert r[0] == 503 and r[1]["access-control-allow-origin"] == "https://ok.example", r
    finally:
        c.delete(d)


# -- tcp routes --------------------------------------------------------------------------------------------------------

def tcp_tag(c, svc, port):
    """One HTTP/1.1 request on a new TCP connection to svc:port (relayed by the waypoint as bytes): who answered."""
    from helpers import connect
    s = connect(c.netns_of("client"), c.vip(svc), port, timeout=15)
    try:
        s.sendall(b"GET /tcp HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:200]
    return json.loads(body)["tag"]


def test_tcp_route_weights(cluster):
    """A VirtualService tcp route on a TCP port: each connection goes to one weighted destination (80/20 within
    tolerance over 200 connections)."""
    c = cluster
    tcp = lambda w1, w2: (  # noqa: E731
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: tcp, namespace: %s}\n"
        "spec:\n  hosts: [vs-t]\n  tcp:\n  - match: [{port: 81}]\n    route:\n"
        "    - {destination: {host: svc-v1, port: {number: 80}}, weight: %d}\n"
        "    - {destination: {host: svc-v2, port: {number: 80}}, weight: %d}\n" % (NS, w1, w2))
    d = c.apply(tcp(0, 100))
    try:
        # In force: ten connections in a row reach v2 (the Service alone would pick v1 half the time); then the
        # 80/20 split is in force from its first v1.
        poll(lambda: all(tcp_tag(c, "vs-t", 81) == "v2" for _ in range(10)), timeout=APPLY_WAIT,
             what="the tcp route to v2")
        c.apply(tcp(80, 20))
        poll(lambda: tcp_tag(c, "vs-t", 81) == "v1", timeout=APPLY_WAIT, what="the 80/20 tcp route")
        got = {}
        for _ in range(200):
            tag = tcp_tag(c, "vs-t", 81)
            got[tag] = got.get(tag, 0) + 1
        assert set(got) <= {"v1", "v2"}, got
        assert 137 <= got.get("v1", 0) <= 183, got
        # Relayed as TCP by the waypoint (its TCP access line names the port's tcp cluster).
        assert "inbound-vip|81|tcp|vs-t.l7.svc.cluster.local" in waypoint_log(c)
    finally:
        c.delete(d)


def test_tcp_route_subset(cluster):
    """A tcp route's destination.subset picks the endpoints of that DestinationRule subset: every connection to the
    subset v2 of vs-t (whose selector takes both versions) reaches v2, then every one to v1 reaches v1."""
    c = cluster
    dr = c.apply("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: vs-t, namespace: %s}\n"
                 "spec:\n  host: vs-t\n  subsets:\n  - {name: v1, labels: {version: v1}}\n"
                 "  - {name: v2, labels: {version: v2}}\n" % NS)
    tcp = lambda subset: (  # noqa: E731
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: tcp-subset, namespace: %s}\n"
        "spec:\n  hosts: [vs-t]\n  tcp:\n  - route:\n"
        "    - {destination: {host: vs-t, subset: %s}}\n" % (NS, subset))
    d = c.apply(tcp("v2"))
    try:
        poll(lambda: all(tcp_tag(c, "vs-t", 81) == "v2" for _ in range(10)), timeout=APPLY_WAIT,
             what="the tcp route to subset v2")
        assert {tcp_tag(c, "vs-t", 81) for _ in range(30)} == {"v2"}
        c.apply(tcp("v1"))
        poll(lambda: all(tcp_tag(c, "vs-t", 81) == "v1" for _ in range(10)), timeout=APPLY_WAIT,
             what="the tcp route to subset v1")
        assert {tcp_tag(c, "vs-t", 81) for _ in range(30)} == {"v1"}
    finally:
        c.delete(d)
        c.delete(dr)


def test_tls_route(cluster):
    """tls routes as Istio's waypoint applies them (no SNI inspection): a match whose sniHosts is exactly the
    Service's full name applies on its port, before any tcp route; one naming the short name never applies."""
    c = cluster
    doc = lambda sni: (  # noqa: E731
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: tls, namespace: %s}\n"
        "spec:\n  hosts: [vs-t]\n"
        "  tcp:\n  - route: [{destination: {host: svc-v1, port: {number: 80}}}]\n"
        "  tls:\n  - match: [{sniHosts: [%s], port: 81}]\n"
        "    route: [{destination: {host: svc-v2, port: {number: 80}}}]\n" % (NS, sni))
    d = c.apply(doc("vs-t.%s.svc.cluster.local" % NS))
    try:
        poll(lambda: all(tcp_tag(c, "vs-t", 81) == "v2" for _ in range(10)), timeout=APPLY_WAIT,
             what="the tls route to v2")
        assert {tcp_tag(c, "vs-t", 81) for _ in range(20)} == {"v2"}
        c.apply(doc("vs-t"))  # a short name: the match never applies, the tcp route does
        poll(lambda: all(tcp_tag(c, "vs-t", 81) == "v1" for _ in range(10)), timeout=APPLY_WAIT,
             what="the tcp route once the tls match no longer applies")
        assert {tcp_tag(c, "vs-t", 81) for _ in range(20)} == {"v1"}
    finally:
        c.delete(d)


# -- a VirtualService and an HTTPRoute on one Service ----------------------------------------------------------------

def conflict(c, name):
    """The VirtualService's zmesh.io/RouteConflict condition, or None."""
    o = c.api("VirtualService", NS, name) or {}
    found = [x for x in o.get("status", {}).get("conditions", []) if x.get("type") == "zmesh.io/RouteConflict"]
    assert len(found) <= 1, o
    return found[0] if found else None


def test_httproute_wins_over_virtualservice(cluster):
    c = cluster
    d1 = c.apply(vs("mixed", "p", """
- %s
  route: [{destination: {host: svc-v2}}]
""" % tagged("from-vs")))
    d2 = c.apply(route("mixed-hr", "p", """\
        - filters: %s
          backendRefs: [{name: svc-v1, port: 80}]
        """ % mark("from-httproute")))
    try:
        until_marked(c, "/", "from-httproute", svc="p")
        got = {served(req(c, "/", svc="p")) for _ in range(10)}
        assert got == {("v1", "from-httproute")}, got
        want = ("spec.hosts: Service l7/p also has HTTPRoute l7/mixed-hr: mixing a VirtualService and a Gateway "
                "API route on one Service is undefined in Istio; zmesh's waypoint applies the HTTPRoute there")
        poll(lambda: want in c.log("zmeshd"), timeout=APPLY_WAIT, what="zmeshd's report of the overlap")
        # ... and on the VirtualService's status, naming the route zmesh applies.
        cond = poll(lambda: conflict(c, "mixed"), timeout=APPLY_WAIT, what="the RouteConflict condition")
        assert cond["status"] == "True" and cond["reason"] == "GatewayAPIRouteApplies", cond
        assert cond["message"] == want.split("spec.hosts: ", 1)[1] + " and ignores this VirtualService for that " \
            "Service", cond
        # The HTTPRoute gone, the VirtualService applies, and its status says nothing of a conflict.
        c.delete(d2)
        until_marked(c, "/", "from-vs", svc="p")
        assert served(req(c, "/", svc="p")) == ("v2", "from-vs")
        poll(lambda: conflict(c, "mixed") is None, timeout=APPLY_WAIT, what="the RouteConflict condition removed")
    finally:
        c.delete(d1)
        with_d2 = os.path.isdir(d2)
        if with_d2:
            c.run("delete", "-f", d2, check=False)
