"""`zmesh proxy-status` against a running zmeshd, with Python grpcio as the xDS client (code zmesh did not write;
stubs generated from proto/ as in test_zmeshd_xds.py), authenticated with a token from `zmesh token`.

Checked: zmeshd's debug port (--debug-listen, port 0 logged) serves /debug/syncz, /debug/connections, /ready and
/metrics (valid for promtool); the table has istioctl's columns for a ztunnel (NAME CLUSTER WADS WDS ISTIOD
VERSION) within 80 columns; a response not yet ACKed is STALE, an ACKed one SYNCED, a NACK is ERROR with its
message printed under the table; a client that leaves leaves the table; zmesh proxy-status says what to do when
zmeshd is not reachable; zmesh token's bad input is refused."""
import base64
import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest

from test_zmeshd import Daemon, NS, POLICY, SVC, pod, write, zmeshd_bin, work  # noqa: F401
from test_zmeshd_ca import ISTIOD
from test_zmeshd_xds import ADDRESS, AUTHZ, NODE, pb  # noqa: F401
from topo import Topology

CP_NAME = "zmeshd-test-0"


@pytest.fixture(scope="module")
def zmesh_bin():
    path = os.path.join(Topology.bin_dir(), "zmesh")
    if not os.access(path, os.X_OK):
        pytest.skip("no zmesh binary at %s (run make all)" % path)
    return path


