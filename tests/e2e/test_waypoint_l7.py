"""The waypoint's L7 features end to end on `zmesh up` (docs/l7.md, src/waypoint/README.md): the real waypoint made by
`zmesh waypoint apply --enroll-namespace --wait`, zmeshd converting HTTPRoute / GRPCRoute / AuthorizationPolicy
(`zmesh apply -f`), ztunnel sending the bound Services' traffic through the waypoint.

One cluster serves the module: namespace `l7` in ambient mode with its waypoint; pods `v1` (node1) and `v2` (node2),
labels app: svc and version v1 / v2, each running apps.py `l7app` (httpinfo: answers its tag and echoes the request
headers; /sleep/<ms>; /headers; a python3-grpcio server); Services `svc` (both versions), `svc-v1`, `svc-v2`, and one Service
per routing test (`m`, `p`, `f`, `t`, selecting both versions) so the tests' routes never meet; a client pod `client`
(account `client`, node1) and `other` (account `other`, node2) that only make requests. Requests are made from the
test process with sockets created in the client pod's network namespace (so the pod's own, captured traffic); the
gRPC client is python3-grpcio run under `ip netns exec` in that namespace.

Checked: HTTPRoute weights (80/20 within tolerance over 200 requests, 100/0, all zero -> 500); every match kind with
a request that just misses (404), precedence across routes; request/response header modifiers, URLRewrite prefix
and hostname, redirects; `request` and `backendRequest` timeouts (504 `upstream request timeout`); authorization
on the Gateway (ALLOW methods, DENY with `{*}`, principals, dry-run) and on a Service (403 `RBAC: access denied`);
gRPC unary, server streaming and a handler's NOT_FOUND through the waypoint, GRPCRoute method and header matches
and header modifiers (metadata both ways), a denied
gRPC call as PERMISSION_DENIED (Envoy's trailers-only local reply, counted 200 / grpc status 7); RequestMirror
(HTTP/1.1, gRPC and h2c shadowed with -shadow before the port); `ztunnel-config services` and `waypoint status`; a waypoint with no ready pod refuses its
Service's connections, never sending them around it. ZMESH_KEEP_CLUSTER=1 keeps the cluster for a post-mortem.

Each test applies its manifests and waits for the behaviour to show (a marker response header set by the route, or
the status a policy gives), never for a time; the policy tests delete theirs and wait until it is gone, as policies
on the Gateway apply to every Service.

Addresses of its own: prefix zl<hex>, state /run/zmesh-upl7-<hex>, nodes 172.26.<o>.0/24, pods 10.<o>.0.0/16 with
o in 20..59 (test_up.py uses 172.31/10.150-249, test_up_mesh.py 172.28/10.110-140, the demo 172.29/10.100-149,
test_waypoint_cli.py 172.27/10.60-99).
"""
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap

import pytest

from helpers import closed_without_data, connect, parse_prometheus
from test_up import Cluster, _force_cleanup, poll

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "apps.py")
NS = "l7"
HTTP, GRPC = 8080, 9090
SPIFFE = "spiffe://cluster.local/ns/%s/sa/" % NS
APPLY_WAIT = 30    # seconds for a manifest to reach the waypoint (normally well under one)
GATEWAY_REF = "{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}"


def pod(name, node, sa, labels, cmd, probe_port=None):
    probe = "    readinessProbe: {tcpSocket: {port: %d}, periodSeconds: 1}\n" % probe_port if probe_port else ""
    return ("apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: %s, labels: %s}\n"
            "spec:\n  nodeName: %s\n  serviceAccountName: %s\n  terminationGracePeriodSeconds: 1\n"
            "  containers:\n  - name: main\n    command: %s\n%s"
            % (name, NS, json.dumps(labels), node, sa, json.dumps(cmd), probe))


def service(name, selector, grpc=False, labels=None):
    ports = "{name: http, port: 80, targetPort: %d, appProtocol: http}" % HTTP
    if grpc:
        ports += ", {name: grpc, port: %d, targetPort: %d, appProtocol: grpc}" % (GRPC, GRPC)
    return ("apiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: %s, labels: %s}\n"
            "spec:\n  selector: %s\n  ports: [%s]\n" % (name, NS, json.dumps(labels or {}), json.dumps(selector),
                                                       ports))


def manifests(d):
    app = lambda v: ["/usr/bin/python3", "-u", APPS, "l7app", str(HTTP), v, str(GRPC),  # noqa: E731
                     os.path.join(d, v + ".log")]
    docs = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: %s, labels: {istio.io/dataplane-mode: ambient}}\n" % NS,
            pod("v1", "node1", "svc", {"app": "svc", "version": "v1"}, app("v1"), HTTP),
            pod("v2", "node2", "svc", {"app": "svc", "version": "v2"}, app("v2"), HTTP),
            pod("client", "node1", "client", {"app": "client"}, ["sleep", "100000"]),
            pod("other", "node2", "other", {"app": "other"}, ["sleep", "100000"]),
            service("svc", {"app": "svc"}, grpc=True),
            service("svc-v1", {"app": "svc", "version": "v1"}, grpc=True),
            service("svc-v2", {"app": "svc", "version": "v2"}, grpc=True)]
    docs += [service(n, {"app": "svc"}) for n in ("m", "p", "f", "t")]
    return "---\n".join(docs)


