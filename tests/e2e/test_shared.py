"""Shared mode: one ztunnel per node serving every pod of it from inside each pod's network namespace (issue 8
item 1), against a node agent zmesh did not write: Python plays istio-cni's ZDS server (istio/istio
cni/pkg/nodeagent/ztunnelserver.go) with the standard library's SOCK_SEQPACKET sockets, SCM_RIGHTS and Python
protobuf stubs generated from proto/zds.proto.

Topology: two nodes, two pods each (different service accounts), every pod with the in-pod rules; one ztunnel
per node, run in the node's namespace (never in a pod's), config from one LocalConfig file and a local CA.
Checked: listeners exist in each pod's namespace and not in the node's; readiness waits for the snapshot;
traffic between nodes is HBONE with each pod's own identity; Del closes only that pod's connections; a
restarted ztunnel gets the snapshot again and serves without any pod restarting; an upgrade (a second ztunnel
on the agent, the old one drained with SIGTERM) keeps a long-lived connection on the old one while new
connections go to the new one."""
import json
import os
import socket
import subprocess

import pytest

import zds_agent
from zds_agent import Agent
from helpers import Mesh, connect, echo_ok, http_request, recv_exact, wait_for
from topo import tail

ECHO = 8080


@pytest.fixture(scope="module")
def zds():
    return zds_agent.stubs()


class Shared:
    """A Mesh whose pods get rules and no ztunnel of their own; one shared ztunnel per node instead."""

    def __init__(self, pb, env=None):
        self.mesh = Mesh(nodes=2, pods=2, meshed=[])
        self.pb = pb
        self.env = env or {}
        self.agents, self.ztunnels, self.conns = {}, {}, {}

    def up(self):
        m = self.mesh
        m.up()
        t = m.topo
        for p in t.pods:
            t.inpod_rules(p)
        for i in (1, 2):
            self.agents[i] = Agent(self.pb, os.path.join(t.workdir, "zds-n%d.sock" % i))
        return self

    def pods(self, node):
        return [p for p in self.mesh.topo.pods if p.node == node]

    def start(self, node, tag="", env=None, flush=True):
        t = self.mesh.topo
        if flush:
            self.agents[node].flush()
        e = dict(os.environ)
        e.update({"PROXY_MODE": "shared", "INPOD_UDS": self.agents[node].path, "LOCAL_XDS_PATH": self.mesh.config,
                  "LOCAL_CA_DIR": t.ca(), "LOG_FORMAT": "json", "RUST_LOG": "info"})
        e.pop("PROXY_WORKLOAD_INFO", None)
        e.update(self.env)
        e.update(env or {})
        log_path = os.path.join(t.workdir, "ztunnel-node%d%s.log" % (node, tag))
        with open(log_path, "ab") as log:
            proc = t.popen(t.nodes[node - 1], [os.path.join(t.bin_dir(), "ztunnel")], env=e, stdout=log,
                           stderr=log, stdin=subprocess.DEVNULL)
        proc.log_path = log_path
        return proc

    def start_served(self, node, tag="", flush=True, env=None):
        proc = self.start(node, tag, flush=flush, env=env)
        try:
            conn = self.agents[node].serve(self.pods(node))
        except Exception:
            raise RuntimeError("ztunnel of node %d did not take the snapshot:\n%s" % (node, tail(proc.log_path)))
        for p in self.pods(node):
            assert self.mesh.topo.wait_listen(p.netns, (15001, 15006, 15008), 10, proc), tail(proc.log_path)
        return proc, conn

    def log_json(self, proc):
        out = []
        with open(proc.log_path, errors="replace") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def down(self):
        for c in self.conns.values():
            c.close()
        self.mesh.down()


def _ready(netns, t):
    """(status, body) of the node ztunnel's readiness endpoint, or (None, error)."""
    try:
        st, _, body = http_request(netns, "127.0.0.1", 15021, "/healthz/ready", timeout=3)
        return st, body.decode(errors="replace")
    except OSError as e:
        return None, str(e)


@pytest.fixture(scope="module")
def shared(zds, ztunnel_bin):
    s = Shared(zds)
    try:
        s.up()
        for p in s.mesh.topo.pods:
            s.mesh.app(p, "echo", ECHO)
        yield s
    finally:
        s.down()


@pytest.fixture
def served(shared):
    """Both nodes' ztunnels running with every pod of their node; stopped after the test."""
    t = shared.mesh.topo
    procs = []
    for node in (1, 2):
        proc, conn = shared.start_served(node)
        procs.append(proc)
        shared.conns[node] = conn
    yield procs
    for proc in procs:
        t.stop(proc)
    for c in shared.conns.values():
        c.close()
    shared.conns.clear()


