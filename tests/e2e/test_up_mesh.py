"""`zmesh up` with the mesh on (docs/local-cluster.md): the real node agent (`zmesh-cni agent`, enrolment live from
zmeshd), Debian's CNI plugins with zmesh-cni chained, one shared ztunnel per node, pods in real network namespaces.

One cluster serves the module: namespace `mt`, unlabelled at first; on node1 pods `a` (account sa-a), `b` (sa-b)
and `n` (sa-n, pod label istio.io/dataplane-mode=none); on node2 pod `d` (sa-d). Each runs a small echo server
(written next to the manifest) that greets every connection with the address it sees the caller at, so a
client tells a direct connection (the app sees the client's own address and port) from a proxied one. The
connections are made from the test process with sockets created inside a pod's network namespace, so they are
the pod's own traffic (captured by its in-pod rules when enrolled).

Checked: enrolment follows `zmesh label ns` at run time both ways (in-pod rules, HBONE with the caller's SPIFFE
id in the destination ztunnel's access log, only port 15008 on the node uplink; and back to plaintext), with no
pod restarted and a pod labelled `none` left out; each service account's own identity and certificate, and
zmeshd's CA refusing node1's ztunnel token a certificate for an account that runs on node2 only; a pod applied
into the enrolled namespace is captured from its first connection; a deleted pod's connections end while
another pod's keep working; a killed node agent is restarted, replays its state and ztunnel keeps serving; a
killed ztunnel is restarted, gets the snapshot and serves HBONE again; `zmesh rollout ztunnel` keeps a
long-lived connection on the draining generation while new ones go to the new one, which exits once it closes.
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from helpers import connect, parse_prometheus, recv_exact
from test_up import Cluster, _force_cleanup, poll

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NS = "mt"
PORT = 7000
LABEL = "istio.io/dataplane-mode"
TD = "spiffe://cluster.local/ns/%s/sa/" % NS
ISTIOD = "istiod.istio-system.svc"
# Waits that depend on node1's agent being back after a test kills it: the controller restarts it after its
# backoff (1 s first). A normal run waits a fraction of a second.
AGENT_WAIT = 60

# The app: greets each connection with "hello <ip> <port>\n" (the caller's address as the app sees it), then
# echoes. With an address argument it first makes ONE connection there (no retry: the very first connection of
# the pod is what is checked), prints what it saw, then serves.
ECHO_PY = r'''
import socket, sys, threading
def serve(c, a):
    try:
        c.sendall(("hello %s %d\n" % a).encode())
        while True:
            b = c.recv(65536)
            if not b:
                break
            c.sendall(b)
    except OSError:
        pass
    finally:
        c.close()
if len(sys.argv) > 2:
    try:
        s = socket.create_connection((sys.argv[2], int(sys.argv[1])), timeout=10)
        local = s.getsockname()
        f = s.makefile("rb")
        greet = f.readline().decode().split()
        s.sendall(b"first")
        ok = f.read(5) == b"first"
        f.close()
        s.close()  # the file object holds the socket too: both closed, the connection ends
        print("first local=%s:%d seen=%s:%s echo=%s" % (local[0], local[1], greet[1], greet[2], ok), flush=True)
    except Exception as e:
        print("first failed: %r" % (e,), flush=True)
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", int(sys.argv[1])))
l.listen(128)
print("listening", flush=True)
while True:
    c, a = l.accept()
    threading.Thread(target=serve, args=(c, a), daemon=True).start()
'''


def pod_yaml(name, node, sa, labels=None, first=None):
    lab = {"app": name}
    lab.update(labels or {})
    cmd = ["python3", "-u", "echo.py", str(PORT)] + ([first] if first else [])
    return textwrap.dedent("""\
        apiVersion: v1
        kind: Pod
        metadata: {name: %s, namespace: %s, labels: %s}
        spec:
          nodeName: %s
          serviceAccountName: %s
          terminationGracePeriodSeconds: 2
          containers:
          - name: echo
            command: %s
            readinessProbe: {tcpSocket: {port: %d}, periodSeconds: 1}
        """) % (name, NS, json.dumps(lab), node, sa, json.dumps(cmd), PORT)


def manifests(d, labelled):
    with open(os.path.join(d, "echo.py"), "w") as f:
        f.write(ECHO_PY)
    labels = ", labels: {%s: ambient}" % LABEL if labelled else ""
    docs = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: %s%s}\n" % (NS, labels),
            pod_yaml("a", "node1", "sa-a"), pod_yaml("b", "node1", "sa-b"),
            pod_yaml("n", "node1", "sa-n", labels={LABEL: "none"}), pod_yaml("d", "node2", "sa-d")]
    with open(os.path.join(d, "mt.yaml"), "w") as f:
        f.write("---\n".join(docs))


OCTETS = random.sample(range(110, 141), 8)  # one per cluster of this module, none shared


class MeshCluster(Cluster):
    """test_up's Cluster with the mesh on and addresses of its own: prefix um<hex>, 172.28.<o>.0/24 for nodes,
    10.<o>.0.0/16 for pods (o in 110..140; test_up.py uses 150..249 of 172.31/10, the demo 172.29/10.229)."""

    def __init__(self, manifests_dir):
        super().__init__(manifests_dir, mesh=True)
        tag = "%04x" % random.randrange(1 << 16)
        self.prefix = "um" + tag
        self.state = "/run/zmesh-upmesh-" + tag
        octet = OCTETS.pop()
        self.node_subnet = "172.28.%d.0" % octet
        self.pod_subnet = "10.%d.0.0" % octet
        self.host_ip = "172.28.%d.1" % octet

    # -- reading the cluster --
    def ip(self, pod):
        return self.pods()[pod]["IP"]

    def netns_of(self, pod):
        return "%s-%s_%s" % (self.prefix, NS, pod)

    def node_netns(self, node):
        return "%s-%s" % (self.prefix, node)

    def ctl(self, op, **kw):
        """One request to the controller's socket (src/cli/cluster_ctl.h)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        try:
            s.connect(os.path.join(self.state, "controller.sock"))
            kw["op"] = op
            s.sendall(json.dumps(kw).encode())
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                buf += b
        finally:
            s.close()
        return json.loads(buf)

    def ztunnels(self, node):
        return [z for z in self.ctl("status")["ztunnels"] if z["node"] == node]

    def zc(self, what, node):
        """`zmesh ztunnel-config <what> --node <node> -o json`, parsed; None when it fails."""
        p = subprocess.run([self.zmesh, "ztunnel-config", what, "--node", node, "-o", "json"],
                           capture_output=True, text=True, timeout=30, env=dict(os.environ, ZMESH_STATE_DIR=self.state))
        if p.returncode != 0:
            return None
        try:
            return json.loads(p.stdout)
        except ValueError:
            return None

    def workload_state(self, node):
        """name -> state of the pods in the node ztunnel's workloadState, or None when unreachable."""
        dump = self.zc("all", node)
        if dump is None:
            return None
        return {v["info"]["name"]: v["state"] for v in (dump.get("workloadState") or {}).values()}

    def log(self, name):
        try:
            with open(os.path.join(self.state, "logs", name + ".log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def access(self, node):
        """The node ztunnel's access log records ("connection complete"), as dicts of their fields."""
        out = []
        for line in self.log("ztunnel-" + node).splitlines():
            if "\taccess\t" not in line or "connection complete" not in line:
                continue
            rec = {}
            for k, v in re.findall(r'(\S+?)=("(?:[^"\\]|\\.)*"|\S+)', line.split("connection complete", 1)[1]):
                rec[k] = v[1:-1] if v.startswith('"') else v
            out.append(rec)
        return out

    def inbound_from(self, node, src_ip, dst_ip):
        """Inbound access records at node's ztunnel for connections from src_ip to dst_ip:PORT."""
        want = "%s:%d" % (dst_ip, PORT)
        return [r for r in self.access(node) if r.get("direction") == "inbound"
                and r.get("src.addr", "").rsplit(":", 1)[0] == src_ip
                and want in (r.get("dst.hbone_addr"), r.get("dst.addr"))]

    def rules(self, pod):
        """The in-pod ISTIO_* iptables lines in the pod's namespace."""
        out = subprocess.run(["ip", "netns", "exec", self.netns_of(pod), "iptables-save"], capture_output=True,
                             text=True, timeout=30).stdout
        return [l for l in out.splitlines() if "ISTIO" in l]

    def container_pids(self, pod):
        out = subprocess.run(["ip", "netns", "pids", self.netns_of(pod)], capture_output=True, text=True).stdout
        return sorted(int(x) for x in out.split())

    def agent_pids(self, node):
        """pids of node's agent: the controller's children running `zmesh-cni agent --node-name node` (not the
        agent's own forked rule children, which share its command line)."""
        pids = []
        with open(os.path.join(self.state, "controller.pid")) as f:
            ctl = f.read().split()[0]
        for pid in self.processes():
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    argv = f.read().split(b"\0")
                with open("/proc/%d/stat" % pid) as f:
                    st = f.read().rsplit(")", 1)[1].split()
                if st[0] == "Z" or st[1] != ctl:
                    continue
            except OSError:
                continue
            if len(argv) > 1 and argv[0].endswith(b"zmesh-cni") and argv[1] == b"agent" and \
                    node.encode() in argv[argv.index(b"--node-name") + 1:][:1]:
                pids.append(pid)
        return pids

    def metric(self, node, port, name, **labels):
        p = subprocess.run(["ip", "netns", "exec", self.node_netns(node), "curl", "-s", "-m", "5",
                            "http://127.0.0.1:%d/metrics" % port], capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            return None
        total = 0.0
        for n, labs, v in parse_prometheus(p.stdout):
            d = dict(labs)
            if n == name and all(d.get(k) == want for k, want in labels.items()):
                total += v
        return total


def talk(c, src, dst_ip):
    """One connection from pod src to dst_ip:PORT: greeting, an echo, close. Returns (local addr, addr the app
    saw), each "ip:port"."""
    s = connect(c.netns_of(src), dst_ip, PORT, timeout=15)
    try:
        local = "%s:%d" % s.getsockname()
        greet = b""
        while not greet.endswith(b"\n"):
            b = s.recv(1)
            assert b, "the connection from %s to %s closed before the greeting" % (src, dst_ip)
            greet += b
        _, ip, port = greet.decode().split()
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"
        return local, "%s:%s" % (ip, port)
    finally:
        s.close()


class Conn:
    """A long-lived connection from a pod's namespace to an echo server."""

    def __init__(self, c, src, dst_ip):
        self.s = connect(c.netns_of(src), dst_ip, PORT, timeout=15)
        f = b""
        while not f.endswith(b"\n"):
            b = self.s.recv(1)
            assert b, "closed before the greeting"
            f += b
        self.seen = f.decode().split()[1:]

    def ping(self, data=b"still-there"):
        self.s.sendall(data)
        return recv_exact(self.s, len(data)) == data

    def ended(self, timeout):
        """True once the peer closes or resets the connection (within timeout)."""
        self.s.settimeout(timeout)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def capture_ports(c, node, host, fn):
    """Runs fn with tcpdump on node's uplink (eth0) for TCP to/from host; returns the set of (sport, dport)."""
    path = tempfile.mktemp(prefix="um-cap-", suffix=".pcap")
    p = subprocess.Popen(["ip", "netns", "exec", c.node_netns(node), "tcpdump", "-i", "eth0", "--immediate-mode",
                          "-U", "-n", "-Z", "root", "-w", path, "tcp and host %s" % host],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = p.stderr.readline()
        assert b"listening on" in line, line
        fn()
        time.sleep(0.5)
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=10)
    import topo
    try:
        linktype, pkts = topo.read_pcap(path)
    finally:
        os.unlink(path)
    return {(t[1], t[3]) for t in (topo.ipv4_tcp_ports(linktype, pk) for pk in pkts) if t}


def make_cluster(labelled):
    d = tempfile.mkdtemp(prefix="zmesh-upmesh-")
    manifests(d, labelled)
    c = MeshCluster(d)
    c.dir = d
    try:
        c.up()
        yield c
    finally:
        if os.environ.get("ZMESH_KEEP_CLUSTER"):  # for a post-mortem: zmesh down --state-dir <state> later
            print("cluster kept: %s" % c.state)
        else:
            _force_cleanup(c)
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="class")
def fresh():
    """A cluster whose namespace starts unlabelled (for the enrolment tests, which label it back and forth)."""
    yield from make_cluster(labelled=False)


@pytest.fixture(scope="module")
def cluster():
    """The cluster of the other tests: the namespace labelled ambient from the start, so its pods were enrolled
    one by one at their CNI ADD."""
    yield from make_cluster(labelled=True)


def enrolled(c, pods, node):
    """Polls until each of pods has its in-pod rules and is Up in node's ztunnel."""
    poll(lambda: all(c.rules(p) for p in pods), timeout=AGENT_WAIT, what="in-pod rules in %s" % pods)
    poll(lambda: (lambda ws: ws is not None and all(ws.get(p) == "Up" for p in pods))(c.workload_state(node)),
         timeout=AGENT_WAIT, what="%s Up in %s's ztunnel workloadState" % (pods, node))


def enrol_namespace(c):
    """The namespace labelled ambient (idempotent), and a, b on node1 and d on node2 served."""
    ns = c.api("Namespace", "", NS)
    if ns["metadata"].get("labels", {}).get(LABEL) != "ambient":
        c.run("label", "ns", NS, LABEL + "=ambient", "--overwrite")
    enrolled(c, ["a", "b"], "node1")
    enrolled(c, ["d"], "node2")


def hbone_line(c, src, dst, dst_node, before):
    """Polls the destination ztunnel's log for a new inbound record from src to dst carrying src's identity."""
    src_ip, dst_ip = c.ip(src), c.ip(dst)

    def new():
        recs = c.inbound_from(dst_node, src_ip, dst_ip)[before:]
        return [r for r in recs if r.get("src.identity") == TD + "sa-" + src]
    return poll(new, what="inbound HBONE record at %s from %s (%s) with identity sa-%s" % (dst_node, src, src_ip, src))


def restarts_and_pids(c, pods):
    rows = c.pods()
    return {p: (rows[p]["RESTARTS"], c.container_pids(p)) for p in pods}


# ---- 1. enrolment at run time ----------------------------------------------------------------------------------

class TestEnrolmentLive:
    """Enrolment by `zmesh label` at run time, on a cluster of its own whose namespace starts unlabelled."""

    def test_enrolment_follows_namespace_label_live(self, fresh):
        c = fresh
        d_ip = c.ip("d")
        before = restarts_and_pids(c, ["a", "b", "n", "d"])
        assert all(r == "0" and pids for r, pids in before.values()), before
        assert {p: r["MODE"] for p, r in c.pods().items()} == {"a": "none", "b": "none", "n": "none", "d": "none"}

        # Unlabelled: no rules anywhere; the app sees the client's own address and port (nothing in between), the
        # uplink carries port 7000 and never 15008, and no ztunnel logs the connection.
        for p in ("a", "b", "n", "d"):
            assert c.rules(p) == [], (p, c.rules(p))
        seen = []
        ports = capture_ports(c, "node1", d_ip, lambda: seen.extend(talk(c, p, d_ip) for p in ("a", "b")))
        for local, app_saw in seen:
            assert local == app_saw, "plaintext expected: the app saw %s for client %s" % (app_saw, local)
        assert any(PORT in sd for sd in ports) and not any(15008 in sd for sd in ports), ports
        for p in ("a", "b"):
            assert c.inbound_from("node2", c.ip(p), d_ip) == []
        assert not [r for r in c.access("node1") if r.get("src.addr", "").startswith(c.ip("a") + ":")]

        # Labelled: rules in every pod but n, each served by its node's ztunnel, and the traffic is HBONE with the
        # caller's identity at the destination; the uplink carries 15008 only.
        r = c.run("label", "ns", NS, LABEL + "=ambient")
        assert "namespace/%s labeled" % NS in r.stdout
        enrolled(c, ["a", "b"], "node1")
        enrolled(c, ["d"], "node2")
        assert c.rules("n") == [], "pod n (label none) got rules: %s" % c.rules("n")
        assert "n" not in c.workload_state("node1")
        assert {p: r["MODE"] for p, r in c.pods().items()} == {"a": "ambient", "b": "ambient", "n": "none",
                                                               "d": "ambient"}
        counts = {p: len(c.inbound_from("node2", c.ip(p), d_ip)) for p in ("a", "b", "n")}
        ports = capture_ports(c, "node1", d_ip, lambda: [talk(c, p, d_ip) for p in ("a", "b")])
        for p in ("a", "b"):
            rec = hbone_line(c, p, "d", "node2", counts[p])[0]
            assert rec["dst.identity"] == TD + "sa-d" and rec["dst.addr"] == "%s:15008" % d_ip, rec
        assert ports and all(15008 in sd for sd in ports), "non-HBONE TCP on node1's uplink: %s" % ports
        # n stays out while its namespace is in: node1's ztunnel never sees its connection (no record from n's
        # address), which reaches d's ztunnel as plaintext on the app's port (d's inbound rules take it to 15006),
        # without an identity.
        talk(c, "n", d_ip)
        recs = poll(lambda: c.inbound_from("node2", c.ip("n"), d_ip)[counts["n"]:], what="d's ztunnel logging n")
        assert all("src.identity" not in r and r["dst.addr"] == "%s:%d" % (d_ip, PORT) for r in recs), recs
        assert not [r for r in c.access("node1") if r.get("src.addr", "").startswith(c.ip("n") + ":")]
        assert restarts_and_pids(c, ["a", "b", "n", "d"]) == before, "a pod restarted on enrolment"

        # Label removed: rules gone, pods out of ztunnel, plaintext again, still no restart.
        c.run("label", "ns", NS, LABEL + "-")
        poll(lambda: not any(c.rules(p) for p in ("a", "b", "d")), what="in-pod rules removed")
        poll(lambda: c.workload_state("node1") == {} and c.workload_state("node2") == {},
             what="workloadState empty on both nodes")
        counts = {p: len(c.inbound_from("node2", c.ip(p), d_ip)) for p in ("a", "b")}
        for p in ("a", "b"):
            local, app_saw = talk(c, p, d_ip)
            assert local == app_saw, "still proxied after the label went: %s vs %s" % (local, app_saw)
        time.sleep(1)  # a record would be written at once on close; give it a moment before checking its absence
        assert {p: len(c.inbound_from("node2", c.ip(p), d_ip)) for p in ("a", "b")} == counts
        assert restarts_and_pids(c, ["a", "b", "n", "d"]) == before, "a pod restarted on un-enrolment"

    def test_agent_survives_two_pods_enrolled_and_unenrolled_together(self, fresh):
        """The namespace labelled and unlabelled three times: a and b (node1) are enrolled, then un-enrolled, at
        once each time; node1's agent must stay the same process (no exit in controller.log)."""
        c = fresh
        pid = c.agent_pids("node1")
        exits = lambda: c.log("controller").count("agent node1 exited")  # noqa: E731
        n0 = exits()
        for i in range(3):
            for value, want in ((LABEL + "=ambient", True), (LABEL + "-", False)):
                c.run("label", "ns", NS, value)
                # Converged, or the agent died (then fail at once rather than wait out its backoff).
                poll(lambda: exits() > n0 or (all(bool(c.rules(p)) == want for p in ("a", "b")) and
                                               (lambda w: w is not None and all((w.get(p) == "Up") == want
                                                                                for p in ("a", "b")))(
                                                   c.workload_state("node1"))),
                     what="a and b %s" % ("enrolled" if want else "out"))
                assert exits() == n0, "node1's agent exited (round %d, %s):\n%s\n%s" % (
                    i, value, "\n".join(l for l in c.log("controller").splitlines() if "agent node1" in l),
                    "\n".join(c.log("agent-node1").splitlines()[-8:]))
        assert c.agent_pids("node1") == pid



# ---- 2. identities per service account, and the CA's node check ------------------------------------------------

@pytest.fixture(scope="module")
def citadel(tmp_path_factory):
    """(citadel_pb2, citadel_pb2_grpc) generated from proto/citadel.proto, as test_zmeshd_ca.py does."""
    import grpc_tools
    out = str(tmp_path_factory.mktemp("stubs"))
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + os.path.join(REPO, "proto"), "-I" + wkt,
                    "--python_out=" + out, "--grpc_python_out=" + out,
                    os.path.join(REPO, "proto", "citadel.proto")], check=True)
    sys.path.insert(0, out)
    try:
        import citadel_pb2
        import citadel_pb2_grpc
    finally:
        sys.path.remove(out)
    return citadel_pb2, citadel_pb2_grpc


