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
import subprocess
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


REQLOG_DIR = "/tmp"  # set by the fixture: each l7app pod appends "METHOD path host" per request to <dir>/<pod>.reqlog


def pod(name, node, labels, cmd=None, probe=True):
    cmd = cmd or ["/usr/bin/python3", "-u", APPS, "l7app", str(HTTP), name, "19090",
                  os.path.join(REQLOG_DIR, name + ".reqlog")]
    p = "    readinessProbe: {tcpSocket: {port: %d}, periodSeconds: 1}\n" % HTTP if probe else ""
    return ("apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: %s, labels: %s}\n"
            "spec:\n  nodeName: %s\n  serviceAccountName: svc\n  terminationGracePeriodSeconds: 1\n"
            "  containers:\n  - name: main\n    command: %s\n%s"
            % (name, NS, json.dumps(labels), node, json.dumps(cmd), p))


# A server that fails every request with 503 (JSON tag "bad"), for outlier detection.
BAD = ("import http.server as h, time\n"
       "class H(h.BaseHTTPRequestHandler):\n"
       "    protocol_version = 'HTTP/1.1'\n"
       "    def do_GET(self):\n"
       "        print('request %%.3f' %% time.time(), flush=True)\n"
       "        b = b'{\"tag\": \"bad\"}'\n"
       "        self.send_response(503)\n"
       "        self.send_header('content-type', 'application/json')\n"
       "        self.send_header('content-length', str(len(b)))\n"
       "        self.end_headers()\n"
       "        self.wfile.write(b)\n"
       "    def log_message(self, *a):\n"
       "        pass\n"
       "h.ThreadingHTTPServer(('', %d), H).serve_forever()\n" % HTTP)


GRPC = 9090  # the Services' gRPC port (targetPort 19090, the l7app's gRPC server)


def service(name, selector, proto="http", grpc=False):
    g = ", {name: grpc, port: %d, targetPort: 19090, appProtocol: grpc}" % GRPC if grpc else ""
    return ("apiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: %s}\n"
            "spec:\n  selector: %s\n  ports: [{name: %s, port: 80, targetPort: %d, appProtocol: %s}%s]\n"
            % (name, NS, json.dumps(selector), proto, HTTP, proto, g))


def manifests():
    docs = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: %s, labels: {istio.io/dataplane-mode: ambient}}\n" % NS,
            pod("a", "node1", {"app": "svc", "version": "v1", "od": "yes"}),
            pod("b", "node2", {"app": "svc", "version": "v1", "od": "yes"}),
            pod("c", "node2", {"app": "svc", "version": "v2"}),
            pod("bad", "node1", {"app": "bad", "od": "yes"}, ["/usr/bin/python3", "-u", "-c", BAD]),
            pod("client", "node1", {"app": "client"}, ["sleep", "100000"], probe=False),
            pod("hole", "node2", {"app": "hole"}),
            service("svc", {"app": "svc"}),
            service("od", {"od": "yes"}),
            service("cb", {"app": "svc"}),
            service("tcpsvc", {"app": "svc"}, proto="tcp"),
            service("ct", {"app": "hole"}, grpc=True),
            service("gsvc", {"app": "svc"}, grpc=True),
            service("cttcp", {"app": "hole"}, proto="tcp"),
            service("one", {"version": "v2"})]
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

    def pod_log(self, pod, container):
        try:
            with open(os.path.join(self.state, "pods", "%s_%s" % (NS, pod), container + ".log"),
                      errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def waypoint_netns(self):
        for f in sorted(os.listdir(os.path.join(self.state, "api"))):
            if f.startswith("pod_%s_" % NS) and f.endswith(".json"):
                with open(os.path.join(self.state, "api", f)) as fh:
                    p = json.load(fh)
                if p["metadata"].get("labels", {}).get("gateway.networking.k8s.io/gateway-name") == "waypoint":
                    return self.netns_of(p["metadata"]["name"])
        return None

    def waypoint_log(self):
        out = ""
        for f in sorted(os.listdir(os.path.join(self.state, "api"))):
            if f.startswith("pod_%s_" % NS) and f.endswith(".json"):
                with open(os.path.join(self.state, "api", f)) as fh:
                    p = json.load(fh)
                if p["metadata"].get("labels", {}).get("gateway.networking.k8s.io/gateway-name") == "waypoint":
                    out += self.pod_log(p["metadata"]["name"], "istio-proxy")
        return out


class Conn:
    """One keep-alive HTTP/1.1 connection from the client pod to svc:80 (one tunnel, so one waypoint worker)."""

    def __init__(self, c, svc="svc"):
        vip = c.vip(svc)
        self.h = http.client.HTTPConnection(vip, 80, timeout=15)
        self.h.sock = connect(c.netns_of("client"), vip, 80, timeout=15)

    def get(self, path="/", headers=None):
        self.h.request("GET", path, headers=headers or {})
        r = self.h.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body)
        return json.loads(body)["tag"], {k.lower(): v for k, v in r.getheaders()}

    def info(self, path="/"):
        """The app's JSON answer (tag, the peer it saw as "client") of one request that must get 200."""
        self.h.request("GET", path)
        r = self.h.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body)
        return json.loads(body)

    def raw(self, path="/"):
        """(status, body) of one request, whatever the status."""
        self.h.request("GET", path)
        r = self.h.getresponse()
        return r.status, r.read()

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
    global REQLOG_DIR
    d = tempfile.mkdtemp(prefix="zmesh-updr-m-")
    os.chmod(d, 0o777)
    REQLOG_DIR = d
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


