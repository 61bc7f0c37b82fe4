"""`zmesh waypoint` (istioctl's command) on a real `zmesh up` with the mesh on, and the cluster's waypoint
deployment controller (istiod's): docs/waypoint.md.

One cluster serves the module: namespace `wp` labelled ambient with one pod `app` (the positive control for
capture), and as its waypoint binary a stand-in that exits 1 at once (what build/bin/waypoint did before the data
path landed), so the waypoint never becomes ready whatever the real binary does. `zmesh waypoint apply -n wp
--enroll-namespace` makes the Gateway, and the controller its ServiceAccount, Service (a ClusterIP, ports
status-port 15021 and mesh 15008) and one waypoint pod (labels, env, the minted token, the readiness probe), which
ztunnel does not capture (`istio.io/dataplane-mode: none`: no in-pod rules, no ZDS add) although its namespace is
ambient. Not ready, `list` shows PROGRAMMED False, `status` istiod's conditions, `get gateways` no address, and
`--wait` times out with istioctl's error. A re-apply keeps the pod and leaves the Gateway's file alone while the
pod crash-loops; a bad waypoint Gateway is refused naming the field; a Gateway of another class is stored with
nothing made; a deleted waypoint pod is replaced; `delete` removes the four objects.

The ready path (--wait succeeds, PROGRAMMED True, addresses, a replaced pod) is becomes_ready(), run on a second
cluster: test_ready_path_with_a_readiness_standin with a stand-in that answers only /healthz/ready (today), and
test_waypoint_becomes_ready with the real build/bin/waypoint. test_service_waypoint_bound_condition (a third
cluster, readiness stand-in) checks the istio.io/WaypointBound condition the controller writes on Services.

Addresses of its own: prefix uw<hex>, state /run/zmesh-upwp-<hex>, nodes 172.27.<o>.0/24, pods 10.<o>.0.0/16 with
o in 60..99 (test_up.py uses 172.31/10.150-249, test_up_mesh.py 172.28/10.110-140, the demo 172.29/10.100-149).
"""
import base64
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest

from test_up import Cluster, _force_cleanup, poll

NS = "wp"
MANAGED = {"gateway.istio.io/managed": "istio.io-mesh-controller",
           "gateway.networking.k8s.io/gateway-name": "waypoint"}


# Stand-ins for the waypoint binary, so each test knows what its waypoint does whatever build/bin/waypoint is today:
# one that exits at once as today's placeholder does (CrashLoopBackOff: its pod keeps changing, never Ready), one
# that answers only the readiness probe.
NEVER_READY = """#!/bin/sh
echo "waypoint stand-in: exits 1" >&2
exit 1
"""
READY_STANDIN = """#!/usr/bin/python3
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz/ready" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("0.0.0.0", 15021), H).serve_forever()
"""


def bin_dir_with(waypoint_script):
    """A --bin-dir: the real binaries linked, `waypoint` the given script."""
    real = os.path.dirname(os.path.abspath(_zmesh()))
    d = tempfile.mkdtemp(prefix="zmesh-upwp-bin-")
    for b in ("zmesh", "zmeshd", "ztunnel", "zmesh-cni"):
        os.symlink(os.path.join(real, b), os.path.join(d, b))
    with open(os.path.join(d, "waypoint"), "w") as f:
        f.write(waypoint_script)
    os.chmod(os.path.join(d, "waypoint"), 0o755)
    return d


def _zmesh():
    from test_up import zmesh_bin
    return zmesh_bin()