def create_certificate(c, citadel, node, identity):
    """CreateCertificate at zmeshd's CA with node's ztunnel token, impersonating identity; the leaf's URI SANs."""
    import grpc
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtensionOID
    pb, pb_grpc = citadel
    with open(os.path.join(c.state, "zmeshd", "root-cert.pem"), "rb") as f:
        root = f.read()
    with open(os.path.join(c.state, "nodes", node, "ztunnel-token")) as f:
        token = f.read().strip()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    req = pb.IstioCertificateRequest(csr=csr, validity_duration=3600)
    req.metadata.fields["ImpersonatedIdentity"].string_value = identity
    ch = grpc.secure_channel("%s:15012" % c.host_ip, grpc.ssl_channel_credentials(root_certificates=root),
                             options=[("grpc.ssl_target_name_override", ISTIOD)])
    try:
        resp = pb_grpc.IstioCertificateServiceStub(ch).CreateCertificate(
            req, metadata=[("clusterid", "Kubernetes"), ("authorization", "Bearer " + token)], timeout=10)
    finally:
        ch.close()
    leaf = x509.load_pem_x509_certificate(resp.cert_chain[0].encode())
    return leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value \
        .get_values_for_type(x509.UniformResourceIdentifier)


def test_each_service_account_has_its_own_identity(cluster, citadel):
    import grpc
    c = cluster
    enrol_namespace(c)
    d_ip = c.ip("d")
    counts = {p: len(c.inbound_from("node2", c.ip(p), d_ip)) for p in ("a", "b")}
    for p in ("a", "b"):
        talk(c, p, d_ip)
    ids = {p: hbone_line(c, p, "d", "node2", counts[p])[0]["src.identity"] for p in ("a", "b")}
    assert ids == {"a": TD + "sa-a", "b": TD + "sa-b"}
    # The reverse way: node1's ztunnel answers as each destination pod's own identity (the source ztunnel on
    # node2 verified it and logs whom it reached).
    for p in ("a", "b"):
        talk(c, "d", c.ip(p))
    def outbound_ids():
        got = {r.get("dst.identity") for r in c.access("node2") if r.get("direction") == "outbound"
               and r.get("src.addr", "").startswith(d_ip + ":")}
        return got >= {TD + "sa-a", TD + "sa-b"} and got
    poll(outbound_ids, what="node2's outbound records reaching sa-a and sa-b")

    certs = c.zc("certificates", "node1")
    by_id = {x["identity"]: x for x in certs}
    assert TD + "sa-a" in by_id and TD + "sa-b" in by_id, sorted(by_id)
    assert by_id[TD + "sa-a"]["state"] == "Available" and by_id[TD + "sa-a"]["certChain"], by_id[TD + "sa-a"]
    assert TD + "sa-n" not in by_id and TD + "sa-d" not in by_id, sorted(by_id)
    assert TD + "sa-d" in {x["identity"] for x in c.zc("certificates", "node2")}

    # zmeshd's CA with node1's own ztunnel token: node1's pods yes, an account that runs on node2 only no.
    assert create_certificate(c, citadel, "node1", TD + "sa-a") == [TD + "sa-a"]
    with pytest.raises(grpc.RpcError) as e:
        create_certificate(c, citadel, "node1", TD + "sa-d")
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
    assert create_certificate(c, citadel, "node2", TD + "sa-d") == [TD + "sa-d"]
    poll(lambda: [l for l in c.log("zmeshd").splitlines() if "refused" in l and "sa-d" in l],
         what="zmeshd's log naming the refusal")