def logged_port(d, message, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        for l in d.lines():
            if l["message"].startswith(message):
                return int(l["port"])
        assert d.proc.poll() is None, open(d.log_path).read()
        time.sleep(0.05)
    raise AssertionError("no %r line in:\n%s" % (message, open(d.log_path).read()))


class Stream:
    """One DeltaAggregatedResources stream speaking as ztunnel: wildcard Address then Authorization."""

    def __init__(self, stub, pb, token, node=NODE, version="1.24.0"):
        self.pb = pb
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        md = [("clusterid", "Kubernetes"), ("authorization", "Bearer " + token)]
        self.call = stub.DeltaAggregatedResources(iter(self.requests.get, None), metadata=md)
        self.error = None
        threading.Thread(target=self._read, daemon=True).start()
        for t in (ADDRESS, AUTHZ):
            req = pb.DeltaDiscoveryRequest(type_url=t)
            req.node.id = node
            req.node.metadata.fields["CLUSTER_ID"].string_value = "Kubernetes"
            req.node.metadata.fields["ISTIO_VERSION"].string_value = version
            req.node.metadata.fields["NAMESPACE"].string_value = "istio-system"
            self.requests.put(req)

    def _read(self):
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError as e:
            self.error = e
        self.responses.put(None)

    def next(self, timeout=10):
        r = self.responses.get(timeout=timeout)
        assert r is not None, "stream ended: %s" % self.error
        return r

    def ack(self, r):
        self.requests.put(self.pb.DeltaDiscoveryRequest(type_url=r.type_url, response_nonce=r.nonce))

    def nack(self, r, message):
        req = self.pb.DeltaDiscoveryRequest(type_url=r.type_url, response_nonce=r.nonce)
        req.error_detail.code = 3
        req.error_detail.message = message
        self.requests.put(req)

    def close(self):
        self.requests.put(None)
        self.call.cancel()


@pytest.fixture
def cp(zmeshd_bin, zmesh_bin, work, pb):
    write(os.path.join(work, "manifests", "app.yaml"), NS + pod("web-1", "10.0.0.5") + SVC + POLICY)
    d = Daemon(zmeshd_bin, work, "--listen", "127.0.0.1:0", "--debug-listen", "127.0.0.1:0",
               env={"POD_NAME": CP_NAME})
    d.wait_loads(1)
    grpc_port = logged_port(d, "serving the CA")
    debug_port = logged_port(d, "serving the debug endpoints")
    with open(os.path.join(work, "state", "root-cert.pem"), "rb") as f:
        root = f.read()
    ch = grpc.secure_channel("127.0.0.1:%d" % grpc_port, grpc.ssl_channel_credentials(root_certificates=root),
                             options=[("grpc.ssl_target_name_override", ISTIOD)])
    discovery_pb2, discovery_grpc, _, _ = pb
    # The token comes from zmesh token (the library's zmeshd_token_mint), not zmeshd's own command.
    token = subprocess.run([zmesh_bin, "token", "--sa", "istio-system/ztunnel", "--node", "node1", "--state-dir",
                            os.path.join(work, "state")], capture_output=True, text=True, check=True).stdout.strip()

    class X:
        pass
    x = X()
    x.d, x.pb, x.token, x.debug_port, x.work = d, discovery_pb2, token, debug_port, work
    x.stub = discovery_grpc.AggregatedDiscoveryServiceStub(ch)
    x.address = "127.0.0.1:%d" % debug_port

    def ps(*args):
        return subprocess.run([zmesh_bin, "proxy-status", "--zmeshd-address", x.address] + list(args),
                              capture_output=True, text=True, timeout=20)
    x.ps = ps

    def get(path, method="GET"):
        req = urllib.request.Request("http://%s%s" % (x.address, path), method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()
    x.get = get
    yield x
    ch.close()
    assert d.stop() == 0


def table(out):
    """The table's rows split on runs of spaces (no cell holds two spaces), up to the first blank line."""
    rows = []
    for line in out.splitlines():
        if not line.strip():
            break
        rows.append([c for c in line.split("  ") if c.strip()])
        rows[-1] = [c.strip() for c in rows[-1]]
    return rows


def wait_table(cp, want, *args, timeout=10):
    """Runs zmesh proxy-status until a row equals want (a dict of column -> value); returns its output."""
    end = time.time() + timeout
    last = None
    while time.time() < end:
        last = cp.ps(*args)
        if last.returncode == 0:
            rows = table(last.stdout)
            head = rows[0]
            for r in rows[1:]:
                if all(r[head.index(k)] == v for k, v in want.items()):
                    return last.stdout
        time.sleep(0.1)
    raise AssertionError("no row %r in:\n%s\n%s" % (want, last and last.stdout, last and last.stderr))


def test_synced_stale_and_nack(cp):
    s = Stream(cp.stub, cp.pb, cp.token)
    try:
        first = {}
        for _ in range(2):
            r = s.next()
            first[r.type_url] = r
        # Sent and not ACKed yet: STALE, as istiod reports it.
        out = wait_table(cp, {"NAME": "ztunnel-a.istio-system", "WADS": "STALE", "WDS": "STALE"})
        rows = table(out)
        assert rows[0] == ["NAME", "CLUSTER", "WADS", "WDS", "ISTIOD", "VERSION"], out
        assert rows[1] == ["ztunnel-a.istio-system", "Kubernetes", "STALE", "STALE", CP_NAME, "1.24.0"], out
        assert all(len(l) <= 80 for l in out.splitlines()), out

        for r in first.values():
            s.ack(r)
        out = wait_table(cp, {"NAME": "ztunnel-a.istio-system", "WADS": "SYNCED", "WDS": "SYNCED"})
        assert "NACKs:" not in out, out
        # -o wide adds istioctl's age of each state.
        wide = cp.ps("-o", "wide")
        assert wide.returncode == 0, wide.stderr
        row = table(wide.stdout)[1]
        assert row[2].startswith("SYNCED (") and row[2].endswith("s)"), wide.stdout

        # -n filters by the proxy's namespace (its node metadata), as istioctl's --namespace.
        assert table(cp.ps("-n", "istio-system").stdout)[1][0] == "ztunnel-a.istio-system"
        other = cp.ps("--namespace", "demo")
        assert other.returncode == 1 and "no proxies found in namespace demo" in other.stderr, other

        # A policy the client refuses: NACK -> ERROR, and the message under the table.
        write(os.path.join(cp.work, "manifests", "more.yaml"), POLICY.replace("allow-demo", "allow-more"))
        r = s.next()
        assert r.type_url == AUTHZ, r
        s.nack(r, "policy demo/allow-more: unsupported field")
        out = wait_table(cp, {"NAME": "ztunnel-a.istio-system", "WADS": "ERROR", "WDS": "SYNCED"})
        assert "NACKs:" in out, out
        nack_line = [l for l in out.splitlines() if "unsupported field" in l]
        assert nack_line and "ztunnel-a.istio-system WADS" in nack_line[0] and "code 3" in nack_line[0], out

        # The JSON view is the syncz document: every type with its versions, nonces and the NACK.
        js = cp.ps("-o", "json")
        assert js.returncode == 0, js.stderr
        doc = json.loads(js.stdout)
        assert len(doc) == 1 and doc[0]["proxy"] == "ztunnel-a.istio-system" and doc[0]["node_id"] == NODE
        assert doc[0]["namespace"] == "istio-system"
        assert doc[0]["cluster_id"] == "Kubernetes" and doc[0]["istiod"] == CP_NAME
        t = {x["type"]: x for x in doc[0]["types"]}
        assert t["WADS"]["status"] == "ERROR" and t["WADS"]["last_nack"]["message"] == \
            "policy demo/allow-more: unsupported field"
        assert t["WDS"]["status"] == "SYNCED" and t["WDS"]["nonce_acked"] == first[ADDRESS].nonce
        assert t["WDS"]["last_nack"] is None and t["WDS"]["last_updated"].endswith("Z")

        # The same from the debug port itself, and /debug/connections.
        code, hdr, body = cp.get("/debug/syncz")
        assert code == 200 and hdr["content-type"] == "application/json" and json.loads(body)[0]["proxy"] == \
            "ztunnel-a.istio-system"
        code, _, body = cp.get("/debug/connections")
        conns = json.loads(body)
        assert code == 200 and [(c["proxy"], c["identity"]) for c in conns] == \
            [("ztunnel-a.istio-system", "istio-system/ztunnel")], body

        # /metrics: valid exposition, one client, the NACK counted.
        code, hdr, body = cp.get("/metrics")
        assert code == 200 and hdr["content-type"].startswith("text/plain; version=0.0.4"), hdr
        if shutil.which("promtool"):
            chk = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
            assert chk.returncode == 0, chk.stdout + chk.stderr + body
        assert "\nzmeshd_xds_clients 1\n" in body, body
        assert 'zmeshd_xds_nacks_total{type="wads"} 1\n' in body, body
        assert 'zmeshd_xds_pushes_total{type="wads"} 2\n' in body, body
    finally:
        s.close()

    # The client gone: no proxies, said as istioctl says it; the counters keep what it did.
    end = time.time() + 10
    while time.time() < end and cp.ps().returncode == 0:
        time.sleep(0.1)
    gone = cp.ps()
    assert gone.returncode == 1 and "no proxies found" in gone.stderr, gone.stdout + gone.stderr
    _, _, body = cp.get("/metrics")
    assert "\nzmeshd_xds_clients 0\n" in body and 'zmeshd_xds_nacks_total{type="wads"} 1\n' in body, body
    assert "\nzmeshd_xds_streams_total 1\n" in body, body


def test_debug_port_endpoints(cp):
    code, _, body = cp.get("/ready")
    assert (code, body) == (200, "ready\n")
    code, _, body = cp.get("/")
    assert code == 200 and "/debug/syncz" in body
    assert cp.get("/nope")[0] == 404
    assert cp.get("/debug/syncz", method="POST")[0] == 405
    # A request line the parser refuses gets 400 and the connection closes; the port keeps serving.
    with socket.create_connection(("127.0.0.1", cp.debug_port), timeout=5) as c:
        c.sendall(b"GARBAGE\r\n\r\n")
        assert c.recv(100).startswith(b"HTTP/1.1 400 ")
    assert cp.get("/ready")[0] == 200


def test_unreachable_zmeshd(zmesh_bin):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([zmesh_bin, "ps", "--zmeshd-address", "127.0.0.1:%d" % port], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 1 and not r.stdout, r
    assert "cannot reach zmeshd's debug port at 127.0.0.1:%d" % port in r.stderr, r.stderr
    assert "is zmeshd running?" in r.stderr and "--zmeshd-address" in r.stderr, r.stderr
    for bad, why in ((["--zmeshd-address", "nope:x"], "invalid --zmeshd-address"),
                     (["-o", "yaml"], "not supported"), (["pod.ns"], "unexpected argument")):
        r = subprocess.run([zmesh_bin, "proxy-status"] + bad, capture_output=True, text=True, timeout=20)
        assert r.returncode == 2 and why in r.stderr, (bad, r.stderr)


def test_debug_listen_taken_is_fatal(zmeshd_bin, work):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        d = Daemon(zmeshd_bin, work, "--listen", "127.0.0.1:0", "--debug-listen", "127.0.0.1:%d" % port)
        assert d.proc.wait(timeout=10) == 1
    log = open(d.log_path).read()
    assert "debug port: listen on 127.0.0.1:%d" % port in log, log
    d = Daemon(zmeshd_bin, work, "--listen", "127.0.0.1:0", "--debug-listen", "localhost:1x")
    assert d.proc.wait(timeout=10) == 1
    assert "expected ip:port" in open(d.log_path).read()


def test_zmesh_token(zmesh_bin, work):
    state = os.path.join(work, "state")
    r = subprocess.run([zmesh_bin, "token", "--sa", "demo/web", "--node", "n1", "--ttl", "10m", "--state-dir",
                        state], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    payload = r.stdout.strip().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == "system:serviceaccount:demo:web" and claims["exp"] - claims["iat"] == 600, claims
    assert os.path.exists(os.path.join(state, "token-key.pem"))
    for bad, why in ((["--sa", "web"], "expected <namespace>/<service account>"),
                     (["--sa", "demo/web", "--ttl", "0"], "between 1s and 366d"),
                     (["--sa", "demo/web", "--ttl", "soon"], "not a duration"),
                     (["--sa", "demo/web"], "--state-dir is required")):
        args = bad + (["--state-dir", state] if "--state-dir is required" != why else [])
        r = subprocess.run([zmesh_bin, "token"] + args, capture_output=True, text=True, timeout=20)
        assert r.returncode == 2 and why in r.stderr, (bad, r.stderr)


# ---- real ztunnels ----

@pytest.fixture(scope="module")
def mesh(ztunnel_bin, zmesh_bin):
    from test_control_plane import ISTIOD as CP_ISTIOD, ControlPlane, ns_yaml, pod_yaml
    topo = Topology(nodes=1, pods_per_node=2)
    try:
        topo.up()
        c = ControlPlane(topo)
        c.write("pods.yaml", ns_yaml() + "".join(pod_yaml(p) for p in topo.pods))
        c.start()
        root = os.path.join(c.state, "root-cert.pem")
        for p in topo.pods:
            env = {"LOCAL_XDS_PATH": "", "LOCAL_CA_DIR": "", "XDS_ADDRESS": c.addr, "CA_ADDRESS": c.addr,
                   "XDS_ROOT_CA": root, "CA_ROOT_CA": root, "ALT_XDS_HOSTNAME": CP_ISTIOD,
                   "ALT_CA_HOSTNAME": CP_ISTIOD, "AUTH_TOKEN": c.token(p), "POD_NAME": "ztunnel-" + p.name,
                   "POD_NAMESPACE": "istio-system", "INSTANCE_IP": p.ip, "NODE_NAME": "node%d" % p.node}
            topo.start_ztunnel(p, "", env=env)
        c.zmesh = zmesh_bin
        yield c
    finally:
        topo.down()


def test_real_ztunnels_are_synced(mesh):
    """Two ztunnels configured by zmeshd: both rows SYNCED for both types, read from zmeshd's default debug
    port (127.0.0.1:15014 in zmeshd's network namespace, the node's)."""
    names = sorted("ztunnel-%s.istio-system" % p.name for p in mesh.topo.pods)
    node = mesh.topo.nodes[0]
    end = time.time() + 20
    out = None
    while time.time() < end:
        r = mesh.topo.run(node, [mesh.zmesh, "proxy-status"], capture_output=True, text=True)
        out = r.stdout + r.stderr
        if r.returncode == 0:
            rows = table(r.stdout)
            if [x[0] for x in rows[1:]] == names and all(x[2:4] == ["SYNCED", "SYNCED"] for x in rows[1:]):
                break
        time.sleep(0.2)
    else:
        raise AssertionError(out)
    assert rows[0][:4] == ["NAME", "CLUSTER", "WADS", "WDS"] and rows[0][4] == "ISTIOD", out
    assert all(x[1] == "Kubernetes" for x in rows[1:]), out
    assert all(len(l) <= 80 for l in r.stdout.splitlines()), out
    # -o wide names each proxy's node (its NODE_NAME metadata), which the issue asks for and istioctl omits.
    r = mesh.topo.run(node, [mesh.zmesh, "proxy-status", "-o", "wide"], capture_output=True, text=True)
    wide = table(r.stdout)
    assert wide[0][-1] == "NODE", r.stdout
    assert sorted((x[0], x[-1]) for x in wide[1:]) == sorted(
        ("ztunnel-%s.istio-system" % p.name, "node%d" % p.node) for p in mesh.topo.pods), r.stdout
    # The connections are the ztunnels' pod identities (their tokens).
    r = mesh.topo.run(node, ["curl", "-s", "http://127.0.0.1:15014/debug/connections"], capture_output=True,
                      text=True)
    conns = json.loads(r.stdout)
    assert sorted(c["proxy"] for c in conns) == names, r.stdout


def test_default_debug_port_taken_is_a_warning(zmeshd_bin, work):
    """Without --debug-listen, a taken 127.0.0.1:15014 (here by the test, or by another zmeshd on this host)
    costs only the debug endpoints: zmeshd serves xDS and the CA and says so."""
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", 15014))
            s.listen(1)
        except OSError:
            pass  # taken already: the same situation
        d = Daemon(zmeshd_bin, work, "--listen", "127.0.0.1:0")
        try:
            logged_port(d, "serving the CA")
            end = time.time() + 10
            warn = []
            while time.time() < end and not warn:
                warn = [l for l in d.lines() if l["message"].startswith("serving without the debug endpoints")]
                time.sleep(0.05)
            assert warn and warn[0]["level"] == "warn" and "127.0.0.1:15014" in warn[0]["error"], \
                open(d.log_path).read()
            assert d.proc.poll() is None
        finally:
            assert d.stop() == 0
    finally:
        s.close()