def dr_for(svc, policy):
    return ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: %s, namespace: %s}\n"
            "spec:\n  host: %s\n  trafficPolicy: %s\n" % (svc, NS, svc, policy))


def test_outlier_detection(cluster):
    """Service od has two good pods and one that answers 503 to everything (and logs each request with its time):
    with consecutive5xxErrors 2 the bad pod is ejected (the waypoint logs it, counts it in Envoy's outlier stats on
    :15020/metrics and lists it in /config_dump), gets no request while ejected, and is picked again only after
    the base ejection time (5 s). The client never sees its 503s: Istio's default retry policy (503, another
    host) retries them, and each failed try counts toward the ejection."""
    import datetime
    import time
    c = cluster
    c.apply(dr_for("od", "{outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 5s, "
                         "maxEjectionPercent: 100}}"))

    def ejected_at():
        for line in c.waypoint_log().splitlines():
            m = re.match(r"(\S+)\s+info\s+waypoint::outlier\s+ejected \S*/dr/bad for 5000 ms", line)
            if m:
                return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                    tzinfo=datetime.timezone.utc).timestamp()
        return None

    def bad_times():
        return [float(x) for x in re.findall(r"^request ([0-9.]+)$", c.pod_log("bad", "main"), re.M)]

    def some_requests(n=10):
        # a new connection each time: a tunnel keeps the config it started with
        conn = Conn(c, "od")
        try:
            for _ in range(n):
                status, _ = conn.raw("/")
                assert status == 200, status  # the bad pod's 503s are retried on another host
        finally:
            conn.close()
        return ejected_at()
    ej = poll(lambda: attempt(some_requests), timeout=APPLY_WAIT, every=0.05, what="the bad pod's ejection")
    wp = c.waypoint_netns()
    metrics = subprocess.run(["ip", "netns", "exec", wp, "curl", "-s", "-m", "5", "http://127.0.0.1:15020/metrics"],
                             capture_output=True, text=True, timeout=30).stdout
    assert ('envoy_cluster_outlier_detection_ejections_enforced_total{cluster_name="outbound|80||'
            'od.dr.svc.cluster.local"} 1') in metrics, metrics
    assert ('envoy_cluster_outlier_detection_ejections_active{cluster_name="outbound|80||'
            'od.dr.svc.cluster.local"} 1') in metrics, metrics
    dump = json.loads(subprocess.run(["ip", "netns", "exec", wp, "curl", "-s", "-m", "5",
                                      "http://127.0.0.1:15000/config_dump"],
                                     capture_output=True, text=True, timeout=30).stdout)
    ej_list = dump["outlierEjections"]
    assert [e["endpoint"].rsplit("/", 2)[-2:] for e in ej_list] == [["dr", "bad"]], ej_list
    assert ej_list[0]["cluster"] == "outbound|80||od.dr.svc.cluster.local" and ej_list[0]["ejections"] == 1
    # Traffic until the bad pod is asked again; the first request it gets after the ejection (beyond the ones
    # already on their way) comes no sooner than baseEjectionTime after it.
    def readmitted():
        some_requests(5)
        later = [t for t in bad_times() if t > ej + 0.5]
        return later[0] if later else None
    back = poll(lambda: attempt(readmitted), timeout=30, every=0.05, what="the bad pod picked again")
    assert back - ej >= 4.9, (ej, back)