# ---- 3. a deleted pod's connections end, others stay -----------------------------------------------------------

def test_deleted_pod_connections_end_others_keep_working(cluster):
    c = cluster
    enrol_namespace(c)
    d_ip = c.ip("d")
    path = os.path.join(c.dir, "f.yaml")
    with open(path, "w") as f:
        f.write(pod_yaml("f", "node1", "sa-f"))
    c.run("apply", "-f", path)
    poll(lambda: (c.pods().get("f") or {}).get("READY") == "1/1", what="pod f ready")
    enrolled(c, ["f"], "node1")
    from_f = Conn(c, "f", d_ip)
    to_f = Conn(c, "d", c.ip("f"))
    other = Conn(c, "a", d_ip)
    try:
        assert from_f.ping() and to_f.ping() and other.ping()
        assert 'pod "f" deleted' in c.run("delete", "-f", path).stdout
        assert from_f.ended(20), "f's outbound connection (held by node1's ztunnel) still open after delete"
        assert to_f.ended(20), "the connection to f still open after delete"
        assert other.ping(b"after-delete"), "a's connection on the same node broke"
        ws = poll(lambda: (lambda w: w if w is not None and "f" not in w else None)(c.workload_state("node1")),
                  what="f gone from node1's workloadState")
        assert ws.get("a") == "Up" and ws.get("b") == "Up", ws
        assert other.ping(b"later")
    finally:
        for x in (from_f, to_f, other):
            x.close()
        c.run("delete", "-f", path, check=False)