def _listening(t, netns):
    return t.listening(netns)


def test_readiness_waits_for_the_snapshot_and_listeners_live_in_pods(shared):
    t = shared.mesh.topo
    proc = shared.start(1)
    try:
        conn = shared.agents[1].accept()
        node = t.nodes[0]
        assert wait_for(lambda: _ready(node, t)[0] == 500, timeout=10), (_ready(node, t), tail(proc.log_path))
        assert "workload proxy manager" in _ready(node, t)[1], _ready(node, t)
        p1, p2 = shared.pods(1)
        assert conn.add(p1) == ""
        assert conn.add(p2) == ""
        assert _ready(node, t)[0] == 500  # no SnapshotSent yet
        assert conn.snapshot_sent() == ""
        assert wait_for(lambda: _ready(node, t)[0] == 200, timeout=10), (_ready(node, t), tail(proc.log_path))
        for p in (p1, p2):
            assert t.wait_listen(p.netns, (15001, 15006, 15008), 10, proc)
        # Never in the node's own namespace: the node's ports are the admin ones only.
        assert not {15001, 15006, 15008} & _listening(t, node), _listening(t, node)
        conn.close()
    finally:
        t.stop(proc)


def test_traffic_carries_each_pods_own_identity(shared, served):
    m = shared.mesh
    for src, dst in (("n1p1", "n2p1"), ("n1p2", "n2p2"), ("n2p1", "n1p2")):
        assert wait_for(lambda: echo_ok(m.pod(src), m.pod(dst), ECHO), timeout=10), tail(served[0].log_path)
    # The server side's access log names the caller's SPIFFE identity, one per pod, on the same node.
    def inbound_ids(proc):
        return {(l.get("src.identity"), l.get("dst.identity")) for l in shared.log_json(proc)
                if l.get("message") == "connection complete" and l.get("direction") == "inbound"}
    want = {(m.pod("n1p1").spiffe, m.pod("n2p1").spiffe), (m.pod("n1p2").spiffe, m.pod("n2p2").spiffe)}
    assert wait_for(lambda: want <= inbound_ids(served[1]), timeout=10), inbound_ids(served[1])
    back = (m.pod("n2p1").spiffe, m.pod("n1p2").spiffe)
    assert wait_for(lambda: back in inbound_ids(served[0]), timeout=10), inbound_ids(served[0])
    # One certificate per service account, both on the one ztunnel; workloadState lists the pods served
    # (Istio's shape: uid -> {state, info}); the proxy gauges count them.
    dump = json.loads(http_request(m.topo.nodes[0], "127.0.0.1", 15000, "/config_dump")[2])
    assert {c["identity"] for c in dump["certificates"]} >= {p.spiffe for p in shared.pods(1)}
    assert dump["workloadState"] == {p.uid: {"state": "Up", "info": {"name": p.name, "namespace": p.namespace,
                                                                    "serviceAccount": p.sa}}
                                     for p in shared.pods(1)}, dump["workloadState"]
    metrics = http_request(m.topo.nodes[0], "127.0.0.1", 15020, "/metrics")[2].decode()
    assert "\nistio_active_proxy_count 2\n" in metrics and "\nistio_pending_proxy_count 0\n" in metrics, metrics


def test_del_closes_only_that_pods_connections(shared, served):
    m, t = shared.mesh, shared.mesh.topo
    a, b = m.pod("n1p1"), m.pod("n1p2")
    sa = connect(a.netns, m.pod("n2p1").ip, ECHO, timeout=10)
    sb = connect(b.netns, m.pod("n2p2").ip, ECHO, timeout=10)
    try:
        for s in (sa, sb):
            s.sendall(b"ping")
            assert recv_exact(s, 4) == b"ping"
        assert shared.conns[1].delete(a) == ""
        # a's connection ends at once (Istio drains a deleted pod immediately); b's keeps working.
        sa.settimeout(5)
        try:
            got = sa.recv(10)
        except (ConnectionResetError, socket.timeout) as e:
            got = e
        assert got == b"" or isinstance(got, ConnectionResetError), got
        sb.sendall(b"still")
        assert recv_exact(sb, 5) == b"still"
        # a's listeners are gone from its namespace (its rules now point at nothing); b's stay.
        assert wait_for(lambda: not {15001, 15006, 15008} & _listening(t, a.netns), timeout=5)
        assert {15001, 15006, 15008} <= _listening(t, b.netns)
        assert any(l.get("message") == "pod removed, closing its connections" and l.get("name") == a.name
                   for l in shared.log_json(served[0]))
        metrics = http_request(t.nodes[0], "127.0.0.1", 15020, "/metrics")[2].decode()
        assert "\nistio_active_proxy_count 1\n" in metrics and "\nistio_proxies_stopped_total 1\n" in metrics
        dump = json.loads(http_request(t.nodes[0], "127.0.0.1", 15000, "/config_dump")[2])
        assert list(dump["workloadState"]) == [b.uid]
        # a was the last pod of its service account here: its certificate is forgotten, b's stays.
        ids = {c["identity"] for c in dump["certificates"]}
        assert a.spiffe not in ids and b.spiffe in ids, ids
    finally:
        sa.close()
        sb.close()