def test_circuit_breaker(cluster):
    """connectionPool maxConnections 1 and http1MaxPendingRequests 1 on Service cb, Envoy's semantics: of six
    concurrent slow requests (1.5 s each) one is in flight, one waits for its connection (pending) and is served
    after it, so it takes at least about twice as long; the other four get Envoy's overflow, 503 with
    x-envoy-overloaded: true and flag UO; afterwards requests pass again."""
    import threading
    import time
    c = cluster
    c.apply(dr_for("cb", "{connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}"))

    def burst():
        results = []
        lock = threading.Lock()

        def one():
            try:
                conn = Conn(c, "cb")
                try:
                    t0 = time.monotonic()
                    conn.h.request("GET", "/sleep/1500")
                    resp = conn.h.getresponse()
                    r = (resp.status, resp.read(), resp.getheader("x-envoy-overloaded"), time.monotonic() - t0)
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException) as e:
                r = (0, repr(e).encode(), None, 0)
            with lock:
                results.append(r)
        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results
    res = poll(lambda: (lambda r: r if any(x[0] == 503 for x in r) else None)(burst()), timeout=APPLY_WAIT,
               every=0.2, what="an overflow under six concurrent requests")
    ok = [r for r in res if r[0] == 200]
    over = [r for r in res if r[0] == 503]
    assert len(ok) + len(over) == 6, res
    assert len(ok) >= 2, res  # the one in flight and the one that waited for its connection
    assert all(b == b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
               and h == "true" for _, b, h, _ in over), over
    # the pending one was sent only once the first one's connection was free (without a queue both take 1.5 s)
    assert max(e for _, _, _, e in ok) >= 2.0, ok
    # the access log says UO for them
    poll(lambda: re.search(r'" 503 UO upstream_reset_before_response_started\{overflow\}', c.waypoint_log()),
         timeout=10, what="UO in the waypoint's access log")
    # sequential requests each find the pool free again
    conn = Conn(c, "cb")
    try:
        assert [conn.raw("/")[0] for _ in range(10)] == [200] * 10
    finally:
        conn.close()


def test_pending_client_leaves(cluster):
    """A request waiting for a connection (maxConnections 1, one slow request in flight) whose client goes away
    leaves the queue: it never reaches a pod (the pods' request logs do not show its path), and the next request
    after the slow one passes."""
    import threading
    import time
    c = cluster
    c.apply(dr_for("cb", "{connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}"))
    poll(lambda: attempt(lambda: Conn(c, "cb").raw("/")[0] == 200), timeout=APPLY_WAIT, what="cb answering")
    mark = "gone-%d" % random.randrange(1 << 30)

    def slow():
        conn = Conn(c, "cb")
        try:
            conn.raw("/sleep/2000")
        finally:
            conn.close()

    def queued_by_waypoint():
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)  # the slow one holds the connection now
        conn = Conn(c, "cb")
        conn.h.request("GET", "/" + mark)
        time.sleep(0.3)
        conn.close()  # gone while pending
        t.join()
        return True
    queued_by_waypoint()
    conn = Conn(c, "cb")
    try:
        assert conn.raw("/")[0] == 200
    finally:
        conn.close()
    seen = ""
    for p in PODS:
        try:
            with open(os.path.join(REQLOG_DIR, p + ".reqlog")) as f:
                seen += f.read()
        except OSError:
            pass
    assert "/sleep/2000" in seen  # the log works: the slow request is there
    assert mark not in seen
    assert re.search(r'"GET /%s HTTP/1.1" 0 DC downstream_remote_disconnect' % mark, c.waypoint_log()), \
        c.waypoint_log()[-3000:]