# ---- 5. the node agent restarted -------------------------------------------------------------------------------

def test_agent_killed_restarts_replays_and_keeps_serving(cluster):
    c = cluster
    enrol_namespace(c)
    d_ip = c.ip("d")
    zt_before = [z["pid"] for z in c.ztunnels("node1")]
    pods_before = restarts_and_pids(c, ["a", "b", "d"])
    # The agent running (another test may have just restarted it).
    old = poll(lambda: (lambda p: p if len(p) == 1 else None)(c.agent_pids("node1")), timeout=AGENT_WAIT, what="node1's agent running")
    conn = Conn(c, "a", d_ip)
    try:
        assert conn.ping()
        logsize = len(c.log("agent-node1"))
        os.kill(old[0], signal.SIGKILL)
        new = poll(lambda: (lambda p: p if p and p != old else None)(c.agent_pids("node1")),
                   timeout=AGENT_WAIT, what="the agent restarted by the controller")
        assert len(new) == 1
        log = poll(lambda: (lambda t: t if "received hello from ztunnel" in t else None)(
            c.log("agent-node1")[logsize:]), timeout=AGENT_WAIT, what="the new agent reached by ztunnel")
        m = re.search(r"(\d+) sandboxes from the state file, (\d+) enrolled replayed", log)
        assert m and m.group(2) == "2", "expected a and b replayed:\n" + log
        assert conn.ping(b"across-agent-restart"), "an open connection broke across the agent's restart"
        assert [z["pid"] for z in c.ztunnels("node1")] == zt_before, "ztunnel restarted with the agent"
        ws = poll(lambda: (lambda w: w if w and w.get("a") == "Up" and w.get("b") == "Up" else None)(
            c.workload_state("node1")), timeout=AGENT_WAIT, what="a and b still Up")
        assert "n" not in ws
        # Enrolment changes after the restart apply: b opted out by its pod label, then back in.
        c.run("label", "pod", "b", "-n", NS, LABEL + "=none")
        poll(lambda: c.rules("b") == [], what="b's rules removed by the new agent")
        poll(lambda: "b" not in (c.workload_state("node1") or {"b": 1}), what="b gone from workloadState")
        # Out: node1's ztunnel no longer sees b's connections, which reach d's ztunnel as plaintext.
        out0 = len([r for r in c.access("node1") if r.get("src.addr", "").startswith(c.ip("b") + ":")])
        n0 = len(c.inbound_from("node2", c.ip("b"), d_ip))
        talk(c, "b", d_ip)
        recs = poll(lambda: c.inbound_from("node2", c.ip("b"), d_ip)[n0:], what="d's ztunnel logging b")
        assert all("src.identity" not in r for r in recs), "b still HBONE after opting out: %s" % recs
        assert len([r for r in c.access("node1") if r.get("src.addr", "").startswith(c.ip("b") + ":")]) == out0
        c.run("label", "pod", "b", "-n", NS, LABEL + "-")
        enrolled(c, ["b"], "node1")
        n0 = len(c.inbound_from("node2", c.ip("b"), d_ip))
        talk(c, "b", d_ip)
        hbone_line(c, "b", "d", "node2", n0)
        assert conn.ping(b"end")
        assert restarts_and_pids(c, ["a", "b", "d"]) == pods_before
    finally:
        conn.close()
        if LABEL in (c.api("Pod", NS, "b") or {}).get("metadata", {}).get("labels", {}):
            c.run("label", "pod", "b", "-n", NS, LABEL + "-", check=False)