def test_restarted_ztunnel_gets_the_snapshot_again(shared, served):
    m, t = shared.mesh, shared.mesh.topo
    t.stop(served[0])
    shared.conns[1].close()
    assert not echo_ok(m.pod("n1p1"), m.pod("n2p1"), ECHO)  # rules stay, nobody listens: refused
    proc, shared.conns[1] = shared.start_served(1, tag="-restarted")
    served[0] = proc
    assert wait_for(lambda: echo_ok(m.pod("n1p1"), m.pod("n2p1"), ECHO), timeout=10), tail(proc.log_path)
    assert echo_ok(m.pod("n2p2"), m.pod("n1p2"), ECHO)


def test_upgrade_keeps_a_long_lived_connection(shared, served):
    m = shared.mesh
    cli, srv = m.pod("n1p1"), m.pod("n2p1")
    old = served[0]
    long_lived = connect(cli.netns, srv.ip, ECHO, timeout=10)
    try:
        long_lived.sendall(b"before")
        assert recv_exact(long_lived, 6) == b"before"
        # The new ztunnel joins: the agent gives it the snapshot (its listeners share the pods' ports with the
        # old one's through SO_REUSEPORT), then the old one is told to drain.
        # Both run in the node's namespace here, so the new one's own ports differ (in Kubernetes each
        # ztunnel pod has its own IP); the pods' ports are shared.
        new, conn = shared.start_served(1, tag="-new", flush=False,
                                        env={"ADMIN_PORT": "15100", "METRICS_PORT": "15120",
                                             "READINESS_PORT": "15121"})
        served.append(new)
        old.send_signal(15)
        assert wait_for(lambda: any(l.get("message", "").startswith("received SIGTERM: draining")
                                    for l in shared.log_json(old)), timeout=5)
        # New connections go to the new ztunnel...
        assert wait_for(lambda: echo_ok(cli, srv, ECHO), timeout=10), tail(new.log_path)
        outbound_new = lambda: sum(1 for l in shared.log_json(new) if l.get("message") == "connection complete"
                                   and l.get("direction") == "outbound")
        before = outbound_new()
        assert echo_ok(cli, srv, ECHO)
        assert wait_for(lambda: outbound_new() > before, timeout=5)
        # ...while the old one still carries the long-lived connection, until it ends.
        assert old.poll() is None
        long_lived.sendall(b"during")
        assert recv_exact(long_lived, 6) == b"during"
    finally:
        long_lived.close()
    assert wait_for(lambda: old.poll() is not None, timeout=10), tail(old.log_path)
    assert old.returncode == 0
    shared.conns[1].close()
    shared.conns[1] = conn
    served[0] = new


# ---- with zmeshd: config over xDS, certificates by impersonation with the node's token ----

@pytest.fixture(scope="module")
def cp_shared(zds, ztunnel_bin):
    from test_control_plane import ControlPlane, ns_yaml, pod_yaml
    s = Shared(zds)
    try:
        s.up()
        t = s.mesh.topo
        c = ControlPlane(t)
        c.write("pods.yaml", ns_yaml() + "".join(pod_yaml(p) for p in t.pods))
        c.start()
        root = os.path.join(c.state, "root-cert.pem")
        token = os.path.join(c.dir, "token-node1")
        r = subprocess.run([c.bin, "token", "--sa", "istio-system/ztunnel", "--node", "node1", "--state-dir",
                            c.state, "--ttl", "24h"], capture_output=True, text=True, check=True)
        with open(token, "w") as f:
            f.write(r.stdout)
        s.env = {"LOCAL_XDS_PATH": "", "LOCAL_CA_DIR": "", "XDS_ADDRESS": c.addr, "CA_ADDRESS": c.addr,
                 "XDS_ROOT_CA": root, "CA_ROOT_CA": root, "ALT_XDS_HOSTNAME": "istiod.istio-system.svc",
                 "ALT_CA_HOSTNAME": "istiod.istio-system.svc", "AUTH_TOKEN": token, "POD_NAME": "ztunnel-node1",
                 "POD_NAMESPACE": "istio-system", "NODE_NAME": "node1"}
        s.cp = c
        for p in t.pods:
            s.mesh.app(p, "echo", ECHO)
        yield s
    finally:
        s.down()


