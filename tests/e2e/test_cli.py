"""`zmesh ztunnel-config` against live ztunnels (src/cli/, istioctl's views: istio/istio
istioctl/pkg/writer/ztunnel/configdump/), run inside a pod's network namespace as a user would.

Two nodes of two pods; n1p1 and n2p1 are meshed. The config has two services (web, with endpoints n2p1
(Healthy) and n2p2 (Unhealthy); wp, a waypoint's service) and two policies; n1p2 names wp as its waypoint."""
import json
import os
import subprocess

import pytest

from helpers import Mesh, http_request, wait_for
from topo import Topology

WEB = {"name": "web", "namespace": "default", "hostname": "web.default.svc.cluster.local",
       "vips": ["/10.96.0.20"], "ports": {80: 8080}}
WP = {"name": "wp", "namespace": "default", "hostname": "wp.default.svc.cluster.local",
      "vips": ["/10.96.0.30"], "ports": {15008: 15008}}
POLICIES = [
    {"name": "deny-nowhere", "namespace": "default", "scope": "WorkloadSelector", "action": "Deny",
     "rules": [[[{"namespaces": [{"Exact": "nowhere"}]}]]]},
    {"name": "allow-default", "namespace": "default", "scope": "Namespace", "action": "Allow",
     "rules": [[[{"namespaces": [{"Exact": "default"}]}]]]},
]
WEB_KEY = "default/web.default.svc.cluster.local"
WL_COLUMNS = ["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"]


@pytest.fixture(scope="module")
def zmesh_bin():
    path = os.path.join(Topology.bin_dir(), "zmesh")
    if not os.access(path, os.X_OK):
        pytest.skip("no zmesh binary at %s (run make all)" % path)
    return path


@pytest.fixture(scope="module")
def mesh(ztunnel_bin, zmesh_bin):
    m = Mesh(nodes=2, pods=2, meshed=["n1p1", "n2p1"], services=[WEB, WP], policies=POLICIES,
             workload_extra={
                 "n2p1": {"services": {WEB_KEY: {80: 8080}}},
                 "n2p2": {"services": {WEB_KEY: {80: 8080}}, "status": "Unhealthy"},
                 "n1p2": {"waypoint": {"destination": "default/wp.default.svc.cluster.local",
                                       "hboneMtlsPort": 15008}},
             })
    try:
        m.up()
        yield m
    finally:
        m.down()


def zmesh(bin_, pod, *args):
    """Runs zmesh inside pod's network namespace; returns the CompletedProcess (text)."""
    return subprocess.run(["ip", "netns", "exec", pod.netns, bin_] + list(args), capture_output=True,
                          text=True, timeout=30)


def table(text, names):
    """Rows of a tabwriter table as dicts keyed by the header names, which must be the header line's, in
    order (names hold single spaces, as "POD NAME", so columns are found by where each name starts)."""
    lines = text.rstrip("\n").split("\n")
    starts, i = [], 0
    for n in names:
        i = lines[0].find(n, i)
        assert i >= 0, "header %r has no %r" % (lines[0], n)
        starts.append(i)
        i += len(n)
    assert " ".join(names) == " ".join(lines[0].split()), lines[0]
    rows = []
    for line in lines[1:]:
        cells = [line[s:(starts[k + 1] if k + 1 < len(starts) else None)].strip() for k, s in enumerate(starts)]
        rows.append(dict(zip(names, cells)))
    return rows


def config_dump(pod):
    status, _, body = http_request(pod.netns, "127.0.0.1", 15000, "/config_dump")
    assert status == 200, (status, body[:300])
    return json.loads(body)


def available_dump(pod):
    """The dump once pod's certificate is Available (it is fetched after start-up)."""
    def ready():
        d = config_dump(pod)
        return d if any(c["identity"] == pod.spiffe and c["state"] == "Available" for c in d["certificates"]) \
            else None
    d = wait_for(ready, timeout=10)
    assert d, "no Available certificate for %s" % pod.spiffe
    return d