# ---- 4. ztunnel killed -----------------------------------------------------------------------------------------

def test_ztunnel_killed_is_restarted_and_serves_hbone_again(cluster):
    c = cluster
    enrol_namespace(c)
    d_ip = c.ip("d")
    pods_before = restarts_and_pids(c, ["a", "b", "n", "d"])
    (old,) = c.ztunnels("node1")
    hello = c.log("agent-node1").count("received hello from ztunnel")
    os.kill(old["pid"], signal.SIGKILL)
    new = poll(lambda: (lambda z: z[0] if len(z) == 1 and z[0]["pid"] != old["pid"] and z[0]["ready"] else None)(
        c.ztunnels("node1")), timeout=AGENT_WAIT, what="node1's ztunnel restarted and ready")
    assert "ztunnel" in c.log("controller") and new["admin_port"] == 15000
    # The agent gave the new ztunnel its snapshot: a and b served again (n still not).
    poll(lambda: c.log("agent-node1").count("received hello from ztunnel") > hello, timeout=AGENT_WAIT, what="a new ZDS hello")
    ws = poll(lambda: (lambda w: w if w and w.get("a") == "Up" and w.get("b") == "Up" else None)(
        c.workload_state("node1")), timeout=AGENT_WAIT, what="a and b Up in the new ztunnel")
    assert "n" not in ws
    for p in ("a", "b"):
        n0 = len(c.inbound_from("node2", c.ip(p), d_ip))
        talk(c, p, d_ip)
        hbone_line(c, p, "d", "node2", n0)
    # Inbound on node1 too: d -> a lands on the new ztunnel in a's namespace, with d's identity.
    n0 = len(c.inbound_from("node1", d_ip, c.ip("a")))
    talk(c, "d", c.ip("a"))
    hbone_line(c, "d", "a", "node1", n0)
    assert restarts_and_pids(c, ["a", "b", "n", "d"]) == pods_before, "a pod restarted with ztunnel"