def test_node_token_obtains_only_its_own_nodes_identities(cp_shared):
    s, t = cp_shared, cp_shared.mesh.topo
    proc = s.start(1)
    try:
        conn = s.agents[1].accept(timeout=20)
        n1p1, n1p2, n2p1 = t.pod(1, 1), t.pod(1, 2), t.pod(2, 1)
        for p in (n1p1, n1p2, n2p1):
            assert conn.add(p) == ""
        assert conn.snapshot_sent() == ""

        def certs():
            try:
                return {c["identity"]: c for c in json.loads(http_request(
                    t.nodes[0], "127.0.0.1", 15000, "/config_dump")[2])["certificates"]}
            except (OSError, ValueError, KeyError):
                return {}
        # Both pods of node 1 get their own certificate from zmeshd by impersonation...
        assert wait_for(lambda: all(certs().get(p.spiffe, {}).get("state") == "Available" for p in (n1p1, n1p2)),
                        timeout=20), (certs(), tail(proc.log_path))
        # ...and the pod of node 2 does not: zmeshd finds no pod of that account on node1 (its log says so; the
        # caller gets istiod's generic UNAUTHENTICATED).
        assert wait_for(lambda: any(l.get("identity") == n2p1.spiffe and "UNAUTHENTICATED" in l.get("message", "")
                                    for l in s.log_json(proc)), timeout=20), tail(proc.log_path)
        assert wait_for(lambda: any('no instances of \\"default/%s\\" found on node \\"node1\\"' % n2p1.sa
                                    in json.dumps(l) for l in s.cp.lines()), timeout=10), tail(s.cp.log_path)
        assert certs().get(n2p1.spiffe, {}).get("state") != "Available", certs()
        # Two pods of one node talk through the one ztunnel: out of n1p1's namespace, HBONE into n1p2's.
        assert wait_for(lambda: echo_ok(n1p1, n1p2, ECHO), timeout=10), tail(proc.log_path)
        assert wait_for(lambda: any(l.get("message") == "connection complete" and l.get("direction") == "inbound"
                                    and l.get("src.identity") == n1p1.spiffe and l.get("dst.identity") == n1p2.spiffe
                                    for l in s.log_json(proc)), timeout=10), tail(proc.log_path)
        assert conn.delete(n2p1) == ""
        conn.close()
    finally:
        t.stop(proc)


def test_failed_start_is_nacked_and_retried(shared):
    """A pod whose ports are taken (here by a plain listener on 15006 without SO_REUSEPORT) cannot be served:
    the Add is NACKed with Istio's prefix and the reason, readiness waits, and the start is retried every 5 s
    until it works."""
    t = shared.mesh.topo
    p1, p2 = shared.pods(1)
    holder = subprocess.Popen(["ip", "netns", "exec", p1.netns, "python3", "-c",
                               "import socket,sys,time\n"
                               "s=socket.socket(socket.AF_INET6);s.bind(('::',15006));s.listen();"
                               "print('up',flush=True);time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    proc = shared.start(1)
    try:
        assert holder.stdout.readline().strip() == "up"
        conn = shared.agents[1].accept()
        err = conn.add(p1)
        assert err.startswith("failure to start proxy : listen on port 15006: Address already in use"), err
        assert conn.add(p2) == ""
        assert conn.snapshot_sent() == ""
        node = t.nodes[0]
        st, body = _ready(node, t)
        assert st == 500 and "workload proxy manager" in body, (st, body)
        holder.kill()
        holder.wait()
        # The retry (ZDS_RETRY_MS) serves it; nothing is sent to the agent (no unsolicited messages).
        assert t.wait_listen(p1.netns, (15001, 15006, 15008), 15, proc), tail(proc.log_path)
        assert wait_for(lambda: _ready(node, t)[0] == 200, timeout=10), _ready(node, t)
        assert conn.recv(timeout=0.3) is None
        conn.close()
    finally:
        if holder.poll() is None:
            holder.kill()
        t.stop(proc)
