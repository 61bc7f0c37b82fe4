"""`zmesh up`, the local cluster (docs/local-cluster.md), end to end with real namespaces and Debian's CNI plugins.

One cluster of the sample (examples/bookinfo-lite, --no-mesh) serves most tests: every pod Running and ready with
an IP of its node's pod CIDR, cross-node pod-to-pod and Service VIP HTTP through `zmesh exec`, the api/ directory
zmeshd reads (pods with podIPs, zmeshd's workload count), live apply and delete (CNI DEL releases the host-local
lease, the namespace goes), restarts with backoff, readiness probes failing and recovering, `zmesh label ns`, and
`zmesh down` removing everything. Smaller clusters check bad manifests (refused before anything is made), the mesh
components supervised while they cannot run yet, and `zmesh down` after the controller was killed with SIGKILL.
Every cluster has its own prefix, subnets and state directory under /run/zmesh-uptest-*, removed in teardown."""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time

import pytest

import topo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(REPO, "examples", "bookinfo-lite")
TIMEOUT = 60


def zmesh_bin():
    path = os.path.join(topo.Topology.bin_dir(), "zmesh")
    if not os.access(path, os.X_OK):
        pytest.skip("no zmesh binary at %s (run make all)" % path)
    return path


def poll(fn, timeout=TIMEOUT, every=0.2, what="condition"):
    """Calls fn until it returns something truthy; fails naming what after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    pytest.fail("timed out waiting for %s (last: %r)" % (what, last))


class Cluster:
    """One `zmesh up` with its own prefix, subnets and state directory."""

    def __init__(self, manifests, nodes=None, mesh=False):
        self.zmesh = zmesh_bin()
        tag = "%04x" % random.randrange(1 << 16)
        self.prefix = "zu" + tag
        self.state = "/run/zmesh-uptest-" + tag
        octet = random.randrange(150, 250)
        self.node_subnet = "172.31.%d.0" % octet
        self.pod_subnet = "10.%d.0.0" % octet
        self.manifests = manifests
        self.nodes = nodes
        self.mesh = mesh
        self.up_result = None

    def run(self, *args, check=True, timeout=120):
        p = subprocess.run([self.zmesh] + list(args) + ["--state-dir", self.state] if args[0] != "exec"
                           else [self.zmesh, "exec", "--state-dir", self.state] + list(args[1:]),
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            pytest.fail("zmesh %s failed (%d):\n%s%s" % (" ".join(args), p.returncode, p.stdout, p.stderr))
        return p

    def up(self, check=True):
        args = ["up", self.manifests, "--prefix", self.prefix, "--node-subnet", self.node_subnet,
                "--pod-subnet", self.pod_subnet, "--timeout", "%ds" % TIMEOUT]
        if not self.mesh:
            args.append("--no-mesh")
        if self.nodes:
            args += ["--nodes", str(self.nodes)]
        self.up_result = self.run(*args, check=check, timeout=TIMEOUT + 60)
        return self.up_result

    def down(self):
        return self.run("down", check=False)

    def pods(self):
        """NAME -> dict of the `get pods -o wide` columns."""
        out = self.run("get", "pods", "-o", "wide").stdout.splitlines()
        if not out:
            return {}
        head = re.split(r"\s{2,}", out[0].strip())
        rows = {}
        for line in out[1:]:
            cells = re.split(r"\s{2,}", line.strip())
            row = dict(zip(head, cells))
            rows[row["NAME"]] = row
        return rows

    def api(self, kind, ns, name):
        path = os.path.join(self.state, "api", "%s_%s_%s.json" % (kind.lower(), ns, name))
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def node_cidr(self, index):
        a, b = self.pod_subnet.split(".")[:2]
        return "%s.%s.%d." % (a, b, index)

    def exec(self, pod, *cmd, ns="shop"):
        return self.run("exec", pod, "-n", ns, "--", *cmd, check=False, timeout=30)

    def netns(self):
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [l.split()[0] for l in out.splitlines() if l.startswith(self.prefix + "-")]

    def bridge_exists(self):
        return os.path.exists("/sys/class/net/%s0" % self.prefix)

    def processes(self):
        """pids whose command line mentions this cluster's state directory (zmeshd, the controller's children)."""
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if self.state in cmd:
                pids.append(int(d))
        return pids

    def assert_gone(self):
        assert self.netns() == [], "network namespaces left: %s" % self.netns()
        assert not self.bridge_exists(), "bridge %s0 left" % self.prefix
        poll(lambda: not self.processes(), timeout=10, what="no process of %s left" % self.state)
        routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
        assert self.node_subnet.rsplit(".", 1)[0] + "." not in routes, routes
        assert not os.path.exists(self.state), os.listdir(self.state)


def _force_cleanup(c):
    """Teardown of last resort: down, then whatever it left."""
    c.down()
    for ns in c.netns():
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "link", "del", c.prefix + "0"], capture_output=True)
    for pid in c.processes():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    shutil.rmtree(c.state, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(SAMPLE)
    try:
        c.up()
        yield c
    finally:
        _force_cleanup(c)


@pytest.fixture
def tmpdir_m():
    d = tempfile.mkdtemp(prefix="zmesh-uptest-m-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


# ---- the sample cluster ---------------------------------------------------------------------------------------

def test_up_pods_running_ready_in_their_node_cidr(cluster):
    assert "cluster up: 2 nodes" in cluster.up_result.stdout
    pods = cluster.pods()
    assert set(pods) == {"catalog", "ratings", "frontend", "client"}
    for name, row in pods.items():
        assert row["READY"] == "1/1" and row["STATUS"] == "Running", row
        assert row["RESTARTS"] == "0", row
        index = int(row["NODE"][len("node"):])
        assert row["IP"].startswith(cluster.node_cidr(index)), row
        # The sample's namespace starts outside the mesh (the demo enrols it live).
        assert row["MODE"] == "none", row
    # spec.nodeName is honoured: the sample puts catalog and ratings on node2, frontend and client on node1.
    assert pods["catalog"]["NODE"] == "node2" and pods["frontend"]["NODE"] == "node1"


def test_cross_node_pod_to_pod_and_service_vip(cluster):
    pods = cluster.pods()
    r = cluster.exec("client", "curl", "-s", "-m", "5", "http://%s:9080/" % pods["catalog"]["IP"])
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["pod"] == "catalog" and body["caller"] == pods["client"]["IP"]
    # The frontend's Service VIP (same node) and through it both backends' VIPs (the other node).
    r = cluster.exec("client", "curl", "-s", "-m", "10", "http://10.96.20.12/")
    assert r.returncode == 0, r.stderr
    page = json.loads(r.stdout)
    assert page["pod"] == "frontend"
    assert page["catalog"].get("pod") == "catalog" and page["ratings"].get("pod") == "ratings", page
    # The client's own loop reaches the frontend too (its log names every hop).
    poll(lambda: "frontend=frontend catalog=catalog ratings=ratings" in cluster.run("logs", "client", "-n", "shop").stdout,
         what="the client's log line")


def test_get_nodes_services_namespaces(cluster):
    out = cluster.run("get", "nodes", "-o", "wide").stdout
    base = cluster.node_subnet.rsplit(".", 1)[0]
    assert re.search(r"^node1\s+Ready\s+<none>\s+\S+\s+%s\.2\s+%s0/24$" % (re.escape(base),
                     re.escape(cluster.node_cidr(1))), out, re.M), out
    assert re.search(r"^node2\s+Ready\s+.*%s\.3\s+%s0/24$" % (re.escape(base), re.escape(cluster.node_cidr(2))),
                     out, re.M), out
    out = cluster.run("get", "services", "-n", "shop", "-o", "wide").stdout
    assert re.search(r"^frontend\s+ClusterIP\s+10\.96\.20\.12\s+80/TCP\s+\S+\s+app=frontend$", out, re.M), out
    out = cluster.run("get", "ns", "-o", "wide").stdout
    assert re.search(r"^shop\s+Active\s+\S+\s+<none>$", out, re.M) and re.search(r"^default\s+Active", out, re.M), out
    one = json.loads(cluster.run("get", "pods", "catalog", "-n", "shop", "-o", "json").stdout)
    assert one["kind"] == "List" and one["items"][0]["status"]["phase"] == "Running"


def test_logs_follow_and_components(cluster):
    p = subprocess.Popen([cluster.zmesh, "logs", "client", "-n", "shop", "-f", "--state-dir", cluster.state],
                         stdout=subprocess.PIPE, text=True)
    try:
        size = os.path.getsize(os.path.join(cluster.state, "pods", "shop_client", "client.log"))
        got = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(got) <= size + 10:
            got += p.stdout.readline()
        assert len(got) > size, "logs -f printed nothing new"
        assert p.poll() is None  # still following
    finally:
        p.kill()
        p.wait()
    assert "manifests loaded" in cluster.run("logs", "zmeshd").stdout
    assert "controller up" in cluster.run("logs", "controller").stdout
    r = cluster.run("logs", "frontend", "-n", "shop", "-c", "nosuch", check=False)
    assert r.returncode == 1 and "choose one of: [frontend]" in r.stderr


def test_exec_passes_the_exit_status_through(cluster):
    assert cluster.exec("catalog", "sh", "-c", "exit 7").returncode == 7
    r = cluster.exec("catalog", "sh", "-c", "echo $CATALOG_URL; hostname -I 2>/dev/null || ip -4 -o addr")
    assert r.returncode == 0
    assert cluster.exec("frontend", "sh", "-c", "echo $CATALOG_URL").stdout.strip() == "http://10.96.20.10:9080/"
    r = cluster.run("exec", "nosuchpod", "-n", "shop", "--", "true", check=False)
    assert r.returncode == 1 and "not found" in r.stderr


def test_api_dir_has_pod_status_and_zmeshd_serves_workloads(cluster):
    pod = cluster.api("Pod", "shop", "catalog")
    st = pod["status"]
    assert st["phase"] == "Running"
    assert st["podIPs"] == [{"ip": st["podIP"]}] and st["podIP"].startswith(cluster.node_cidr(2))
    assert {"type": "Ready", "status": "True"} in st["conditions"]
    assert pod["spec"]["nodeName"] == "node2" and pod["metadata"]["uid"]
    ns = cluster.api("Namespace", "", "shop")
    assert "istio.io/dataplane-mode" not in ns["metadata"].get("labels", {}), ns
    log = os.path.join(cluster.state, "logs", "zmeshd.log")
    poll(lambda: re.search(r"workloads=4 ", open(log).read()), what="zmeshd to serve the 4 pods as workloads")


def test_apply_new_pod_then_delete_releases_everything(cluster, tmpdir_m):
    path = write(tmpdir_m, "extra.yaml", """\
        apiVersion: v1
        kind: Pod
        metadata: {name: extra, namespace: shop, labels: {app: extra}}
        spec:
          containers:
          - name: web
            image: ignored:latest
            command: ["python3", "-m", "http.server", "7070", "--bind", "0.0.0.0"]
            readinessProbe: {tcpSocket: {port: 7070}, periodSeconds: 1}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: extra, namespace: shop}
        spec:
          selector: {app: extra}
          ports: [{port: 80, targetPort: 7070}]
        """)
    r = cluster.run("apply", "-f", path)
    assert "pod/extra created" in r.stdout
    assert "image ignored" in r.stderr  # said once, as a warning
    row = poll(lambda: (lambda p: p if p and p["READY"] == "1/1" else None)(cluster.pods().get("extra")),
               what="pod extra ready")
    assert row["STATUS"] == "Running"
    netns = "%s-shop_extra" % cluster.prefix
    assert netns in cluster.netns()
    node = row["NODE"]
    lease = os.path.join(cluster.state, "nodes", node, "ipam", "%s-%s" % (cluster.prefix, node), row["IP"])
    assert os.path.exists(lease), "host-local lease %s" % lease
    r = cluster.exec("client", "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                     "http://%s:7070/" % row["IP"])
    assert r.stdout == "200"
    # The Service got a clusterIP from 10.96.0.0/16 (the API server's part), and its VIP reaches the pod.
    vip = cluster.api("Service", "shop", "extra")["spec"]["clusterIP"]
    assert vip.startswith("10.96.")
    r = poll(lambda: (lambda r: r if r.stdout == "200" else None)(cluster.exec(
        "client", "curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", "http://%s/" % vip)),
        what="the new Service's VIP")
    # Applying the same file again changes nothing.
    again = cluster.run("apply", "-f", path).stdout
    assert "pod/extra unchanged" in again and "service/extra unchanged" in again
    assert cluster.api("Service", "shop", "extra")["spec"]["clusterIP"] == vip
    # Labels may change (configured, and api/ shows them); the spec may not, as the API server says.
    text = open(path).read()
    write(tmpdir_m, "relabel.yaml", text.replace("labels: {app: extra}", "labels: {app: extra, tier: web}"))
    r = cluster.run("apply", "-f", os.path.join(tmpdir_m, "relabel.yaml"))
    assert "pod/extra configured" in r.stdout
    poll(lambda: cluster.api("Pod", "shop", "extra")["metadata"]["labels"].get("tier") == "web", what="new labels")
    write(tmpdir_m, "respec.yaml", text.replace('"7070", "--bind"', '"7071", "--bind"'))
    r = cluster.run("apply", "-f", os.path.join(tmpdir_m, "respec.yaml"), check=False)
    assert r.returncode == 1 and "spec is immutable" in r.stderr, r.stderr
    r = cluster.run("delete", "-f", path)
    assert 'pod "extra" deleted' in r.stdout
    assert netns not in cluster.netns()
    assert not os.path.exists(lease), "CNI DEL did not release %s" % lease
    assert cluster.api("Pod", "shop", "extra") is None
    assert "extra" not in cluster.pods()
    assert "CNI DEL done" in open(os.path.join(cluster.state, "logs", "controller.log")).read()


def test_container_that_exits_is_restarted(cluster, tmpdir_m):
    path = write(tmpdir_m, "crash.yaml", """\
        apiVersion: v1
        kind: Pod
        metadata: {name: crasher, namespace: shop}
        spec:
          containers:
          - name: main
            command: ["sh", "-c", "echo started; sleep 0.3; exit 3"]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: oneshot, namespace: shop}
        spec:
          restartPolicy: Never
          containers:
          - name: main
            command: ["sh", "-c", "echo done"]
        """)
    cluster.run("apply", "-f", path)
    row = poll(lambda: (lambda p: p if p and int(p["RESTARTS"]) >= 2 else None)(cluster.pods().get("crasher")),
               what="crasher restarted twice")
    assert row["STATUS"] in ("CrashLoopBackOff", "Running"), row
    log = cluster.run("logs", "crasher", "-n", "shop").stdout
    assert log.count("started") >= 2
    ctl_log = open(os.path.join(cluster.state, "logs", "controller.log")).read()
    assert re.search(r"container shop/crasher/main exited with status 3; restarting in \d+s", ctl_log)
    row = poll(lambda: (lambda p: p if p and p["STATUS"] == "Completed" else None)(cluster.pods().get("oneshot")),
               what="oneshot Completed")
    assert row["RESTARTS"] == "0" and row["READY"] == "0/1"
    assert cluster.api("Pod", "shop", "oneshot")["status"]["phase"] == "Succeeded"
    cluster.run("delete", "-f", path)


def test_readiness_probe_failing_then_passing(cluster, tmpdir_m):
    marker = "/tmp/zmesh-uptest-ready-%04x" % random.randrange(1 << 16)
    path = write(tmpdir_m, "probe.yaml", """\
        apiVersion: v1
        kind: Pod
        metadata: {name: probed, namespace: shop}
        spec:
          containers:
          - name: main
            command: ["sleep", "3600"]
            readinessProbe:
              exec: {command: ["test", "-f", "%s"]}
              periodSeconds: 1
              failureThreshold: 1
          - name: nolistener
            command: ["sleep", "3600"]
            readinessProbe: {tcpSocket: {port: 6553}, periodSeconds: 1}
        """ % marker)
    try:
        cluster.run("apply", "-f", path)
        poll(lambda: (cluster.pods().get("probed") or {}).get("STATUS") == "Running", what="probed running")
        time.sleep(3)  # several probe periods: it must stay not ready
        row = cluster.pods()["probed"]
        assert row["READY"] == "0/2", row
        assert {"type": "Ready", "status": "False"} in cluster.api("Pod", "shop", "probed")["status"]["conditions"]
        open(marker, "w").close()
        poll(lambda: cluster.pods()["probed"]["READY"] == "1/2", what="the exec probe to pass")
        cs = {c["name"]: c for c in cluster.api("Pod", "shop", "probed")["status"]["containerStatuses"]}
        assert cs["main"]["ready"] is True and cs["nolistener"]["ready"] is False
    finally:
        if os.path.exists(marker):
            os.unlink(marker)
        cluster.run("delete", "pod", "probed", "-n", "shop", check=False)


def test_label_namespace_updates_the_object(cluster):
    # The sample starts unlabelled: enrol, then take the label away again (the sample's state for later tests).
    assert all(p["MODE"] == "none" for p in cluster.pods().values())
    r = cluster.run("label", "ns", "shop", "istio.io/dataplane-mode=ambient")
    assert "namespace/shop labeled" in r.stdout
    assert cluster.api("Namespace", "", "shop")["metadata"]["labels"]["istio.io/dataplane-mode"] == "ambient"
    assert all(p["MODE"] == "ambient" for p in cluster.pods().values())
    # kubectl's rule: a different value needs --overwrite.
    r = cluster.run("label", "ns", "shop", "istio.io/dataplane-mode=none", check=False)
    assert r.returncode == 1 and "--overwrite" in r.stderr
    r = cluster.run("label", "ns", "shop", "istio.io/dataplane-mode-")
    assert "namespace/shop labeled" in r.stdout
    assert "istio.io/dataplane-mode" not in cluster.api("Namespace", "", "shop")["metadata"].get("labels", {})
    assert all(p["MODE"] == "none" for p in cluster.pods().values())
    r = cluster.run("label", "ns", "nosuchns", "a=b", check=False)
    assert r.returncode == 1 and "not found" in r.stderr


def test_second_up_on_the_same_state_is_refused(cluster):
    r = cluster.run("up", SAMPLE, "--prefix", cluster.prefix + "x", "--no-mesh", check=False)
    assert r.returncode == 1 and "a cluster is already up in %s" % cluster.state in r.stderr, r.stderr
    assert len(cluster.pods()) == 4


def test_zz_down_removes_everything(cluster):
    pods_netns = cluster.netns()
    assert len(pods_netns) >= 6  # 2 nodes + 4 pods
    r = cluster.down()
    assert r.returncode == 0, r.stderr
    assert "removed" in r.stdout
    cluster.assert_gone()


# ---- other clusters --------------------------------------------------------------------------------------------

def test_bad_manifests_name_file_and_field(tmpdir_m):
    write(tmpdir_m, "a.yaml", """\
        apiVersion: v1
        kind: Pod
        metadata: {name: good}
        spec:
          containers: [{name: c, command: ["true"]}]
        """)
    write(tmpdir_m, "b.yaml", """\
        apiVersion: v1
        kind: Pod
        metadata: {name: ok}
        spec:
          containers: [{name: c, command: ["true"]}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: bad}
        spec:
          containers:
          - name: c
            command: "sleep 10"
        """)
    write(tmpdir_m, "c.yaml", """\
        apiVersion: v1
        kind: Pod
        metadata: {name: probe}
        spec:
          containers:
          - name: c
            command: ["sleep", "1"]
            readinessProbe: {tcpSocket: {port: nosuch}}
        """)
    c = Cluster(tmpdir_m)
    try:
        r = c.up(check=False)
        assert r.returncode == 1
        assert "b.yaml#2: spec.containers[0].command: expected a list of strings" in r.stderr, r.stderr
        assert 'c.yaml#1: spec.containers[0].readinessProbe.tcpSocket: port: "nosuch" names no port' in r.stderr
        assert "nothing was started" in r.stderr
        assert not c.bridge_exists() and c.netns() == [] and not os.path.exists(c.state)
    finally:
        _force_cleanup(c)


def test_up_timeout_names_what_is_not_ready(tmpdir_m):
    write(tmpdir_m, "p.yaml", """\
        apiVersion: v1
        kind: Pod
        metadata: {name: never}
        spec:
          containers:
          - name: c
            command: ["sleep", "3600"]
            readinessProbe: {tcpSocket: {port: 6553}, periodSeconds: 1, failureThreshold: 1}
        """)
    c = Cluster(tmpdir_m, nodes=1)
    try:
        p = subprocess.run([c.zmesh, "up", tmpdir_m, "--state-dir", c.state, "--prefix", c.prefix, "--node-subnet",
                            c.node_subnet, "--pod-subnet", c.pod_subnet, "--no-mesh", "--timeout", "4s"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 1
        assert "the cluster is not ready after 4s" in p.stderr, p.stderr
        assert re.search(r"pod default/never \(node node1\): Running, container c not ready: readiness probe failed",
                         p.stderr), p.stderr
        assert "left up for inspection" in p.stderr
        assert c.pods()["never"]["READY"] == "0/1"
        assert c.down().returncode == 0
        c.assert_gone()
    finally:
        _force_cleanup(c)


def test_mesh_components_supervised_and_kill9_then_down(tmpdir_m):
    """With the mesh on, zmeshd, and per node a ztunnel and an agent, are started from their command lines; while
    they cannot run yet they are restarted with backoff (logged) and the pods still come up. Then the controller is
    killed with SIGKILL and `zmesh down` still removes everything from the record."""
    write(tmpdir_m, "p.yaml", """\
        apiVersion: v1
        kind: Node
        metadata: {name: alpha}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web}
        spec:
          containers:
          - name: web
            command: ["python3", "-m", "http.server", "8000"]
            readinessProbe: {httpGet: {path: /, port: 8000}, periodSeconds: 1}
        """)
    c = Cluster(tmpdir_m, mesh=True)
    try:
        c.up()
        rows = c.pods()
        assert rows["web"]["READY"] == "1/1" and rows["web"]["NODE"] == "alpha"
        logs = os.path.join(c.state, "logs")
        for comp in ("ztunnel-alpha", "agent-alpha"):
            def supervised():
                text = open(os.path.join(logs, comp + ".log")).read() if os.path.exists(
                    os.path.join(logs, comp + ".log")) else ""
                return "restarting with backoff" in text or "ready true" in open(
                    os.path.join(logs, "controller.log")).read()
            poll(supervised, what="%s started and supervised" % comp)
        assert c.run("logs", "ztunnel/alpha").returncode == 0
        assert "manifests loaded" in c.run("logs", "zmeshd").stdout
        pid = int(open(os.path.join(c.state, "controller.pid")).read().split()[0])
        os.kill(pid, signal.SIGKILL)
        poll(lambda: not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z",
             what="the controller gone")
        assert c.processes(), "zmeshd and the pod should outlive the controller"
        r = c.down()
        assert r.returncode == 0, r.stderr
        assert "not running" in r.stdout
        c.assert_gone()
    finally:
        _force_cleanup(c)