def test_workloads_table(mesh, zmesh_bin):
    r = zmesh(zmesh_bin, mesh.pod("n1p1"), "ztunnel-config", "workloads")
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout, WL_COLUMNS)
    # Sorted by namespace.name; every pod of the config, with its IP, node and HBONE.
    assert [row["POD NAME"] for row in rows] == ["n1p1", "n1p2", "n2p1", "n2p2"], r.stdout
    for row in rows:
        p = mesh.pod(row["POD NAME"])
        assert row == {"NAMESPACE": "default", "POD NAME": p.name, "ADDRESS": p.ip, "NODE": "node%d" % p.node,
                       "WAYPOINT": "wp" if p.name == "n1p2" else "None", "PROTOCOL": "HBONE"}, r.stdout
    # istioctl's alias and singular name, and a filter, give the same rows.
    r2 = zmesh(zmesh_bin, mesh.pod("n1p1"), "zc", "workload", "--workload-node", "node2")
    assert r2.returncode == 0, r2.stderr
    assert [row["POD NAME"] for row in table(r2.stdout, WL_COLUMNS)] == ["n2p1", "n2p2"], r2.stdout


def test_services_table(mesh, zmesh_bin):
    r = zmesh(zmesh_bin, mesh.pod("n2p1"), "ztunnel-config", "services")
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout, ["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"])
    # ENDPOINTS is healthy/total: n2p2 is an endpoint but Unhealthy.
    assert rows == [
        {"NAMESPACE": "default", "SERVICE NAME": "web", "SERVICE VIP": "10.96.0.20", "WAYPOINT": "None",
         "ENDPOINTS": "1/2"},
        {"NAMESPACE": "default", "SERVICE NAME": "wp", "SERVICE VIP": "10.96.0.30", "WAYPOINT": "None",
         "ENDPOINTS": "0/0"},
    ], r.stdout


def test_policies_table(mesh, zmesh_bin):
    r = zmesh(zmesh_bin, mesh.pod("n1p1"), "zc", "policies")
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout, ["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"])
    assert rows == [
        {"NAMESPACE": "default", "POLICY NAME": "allow-default", "ACTION": "Allow", "SCOPE": "Namespace"},
        {"NAMESPACE": "default", "POLICY NAME": "deny-nowhere", "ACTION": "Deny", "SCOPE": "WorkloadSelector"},
    ], r.stdout


def test_certificates_table(mesh, zmesh_bin):
    pod = mesh.pod("n1p1")
    d = available_dump(pod)
    cert = next(c for c in d["certificates"] if c["identity"] == pod.spiffe)
    r = zmesh(zmesh_bin, pod, "zc", "certificates")
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout, ["CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER",
                     "NOT BEFORE"])
    mine = [row for row in rows if row["CERTIFICATE NAME"] == pod.spiffe]
    assert [row["TYPE"] for row in mine] == ["Leaf", "Root"], r.stdout
    leaf, root = mine
    # The serial /config_dump shows in decimal, in istioctl's hex; the validity as the dump says.
    assert leaf["SERIAL NUMBER"] == "%x" % int(cert["certChain"][0]["serialNumber"]), (r.stdout, cert)
    assert leaf["NOT AFTER"] == cert["certChain"][0]["expirationTime"], r.stdout
    assert leaf["NOT BEFORE"] == cert["certChain"][0]["validFrom"], r.stdout
    assert leaf["STATUS"] == "Available" and leaf["VALID CERT"] == "true", r.stdout
    assert root["SERIAL NUMBER"] == "%x" % int(cert["rootCerts"][0]["serialNumber"]), r.stdout
    assert root["VALID CERT"] == "true", r.stdout