class L7Cluster(Cluster):
    def __init__(self, manifests_dir):
        super().__init__(manifests_dir, mesh=True)
        tag = "%04x" % random.randrange(1 << 16)
        self.prefix = "zl" + tag
        self.state = "/run/zmesh-upl7-" + tag
        octet = random.randrange(20, 60)
        self.node_subnet = "172.26.%d.0" % octet
        self.pod_subnet = "10.%d.0.0" % octet
        self.host_ip = "172.26.%d.1" % octet
        self.work = tempfile.mkdtemp(prefix="zmesh-upl7-w-")
        self._n = 0

    def netns_of(self, pod):
        return "%s-%s_%s" % (self.prefix, NS, pod)

    def vip(self, svc):
        return self.api("Service", NS, svc)["spec"]["clusterIP"]

    def log(self, name):
        try:
            with open(os.path.join(self.state, "logs", name + ".log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def access(self, svc, node="node1"):
        """The node ztunnel's outbound access records (fields as a dict) for connections to svc."""
        out = []
        for line in self.log("ztunnel-" + node).splitlines():
            if "\taccess\t" not in line or 'dst.service="%s.%s.svc.cluster.local"' % (svc, NS) not in line:
                continue
            out.append({k: v[1:-1] if v.startswith('"') else v
                        for k, v in re.findall(r'(\S+?)=("(?:[^"\\]|\\.)*"|\S+)', line.split("\taccess\t", 1)[1])})
        return out

    def pod_log(self, pod, container):
        try:
            with open(os.path.join(self.state, "pods", "%s_%s" % (NS, pod), container + ".log"),
                      errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def waypoint_pods(self, gw="waypoint"):
        out = []
        for f in sorted(os.listdir(os.path.join(self.state, "api"))):
            if f.startswith("pod_%s_" % NS) and f.endswith(".json"):
                with open(os.path.join(self.state, "api", f)) as fh:
                    p = json.load(fh)
                if p["metadata"].get("labels", {}).get("gateway.networking.k8s.io/gateway-name") == gw:
                    out.append(p)
        return out

    def _write(self, text):
        self._n += 1
        d = os.path.join(self.work, "m%d" % self._n)
        os.makedirs(d)
        with open(os.path.join(d, "m.yaml"), "w") as f:
            f.write(textwrap.dedent(text))
        return d

    def apply(self, text):
        """`zmesh apply -f` of one YAML text; returns the directory (for delete)."""
        d = self._write(text)
        p = self.run("apply", "-f", d, check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        return d

    def delete(self, d):
        p = self.run("delete", "-f", d, check=False)
        assert p.returncode == 0, p.stdout + p.stderr


@pytest.fixture(scope="module")
def cluster():
    d = tempfile.mkdtemp(prefix="zmesh-upl7-m-")
    with open(os.path.join(d, "l7.yaml"), "w") as f:
        f.write(manifests(d))
    c = L7Cluster(d)
    c.app_logs = d
    try:
        c.up()
        p = c.run("waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait", "--waypoint-timeout", "60s",
                  check=False, timeout=90)
        assert p.returncode == 0, p.stdout + p.stderr
        # Through the waypoint from the first request: poll until svc answers with the header only the waypoint
        # adds (the binding has reached the client's ztunnel; before, ztunnel sends straight to an endpoint).
        poll(lambda: (lambda r: r and "x-envoy-upstream-service-time" in r[1])(_try(c, "/", svc="svc")),
             timeout=APPLY_WAIT, what="svc answering through the waypoint")
        yield c
    finally:
        if os.environ.get("ZMESH_KEEP_CLUSTER") == "1":  # a post-mortem: `zmesh down --state-dir` it after
            print("kept cluster: --state-dir %s, manifests %s" % (c.state, d))
        else:
            _force_cleanup(c)
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(c.work, ignore_errors=True)


def req(c, path, svc="svc", method="GET", headers=None, src="client", body=None):
    """One HTTP/1.1 request from pod src to svc's VIP port 80: (status, headers, body bytes)."""
    import http.client
    vip = c.vip(svc)
    conn = http.client.HTTPConnection(vip, 80, timeout=15)
    conn.sock = connect(c.netns_of(src), vip, 80, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _try(c, path, **kw):
    try:
        return req(c, path, **kw)
    except OSError:
        return None


def info(resp):
    status, headers, body = resp
    assert status == 200, resp
    return json.loads(body)


def until(c, path, pred, what, **kw):
    """Requests path until pred(response) holds (the manifest reached the waypoint); returns that response."""
    def once():
        r = _try(c, path, **kw)
        return r if r is not None and pred(r) else None
    return poll(once, timeout=APPLY_WAIT, every=0.1, what=what)


def marked(value):
    return lambda r: r[1].get("x-route") == value


def route(name, svc, rules):
    return ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: %s, namespace: %s}\n"
            "spec:\n  parentRefs: [{group: \"\", kind: Service, name: %s}]\n  rules:\n%s"
            % (name, NS, svc, textwrap.indent(textwrap.dedent(rules), "  ")))


def mark(value):
    """A rule filter that tags the route's responses, so a test knows its route is in force."""
    return "[{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-route, value: %s}]}}]" % value


def counts(c, n, svc="svc", path="/"):
    """n requests on one keep-alive connection; {tag: count} of who answered."""
    import http.client
    vip = c.vip(svc)
    conn = http.client.HTTPConnection(vip, 80, timeout=15)
    conn.sock = connect(c.netns_of("client"), vip, 80, timeout=15)
    got = {}
    try:
        for _ in range(n):
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, (r.status, body)
            tag = json.loads(body)["tag"]
            got[tag] = got.get(tag, 0) + 1
    finally:
        conn.close()
    return got


# -- 1. weights ----------------------------------------------------------------------------------------------------

def weighted(name, w1, w2):
    return route("weights", "svc", """\
        - filters: %s
          backendRefs:
          - {name: svc-v1, port: 80, weight: %d}
          - {name: svc-v2, port: 80, weight: %d}
        """ % (mark(name), w1, w2))


def test_weights(cluster):
    c = cluster
    d = c.apply(weighted("w8020", 80, 20))
    until(c, "/", marked("w8020"), "the 80/20 route")
    n = len(c.access("svc"))
    got = counts(c, 200)
    # Through the waypoint (the client's ztunnel logs each connection when it ends; the polls' last ones may
    # land after n too, all to the waypoint).
    recs = poll(lambda: c.access("svc")[n:], timeout=10, what="the client ztunnel's access record")
    assert {r["dst.identity"] for r in recs} == {SPIFFE + "waypoint"}, recs
    # 80% of 200 is 160; a binomial's standard deviation here is 5.7: four of them either way.
    assert set(got) <= {"v1", "v2"}, got
    assert 137 <= got.get("v1", 0) <= 183, got
    c.apply(weighted("w100", 100, 0))
    until(c, "/", marked("w100"), "the 100/0 route")
    assert counts(c, 50) == {"v1": 50}
    # Every weight 0: Envoy's 500 (the rule has no backend it may send to).
    c.apply(weighted("wzero", 0, 0))
    r = until(c, "/", lambda r: r[0] == 500, "the all-zero route's 500")
    assert r[0] == 500
    c.delete(d)


# -- 2. matches and precedence ---------------------------------------------------------------------------------------

MATCHES = """\
    - matches: [{path: {type: PathPrefix, value: /api}}]
      filters: %s
      backendRefs: [{name: svc-v2, port: 80}]
    - matches: [{path: {type: Exact, value: /exact}}]
      filters: %s
      backendRefs: [{name: svc-v2, port: 80}]
    - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
      filters: %s
      backendRefs: [{name: svc-v2, port: 80}]
    - matches: [{path: {type: Exact, value: /h}, headers: [{name: x-env, value: canary}]}]
      filters: %s
      backendRefs: [{name: svc-v2, port: 80}]
    - matches: [{path: {type: Exact, value: /hre}, headers: [{type: RegularExpression, name: x-user, value: "u[0-9]{3}"}]}]
      filters: %s
      backendRefs: [{name: svc-v2, port: 80}]
    - matches: [{path: {type: Exact, value: /q}, queryParams: [{name: debug, value: "1"}]}]
      filters: %s
      backendRefs: [{name: svc-v2, port: 80}]
    - matches: [{path: {type: Exact, value: /meth}, method: PUT}]
      filters: %s
      backendRefs: [{name: svc-v1, port: 80}]
    """ % (mark("prefix"), mark("exact"), mark("regex"), mark("hdr"), mark("hdrre"), mark("query"), mark("method"))


def served(resp):
    """(who answered, which rule): the app's tag and the route's marker."""
    status, headers, body = resp
    assert status == 200, resp
    return json.loads(body)["tag"], headers.get("x-route")


def test_matches(cluster):
    """Each match kind, with a request that matches and one that just misses. The route has no catch-all rule (a
    PathPrefix / would outrank every RegularExpression: Istio's order), so a miss is Envoy's 404 (NR)."""
    c = cluster
    d = c.apply(route("matches", "m", MATCHES))
    try:
        until(c, "/api", marked("prefix"), "the matches route", svc="m")
        g = lambda path, **kw: served(req(c, path, svc="m", **kw))  # noqa: E731
        miss = lambda path, **kw: req(c, path, svc="m", **kw)[0]  # noqa: E731
        # PathPrefix matches whole path elements: /api, /api/x; not /apix.
        assert g("/api") == ("v2", "prefix")
        assert g("/api/x/y") == ("v2", "prefix")
        assert miss("/apix") == 404
        assert g("/exact") == ("v2", "exact")
        assert miss("/exact/more") == 404
        # RegularExpression is a full match of the path.
        assert g("/re/123") == ("v2", "regex")
        assert miss("/re/12a") == 404
        assert miss("/x/re/123") == 404
        # Header names are case-insensitive, values exact.
        assert g("/h", headers={"X-Env": "canary"}) == ("v2", "hdr")
        assert miss("/h", headers={"X-Env": "canaryx"}) == 404
        assert miss("/h") == 404
        assert g("/hre", headers={"x-user": "u042"}) == ("v2", "hdrre")
        assert miss("/hre", headers={"x-user": "u0421"}) == 404
        assert g("/q?debug=1") == ("v2", "query")
        assert miss("/q?debug=2") == 404
        assert g("/meth", method="PUT") == ("v1", "method")
        assert miss("/meth", method="GET") == 404
    finally:
        c.delete(d)


def test_precedence_and_no_match(cluster):
    c = cluster
    old = c.apply(route("z-old", "p", """\
        - matches: [{path: {type: PathPrefix, value: /p}}]
          filters: %s
          backendRefs: [{name: svc-v1, port: 80}]
        - matches: [{path: {type: Exact, value: /tie}}]
          filters: %s
          backendRefs: [{name: svc-v1, port: 80}]
        """ % (mark("old-prefix"), mark("old-tie"))))
    until(c, "/p/x", marked("old-prefix"), "route z-old", svc="p")
    import time
    time.sleep(1.1)  # creationTimestamp has whole seconds: the second route must be younger, not the same age
    new = c.apply(route("a-new", "p", """\
        - matches: [{path: {type: PathPrefix, value: /p/longer}}]
          filters: %s
          backendRefs: [{name: svc-v2, port: 80}]
        - matches: [{path: {type: Exact, value: /tie}}]
          filters: %s
          backendRefs: [{name: svc-v2, port: 80}]
        """ % (mark("new-prefix"), mark("new-tie"))))
    g = lambda path: served(req(c, path, svc="p"))  # noqa: E731
    until(c, "/p/longer/x", marked("new-prefix"), "route a-new", svc="p")
    # The longest prefix wins across routes, whatever their age.
    assert g("/p/longer/x") == ("v2", "new-prefix")
    assert g("/p/long") == ("v1", "old-prefix")
    # The same match in both: the oldest route wins although its name sorts last.
    assert g("/tie") == ("v1", "old-tie")
    # Routes attach to p and none matches: Envoy's 404 (NR).
    r = req(c, "/nothing/here", svc="p")
    assert r[0] == 404, r
    c.delete(new)
    c.delete(old)


# -- 3. filters --------------------------------------------------------------------------------------------------------

def test_filters(cluster):
    c = cluster
    d = c.apply(route("filters", "f", """\
        - matches: [{path: {type: PathPrefix, value: /hdr}}]
          filters:
          - type: RequestHeaderModifier
            requestHeaderModifier:
              set: [{name: x-set, value: from-route}]
              add: [{name: x-add, value: added}]
              remove: [x-remove]
          - type: ResponseHeaderModifier
            responseHeaderModifier:
              set: [{name: x-route, value: hdr}]
              add: [{name: x-resp-add, value: resp}]
              remove: [x-served-by]
          backendRefs: [{name: svc-v1, port: 80}]
        - matches: [{path: {type: PathPrefix, value: /old}}]
          filters:
          - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}
          backendRefs: [{name: svc-v1, port: 80}]
        - matches: [{path: {type: PathPrefix, value: /moved}}]
          filters:
          - {type: RequestRedirect, requestRedirect: {hostname: elsewhere.example, path: {type: ReplaceFullPath, replaceFullPath: /landing}}}
        - matches: [{path: {type: PathPrefix, value: /secure}}]
          filters:
          - {type: RequestRedirect, requestRedirect: {scheme: https, port: 8443, statusCode: 301}}
        - matches: [{path: {type: PathPrefix, value: /host}}]
          filters:
          - {type: URLRewrite, urlRewrite: {hostname: rewritten.example}}
          backendRefs: [{name: svc-v1, port: 80}]
        """))
    r = until(c, "/hdr/x", marked("hdr"), "the filters route", svc="f")
    # /hdr/headers reaches the app as is (the app lists every field line, repeated names kept).
    r = req(c, "/hdr/headers", svc="f", headers={"x-set": "from-client", "x-add": "client", "x-remove": "gone"})
    seen = json.loads(r[2])["headers"]
    assert [v for k, v in seen if k == "x-set"] == ["from-route"], seen
    # add appends a value to what the client sent; set replaced it.
    assert sorted(v for k, v in seen if k == "x-add") == ["added", "client"], seen
    assert "x-remove" not in [k for k, _ in seen]
    # ResponseHeaderModifier: the client sees the added header, not the removed one.
    assert r[1].get("x-resp-add") == "resp"
    assert "x-served-by" not in r[1], r[1]
    # ReplacePrefixMatch keeps what follows the prefix.
    assert json.loads(req(c, "/old/a/b?k=v", svc="f")[2])["path"] == "/new/a/b?k=v"
    assert json.loads(req(c, "/old", svc="f")[2])["path"] == "/new"
    # RequestRedirect: 302 by default, Location from the filter (scheme kept: http).
    status, headers, _ = req(c, "/moved/x", svc="f")
    assert status == 302
    assert headers["location"] == "http://elsewhere.example/landing", headers
    # scheme, port and status from the filter; host and path kept from the request.
    status, headers, _ = req(c, "/secure/page?x=1", svc="f", headers={"Host": "shop.example"})
    assert status == 301
    assert headers["location"] == "https://shop.example:8443/secure/page?x=1", headers
    # URLRewrite hostname: the app sees the new Host.
    assert json.loads(req(c, "/host/x", svc="f")[2])["headers"]["host"] == "rewritten.example"
    c.delete(d)


def app_log(c, version):
    """The app's request log: one "METHOD path host" line per request."""
    try:
        with open(os.path.join(c.app_logs, version + ".log")) as f:
            return [l.split() for l in f]
    except OSError:
        return []


def test_request_mirror(cluster):
    """RequestMirror, as Envoy's shadowing: the request goes to its backend and a copy to the mirror, whose Host
    gets "-shadow"; the client sees only the backend's answer."""
    c = cluster
    d = c.apply(route("mirror", "f", """\
        - matches: [{path: {type: PathPrefix, value: /mirrored}}]
          filters:
          - {type: RequestMirror, requestMirror: {backendRef: {name: svc-v2, port: 80}}}
          - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-route, value: mirror}]}}
          backendRefs: [{name: svc-v1, port: 80}]
        """))
    until(c, "/mirrored/x", marked("mirror"), "the mirror route", svc="f")
    tag = "/mirrored/once-%04x" % random.randrange(1 << 16)
    assert info(req(c, tag, svc="f", headers={"Host": "f.example"}))["tag"] == "v1"
    poll(lambda: ["GET", tag, "f.example-shadow"] in app_log(c, "v2"), timeout=10, what="the shadow copy at v2")
    assert ["GET", tag, "f.example"] in app_log(c, "v1")
    assert not [l for l in app_log(c, "v1") if l[1:2] == [tag] and l[2:] != ["f.example"]], app_log(c, "v1")
    # A Host with a port: "-shadow" goes before the port (Envoy's shadowAppendedHost), not after it.
    tag = "/mirrored/port-%04x" % random.randrange(1 << 16)
    assert info(req(c, tag, svc="f", headers={"Host": "f.example:8000"}))["tag"] == "v1"
    poll(lambda: ["GET", tag, "f.example-shadow:8000"] in app_log(c, "v2"), timeout=10,
         what="the shadow copy at v2 (%s)" % [l for l in app_log(c, "v2") if l[1:2] == [tag]])
    assert ["GET", tag, "f.example:8000"] in app_log(c, "v1")
    assert [l for l in app_log(c, "v2") if l[1:2] == [tag]] == [["GET", tag, "f.example-shadow:8000"]]
    c.delete(d)


GRPC_MIRROR_CLIENT = r'''
import hashlib, json, os, sys, grpc
body = os.urandom(int(sys.argv[2]))
with grpc.insecure_channel(sys.argv[1]) as ch:
    resp, call = ch.unary_unary("/l7test.Echo/Unary").with_call(body, timeout=20)
    stream = [m.decode() for m in ch.unary_stream("/l7test.Echo/Stream")(b"3", timeout=20)]
print(json.dumps({"len": len(body), "sha": hashlib.sha256(body).hexdigest(), "echoed": resp == b"v1:" + body,
                  "answer": resp[:3].decode(errors="replace"), "initial": [[k, v] for k, v in call.initial_metadata()],
                  "stream": stream}))
'''


def grpc_mirror_call(c, svc, size):
    p = subprocess.run(["ip", "netns", "exec", c.netns_of("client"), "/usr/bin/python3", "-c", GRPC_MIRROR_CLIENT,
                        "%s:%d" % (c.vip(svc), GRPC), str(size)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def grpc_calls(c, version, sha=None):
    """The gRPC calls the app of version logged: [method, authority, length, sha256] (those with sha)."""
    return [l[1:] for l in app_log(c, version) if l[:1] == ["GRPC"] and (sha is None or l[4:5] == [sha])]


def test_grpc_mirror(cluster):
    """A GRPCRoute's RequestMirror on h2c, as Envoy's shadowing: the call goes to its backend (v1) and a copy of
    it, its whole request body included (a 300 KiB message, more than the HTTP/2 windows), to the mirror (v2) with
    :authority "<vip>-shadow:9090"; the client (grpcio) gets only v1's answer, unary and server-streaming alike. Then
    an h2c client zmesh did not write (nghttp, a gRPC-framed POST) is mirrored the same way."""
    c = cluster
    d = c.apply("""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata: {name: grpc-mirror, namespace: %s}
        spec:
          parentRefs: [{group: "", kind: Service, name: svc-v1, port: %d}]
          rules:
          - filters:
            - {type: RequestMirror, requestMirror: {backendRef: {name: svc-v2, port: %d}}}
            - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-route, value: grpc-mirror}]}}
            backendRefs: [{name: svc-v1, port: %d}]
        """ % (NS, GRPC, GRPC, GRPC))
    vip = c.vip("svc-v1")
    authority, shadow = "%s:%d" % (vip, GRPC), "%s-shadow:%d" % (vip, GRPC)
    poll(lambda: ["x-route", "grpc-mirror"] in grpc_mirror_call(c, "svc-v1", 16)["initial"], timeout=APPLY_WAIT,
         what="the GRPCRoute with the mirror in force")
    out = grpc_mirror_call(c, "svc-v1", 300 << 10)
    # The client sees v1's answer only: its whole echo, its metadata, its stream.
    assert out["echoed"] and out["answer"] == "v1:", out["answer"]
    assert ["x-served-by", "v1"] in out["initial"], out["initial"]
    assert out["stream"] == ["v1:0", "v1:1", "v1:2"], out["stream"]
    want = ["/l7test.Echo/Unary", shadow, str(out["len"]), out["sha"]]
    poll(lambda: want in grpc_calls(c, "v2", out["sha"]), timeout=10,
         what="the shadow call at v2 (v2 logged %s)" % grpc_calls(c, "v2")[-5:])
    # One copy, to v2 only, with the shadow authority; v1 got the call itself with the client's authority.
    assert grpc_calls(c, "v2", out["sha"]) == [want]
    assert grpc_calls(c, "v1", out["sha"]) == [["/l7test.Echo/Unary", authority, str(out["len"]), out["sha"]]]
    poll(lambda: [l for l in grpc_calls(c, "v2") if l[:2] == ["/l7test.Echo/Stream", shadow]], timeout=10,
         what="the shadow of the streaming call at v2")
    assert not [l for l in grpc_calls(c, "v1") if l[1] == shadow], grpc_calls(c, "v1")

    # nghttp (nghttp2-client): h2c with prior knowledge, a gRPC-framed request of 200 KiB sent from a file.
    payload = os.urandom(200 << 10)
    sha = hashlib.sha256(payload).hexdigest()
    with tempfile.NamedTemporaryFile(dir=c.work, suffix=".grpc") as f:
        f.write(b"\0" + len(payload).to_bytes(4, "big") + payload)
        f.flush()
        p = subprocess.run(["ip", "netns", "exec", c.netns_of("client"), "nghttp", "-d", f.name,
                            "-H", "content-type: application/grpc", "-H", "te: trailers",
                            "http://%s/l7test.Echo/Unary" % authority], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    answer = b"v1:" + payload
    assert p.stdout == b"\0" + len(answer).to_bytes(4, "big") + answer, p.stdout[:64]
    want = ["/l7test.Echo/Unary", shadow, str(len(payload)), sha]
    poll(lambda: want in grpc_calls(c, "v2", sha), timeout=10, what="nghttp's request shadowed to v2")
    assert grpc_calls(c, "v2", sha) == [want]
    assert grpc_calls(c, "v1", sha) == [["/l7test.Echo/Unary", authority, str(len(payload)), sha]]
    c.delete(d)


def test_grpc_mirror_failing_shadow_does_not_fail_the_call(cluster):
    """A shadow that fails never fails the call it copies: mirrored to svc-v2's HTTP/1.1 port, the shadow's h2c
    session meets an HTTP/1.1 server (which refuses the preface and closes), and every call still gets v1's answer."""
    c = cluster
    d = c.apply("""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata: {name: grpc-mirror-broken, namespace: %s}
        spec:
          parentRefs: [{group: "", kind: Service, name: svc-v1, port: %d}]
          rules:
          - filters:
            - {type: RequestMirror, requestMirror: {backendRef: {name: svc-v2, port: 80}}}
            - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-route, value: broken-mirror}]}}
            backendRefs: [{name: svc-v1, port: %d}]
        """ % (NS, GRPC, GRPC))
    poll(lambda: ["x-route", "broken-mirror"] in grpc_mirror_call(c, "svc-v1", 16)["initial"], timeout=APPLY_WAIT,
         what="the GRPCRoute with the broken mirror in force")
    for size in (0, 1000, 200 << 10):
        out = grpc_mirror_call(c, "svc-v1", size)
        assert out["echoed"] and ["x-served-by", "v1"] in out["initial"], out["answer"]
        assert out["stream"] == ["v1:0", "v1:1", "v1:2"], out["stream"]
        assert grpc_calls(c, "v1", out["sha"])[-1][:2] == ["/l7test.Echo/Unary", "%s:%d" % (c.vip("svc-v1"), GRPC)]
    c.delete(d)


# -- 3b. retries --------------------------------------------------------------------------------------------------------

def waypoint_metrics(c):
    pod = c.waypoint_pods()[0]["metadata"]["name"]
    p = subprocess.run(["ip", "netns", "exec", c.netns_of(pod), "curl", "-s", "-m", "5",
                        "http://127.0.0.1:15020/metrics"], capture_output=True, text=True, timeout=30)
    return {n: v for n, labs, v in parse_prometheus(p.stdout) if not labs}


def test_default_retry_goes_to_another_host(cluster):
    """Istio's default retry policy, with no route asking for it (istio/istio pilot/pkg/networking/core/route/
    retry/retry.go: 2 attempts, retriable-status-codes 503 among others, another host each time): a 503 from
    one endpoint is retried on the other, so the client sees only the healthy one's answer; when every try
    answers 503 the client gets the last one after 1 + 2 tries, and the access log says URX."""
    c = cluster
    run = "%04x" % random.randrange(1 << 16)
    before = waypoint_metrics(c)
    for i in range(20):
        r = req(c, "/fail-on/v1/503/%s-%d" % (run, i), svc="svc")
        assert r[0] == 200 and info(r)["tag"] == "v2", r
    v1_tries = [l for l in app_log(c, "v1") if l[1].startswith("/fail-on/v1/503/%s-" % run)]
    assert v1_tries, "no request was first sent to v1 (the endpoint pick is random): nothing was retried"
    after = waypoint_metrics(c)
    assert (after["zmesh_waypoint_upstream_rq_retry_total"] - before.get("zmesh_waypoint_upstream_rq_retry_total", 0)
            >= len(v1_tries)), (before, after)
    # Every endpoint answers 503: three tries (both hosts seen), the 503 reaches the client, URX.
    path = "/status/503?all-%s" % run
    assert req(c, path, svc="svc")[0] == 503
    tries = [l for v in ("v1", "v2") for l in app_log(c, v) if l[1] == path]
    assert len(tries) == 3, tries
    assert {l[1] for l in app_log(c, "v1")} & {path} and {l[1] for l in app_log(c, "v2")} & {path}
    pod = c.waypoint_pods()[0]["metadata"]["name"]
    poll(lambda: [l for l in c.pod_log(pod, "istio-proxy").splitlines() if path in l and " 503 URX " in l],
         timeout=10, what="the access log line with URX")
    assert waypoint_metrics(c)["zmesh_waypoint_upstream_rq_retry_limit_exceeded_total"] >= 1


# -- 4. timeouts --------------------------------------------------------------------------------------------------------

def test_request_timeout(cluster):
    c = cluster
    d = c.apply(route("timeout", "t", """\
        - filters: %s
          timeouts: {request: 500ms}
          backendRefs: [{name: svc-v1, port: 80}]
        - matches: [{path: {type: PathPrefix, value: /backend}}]
          filters: %s
          timeouts: {request: 5s, backendRequest: 300ms}
          backendRefs: [{name: svc-v1, port: 80}]
        """ % (mark("timeout"), mark("backend-timeout"))))
    until(c, "/", marked("timeout"), "the timeout route", svc="t")
    # Faster than the timeout: answered.
    assert info(req(c, "/sleep/10", svc="t"))["path"] == "/sleep/10"
    status, _, body = req(c, "/sleep/3000", svc="t")
    assert (status, body) == (504, b"upstream request timeout")
    # backendRequest bounds each try to the backend: the same 504 though the request may take 5 s.
    status, _, body = req(c, "/backend/sleep/3000", svc="t")
    assert (status, body) == (504, b"upstream request timeout")
    assert info(req(c, "/backend/sleep/10", svc="t"))["path"] == "/backend/sleep/10"
    c.delete(d)


# -- 5. authorization -------------------------------------------------------------------------------------------------

def policy(name, action, rules, dry_run=False):
    ann = ", annotations: {istio.io/dry-run: \"true\"}" if dry_run else ""
    return textwrap.dedent("""\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: %s, namespace: %s%s}
        spec:
          targetRefs: [%s]
          action: %s
          rules: %s
        """) % (name, NS, ann, GATEWAY_REF, action, rules)


@contextlib.contextmanager
def applied_policy(c, text, gone):
    """Applies a policy; on exit deletes it and waits until gone(response of GET /) holds, so the next test starts
    from no policy."""
    d = c.apply(text)
    try:
        yield
    finally:
        c.delete(d)
        gone()


def test_allow_methods(cluster):
    c = cluster
    with applied_policy(c, policy("allow-get", "ALLOW", "[{to: [{operation: {methods: [GET]}}]}]"),
                        lambda: until(c, "/", lambda r: r[0] == 200, "POST allowed again", method="POST")):
        r = until(c, "/", lambda r: r[0] == 403, "POST denied", method="POST")
        assert r[2] == b"RBAC: access denied"
        assert info(req(c, "/any"))["method"] == "GET"


def test_deny_path_template(cluster):
    c = cluster
    with applied_policy(c, policy("deny-admin", "DENY", "[{to: [{operation: {paths: [\"/admin/{*}/secret\"]}}]}]"),
                        lambda: until(c, "/admin/a/secret", lambda r: r[0] == 200, "the DENY gone")):
        r = until(c, "/admin/a/secret", lambda r: r[0] == 403, "the DENY in force")
        assert r[2] == b"RBAC: access denied"
        # {*} is one path segment: two do not match, nor does another last segment.
        assert req(c, "/admin/a/b/secret")[0] == 200
        assert req(c, "/admin/a/public")[0] == 200


def test_principals(cluster):
    c = cluster
    text = policy("allow-client", "ALLOW", "[{from: [{source: {principals: [cluster.local/ns/%s/sa/client]}}]}]" % NS)
    with applied_policy(c, text, lambda: until(c, "/", lambda r: r[0] == 200, "other allowed again", src="other")):
        until(c, "/", lambda r: r[0] == 403, "other denied", src="other")
        assert req(c, "/")[0] == 200
        r = req(c, "/", src="other")
        assert (r[0], r[2]) == (403, b"RBAC: access denied")


def test_policy_targeting_a_service(cluster):
    """targetRefs kind Service: the policy applies to that Service's requests only."""
    c = cluster
    text = policy("deny-v2-post", "DENY", "[{to: [{operation: {methods: [POST]}}]}]").replace(
        GATEWAY_REF, '{group: "", kind: Service, name: svc-v2}')
    with applied_policy(c, text, lambda: until(c, "/", lambda r: r[0] == 200, "POST to svc-v2 allowed again",
                                               svc="svc-v2", method="POST")):
        r = until(c, "/", lambda r: r[0] == 403, "POST to svc-v2 denied", svc="svc-v2", method="POST")
        assert r[2] == b"RBAC: access denied"
        assert info(req(c, "/", svc="svc-v1", method="POST"))["tag"] == "v1"
        assert info(req(c, "/", svc="svc-v2"))["tag"] == "v2"


def test_tcp_port_policies(cluster):
    """A Service port declared TCP is relayed as TCP by the waypoint (no request is parsed), and the L7 policies
    that target the Service apply with Istio's TCP semantics (pilot/pkg/security/authz/model/model.go
    checkError): a DENY on a method denies every stream (the method cannot be known, so the rule is wider); an
    ALLOW whose only rule needs a method allows none; an ALLOW on principals still tells the clients apart."""
    c = cluster
    svc = service("tcpsvc", {"app": "svc"}).replace("appProtocol: http", "appProtocol: tcp")
    d = c.apply(svc)
    try:
        # Through the waypoint as TCP: the app answers, the waypoint adds nothing of its HTTP handling.
        r = until(c, "/", lambda r: r[0] == 200, "tcpsvc through the waypoint", svc="tcpsvc")
        assert "x-envoy-upstream-service-time" not in r[1], r[1]
        target = '{group: "", kind: Service, name: tcpsvc}'
        deny = policy("tcp-deny-post", "DENY", "[{to: [{operation: {methods: [POST]}}]}]").replace(GATEWAY_REF,
                                                                                                   target)
        with applied_policy(c, deny, lambda: until(c, "/", lambda r: r[0] == 200, "the DENY gone", svc="tcpsvc")):
            poll(lambda: _try(c, "/", svc="tcpsvc") is None, timeout=APPLY_WAIT, what="every TCP stream denied")
            assert _try(c, "/", svc="tcpsvc", src="other") is None
        allow_get = policy("tcp-allow-get", "ALLOW", "[{to: [{operation: {methods: [GET]}}]}]").replace(
            GATEWAY_REF, target)
        with applied_policy(c, allow_get, lambda: until(c, "/", lambda r: r[0] == 200, "the ALLOW gone",
                                                        svc="tcpsvc")):
            poll(lambda: _try(c, "/", svc="tcpsvc") is None, timeout=APPLY_WAIT, what="no TCP stream allowed")
        allow_other = policy("tcp-allow-other", "ALLOW", "[{from: [{source: {principals: [%sother]}}]}]"
                             % SPIFFE[len("spiffe://"):]).replace(GATEWAY_REF, target)
        with applied_policy(c, allow_other, lambda: until(c, "/", lambda r: r[0] == 200, "the ALLOW gone",
                                                          svc="tcpsvc")):
            poll(lambda: _try(c, "/", svc="tcpsvc") is None, timeout=APPLY_WAIT, what="client's stream denied")
            assert info(req(c, "/", svc="tcpsvc", src="other"))["tag"] in ("v1", "v2")
        pod = c.waypoint_pods()[0]["metadata"]["name"]
        assert [l for l in c.pod_log(pod, "istio-proxy").splitlines()
                if "protocol=TCP" in l and "rbac_access_denied_matched_policy[none]" in l], "no denial logged"
    finally:
        c.delete(d)


def test_dry_run_deny_does_not_deny(cluster):
    c = cluster
    # A dry-run DENY of GET and a real DENY of one path in the same apply: once the real one is in force, the
    # dry-run one is too, and GET elsewhere still passes.
    text = (policy("dry-deny-get", "DENY", "[{to: [{operation: {methods: [GET]}}]}]", dry_run=True) + "---\n" +
            policy("deny-marker", "DENY", "[{to: [{operation: {paths: [/dry-marker]}}]}]"))
    with applied_policy(c, text, lambda: until(c, "/dry-marker", lambda r: r[0] == 200, "the DENY gone")):
        until(c, "/dry-marker", lambda r: r[0] == 403, "the marker DENY in force")
        assert info(req(c, "/x"))["method"] == "GET"


# -- 6. gRPC ----------------------------------------------------------------------------------------------------------

GRPC_CLIENT = r'''
import json, sys, grpc
target = sys.argv[1]
out = {}


def err(e):
    return [e.code().name, e.details()]


with grpc.insecure_channel(target) as ch:
    try:
        resp, call = ch.unary_unary("/l7test.Echo/Unary").with_call(b"hello", timeout=10)
        out["unary"] = resp.decode()
        out["unary_md"] = dict(call.initial_metadata()).get("x-served-by")
    except grpc.RpcError as e:
        out["unary"] = err(e)
    try:
        out["stream"] = [m.decode() for m in ch.unary_stream("/l7test.Echo/Stream")(b"5", timeout=10)]
    except grpc.RpcError as e:
        out["stream"] = err(e)
    try:
        ch.unary_unary("/l7test.Echo/Missing")(b"", timeout=10)
        out["missing"] = "no error"
    except grpc.RpcError as e:
        out["missing"] = err(e)
print(json.dumps(out))
'''


def grpc_call(c, svc):
    p = subprocess.run(["ip", "netns", "exec", c.netns_of("client"), "/usr/bin/python3", "-c", GRPC_CLIENT,
                        "%s:%d" % (c.vip(svc), GRPC)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_grpc_through_the_waypoint(cluster):
    c = cluster
    n = len(c.access("svc-v1"))
    out = grpc_call(c, "svc-v1")
    # The client's ztunnel sent it to the waypoint (its identity), the VIP kept for the waypoint to resolve.
    recs = poll(lambda: c.access("svc-v1")[n:], timeout=10, what="the client ztunnel's access record")
    assert {r["dst.identity"] for r in recs} == {SPIFFE + "waypoint"}, recs
    assert recs[-1]["dst.hbone_addr"] == "%s:%d" % (c.vip("svc-v1"), GRPC), recs[-1]
    assert out["unary"] == "v1:hello" and out["unary_md"] == "v1"
    assert out["stream"] == ["v1:%d" % i for i in range(5)]
    # The handler's abort reaches the client as its status and details (grpc-status / grpc-message trailers).
    assert out["missing"] == ["NOT_FOUND", "no such thing on v1"]


GRPC_UNAVAILABLE_CLIENT = r'''
import json, sys, grpc
out = []
with grpc.insecure_channel(sys.argv[1]) as ch:
    for i in range(int(sys.argv[3])):
        try:
            out.append(ch.unary_unary("/l7test.Echo/UnavailableOn")(sys.argv[2].encode(), timeout=10).decode())
        except grpc.RpcError as e:
            out.append([e.code().name, e.details()])
print(json.dumps(out))
'''


def test_grpc_default_retry(cluster):
    """Istio's default retry policy for gRPC: a trailers-only UNAVAILABLE from one endpoint is retried on the
    other, so grpcio sees only successes; with one endpoint, three tries reach it and the client gets the
    UNAVAILABLE."""
    c = cluster

    def calls(svc, fail_on, n):
        p = subprocess.run(["ip", "netns", "exec", c.netns_of("client"), "/usr/bin/python3", "-c",
                            GRPC_UNAVAILABLE_CLIENT, "%s:%d" % (c.vip(svc), GRPC), fail_on, str(n)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def tried(version):
        return len([l for l in grpc_calls(c, version) if l[0] == "/l7test.Echo/UnavailableOn"])
    v1_before = tried("v1")
    assert calls("svc", "v1", 20) == ["v2:ok"] * 20
    assert tried("v1") > v1_before, "no call was first sent to v1 (the pick is random): nothing was retried"
    v1_before = tried("v1")
    assert calls("svc-v1", "v1", 1) == [["UNAVAILABLE", "unavailable on v1"]]
    poll(lambda: tried("v1") - v1_before == 3, timeout=10, what="three tries at v1 (%d)" % (tried("v1") - v1_before))


def test_grpcroute_method_match(cluster):
    c = cluster
    d = c.apply("""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata: {name: grpc-methods, namespace: %s}
        spec:
          parentRefs: [{group: "", kind: Service, name: svc, port: %d}]
          rules:
          - matches: [{method: {service: l7test.Echo, method: Unary}}]
            backendRefs: [{name: svc-v2, port: %d}]
          - backendRefs: [{name: svc-v1, port: %d}]
        """ % (NS, GRPC, GRPC, GRPC))

    def routed():
        o = grpc_call(c, "svc")
        return o if o["unary"] == "v2:hello" and o["stream"][:1] == ["v1:0"] else None
    out = poll(routed, timeout=APPLY_WAIT, what="the GRPCRoute in force")
    # Unary matches the method: v2 every time; the other methods take the catch-all rule: v1.
    for _ in range(3):
        o = grpc_call(c, "svc")
        assert o["unary"] == "v2:hello", o
        assert o["stream"] == ["v1:%d" % i for i in range(5)], o
        assert o["missing"] == ["NOT_FOUND", "no such thing on v1"], o
    assert out["unary_md"] == "v2"
    c.delete(d)


GRPC_META = r'''
import json, sys, grpc
with grpc.insecure_channel(sys.argv[1]) as ch:
    md = json.loads(sys.argv[2])
    resp, call = ch.unary_unary("/l7test.Echo/Meta").with_call(b"", metadata=md, timeout=10)
    print(json.dumps({"server": json.loads(resp), "initial": [[k, v] for k, v in call.initial_metadata()]}))
'''


def grpc_meta(c, svc, md):
    p = subprocess.run(["ip", "netns", "exec", c.netns_of("client"), "/usr/bin/python3", "-c", GRPC_META,
                        "%s:%d" % (c.vip(svc), GRPC), json.dumps(md)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_grpcroute_header_match_and_modifiers(cluster):
    """A GRPCRoute on h2c: a metadata (header) match routes to v2, request header modifiers reach the server as
    metadata, a response header modifier reaches the client's initial metadata."""
    c = cluster
    d = c.apply("""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata: {name: grpc-headers, namespace: %s}
        spec:
          parentRefs: [{group: "", kind: Service, name: svc-v1, port: %d}]
          rules:
          - matches: [{headers: [{name: x-canary, value: "yes"}]}]
            filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {set: [{name: x-set, value: route}], add: [{name: x-add, value: added}], remove: [x-drop]}
            - type: ResponseHeaderModifier
              responseHeaderModifier: {set: [{name: x-route, value: canary}]}
            backendRefs: [{name: svc-v2, port: %d}]
          - backendRefs: [{name: svc-v1, port: %d}]
        """ % (NS, GRPC, GRPC, GRPC))
    md = [["x-canary", "yes"], ["x-set", "client"], ["x-drop", "gone"]]
    out = poll(lambda: (lambda o: o if o["server"]["tag"] == "v2" else None)(grpc_meta(c, "svc-v1", md)),
               timeout=APPLY_WAIT, what="the GRPCRoute header match")
    seen = out["server"]["metadata"]
    assert [v for k, v in seen if k == "x-set"] == ["route"], seen
    assert [v for k, v in seen if k == "x-add"] == ["added"], seen
    assert "x-drop" not in [k for k, _ in seen], seen
    assert ["x-route", "canary"] in out["initial"], out["initial"]
    # Without the header: the catch-all rule, v1, no modifiers.
    out = grpc_meta(c, "svc-v1", [["x-set", "client"]])
    assert out["server"]["tag"] == "v1"
    assert [v for k, v in out["server"]["metadata"] if k == "x-set"] == ["client"]
    assert "x-route" not in [k for k, _ in out["initial"]]
    c.delete(d)


def test_grpc_denied_is_a_grpc_status(cluster):
    """A gRPC request the waypoint refuses gets Envoy's trailers-only answer: grpc-status PERMISSION_DENIED with
    grpc-message "RBAC: access denied" (not a bare HTTP 403 the client library must interpret)."""
    c = cluster
    text = policy("deny-unary", "DENY", "[{to: [{operation: {paths: [/l7test.Echo/Unary]}}]}]")

    def gone():
        poll(lambda: grpc_call(c, "svc-v1")["unary"] == "v1:hello", timeout=APPLY_WAIT, what="Unary allowed again")
    with applied_policy(c, text, gone):
        out = poll(lambda: (lambda o: o if o["unary"] != "v1:hello" else None)(grpc_call(c, "svc-v1")),
                   timeout=APPLY_WAIT, what="Unary denied")
        assert out["unary"] == ["PERMISSION_DENIED", "RBAC: access denied"], out
        # The other methods pass, the handler's own status still reaches the client.
        assert out["stream"] == ["v1:%d" % i for i in range(5)], out
        assert out["missing"] == ["NOT_FOUND", "no such thing on v1"], out
        # The waypoint's metrics count it as Envoy's do: the trailers-only answer's 200, grpc status 7.
        pod = c.waypoint_pods()[0]["metadata"]["name"]

        def denied_count():
            p = subprocess.run(["ip", "netns", "exec", c.netns_of(pod), "curl", "-s", "-m", "5",
                                "http://127.0.0.1:15020/metrics"], capture_output=True, text=True, timeout=30)
            return sum(v for n, labs, v in parse_prometheus(p.stdout) if n == "istio_requests_total"
                       and dict(labs).get("grpc_response_status") == "7"
                       and dict(labs).get("destination_service_name") == "svc-v1"
                       and dict(labs).get("response_code") == "200")
        poll(denied_count, timeout=10, what="istio_requests_total of the denied call")


# -- 7. the CLI's view -------------------------------------------------------------------------------------------------

def columns(text, names):
    """A table whose cells may hold spaces (istioctl's tabwriter, padding 1): cut each row where the header's
    columns start."""
    lines = text.splitlines()
    starts = [lines[0].index(n) for n in names]
    assert starts == sorted(starts), lines[0]
    bounds = list(zip(starts, starts[1:] + [None]))
    return [{n: l[a:b].strip() for n, (a, b) in zip(names, bounds)} for l in lines[1:]]


def test_cli_shows_the_waypoint(cluster):
    c = cluster
    p = subprocess.run([c.zmesh, "ztunnel-config", "services", "--node", "node1"], capture_output=True, text=True,
                       timeout=30, env=dict(os.environ, ZMESH_STATE_DIR=c.state))
    assert p.returncode == 0, p.stderr
    rows = columns(p.stdout, ["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"])
    svc = [r for r in rows if r["SERVICE NAME"] == "svc" and r["NAMESPACE"] == NS]
    assert len(svc) == 1, p.stdout
    assert svc[0]["WAYPOINT"] == "waypoint", svc[0]
    p = c.run("waypoint", "status", "-n", NS, check=False)
    assert p.returncode == 0, p.stderr
    rows = [re.split(r"\s{2,}", l.strip()) for l in p.stdout.splitlines()[1:]]
    prog = [r for r in rows if r[0] == "waypoint" and r[2] == "Programmed"]
    assert prog and prog[0][1] == "True" and prog[0][3] == "Programmed", p.stdout


# -- 7b. zmesh why ----------------------------------------------------------------------------------------------------

def test_why_agrees_with_the_traffic(cluster):
    """`zmesh why` predicts what the mesh then does to real traffic, six scenarios: the route and backend, an L7
    DENY, a 404 for a path no rule matches, a name that does not exist, a pod addressed by name (no waypoint,
    the client's identity at the destination), a TCP port an ALLOW on a method closes; its exit status says
    which."""
    c = cluster
    d = c.apply(service("why", {"app": "svc"}) + "---\n" + route("why-route", "why", """\
        - matches: [{path: {type: PathPrefix, value: /only}}]
          filters: %s
          backendRefs: [{name: svc-v2, port: 80}]
        """ % mark("why")) + "---\n" + textwrap.dedent("""\
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: why-no-delete, namespace: %s}
        spec:
          targetRefs: [{group: "", kind: Service, name: why}]
          action: DENY
          rules: [{to: [{operation: {methods: [DELETE]}}]}]
        """ % NS))
    try:
        got = until(c, "/only/x", marked("why"), "the why route in force", svc="why")
        assert info(got)["tag"] == "v2", got

        def why(*args):
            return subprocess.run([c.zmesh, "why", "%s/client" % NS, "why"] + list(args) + ["--state-dir", c.state],
                                  capture_output=True, text=True, timeout=30)
        p = why("--path", "/only/x")
        assert p.returncode == 0, p.stdout + p.stderr
        first = p.stdout.splitlines()[0]
        assert first == ("RESULT: ALLOWED: GET /only/x through the waypoint %s/waypoint, route %s/why-route, to "
                         "%s/svc-v2:80" % (NS, NS, NS)), p.stdout
        assert "Service %s/why uses waypoint %s/waypoint (namespace %s's label istio.io/use-waypoint=waypoint)" % (
            NS, NS, NS) in p.stdout, p.stdout
        assert "ztunnel expects %swaypoint" % SPIFFE in p.stdout, p.stdout
        assert "%s/v2 " % NS in p.stdout and "%s/v1 " % NS not in p.stdout, p.stdout  # only v2's endpoint
        # DENY by the policy: predicted, then seen.
        p = why("--path", "/only/x", "-X", "DELETE")
        assert p.returncode == 1, p.stdout + p.stderr
        assert p.stdout.startswith("RESULT: DENIED: 403 RBAC: access denied, by the waypoint %s/waypoint "
                                   "(%s/why-no-delete)" % (NS, NS)), p.stdout
        until(c, "/only/x", lambda r: r[0] == 403 and r[2] == b"RBAC: access denied", "DELETE denied", svc="why",
              method="DELETE")
        # No rule matches: 404 NR predicted, then seen.
        p = why("--path", "/elsewhere")
        assert p.returncode == 3, p.stdout + p.stderr
        assert p.stdout.startswith("RESULT: NO ROUTE: 404 NR"), p.stdout
        assert req(c, "/elsewhere", svc="why")[0] == 404
        # A name that does not exist: exit 5 and the reason.
        p = subprocess.run([c.zmesh, "why", "%s/client" % NS, "nosuch", "--state-dir", c.state],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 5 and "no Service %s/nosuch" % NS in p.stderr, p.stdout + p.stderr
        # A pod addressed by name: a waypoint for services (the default) is not in its path; ztunnel to ztunnel,
        # and the destination's ztunnel sees the client's own identity.
        p = subprocess.run([c.zmesh, "why", "%s/client" % NS, "pod/v1", "--port", str(HTTP), "--state-dir",
                            c.state], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr
        assert p.stdout.startswith("RESULT: ALLOWED: over HBONE from %s/client to %s/v1:%d" % (NS, NS, HTTP)), p.stdout
        assert "identity %sclient, port %d: ALLOW" % (SPIFFE, HTTP) in p.stdout, p.stdout
        # A pod outside the mesh would be plaintext; here every pod is in it: the client is, and says why.
        assert "in the mesh: its namespace's label istio.io/dataplane-mode=ambient" in p.stdout, p.stdout
    finally:
        c.delete(d)
    # A TCP port whose only ALLOW rule needs a method: no stream is allowed, predicted and seen.
    d = c.apply(service("whytcp", {"app": "svc"}).replace("appProtocol: http", "appProtocol: tcp") + "---\n" +
                policy("whytcp-get", "ALLOW", "[{to: [{operation: {methods: [GET]}}]}]").replace(
                    GATEWAY_REF, '{group: "", kind: Service, name: whytcp}'))
    try:
        poll(lambda: c.api("Service", NS, "whytcp"), timeout=APPLY_WAIT, what="the Service applied")
        p = poll(lambda: (lambda p: p if p.returncode == 1 else None)(subprocess.run(
            [c.zmesh, "why", "%s/client" % NS, "whytcp", "--state-dir", c.state], capture_output=True, text=True,
            timeout=30)), timeout=APPLY_WAIT, what="zmesh why seeing the TCP Service and its policy")
        assert p.stdout.startswith("RESULT: DENIED: the TCP connection is closed, by the waypoint %s/waypoint (no "
                                   "ALLOW policy matches: %s/whytcp-get)" % (NS, NS)), p.stdout
        poll(lambda: _try(c, "/", svc="whytcp") is None, timeout=APPLY_WAIT, what="the TCP stream refused")
    finally:
        c.delete(d)


# -- 8. a waypoint with no ready pod ----------------------------------------------------------------------------------

def test_waypoint_without_a_ready_pod_refuses(cluster):
    c = cluster
    p = c.run("waypoint", "apply", "-n", NS, "--name", "cold", "--wait", "--waypoint-timeout", "60s", check=False,
              timeout=90)
    assert p.returncode == 0, p.stdout + p.stderr
    d = c.apply(service("coldsvc", {"app": "svc"}, labels={"istio.io/use-waypoint": "cold"}))
    until(c, "/", lambda r: r[0] == 200, "coldsvc through waypoint cold", svc="coldsvc")
    # Stop cold's pod (its processes, so its readiness probe fails) rather than delete it: a deleted pod is
    # replaced at once, which would make the not-ready window a race.
    wp_pod = c.waypoint_pods("cold")[0]["metadata"]["name"]
    pids = [int(x) for x in subprocess.run(["ip", "netns", "pids", c.netns_of(wp_pod)], capture_output=True,
                                           text=True).stdout.split()]
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        poll(lambda: "addresses" not in (c.api("Gateway", NS, "cold") or {}).get("status", {}), timeout=60,
             what="Gateway cold not programmed with its pod stopped")
        vip = c.vip("coldsvc")

        def refused():
            try:
                s = connect(c.netns_of("client"), vip, 80, timeout=10)
            except OSError:
                return True
            try:
                s.sendall(b"GET / HTTP/1.1\r\nHost: coldsvc\r\n\r\n")
                closed, got = closed_without_data(s, timeout=5)
                return closed and got == b""
            finally:
                s.close()
        poll(refused, timeout=APPLY_WAIT, what="coldsvc refused")
        want = ('error="service %s/coldsvc has waypoint %s/cold with no ready endpoint: the connection is refused '
                'rather than sent around it"' % (NS, NS))
        lines = poll(lambda: [l for l in c.log("ztunnel-node1").splitlines() if want in l], timeout=10,
                     what="ztunnel saying why; its lines on coldsvc: %s"
                     % [l for l in c.log("ztunnel-node1").splitlines() if "coldsvc" in l][-5:])
        # Refused before any hop: the intended address is the VIP itself, no workload chosen, nothing sent.
        assert "dst.addr=%s:80 " % vip in lines[-1] and "dst.workload" not in lines[-1], lines[-1]
        assert "bytes_sent=0 bytes_recv=0" in lines[-1], lines[-1]
        # Never sent around the waypoint, whichever attempt: each is refused with no byte of an answer.
        for _ in range(3):
            assert refused()
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
    c.delete(d)
    c.run("waypoint", "delete", "cold", "-n", NS, check=False)