def test_tcp_max_connections(cluster):
    """Service tcpsvc is relayed as TCP by the waypoint: with connectionPool.tcp.maxConnections 1, a second
    connection while the first is open is closed at once (Envoy's upstream overflow, UO in the TCP metrics); once
    the first closes, a new one passes."""
    c = cluster
    c.apply(dr_for("tcpsvc", "{connectionPool: {tcp: {maxConnections: 1}}}"))

    def refused_while_one_open():
        first = Conn(c, "tcpsvc")
        try:
            first.get("/")  # the first connection is through and stays open
            second = Conn(c, "tcpsvc")
            try:
                second.raw("/")
                return False
            except (OSError, http.client.HTTPException):
                return True
            finally:
                second.close()
        finally:
            first.close()
    poll(lambda: attempt(refused_while_one_open), timeout=APPLY_WAIT, every=0.2,
         what="a second TCP connection refused")
    # with nothing open, connections pass again (one at a time)
    def passes():
        conn = Conn(c, "tcpsvc")
        try:
            return conn.get("/")[0] in PODS
        finally:
            conn.close()
    poll(lambda: attempt(passes), timeout=10, every=0.2, what="a TCP connection after the first closed")
    wp = c.waypoint_netns()
    metrics = subprocess.run(["ip", "netns", "exec", wp, "curl", "-s", "-m", "5", "http://127.0.0.1:15020/metrics"],
                             capture_output=True, text=True, timeout=30).stdout
    assert any(line.startswith("istio_tcp_connections_opened_total{") and 'response_flags="UO"' in line
               and 'destination_service_name="tcpsvc"' in line for line in metrics.splitlines()), metrics


def access_log_has(c, pattern):
    return re.search(pattern, c.waypoint_log())


def test_max_requests_per_connection_and_idle_timeout(cluster):
    """Service one has one pod (c), which reports the peer of each request (its destination ztunnel's
    connection, one per upstream connection of the waypoint). With maxRequestsPerConnection 2, six requests on
    one client connection (one waypoint worker, so one pool) use three upstream connections, two requests each
    in turn; with idleTimeout 1s a pooled connection left idle for 1.5 s is closed, so the next request opens a
    new one, which the request after it reuses."""
    import time
    c = cluster
    c.apply(dr_for("one", "{connectionPool: {http: {maxRequestsPerConnection: 2, idleTimeout: 1s}}}"))

    def peers(n):
        conn = Conn(c, "one")
        try:
            return [conn.info("/")["client"] for _ in range(n)]
        finally:
            conn.close()

    def runs(seq):
        out = []
        for p in seq:
            if out and out[-1][0] == p:
                out[-1][1] += 1
            else:
                out.append([p, 1])
        return out

    def in_force(seq):
        # the worker's pool may hold a connection used once already: the first run may be short
        r = runs(seq)
        return (len({p for p, _ in r}) == len(r) and all(n <= 2 for _, n in r)
                and all(n == 2 for _, n in r[1:-1]) and len(r) >= 3)
    seq = poll(lambda: attempt(lambda: (lambda s: s if in_force(s) else None)(peers(7))), timeout=APPLY_WAIT,
               every=0.2, what="maxRequestsPerConnection 2 in force")
    assert len(set(seq)) >= 3, seq
    conn = Conn(c, "one")
    try:
        # requests until one opens a new upstream connection, which then goes back to the pool used once
        prev = conn.info("/")["client"]
        for _ in range(3):
            first = conn.info("/")["client"]
            if first != prev:
                break
            prev = first
        assert first != prev, (prev, first)
        time.sleep(1.5)
        after_idle = conn.info("/")["client"]
        reused = conn.info("/")["client"]
    finally:
        conn.close()
    assert after_idle != first, (first, after_idle)  # the idle one was closed (it had a request left)
    assert reused == after_idle, (after_idle, reused)  # one in use within the timeout is reused