def test_all_and_json(mesh, zmesh_bin):
    pod = mesh.pod("n1p1")
    available_dump(pod)
    r = zmesh(zmesh_bin, pod, "zc", "all", "--with-headers")
    assert r.returncode == 0, r.stderr
    for header in ("WORKLOAD INFO", "SERVICE INFO", "POLICY INFO", "SECRET INFO", "CONNECTIONS INFO"):
        assert "\n------ %s ------\n\n" % header in r.stdout, r.stdout
    assert "\ndefault   web          10.96.0.20  None     1/2\n" in r.stdout, r.stdout

    # -o json: the dump's own objects, filtered and sorted as istioctl does.
    r = zmesh(zmesh_bin, pod, "zc", "workloads", "-o", "json")
    assert r.returncode == 0, r.stderr
    wls = json.loads(r.stdout)
    assert sorted(w["name"] for w in wls) == ["n1p1", "n1p2", "n2p1", "n2p2"], r.stdout
    assert {w["name"]: w["protocol"] for w in wls}["n2p1"] == "HBONE"
    r = zmesh(zmesh_bin, pod, "zc", "services", "-o", "json")
    svcs = json.loads(r.stdout)
    assert [s["name"] for s in svcs] == ["web", "wp"], r.stdout
    assert sorted(svcs[0]["endpoints"]) == [mesh.pod("n2p1").uid, mesh.pod("n2p2").uid], svcs[0]
    r = zmesh(zmesh_bin, pod, "zc", "policies", "-o", "json")
    assert [(p["name"], p["action"], p["scope"]) for p in json.loads(r.stdout)] == [
        ("allow-default", "Allow", "Namespace"), ("deny-nowhere", "Deny", "WorkloadSelector")], r.stdout
    r = zmesh(zmesh_bin, pod, "zc", "certs", "-o", "json")
    assert pod.spiffe in [c["identity"] for c in json.loads(r.stdout)], r.stdout
    r = zmesh(zmesh_bin, pod, "zc", "all", "-o", "json", "--address", "127.0.0.1:15000")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert sorted(d) == sorted(config_dump(pod)), sorted(d)


def test_unreachable_admin_and_usage(mesh, zmesh_bin):
    # n1p2 runs no ztunnel: nothing listens on its 127.0.0.1:15000.
    r = zmesh(zmesh_bin, mesh.pod("n1p2"), "zc", "workloads")
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.strip() == (
        "Error: cannot reach ztunnel admin at 127.0.0.1:15000: connection refused; run inside the pod's "
        "network namespace (ip netns exec <pod> zmesh ...) or pass --address"), r.stderr
    # The admin listens on the loopback only: toward another pod's IP the connection is captured by n1p1's
    # ztunnel (in-pod rules), whose tunnel finds nothing on n2p1's 10.0.2.2:15000 and closes it unanswered.
    p = mesh.pod("n2p1")
    r = zmesh(zmesh_bin, mesh.pod("n1p1"), "zc", "policies", "--address", "%s:15000" % p.ip)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.strip() == (
        "Error: GET /config_dump from %s:15000: the connection was closed before any response; no ztunnel admin "
        "answered there (it listens on 127.0.0.1:15000 inside the pod's network namespace)" % p.ip), r.stderr
    r = zmesh(zmesh_bin, mesh.pod("n1p1"), "zc", "nonsense")
    assert r.returncode == 2 and 'unknown subcommand "nonsense"' in r.stderr and "Usage:" in r.stderr, r.stderr
    r = zmesh(zmesh_bin, mesh.pod("n1p1"), "zc", "services", "--workload-node", "node1")
    assert r.returncode == 2 and "unknown flag: --workload-node" in r.stderr, r.stderr
    r = zmesh(zmesh_bin, mesh.pod("n1p1"), "ztunnel-config", "--help")
    assert r.returncode == 0 and "workload" in r.stdout and "--address" in r.stdout, r.stdout
    r = zmesh(zmesh_bin, mesh.pod("n1p1"), "--help")
    assert r.returncode == 0 and "ztunnel-config" in r.stdout, r.stdout