# ---- 6. the upgrade --------------------------------------------------------------------------------------------

def test_rollout_keeps_long_lived_connection_new_ones_go_to_new_generation(cluster):
    c = cluster
    enrol_namespace(c)
    d_ip = c.ip("d")
    (old,) = c.ztunnels("node1")
    conn = Conn(c, "a", d_ip)
    closed = False
    try:
        assert conn.ping()
        r = c.run("rollout", "ztunnel", "node1")
        assert "generation %d started" % (old["generation"] + 1) in r.stdout, r.stdout
        st = poll(lambda: (lambda z: z if any(x["generation"] == old["generation"] + 1 and x["ready"] for x in z)
                           and any(x["pid"] == old["pid"] and x["draining"] for x in z) else None)(
            c.ztunnels("node1")), what="the new generation ready and the old one draining")
        new = [x for x in st if x["generation"] == old["generation"] + 1][0]
        assert new["admin_port"] == 15100 and new["pid"] != old["pid"]
        assert os.path.exists("/proc/%d" % old["pid"])
        # The old generation got SIGTERM and still carries the connection, both ways.
        for i in range(3):
            assert conn.ping(b"after-sigterm-%d" % i), "the long-lived connection broke in the rollout"
            time.sleep(0.3)
        # A new connection is handled by the new generation (its metrics on 15120 count it).
        def opened(port):
            return c.metric("node1", port, "istio_tcp_connections_opened_total", reporter="source",
                            source_workload="b")
        base = opened(15120) or 0.0
        n0 = len(c.inbound_from("node2", c.ip("b"), d_ip))
        talk(c, "b", d_ip)
        hbone_line(c, "b", "d", "node2", n0)
        poll(lambda: (opened(15120) or 0) >= base + 1, what="the new generation's metrics counting b's connection")
        assert conn.ping(b"still"), "the long-lived connection broke after new connections"
        # The old one exits once its last connection has closed (how soon is not asserted; its deadline is 25 s).
        conn.close()
        closed = True
        poll(lambda: not any(x["pid"] == old["pid"] for x in c.ztunnels("node1")), timeout=40,
             what="the old generation gone from the controller's status")
        poll(lambda: not os.path.exists("/proc/%d" % old["pid"]) or
             open("/proc/%d/stat" % old["pid"]).read().rsplit(")", 1)[1].split()[0] == "Z",
             timeout=10, what="the old ztunnel process exited")
        ws = c.workload_state("node1")
        assert ws and ws.get("a") == "Up" and ws.get("b") == "Up", ws
        n0 = len(c.inbound_from("node2", c.ip("a"), d_ip))
        talk(c, "a", d_ip)
        hbone_line(c, "a", "d", "node2", n0)
    finally:
        if not closed:
            conn.close()