def test_connect_timeout(cluster):
    """connectionPool.tcp.connectTimeout 1s on Service ct, whose one pod (hole) then drops every packet to its
    HBONE port 15008 (iptables in its network namespace): the waypoint's upstream connect (the HBONE CONNECT's
    answer) times out, each try after the connect timeout, and the client gets Envoy's 503 with reset reason
    "connection timeout" (flag UF) no sooner than the timeout. maxRequestsPerConnection 1 keeps the waypoint
    from reusing an upstream connection made before the drop."""
    import time
    c = cluster
    c.apply(dr_for("ct", "{connectionPool: {tcp: {connectTimeout: 1s}, http: {maxRequestsPerConnection: 1}}}"))

    def fresh():
        conn = Conn(c, "ct")
        try:
            a, b = conn.info("/")["client"], conn.info("/")["client"]
            return a != b  # a new upstream connection per request: the rule is in force
        finally:
            conn.close()
    poll(lambda: attempt(fresh), timeout=APPLY_WAIT, every=0.2, what="the DestinationRule of ct in force")
    ns = c.netns_of("hole")
    rule = ["INPUT", "-p", "tcp", "--dport", "15008", "-j", "DROP"]
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-I"] + rule, check=True, timeout=30)
    try:
        conn = Conn(c, "ct")
        try:
            t0 = time.monotonic()
            status, body = conn.raw("/")
            elapsed = time.monotonic() - t0
        finally:
            conn.close()
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-D"] + rule, check=True, timeout=30)
    assert status == 503, (status, body)
    assert body == b"upstream connect error or disconnect/reset before headers. reset reason: connection timeout"
    assert elapsed >= 1.0, elapsed
    poll(lambda: access_log_has(c, r'" 503 UF(,URX)? upstream_reset_before_response_started\{connection_timeout\}'),
         timeout=10, what="UF connection_timeout in the waypoint's access log")


def test_max_retries(cluster):
    """connectionPool.http.maxRetries 1 on Service od (pods a and b sleep on /sleep/<ms>, bad answers 503 at
    once; Istio's default retry policy retries a 503 on another host): under eight concurrent slow requests
    several first reach bad, one retry at a time is made and held while its slow try runs, and the others are not
    retried: the client gets bad's 503 itself (the response that would have been retried), flag UO, counted in
    zmesh_waypoint_upstream_rq_retry_overflow_total."""
    import threading
    c = cluster
    c.apply(dr_for("od", "{connectionPool: {http: {maxRetries: 1}}}"))

    def burst():
        results = []
        lock = threading.Lock()

        def one():
            try:
                conn = Conn(c, "od")
                try:
                    r = conn.raw("/sleep/800")
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException) as e:
                r = (0, repr(e).encode())
            with lock:
                results.append(r)
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results
    res = poll(lambda: (lambda r: r if any(s == 503 for s, _ in r) else None)(burst()), timeout=APPLY_WAIT,
               every=0.2, what="a retry refused by maxRetries")
    over = [r for r in res if r[0] == 503]
    assert all(json.loads(b)["tag"] == "bad" for _, b in over), res  # bad's own answer, not a local reply
    assert all(s in (200, 503) for s, _ in res), res
    poll(lambda: access_log_has(c, r'" 503 UO via_upstream '), timeout=10, what="UO in the waypoint's access log")
    wp = c.waypoint_netns()
    metrics = subprocess.run(["ip", "netns", "exec", wp, "curl", "-s", "-m", "5", "http://127.0.0.1:15020/metrics"],
                             capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"^zmesh_waypoint_upstream_rq_retry_overflow_total (\d+)$", metrics, re.M)
    assert m and int(m.group(1)) >= len(over), metrics


# Unary calls of /l7test.Echo/UnavailableOn (UNAVAILABLE from the server whose tag is the request) on one channel:
# one line per call, the answer or "<code> <details>", then the seconds the calls took.
GRPC_CLIENT = r'''
import sys, time, grpc
out = []
t0 = time.monotonic()
with grpc.insecure_channel(sys.argv[1]) as ch:
    f = ch.unary_unary("/l7test.Echo/UnavailableOn")
    for _ in range(int(sys.argv[3])):
        try:
            out.append(f(sys.argv[2].encode(), timeout=20).decode())
        except grpc.RpcError as e:
            out.append("%s %s" % (e.code().name, e.details()))
print("\n".join(out))
print(time.monotonic() - t0)
'''


