"""DestinationRule in the waypoint end to end on `zmesh up` (src/waypoint/README.md "DestinationRule"): zmeshd converts
networking.istio.io DestinationRules (`zmesh apply -f`), the waypoint picks endpoints by their load balancer, with
real traffic from a client pod through its ztunnel, the waypoint and the endpoints' ztunnels.

One cluster serves the module: namespace `dr` in ambient mode with its waypoint; pods `a` and `b` (version v1) and
`c` (version v2) behind Service `svc`, each running apps.py `l7app` answering its pod name as its tag; a client pod.
Requests are made from the test process with sockets in the client pod's network namespace.

Checked: ROUND_ROBIN rotates exactly over the three endpoints on one connection (so one waypoint worker: 100 each
of 300); RANDOM spreads (each pod within 60..140 of 300); consistentHash on a header, with ring hash and with Maglev,
sends each key always to one pod and the keys to several pods; httpCookie with a ttl sets Envoy's Set-Cookie on a
request without it and sticks to one pod with it. Subsets are not routable without a VirtualService (another part
of the work): their endpoint filtering and the 503 NC of an undefined subset are unit-tested
(tests/unit/test_dr_waypoint.c).

Each test applies its DestinationRule and polls until its effect shows (never a sleep). Addresses of its own:
prefix zr<hex>, state /run/zmesh-updr-<hex>, nodes 172.24.<o>.0/24, pods 10.<o>.0.0/16 with o in 1..19 (clear of
the other `zmesh up` tests' ranges).
"""
import http.client
import json
import os
import random
import re
import shutil
import tempfile

import pytest

from helpers import connect
from test_up import _force_cleanup, poll
from test_waypoint_l7 import L7Cluster

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "apps.py")
NS = "dr"
HTTP = 8080
APPLY_WAIT = 30
PODS = ("a", "b", "c")


def pod(name, node, labels, cmd=None, probe=True):
    cmd = cmd or ["/usr/bin/python3", "-u", APPS, "l7app", str(HTTP), name, "19090"]
    p = "    readinessProbe: {tcpSocket: {port: %d}, periodSeconds: 1}\n" % HTTP if probe else ""
    return ("apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: %s, labels: %s}\n"
            "spec:\n  nodeName: %s\n  serviceAccountName: svc\n  terminationGracePeriodSeconds: 1\n"
            "  containers:\n  - name: main\n    command: %s\n%s"
            % (name, NS, json.dumps(labels), node, json.dumps(cmd), p))


def manifests():
    docs = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: %s, labels: {istio.io/dataplane-mode: ambient}}\n" % NS,
            pod("a", "node1", {"app": "svc", "version": "v1"}),
            pod("b", "node2", {"app": "svc", "version": "v1"}),
            pod("c", "node2", {"app": "svc", "version": "v2"}),
            pod("client", "node1", {"app": "client"}, ["sleep", "100000"], probe=False),
            "apiVersion: v1\nkind: Service\nmetadata: {name: svc, namespace: %s}\n"
            "spec:\n  selector: {app: svc}\n  ports: [{name: http, port: 80, targetPort: %d, appProtocol: http}]\n"
            % (NS, HTTP)]
    return "---\n".join(docs)


class DRCluster(L7Cluster):
    def __init__(self, manifests_dir):
        super().__init__(manifests_dir)
        tag = "%04x" % random.randrange(1 << 16)
        self.prefix = "zr" + tag
        self.state = "/run/zmesh-updr-" + tag
        octet = random.randrange(1, 20)
        self.node_subnet = "172.24.%d.0" % octet
        self.pod_subnet = "10.%d.0.0" % octet
        self.host_ip = "172.24.%d.1" % octet
        self.work = tempfile.mkdtemp(prefix="zmesh-updr-w-")

    def netns_of(self, pod):
        return "%s-%s_%s" % (self.prefix, NS, pod)

    def vip(self, svc):
        return self.api("Service", NS, svc)["spec"]["clusterIP"]


class Conn:
    """One keep-alive HTTP/1.1 connection from the client pod to svc:80 (one tunnel, so one waypoint worker)."""

    def __init__(self, c):
        vip = c.vip("svc")
        self.h = http.client.HTTPConnection(vip, 80, timeout=15)
        self.h.sock = connect(c.netns_of("client"), vip, 80, timeout=15)

    def get(self, path="/", headers=None):
        self.h.request("GET", path, headers=headers or {})
        r = self.h.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body)
        return json.loads(body)["tag"], {k.lower(): v for k, v in r.getheaders()}

    def close(self):
        self.h.close()


def tags(c, n, headers=None, path="/"):
    conn = Conn(c)
    try:
        return [conn.get(path, headers)[0] for _ in range(n)]
    finally:
        conn.close()


def attempt(fn):
    try:
        return fn()
    except (OSError, http.client.HTTPException, AssertionError):
        return None