class WaypointCluster(Cluster):
    def __init__(self, manifests_dir, bin_dir):
        super().__init__(manifests_dir, mesh=True)
        self.bin_dir = bin_dir
        tag = "%04x" % random.randrange(1 << 16)
        self.prefix = "uw" + tag
        self.state = "/run/zmesh-upwp-" + tag
        octet = random.randrange(60, 100)
        self.node_subnet = "172.27.%d.0" % octet
        self.pod_subnet = "10.%d.0.0" % octet
        self.host_ip = "172.27.%d.1" % octet

    def up(self, check=True):
        args = ["up", self.manifests, "--prefix", self.prefix, "--node-subnet", self.node_subnet,
                "--pod-subnet", self.pod_subnet, "--timeout", "60s", "--bin-dir", self.bin_dir]
        self.up_result = self.run(*args, check=check, timeout=120)
        return self.up_result

    def wp(self, *args, timeout=120):
        return self.run("waypoint", *args, check=False, timeout=timeout)

    def api_all(self, kind, ns):
        prefix = "%s_%s_" % (kind.lower(), ns)
        out = []
        for f in sorted(os.listdir(os.path.join(self.state, "api"))):
            if f.startswith(prefix) and f.endswith(".json"):
                with open(os.path.join(self.state, "api", f)) as fh:
                    out.append(json.load(fh))
        return out

    def managed_pods(self, gw="waypoint"):
        return [p for p in self.api_all("Pod", NS)
                if p["metadata"].get("labels", {}).get("gateway.networking.k8s.io/gateway-name") == gw]

    def log(self, name):
        try:
            with open(os.path.join(self.state, "logs", name + ".log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""


@pytest.fixture(scope="module")
def cluster():
    d = tempfile.mkdtemp(prefix="zmesh-upwp-m-")
    with open(os.path.join(d, "wp.yaml"), "w") as f:
        f.write("apiVersion: v1\nkind: Namespace\nmetadata: {name: %s, labels: {istio.io/dataplane-mode: ambient}}\n"
                "---\napiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: %s, labels: {app: app}}\n"
                "spec:\n  nodeName: node1\n  terminationGracePeriodSeconds: 1\n"
                "  containers:\n  - name: app\n    command: [sleep, '100000']\n" % (NS, NS))
    b = bin_dir_with(NEVER_READY)
    c = WaypointCluster(d, b)
    try:
        c.up()
        yield c
    finally:
        _force_cleanup(c)
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(b, ignore_errors=True)


def env_of(pod):
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


def table(text):
    lines = text.splitlines()
    head = re.split(r"\s{2,}", lines[0].strip())
    return head, [re.split(r"\s{2,}", l.strip()) for l in lines[1:]]


def test_apply_makes_gateway_serviceaccount_service_pod(cluster):
    p = cluster.wp("apply", "-n", NS, "--enroll-namespace")
    assert p.returncode == 0, p.stdout + p.stderr
    # The namespace is ambient: no warning; istioctl's two lines.
    assert p.stdout == ('✅ waypoint wp/waypoint applied\n'
                        '✅ namespace wp labeled with "istio.io/use-waypoint: waypoint"\n'), p.stdout
    gw = cluster.api("Gateway", NS, "waypoint")
    assert gw["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert gw["spec"] == {"gatewayClassName": "istio-waypoint",
                          "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
    assert "istio.io/waypoint-for" not in gw["metadata"].get("labels", {})  # istioctl: only with --for
    ns = cluster.api("Namespace", "", NS)
    assert ns["metadata"]["labels"]["istio.io/use-waypoint"] == "waypoint"

    sa = cluster.api("ServiceAccount", NS, "waypoint")
    assert sa, "no ServiceAccount made"
    for k, v in MANAGED.items():
        assert sa["metadata"]["labels"][k] == v
    assert sa["metadata"]["ownerReferences"][0]["uid"] == gw["metadata"]["uid"]

    svc = cluster.api("Service", NS, "waypoint")
    assert svc, "no Service made"
    for k, v in MANAGED.items():
        assert svc["metadata"]["labels"][k] == v
    assert svc["spec"]["selector"] == {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    assert [(x["name"], x["port"], x["appProtocol"]) for x in svc["spec"]["ports"]] == \
        [("status-port", 15021, "tcp"), ("mesh", 15008, "hbone")]
    assert svc["spec"]["clusterIP"].startswith("10.96."), svc["spec"]

    pods = poll(lambda: cluster.managed_pods(), timeout=10, what="the waypoint pod in api/")
    assert len(pods) == 1, [x["metadata"]["name"] for x in pods]
    pod = pods[0]
    name = pod["metadata"]["name"]
    assert re.fullmatch(r"waypoint-[bcdfghjklmnpqrstvwxz2456789]{10}-[bcdfghjklmnpqrstvwxz2456789]{5}", name), name
    labels = pod["metadata"]["labels"]
    for k, v in dict(MANAGED, **{"istio.io/dataplane-mode": "none", "sidecar.istio.io/inject": "false",
                                 "service.istio.io/canonical-name": "waypoint"}).items():
        assert labels[k] == v, (k, labels)
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "waypoint"
    node = spec["nodeName"]
    assert node in ("node1", "node2")
    c = spec["containers"][0]
    assert c["command"] == [os.path.join(cluster.bin_dir, "waypoint")]
    assert c["readinessProbe"]["httpGet"]["port"] == 15021
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz/ready"
    env = env_of(pod)
    xds = "https://%s:15012" % cluster.host_ip
    root = os.path.join(cluster.state, "zmeshd", "root-cert.pem")
    want = {"XDS_ADDRESS": xds, "CA_ADDRESS": xds, "XDS_ROOT_CA": root, "CA_ROOT_CA": root,
            "ALT_XDS_HOSTNAME": "istiod.istio-system.svc", "ALT_CA_HOSTNAME": "istiod.istio-system.svc",
            "POD_NAME": name, "POD_NAMESPACE": NS, "SERVICE_ACCOUNT": "waypoint", "NODE_NAME": node,
            "TRUST_DOMAIN": "cluster.local", "CLUSTER_ID": "Kubernetes", "GATEWAY_NAME": "waypoint"}
    for k, v in want.items():
        assert env.get(k) == v, (k, env.get(k), v)
    # The token: the pod's own service account, bound to the pod (name and uid) and its node.
    with open(env["AUTH_TOKEN"]) as f:
        payload = f.read().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == "system:serviceaccount:wp:waypoint"
    k8s = claims["kubernetes.io"]
    assert k8s["pod"] == {"name": name, "uid": pod["metadata"]["uid"]}
    assert k8s["node"]["name"] == node
    # `zmesh get pods` shows it like any other pod, outside the mesh.
    rows = cluster.pods()
    assert rows[name]["NODE"] == node and rows[name]["MODE"] == "none", rows[name]


def test_waypoint_pod_is_not_captured(cluster):
    pod = cluster.managed_pods()[0]
    name, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
    agent = "agent-" + node
    poll(lambda: re.search(r'CNI add.*name="%s"' % re.escape(name), cluster.log(agent)), timeout=30,
         what="the agent's CNI add of %s" % name)
    # The positive control: the app pod of the same (ambient) namespace is added to the mesh.
    poll(lambda: re.search(r'sending pod add to ztunnel.*name="app"', cluster.log("agent-node1")), timeout=30,
         what="app's ZDS add")
    time.sleep(1)
    log = cluster.log(agent)
    assert not re.search(r'adding pod to the mesh.*name="%s"' % re.escape(name), log), log
    assert not re.search(r'sending pod add to ztunnel.*name="%s"' % re.escape(name), log), log
    rules = subprocess.run(["ip", "netns", "exec", "%s-%s_%s" % (cluster.prefix, NS, name), "iptables-save"],
                           capture_output=True, text=True).stdout
    assert "ISTIO" not in rules, rules
    app_rules = subprocess.run(["ip", "netns", "exec", "%s-%s_app" % (cluster.prefix, NS), "iptables-save"],
                               capture_output=True, text=True).stdout
    assert "ISTIO" in app_rules


def test_list_and_status_while_not_programmed(cluster):
    p = cluster.wp("list", "-n", NS)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ("NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n"
                        "waypoint     default      none             False\n"), p.stdout
    p = cluster.wp("list", "-A")
    assert p.stdout.splitlines()[0].split()[0] == "NAMESPACE"
    assert table(p.stdout)[1] == [["wp", "waypoint", "default", "none", "False"]]
    p = cluster.wp("status", "-n", NS)
    assert p.returncode == 0, p.stderr
    head, rows = table(p.stdout)
    assert head == ["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]
    assert rows == [["waypoint", "True", "Accepted", "Accepted", "Resource accepted"],
                    ["waypoint", "False", "Programmed", "AddressNotAssigned",
                     'Failed to assign to any requested addresses: no instances found for hostname '
                     '"waypoint.wp.svc.cluster.local"']], rows
    gw = cluster.api("Gateway", NS, "waypoint")
    assert "addresses" not in gw["status"]
    head, rows = table(cluster.run("get", "gateways", "-n", NS).stdout)
    assert head == ["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"]
    assert rows[0][:3] == ["waypoint", "istio-waypoint", "False"], rows  # no ADDRESS: the cell is empty
    # The stand-in never answers /healthz/ready: --wait gives istioctl's error, exit 1.
    t0 = time.monotonic()
    p = cluster.wp("apply", "-n", NS, "-w", "--waypoint-timeout", "2s")
    assert p.returncode == 1
    assert 1.5 < time.monotonic() - t0 < 30
    assert p.stdout == "✅ waypoint wp/waypoint applied\n", p.stdout
    assert "Error: timed out while waiting for waypoint\twp/waypoint" in p.stderr, p.stderr
    p = cluster.wp("status", "-n", NS, "-w", "--waypoint-timeout", "1s")
    assert p.returncode == 1
    assert "timed out while retrieving status for waypoint\twp/waypoint" in p.stderr, p.stderr


def test_reapply_keeps_the_pod_and_the_gateway_file(cluster):
    before = cluster.managed_pods()[0]["metadata"]["name"]
    path = os.path.join(cluster.state, "api", "gateway_%s_waypoint.json" % NS)
    m0 = os.stat(path).st_mtime_ns
    p = cluster.wp("apply", "-n", NS)
    assert p.returncode == 0, p.stderr
    # The crash-looping pod keeps changing; its Gateway's status does not, so the file is not rewritten.
    time.sleep(3)
    assert os.stat(path).st_mtime_ns == m0
    assert [x["metadata"]["name"] for x in cluster.managed_pods()] == [before]
    # As istioctl's server-side apply: --for sets the label, a later apply without it leaves it; the pod stays.
    assert cluster.wp("apply", "-n", NS, "--for", "workload").returncode == 0
    assert cluster.api("Gateway", NS, "waypoint")["metadata"]["labels"]["istio.io/waypoint-for"] == "workload"
    assert cluster.wp("apply", "-n", NS).returncode == 0
    assert table(cluster.wp("list", "-n", NS).stdout)[1] == [["waypoint", "default", "workload", "False"]]
    assert [x["metadata"]["name"] for x in cluster.managed_pods()] == [before]
    # --enroll-namespace on a namespace that has a waypoint: istioctl's warning, nothing applied.
    p = cluster.wp("apply", "-n", NS, "--name", "other", "--enroll-namespace")
    assert p.returncode == 0
    assert "already has an enrolled Waypoint" in p.stdout
    assert cluster.api("Gateway", NS, "other") is None


def test_other_class_is_stored_and_nothing_made(cluster):
    d = tempfile.mkdtemp(prefix="zmesh-upwp-gw-")
    try:
        with open(os.path.join(d, "gw.yaml"), "w") as f:
            f.write("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n"
                    "metadata: {name: ingress, namespace: wp}\n"
                    "spec:\n  gatewayClassName: istio\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n")
        p = cluster.run("apply", "-f", d)
        assert "gateway/ingress created" in p.stdout
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert cluster.api("Gateway", NS, "ingress")["spec"]["gatewayClassName"] == "istio"
    assert cluster.api("Service", NS, "ingress") is None
    assert cluster.api("ServiceAccount", NS, "ingress") is None
    assert cluster.managed_pods("ingress") == []
    assert cluster.log("controller").count('class "istio" has no controller') == 1
    # Not a waypoint: list and delete leave it out.
    assert "ingress" not in cluster.wp("list", "-n", NS).stdout
    p = cluster.wp("delete", "ingress", "-n", NS)
    assert p.stdout == "waypoint wp/ingress not found\n"
    assert cluster.api("Gateway", NS, "ingress") is not None


def test_a_bad_waypoint_is_refused_naming_the_field(cluster):
    d = tempfile.mkdtemp(prefix="zmesh-upwp-bad-")
    try:
        with open(os.path.join(d, "gw.yaml"), "w") as f:
            f.write("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n"
                    "metadata: {name: badwp, namespace: wp}\n"
                    "spec:\n  gatewayClassName: istio-waypoint\n"
                    "  listeners: [{name: mesh, port: 70000, protocol: HBONE}]\n")
        p = cluster.run("apply", "-f", d, check=False)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert p.returncode == 1
    # zmeshd's manifest reader (which zmesh up checks manifests with) names the file, field and value
    assert 'gw.yaml#1: spec.listeners[0].port: expected a port 1-65535, got "70000"' in p.stderr, p.stderr
    assert cluster.api("Gateway", NS, "badwp") is None
    assert cluster.managed_pods("badwp") == []


def test_a_deleted_waypoint_pod_is_replaced(cluster):
    old = cluster.managed_pods()[0]["metadata"]["name"]
    p = cluster.run("delete", "pod", old, "-n", NS)
    assert 'pod "%s" deleted' % old in p.stdout
    # As its Deployment would: a new pod (a new name, a new token) for the Gateway that still exists.
    pods = poll(lambda: [x for x in cluster.managed_pods() if x["metadata"]["name"] != old], timeout=10,
                what="a replacement waypoint pod")
    assert len(cluster.managed_pods()) == 1
    assert os.path.exists(env_of(pods[0])["AUTH_TOKEN"])


def test_delete_removes_what_the_gateway_made(cluster):
    pod = cluster.managed_pods()[0]
    name = pod["metadata"]["name"]
    token = env_of(pod)["AUTH_TOKEN"]
    p = cluster.wp("delete", "waypoint", "nope", "-n", NS)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "waypoint wp/nope not found\nwaypoint wp/waypoint deleted\n", p.stdout
    for kind in ("Gateway", "ServiceAccount", "Service"):
        assert cluster.api(kind, NS, "waypoint") is None, kind
    assert cluster.api("Pod", NS, name) is None
    assert "%s-%s_%s" % (cluster.prefix, NS, name) not in cluster.netns()
    assert not os.path.exists(token)
    assert cluster.api("Pod", NS, "app") is not None
    p = cluster.wp("list", "-n", NS)
    assert p.stdout == "No waypoints found.\n" or p.stdout.splitlines()[1:] == [], p.stdout


def becomes_ready(cluster):
    """The ready path: --wait succeeds, PROGRAMMED True, istiod's addresses and message; the pod deleted, the
    addresses go until its replacement is ready."""
    p = cluster.wp("apply", "-n", NS, "--name", "ready", "-w", "--waypoint-timeout", "60s")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout == "✅ waypoint wp/ready applied\n✅ waypoint wp/ready is ready!\n", p.stdout
    p = cluster.wp("list", "-n", NS)
    assert ["ready", "default", "none", "True"] in table(p.stdout)[1], p.stdout
    gw = cluster.api("Gateway", NS, "ready")
    assert gw["status"]["addresses"] == [{"type": "Hostname", "value": "ready.wp.svc.cluster.local"}]
    prog = [c for c in gw["status"]["conditions"] if c["type"] == "Programmed"][0]
    assert prog["status"] == "True" and prog["reason"] == "Programmed"
    assert prog["message"] == "Resource programmed, assigned to service(s) ready.wp.svc.cluster.local:15008"
    rows = table(cluster.run("get", "gateways", "-n", NS).stdout)[1]
    assert ["ready", "istio-waypoint", "ready.wp.svc.cluster.local", "True"] in [r[:4] for r in rows], rows
    p = cluster.wp("status", "-n", NS, "--name", "ready", "-w", "--waypoint-timeout", "10s")
    assert p.returncode == 0, p.stderr
    assert table(p.stdout)[1][1][:3] == ["ready", "True", "Programmed"], p.stdout
    pod = cluster.managed_pods("ready")[0]["metadata"]["name"]
    cluster.run("delete", "pod", pod, "-n", NS)
    assert "addresses" not in cluster.api("Gateway", NS, "ready")["status"]
    poll(lambda: "addresses" in cluster.api("Gateway", NS, "ready")["status"], timeout=60,
         what="addresses back with the replacement pod")
    assert cluster.managed_pods("ready")[0]["metadata"]["name"] != pod
    assert cluster.wp("delete", "ready", "-n", NS).returncode == 0


def other_cluster(cluster, bin_dir):
    """A second cluster of the module's manifests, on addresses of its own."""
    c = WaypointCluster(cluster.manifests, bin_dir)
    while c.node_subnet == cluster.node_subnet:
        c = WaypointCluster(cluster.manifests, bin_dir)
    return c


def test_waypoint_becomes_ready(cluster):
    """The real build/bin/waypoint becomes ready in zmesh up: Programmed, addresses set, --wait succeeds."""
    c = other_cluster(cluster, os.path.dirname(cluster.zmesh))
    try:
        c.up()
        becomes_ready(c)
    finally:
        _force_cleanup(c)


def test_ready_path_with_a_readiness_standin(cluster):
    """The controller's ready path (status, addresses, --wait, replacement) today, whatever the binary is."""
    d = bin_dir_with(READY_STANDIN)
    c = None
    try:
        c = other_cluster(cluster, d)
        c.up()
        becomes_ready(c)
    finally:
        if c:
            _force_cleanup(c)
        shutil.rmtree(d, ignore_errors=True)


BOUND = "istio.io/WaypointBound"


def _svc(name, labels):
    return ("---\napiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: %s, labels: {%s}}\n"
            "spec: {selector: {app: app}, ports: [{port: 80, targetPort: 8080}]}\n" % (name, NS, labels))


def _bound(c, name):
    o = c.api("Service", NS, name) or {}
    found = [x for x in o.get("status", {}).get("conditions", []) if x.get("type") == BOUND]
    assert len(found) <= 1, o
    return found[0] if found else None


def _wait_bound(c, name, status, reason, message):
    want = (status, reason, message)
    return poll(lambda: (lambda x: x if x and (x["status"], x["reason"], x["message"]) == want else None)(
        _bound(c, name)), timeout=30, what="service %s: %s %r (now %r)" % (name, BOUND, want, _bound(c, name)))


def test_service_waypoint_bound_condition(cluster):
    """istiod's status writer for Services (istio/istio pilot/pkg/model/service.go ServiceInfo.GetConditions,
    pilot/pkg/serviceregistry/ambient/status.go): the controller writes istio.io/WaypointBound on each Service
    that asks for a waypoint, with istiod's reasons and messages, from zmeshd's binding code; it follows label
    changes (re-applied Services, the namespace's label), goes when a Service opts out, survives an unchanged
    apply, and zmeshd's /debug/waypointz says the same."""
    d = bin_dir_with(READY_STANDIN)
    m = tempfile.mkdtemp(prefix="zmesh-upwp-svc-")
    with open(os.path.join(m, "wp.yaml"), "w") as f:
        f.write("apiVersion: v1\nkind: Namespace\nmetadata: {name: %s, labels: {istio.io/dataplane-mode: ambient}}\n"
                % NS)
    c = WaypointCluster(m, d)
    while c.node_subnet == cluster.node_subnet:
        c = WaypointCluster(m, d)
    try:
        c.up()
        for args in (("--name", "bwp"), ("--name", "wlwp", "--for", "workload")):
            p = c.wp("apply", "-n", NS, *args, "-w", "--waypoint-timeout", "60s")
            assert p.returncode == 0, p.stdout + p.stderr
        f = os.path.join(m, "svc.yaml")
        with open(f, "w") as fh:
            fh.write(_svc("bound", "istio.io/use-waypoint: bwp") + _svc("lost", "istio.io/use-waypoint: nope")
                     + _svc("wsvc", "istio.io/use-waypoint: wlwp") + _svc("plain", ""))
        c.run("apply", "-f", f)
        first = _wait_bound(c, "bound", "True", "WaypointAccepted", "Successfully attached to waypoint wp/bwp")
        # The label names a waypoint that does not exist: istiod's reason for it.
        _wait_bound(c, "lost", "False", "WaypointIsNotReady", 'waypoint "wp/nope" is not ready')
        # waypoint-for: workload excludes Services.
        _wait_bound(c, "wsvc", "False", "UnsupportedTrafficType",
                    'attempting to bind to traffic type "service" which the waypoint "wp/wlwp" does not support')
        # Asks for nothing: no condition, no status at all; nor on the waypoints' own Services.
        assert "status" not in c.api("Service", NS, "plain")
        assert _bound(c, "bwp") is None and _bound(c, "wlwp") is None
        assert set(first) == {"type", "status", "lastTransitionTime", "reason", "message"}, first
        # The kubectl-like view shows it.
        items = json.loads(c.run("get", "services", "bound", "-n", NS, "-o", "json").stdout)["items"]
        assert items[0]["status"]["conditions"] == [first]
        # zmeshd computes the same from the same objects (once it has reloaded them).
        def zmeshd_conds():
            wz = json.load(urllib.request.urlopen("http://%s:15014/debug/waypointz" % c.host_ip, timeout=10))
            return {b["name"]: b["condition"] for b in wz["bindings"] if b["kind"] == "Service"}
        conds = poll(lambda: (lambda x: x if "bound" in x else None)(zmeshd_conds()), timeout=30,
                     what="zmeshd's /debug/waypointz with the Services")
        assert conds["bound"] == {k: first[k] for k in ("type", "status", "reason", "message")}, conds
        assert conds["lost"]["reason"] == "WaypointIsNotReady" and "plain" not in conds, conds
        # An unchanged apply keeps the condition (status is the controllers'): unchanged, not rewritten.
        p = c.run("apply", "-f", f)
        assert "service/bound unchanged" in p.stdout, p.stdout
        time.sleep(1)
        assert _bound(c, "bound") == first

        # Relabelled: bound opts out (the condition goes, and the status with it), lost now names bwp.
        with open(f, "w") as fh:
            fh.write(_svc("bound", "istio.io/use-waypoint: none") + _svc("lost", "istio.io/use-waypoint: bwp")
                     + _svc("wsvc", "istio.io/use-waypoint: wlwp") + _svc("plain", ""))
        c.run("apply", "-f", f)
        poll(lambda: c.api("Service", NS, "bound") and "status" not in c.api("Service", NS, "bound"), timeout=30,
             what="bound's condition removed (now %r)" % _bound(c, "bound"))
        flipped = _wait_bound(c, "lost", "True", "WaypointAccepted", "Successfully attached to waypoint wp/bwp")
        assert flipped["lastTransitionTime"] >= first["lastTransitionTime"]
        # The namespace's label: plain (no label of its own) is bound through it; bound's own "none" still wins.
        c.run("label", "ns", NS, "istio.io/use-waypoint=bwp")
        _wait_bound(c, "plain", "True", "WaypointAccepted", "Successfully attached to waypoint wp/bwp")
        assert _bound(c, "bound") is None
        # The waypoint deleted: what named it is no longer bound, with istiod's reason.
        assert c.wp("delete", "bwp", "-n", NS).returncode == 0
        _wait_bound(c, "lost", "False", "WaypointIsNotReady", 'waypoint "wp/bwp" is not ready')
        _wait_bound(c, "plain", "False", "WaypointIsNotReady", 'waypoint "wp/bwp" is not ready')
        log = c.log("controller")
        assert ("service/lost in namespace wp: istio.io/WaypointBound False (WaypointIsNotReady: "
                'waypoint "wp/bwp" is not ready)') in log, log[-3000:]
        assert "service/bound in namespace wp: istio.io/WaypointBound removed" in log
    finally:
        _force_cleanup(c)
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(m, ignore_errors=True)