# ---- 7. a pod created while enrolled is captured from its first connection -------------------------------------

def test_pod_applied_into_enrolled_namespace_is_captured_from_first_connection(cluster):
    c = cluster
    enrol_namespace(c)
    d_ip = c.ip("d")
    path = os.path.join(c.dir, "e.yaml")
    with open(path, "w") as f:
        f.write(pod_yaml("e", "node1", "sa-e", first=d_ip))
    try:
        assert "pod/e created" in c.run("apply", "-f", path).stdout
        line = poll(lambda: re.search(r"^first .*$", c.run("logs", "e", "-n", NS, check=False).stdout, re.M),
                    what="pod e's first connection").group(0)
        assert "echo=True" in line, line
        e_ip = c.ip("e")
        m = re.match(r"first local=(\S+) seen=(\S+) ", line)
        assert m.group(1).startswith(e_ip + ":"), line
        # The only connection e ever made to d reached d's ztunnel over HBONE with e's identity; no plaintext
        # record (one without an identity) exists for e.
        recs = poll(lambda: c.inbound_from("node2", e_ip, d_ip), what="d's ztunnel logging e's first connection")
        assert [r.get("src.identity") for r in recs] == [TD + "sa-e"], recs
        assert c.rules("e"), "pod e has no in-pod rules"
        assert "CNI add" in c.log("agent-node1") and c.workload_state("node1").get("e") == "Up"
    finally:
        c.run("delete", "-f", path, check=False)