@pytest.fixture(scope="module")
def cluster():
    d = tempfile.mkdtemp(prefix="zmesh-updr-m-")
    with open(os.path.join(d, "dr.yaml"), "w") as f:
        f.write(manifests())
    c = DRCluster(d)
    try:
        c.up()
        p = c.run("waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait", "--waypoint-timeout", "60s",
                  check=False, timeout=90)
        assert p.returncode == 0, p.stdout + p.stderr
        # every endpoint answering through the waypoint before the first test
        poll(lambda: attempt(lambda: set(tags(c, 30)) == set(PODS)), timeout=APPLY_WAIT,
             what="all three pods answering through the waypoint")
        yield c
    finally:
        if os.environ.get("ZMESH_KEEP_CLUSTER") == "1":
            print("kept cluster: --state-dir %s, manifests %s" % (c.state, d))
        else:
            _force_cleanup(c)
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(c.work, ignore_errors=True)


def dr(policy):
    return ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: svc, namespace: %s}\n"
            "spec:\n  host: svc\n  trafficPolicy: %s\n" % (NS, policy))


def rotation(seq):
    """True when seq cycles through all three pods in a fixed order."""
    return len(set(seq[:3])) == 3 and all(seq[i] == seq[i % 3] for i in range(len(seq)))


def sticky(c, header, keys, n=10, path="/"):
    """{key: set of pods} over n requests per key."""
    conn = Conn(c)
    try:
        return {k: {conn.get(path % k if "%" in path else path, {header: k} if header else None)[0]
                    for _ in range(n)} for k in keys}
    finally:
        conn.close()


def test_round_robin(cluster):
    c = cluster
    c.apply(dr("{loadBalancer: {simple: ROUND_ROBIN}}"))
    poll(lambda: attempt(lambda: rotation(tags(c, 12))), timeout=APPLY_WAIT, every=0.2, what="ROUND_ROBIN in force")
    seq = tags(c, 300)
    assert rotation(seq), seq[:30]
    assert {p: seq.count(p) for p in PODS} == {"a": 100, "b": 100, "c": 100}


def test_consistent_hash_header(cluster):
    """Ring hash, then Maglev: each x-user value always reaches one pod, across 20 requests; 12 values reach
    several pods."""
    c = cluster
    keys = ["user-%d" % i for i in range(12)]
    for algo in ("ringHash: {minimumRingSize: 1024}", "maglev: {tableSize: 65537}"):
        c.apply(dr("{loadBalancer: {consistentHash: {httpHeaderName: x-user, %s}}}" % algo))

        def held():
            m = sticky(c, "x-user", keys[:4], n=12)
            return all(len(v) == 1 for v in m.values())
        poll(lambda: attempt(held), timeout=APPLY_WAIT, what="the header hash (%s) in force" % algo)
        m = sticky(c, "x-user", keys, n=20)
        assert all(len(v) == 1 for v in m.values()), m
        assert len(set().union(*m.values())) >= 2, m
        # a request without the header is load balanced at random (Envoy hashes a random number)
        assert len(set(tags(c, 60))) >= 2


def test_random(cluster):
    c = cluster
    # From a header hash (which pins one key to one pod) to RANDOM: in force when one key reaches several pods.
    c.apply(dr("{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}"))
    poll(lambda: attempt(lambda: all(len(v) == 1 for v in sticky(c, "x-user", ["k1", "k2", "k3"], n=12).values())),
         timeout=APPLY_WAIT, what="the header hash in force")
    c.apply(dr("{loadBalancer: {simple: RANDOM}}"))
    poll(lambda: attempt(lambda: len(sticky(c, "x-user", ["k1"], n=20)["k1"]) >= 2), timeout=APPLY_WAIT,
         what="RANDOM in force")
    seq = tags(c, 300)
    got = {p: seq.count(p) for p in PODS}
    # 100 expected each; a binomial's standard deviation here is 8.2: five of them either way.
    assert all(59 <= v <= 141 for v in got.values()), got
    assert not rotation(seq), seq[:30]


def test_cookie(cluster):
    """httpCookie with a ttl: a request without the cookie gets Envoy's Set-Cookie (name="<16 hex>"; Max-Age;
    Path; HttpOnly) and a pod; with the cookie it always reaches the same pod; other cookie values spread."""
    c = cluster
    c.apply(dr("{loadBalancer: {consistentHash: {httpCookie: {name: zsticky, path: /, ttl: 3600s}}}}"))

    def cookie():
        conn = Conn(c)
        try:
            tag, h = conn.get("/")
            return (tag, h["set-cookie"]) if "set-cookie" in h else None
        finally:
            conn.close()
    tag, sc = poll(lambda: attempt(cookie), timeout=APPLY_WAIT, what="a Set-Cookie from the waypoint")
    m = re.fullmatch(r'zsticky="([0-9a-f]{16})"; Max-Age=3600; Path=/; HttpOnly', sc)
    assert m, sc
    value = m.group(1)
    conn = Conn(c)
    try:
        seen = set()
        for _ in range(30):
            t, h = conn.get("/", {"Cookie": 'zsticky="%s"' % value})
            assert "set-cookie" not in h, h
            seen.add(t)
        # the generated cookie's value is the hash key: the pod that answered the first request
        assert seen == {tag}, (seen, tag)
        per_value = {v: {conn.get("/", {"Cookie": "other=1; zsticky=%s" % v})[0] for _ in range(8)}
                     for v in ("%016x" % random.getrandbits(64) for _ in range(12))}
    finally:
        conn.close()
    assert all(len(s) == 1 for s in per_value.values()), per_value
    assert len(set().union(*per_value.values())) >= 2, per_value