def grpc_unavailable_on(c, svc, tag, n):
    p = subprocess.run(["ip", "netns", "exec", c.netns_of("client"), "/usr/bin/python3", "-c", GRPC_CLIENT,
                        "%s:%d" % (c.vip(svc), GRPC), tag, str(n)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    return lines[:-1], float(lines[-1])


def test_outlier_detection_grpc_status(cluster):
    """gRPC on h2c: pod c answers /l7test.Echo/UnavailableOn("c") with grpc-status UNAVAILABLE in an HTTP 200
    (trailers-only). Outlier detection counts it as Envoy's router does, by grpcToHttpStatus (503), so with
    consecutive5xxErrors 2 c is ejected (the log names status 503); Istio's default retry policy retries
    UNAVAILABLE on another host, so the client sees only a's and b's answers."""
    c = cluster
    c.apply(dr_for("gsvc", "{outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, "
                           "maxEjectionPercent: 100}}"))

    def ejected():
        answers, _ = grpc_unavailable_on(c, "gsvc", "c", 12)
        assert all(a in ("a:ok", "b:ok") for a in answers), answers
        return re.search(r"waypoint::outlier\s+ejected \S*/dr/c for 30000 ms \(ejection \d+, last status 503",
                         c.waypoint_log())
    poll(lambda: attempt(ejected), timeout=APPLY_WAIT, every=0.2, what="c ejected for its gRPC UNAVAILABLE")
    answers, _ = grpc_unavailable_on(c, "gsvc", "c", 12)
    assert all(a in ("a:ok", "b:ok") for a in answers), answers


def test_connect_timeout_h2c(cluster):
    """connectTimeout on h2c (gRPC): with the hole pod's HBONE port dropping every packet, a call to ct's gRPC
    port fails after at least the 1 s timeout with UNAVAILABLE carrying Envoy's connection-timeout text; the
    session of each call is drained after it (maxRequestsPerConnection 1), so none made before the drop is
    reused."""
    c = cluster
    c.apply(dr_for("ct", "{connectionPool: {tcp: {connectTimeout: 1s}, http: {maxRequestsPerConnection: 1}}}"))

    def fresh():  # the rule in force (seen on the HTTP port: a new upstream connection per request)
        conn = Conn(c, "ct")
        try:
            return conn.info("/")["client"] != conn.info("/")["client"]
        finally:
            conn.close()
    poll(lambda: attempt(fresh), timeout=APPLY_WAIT, every=0.2, what="the DestinationRule of ct in force")
    poll(lambda: attempt(lambda: grpc_unavailable_on(c, "ct", "x", 2)[0] == ["hole:ok", "hole:ok"]),
         timeout=APPLY_WAIT, every=0.2, what="ct answering gRPC")
    ns = c.netns_of("hole")
    rule = ["INPUT", "-p", "tcp", "--dport", "15008", "-j", "DROP"]
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-I"] + rule, check=True, timeout=30)
    try:
        answers, took = grpc_unavailable_on(c, "ct", "x", 1)
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-D"] + rule, check=True, timeout=30)
    assert answers == ["UNAVAILABLE upstream connect error or disconnect/reset before headers. reset reason: "
                       "connection timeout"], answers
    assert took >= 1.0, took


def test_connect_timeout_tcp(cluster):
    """connectTimeout for a TCP Service relayed by the waypoint (Envoy's tcp_proxy uses the cluster's
    connect_timeout): with the hole pod's HBONE port dropping every packet, the client's connection is closed no
    sooner than the 1 s timeout, logged with flag UF and the reason "connection timeout". maxConnections 1 shows
    the rule in force first (a second connection is refused while one is open)."""
    import time
    c = cluster
    c.apply(dr_for("cttcp", "{connectionPool: {tcp: {connectTimeout: 1s, maxConnections: 1}}}"))

    def refused_while_one_open():
        first = Conn(c, "cttcp")
        try:
            first.get("/")
            second = Conn(c, "cttcp")
            try:
                second.raw("/")
                return False
            except (OSError, http.client.HTTPException):
                return True
            finally:
                second.close()
        finally:
            first.close()
    poll(lambda: attempt(refused_while_one_open), timeout=APPLY_WAIT, every=0.2,
         what="the DestinationRule of cttcp in force")
    time.sleep(0.5)  # the first connection's end reaches the waypoint
    ns = c.netns_of("hole")
    rule = ["INPUT", "-p", "tcp", "--dport", "15008", "-j", "DROP"]
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-I"] + rule, check=True, timeout=30)
    try:
        conn = Conn(c, "cttcp")
        t0 = time.monotonic()
        try:
            conn.raw("/")
            closed = False
        except (OSError, http.client.HTTPException):
            closed = True
        elapsed = time.monotonic() - t0
        conn.close()
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-D"] + rule, check=True, timeout=30)
    assert closed
    assert elapsed >= 1.0, elapsed
    poll(lambda: re.search(r'"- - -" 0 UF - - "connection timeout" .*inbound-vip\|80\|tcp\|cttcp', c.waypoint_log()), timeout=10,
         what="the TCP stream's UF connection timeout in the access log (%s)" % c.waypoint_log()[-1500:])
