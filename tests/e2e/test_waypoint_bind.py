"""Waypoint binding end to end: zmeshd reads a Gateway of class istio-waypoint and the istio.io/use-waypoint
labels from its manifest directory, sets `waypoint` on the bound Services, and the client's ztunnel (configured
by zmeshd over xDS) sends their traffic over HBONE to the waypoint, as Istio's ztunnel does
(istio/ztunnel src/proxy/outbound.rs build_request).

The waypoint is a fake one: hbone_peer.py (python3-h2, shares no code with zmesh) in the waypoint pod's network
namespace on 15008, with a certificate of zmeshd's CA for the waypoint's identity; it records each CONNECT's
:authority and echoes the bytes. A second fake on 15009 (the target port of another waypoint's Service) has a
certificate for the wrong identity, which ztunnel must refuse.

Checked: traffic to a bound Service's VIP reaches the waypoint with :authority = VIP:port and the client's
identity; traffic to a pod IP whose pod uses a workload waypoint reaches that one with :authority = podIP:port; a waypoint with the wrong identity fails the connection; a waypoint with no ready pod refuses the
connection and the access log says why; use-waypoint: none on a Service goes directly to its endpoint;
/debug/waypointz shows the waypoints and bindings, each with the istio.io/WaypointBound condition istiod would
write."""
import json
import os
import shutil
import subprocess

import pytest

from helpers import closed_without_data, connect, http_request, recv_exact, start_app, start_hbone_server, wait_for
from test_control_plane import ControlPlane, ISTIOD
from topo import Topology, tail

ECHO = 9000
DEBUG_PORT = 15014
BACKEND_VIP, DIRECT_VIP, COLD_VIP, WRONG_VIP = "10.96.0.50", "10.96.0.51", "10.96.0.52", "10.96.0.53"


def manifests(client, backend, wp, peer):
    pod = """---
apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: default
  labels: {%s}
spec:
  nodeName: node%d
  serviceAccountName: %s
  containers: [{name: app}]
status:
  phase: Running
  podIP: %s
  conditions: [{type: Ready, status: "True"}]
"""
    svc = """---
apiVersion: v1
kind: Service
metadata:
  name: %s
  namespace: default
  labels: {%s}
spec:
  clusterIP: %s
  selector: {%s}
  ports: [%s]
"""
    gw = """---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: %s, namespace: default, labels: {istio.io/waypoint-for: %s}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
%s"""
    status = "status:\n  addresses: [{type: Hostname, value: %s.default.svc.cluster.local}]\n"
    return ("""apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
"""
            + pod % (client.name, "app: client", client.node, client.sa, client.ip)
            # The backend pod uses a workload waypoint for traffic addressed to its own IP.
            + pod % (backend.name, "app: backend, istio.io/use-waypoint: wlwp", backend.node, backend.sa, backend.ip)
            # Its workload waypoint is the client itself (selfwp's Service selects the client): check_from_waypoint.
            + pod % (peer.name, "app: peer, istio.io/use-waypoint: selfwp", peer.node, peer.sa, peer.ip)
            # The waypoint's pod: not captured (dataplane-mode none, as Istio's waypoint template labels it).
            + pod % (wp.name, "app: fake-waypoint, istio.io/dataplane-mode: none", wp.node, wp.sa, wp.ip)
            + gw % ("waypoint", "service", status % "waypoint")
            + svc % ("waypoint", "", "10.96.0.100", "app: fake-waypoint", "{name: mesh, port: 15008}")
            # Same pod, another port: the waypoint whose certificate is the wrong identity.
            + gw % ("wrongid", "service", status % "wrongid")
            + svc % ("wrongid", "", "10.96.0.101", "app: fake-waypoint",
                     "{name: mesh, port: 15008, targetPort: 15009}")
            # No status.addresses and no Service: exists, not ready.
            + gw % ("cold", "service", "")
            + gw % ("selfwp", "workload", status % "selfwp")
            + svc % ("selfwp", "", "10.96.0.103", "app: client", "{name: mesh, port: 15008}")
            # A workload waypoint on the same pod, port 15010.
            + gw % ("wlwp", "workload", status % "wlwp")
            + svc % ("wlwp", "", "10.96.0.102", "app: fake-waypoint", "{name: mesh, port: 15008, targetPort: 15010}")
            + svc % ("backend", "", BACKEND_VIP, "app: backend", "{port: 80, targetPort: %d}" % ECHO)
            + svc % ("direct", "istio.io/use-waypoint: none", DIRECT_VIP, "app: backend",
                     "{port: 80, targetPort: %d}" % ECHO)
            + svc % ("coldsvc", "istio.io/use-waypoint: cold", COLD_VIP, "app: backend",
                     "{port: 80, targetPort: %d}" % ECHO)
            + svc % ("wrongsvc", "istio.io/use-waypoint: wrongid", WRONG_VIP, "app: backend",
                     "{port: 80, targetPort: %d}" % ECHO))


def _records(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def _log_json(path):
    out = []
    with open(path) as f:
        for l in f:
            try:
                out.append(json.loads(l))
            except ValueError:
                pass
    return out


@pytest.fixture(scope="module")
def env(ztunnel_bin):
    topo = Topology(nodes=2, pods_per_node=2)
    try:
        topo.up()
        client, peer, wp, backend = topo.pod(1, 1), topo.pod(1, 2), topo.pod(2, 1), topo.pod(2, 2)
        wp.sa = "waypoint"
        c = ControlPlane(topo)
        c.write("mesh.yaml", manifests(client, backend, wp, peer))
        # ControlPlane.start with the debug port on node 1's address, reachable from the test.
        c.log_path = os.path.join(c.dir, "zmeshd.log")
        log = open(c.log_path, "ab")
        c.proc = topo.popen(topo.nodes[0], [c.bin, "--manifests", c.manifests, "--state-dir", c.state, "--listen",
                                            "0.0.0.0:15012", "--debug-listen",
                                            "%s:%d" % (topo.node_ip(1), DEBUG_PORT)],
                            env=dict(os.environ, LOG_FORMAT="json", PILOT_DEBOUNCE_AFTER="50ms"), stdout=log,
                            stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        assert topo.wait_listen(topo.nodes[0], (15012, DEBUG_PORT), 10, c.proc), tail(c.log_path)
        # zmeshd's self-signed CA signs the fake waypoints' certificates (topo.mint wants root-*.pem names).
        ca_dir = os.path.join(topo.workdir, "zmeshd-ca")
        os.makedirs(ca_dir, exist_ok=True)
        shutil.copy(os.path.join(c.state, "ca-cert.pem"), os.path.join(ca_dir, "root-cert.pem"))
        shutil.copy(os.path.join(c.state, "ca-key.pem"), os.path.join(ca_dir, "root-key.pem"))
        root = os.path.join(c.state, "root-cert.pem")
        good_cert, good_key = topo.mint(wp.spiffe, "waypoint", root_dir=ca_dir)
        bad_cert, bad_key = topo.mint("spiffe://cluster.local/ns/default/sa/imposter", "imposter", root_dir=ca_dir)
        rec_good = os.path.join(topo.workdir, "waypoint-record.jsonl")
        rec_bad = os.path.join(topo.workdir, "imposter-record.jsonl")
        rec_wl = os.path.join(topo.workdir, "wl-waypoint-record.jsonl")
        start_hbone_server(topo, wp, good_cert, good_key, root, rec_good, port=15008)
        start_hbone_server(topo, wp, bad_cert, bad_key, root, rec_bad, port=15009)
        start_hbone_server(topo, wp, good_cert, good_key, root, rec_wl, port=15010)
        ztunnels = {}
        for p in (client, peer, backend):
            topo.inpod_rules(p)
            e = {"LOCAL_XDS_PATH": "", "LOCAL_CA_DIR": "", "XDS_ADDRESS": c.addr, "CA_ADDRESS": c.addr,
                 "XDS_ROOT_CA": root, "CA_ROOT_CA": root, "ALT_XDS_HOSTNAME": ISTIOD, "ALT_CA_HOSTNAME": ISTIOD,
                 "AUTH_TOKEN": c.token(p), "POD_NAME": "ztunnel-" + p.name, "POD_NAMESPACE": "istio-system",
                 "INSTANCE_IP": p.ip, "NODE_NAME": "node%d" % p.node, "RUST_LOG": "info"}
            ztunnels[p.name] = topo.start_ztunnel(p, "", env=e)
        start_app(topo, backend, "echo", ECHO)
        start_app(topo, peer, "echo", ECHO)
        yield {"topo": topo, "cp": c, "client": client, "peer": peer, "backend": backend, "wp": wp, "rec_good": rec_good,
               "rec_bad": rec_bad, "rec_wl": rec_wl, "zt": ztunnels}
    finally:
        topo.down()


def _access(env, since=0):
    lines = [l for l in _log_json(env["zt"][env["client"].name].log_path) if l.get("scope") == "access"]
    return lines[since:]


def _echo(env, vip, data):
    s = connect(env["client"].netns, vip, 80)
    try:
        s.sendall(data)
        return recv_exact(s, len(data))
    finally:
        s.close()


def test_vip_goes_to_waypoint_with_vip_authority(env):
    n = len(_records(env["rec_good"]))
    assert _echo(env, BACKEND_VIP, b"through-the-waypoint") == b"through-the-waypoint"
    recs = wait_for(lambda: [r for r in _records(env["rec_good"])[n:] if r.get("method") == "CONNECT"])
    assert recs, _access(env)
    r = recs[-1]
    # The VIP is kept, so the waypoint does the load balancing; the client's identity is presented.
    assert r["authority"] == "%s:80" % BACKEND_VIP
    assert r["peer_uris"] == [env["client"].spiffe]
    assert r["tls_version"] == "TLSv1.3" and r["alpn"] == "h2"
    assert "host=backend.default.svc.cluster.local" in r["headers"]["forwarded"]
    # Access log: next hop the waypoint pod's 15008, its identity, the intended service kept.
    lines = wait_for(lambda: [l for l in _access(env) if l.get("message") == "connection complete"
                              and l.get("dst.hbone_addr") == "%s:80" % BACKEND_VIP])
    assert lines, _access(env)
    l = lines[-1]
    assert l["dst.addr"] == "%s:15008" % env["wp"].ip
    assert l["dst.identity"] == env["wp"].spiffe
    assert l.get("dst.service") == "backend.default.svc.cluster.local", l


def test_waypoint_with_wrong_identity_fails(env):
    since = len(_access(env))
    s = connect(env["client"].netns, WRONG_VIP, 80)
    try:
        s.sendall(b"x")
        closed, got = closed_without_data(s, timeout=5)
    finally:
        s.close()
    assert closed and got == b""
    # ztunnel did reach the impostor (so it was the identity that failed), and sent it no CONNECT.
    lines = wait_for(lambda: [l for l in _access(env, since) if l.get("error")
                              and l.get("dst.service") == "wrongsvc.default.svc.cluster.local"])
    assert lines, _access(env, since)
    assert lines[-1]["dst.addr"] == "%s:15009" % env["wp"].ip, lines[-1]
    assert ('identity verification error: peer is "spiffe://cluster.local/ns/default/sa/imposter", expected "%s"'
            % env["wp"].spiffe) in lines[-1]["error"], lines[-1]
    assert not [r for r in _records(env["rec_bad"]) if r.get("method") == "CONNECT"]


def test_waypoint_not_ready_refuses(env):
    since = len(_access(env))
    s = connect(env["client"].netns, COLD_VIP, 80)
    try:
        s.sendall(b"x")
        closed, got = closed_without_data(s, timeout=5)
    finally:
        s.close()
    assert closed and got == b"", "a connection to a Service whose waypoint is not ready was not refused"
    want = ("service default/coldsvc has waypoint default/cold.default.svc.cluster.local with no ready endpoint: "
            "the connection is refused rather than sent around it")
    lines = wait_for(lambda: [l for l in _access(env, since) if want in str(l.get("error", ""))])
    assert lines, _access(env, since)
    # zmeshd said so too, when it bound the Service.
    assert [l for l in env["cp"].lines() if "Service default/coldsvc" in l.get("message", "")
            and "WaypointIsNotReady" in l.get("message", "")], tail(env["cp"].log_path)


def test_use_waypoint_none_goes_direct(env):
    n, n_wl = len(_records(env["rec_good"])), len(_records(env["rec_wl"]))
    since = len(_access(env))
    assert _echo(env, DIRECT_VIP, b"around-by-choice") == b"around-by-choice"
    lines = wait_for(lambda: [l for l in _access(env, since) if l.get("message") == "connection complete"
                              and l.get("dst.service") == "direct.default.svc.cluster.local"])
    assert lines, _access(env, since)
    assert lines[-1]["dst.addr"] == "%s:15008" % env["backend"].ip
    assert lines[-1]["dst.hbone_addr"] == "%s:%d" % (env["backend"].ip, ECHO)
    assert len(_records(env["rec_good"])) == n
    # Service-addressed traffic never takes the endpoint's workload waypoint (Istio's build_request).
    assert len(_records(env["rec_wl"])) == n_wl


def test_pod_ip_goes_to_its_workload_waypoint(env):
    backend = env["backend"]
    n = len(_records(env["rec_wl"]))
    s = connect(env["client"].netns, backend.ip, ECHO)
    try:
        s.sendall(b"to-the-pod")
        assert recv_exact(s, 10) == b"to-the-pod"
    finally:
        s.close()
    recs = wait_for(lambda: [r for r in _records(env["rec_wl"])[n:] if r.get("method") == "CONNECT"])
    assert recs, _access(env)
    # :authority is the pod's own address: the waypoint forwards to it.
    assert recs[-1]["authority"] == "%s:%d" % (backend.ip, ECHO)
    assert recs[-1]["peer_uris"] == [env["client"].spiffe]


def test_from_the_waypoint_itself_goes_direct(env):
    # The client is selfwp's only endpoint (identity and IP): its connection to a pod that uses selfwp must
    # not loop back through itself (istio/ztunnel src/proxy.rs check_from_waypoint).
    peer = env["peer"]
    since = len(_access(env))
    s = connect(env["client"].netns, peer.ip, ECHO)
    try:
        s.sendall(b"no-loop")
        assert recv_exact(s, 7) == b"no-loop"
    finally:
        s.close()
    # Access lines are written when a connection ends, so an earlier test's may come after `since`: match ours.
    lines = wait_for(lambda: [l for l in _access(env, since) if l.get("message") == "connection complete"
                              and l.get("dst.hbone_addr") == "%s:%d" % (peer.ip, ECHO)])
    assert lines, _access(env, since)
    assert lines[-1]["dst.addr"] == "%s:15008" % peer.ip
    assert lines[-1]["dst.hbone_addr"] == "%s:%d" % (peer.ip, ECHO)
    assert lines[-1]["dst.identity"] == peer.spiffe


def test_debug_waypointz(env):
    topo = env["topo"]
    status, headers, body = http_request(topo.nodes[0], topo.node_ip(1), DEBUG_PORT, "/debug/waypointz")
    assert status == 200 and headers["content-type"] == "application/json", body
    doc = json.loads(body)
    wps = {w["name"]: w for w in doc["waypoints"]}
    assert set(wps) == {"waypoint", "wrongid", "cold", "wlwp", "selfwp"}
    assert wps["wlwp"]["for"] == "workload" and wps["wlwp"]["workloads"] == [env["backend"].uid]
    w = wps["waypoint"]
    assert w["namespace"] == "default" and w["class"] == "istio-waypoint" and w["for"] == "service"
    assert w["address"] == {"namespace": "default", "hostname": "waypoint.default.svc.cluster.local", "port": 15008}
    assert w["ready"] is True and w["reason"] == "" and w["message"] == ""
    assert w["services"] == ["default/backend"] and w["workloads"] == []
    assert wps["cold"]["ready"] is False and wps["cold"]["services"] == ["default/coldsvc"]
    binds = {(b["kind"], b["name"]): b for b in doc["bindings"]}
    b = binds[("Service", "backend")]
    assert b == {"kind": "Service", "namespace": "default", "name": "backend",
                 "uid": "default/backend.default.svc.cluster.local", "waypoint": "default/waypoint", "bound": True,
                 "reason": "Bound", "message": "bound to waypoint default/waypoint",
                 # The condition istiod writes on the Service's status (pilot/pkg/model/service.go).
                 "condition": {"type": "istio.io/WaypointBound", "status": "True", "reason": "WaypointAccepted",
                               "message": "Successfully attached to waypoint default/waypoint"}}
    assert binds[("Service", "coldsvc")]["bound"] is True
    assert binds[("Service", "coldsvc")]["reason"] == "WaypointIsNotReady"
    # Set (zmesh refuses its traffic) but not ready: istiod's False condition all the same.
    assert binds[("Service", "coldsvc")]["condition"] == {
        "type": "istio.io/WaypointBound", "status": "False", "reason": "WaypointIsNotReady",
        "message": 'waypoint "default/cold" is not ready'}
    # A Pod whose workload waypoint is set: accepted; pods get no status written (istiod writes none on Pods).
    assert binds[("Pod", env["backend"].name)]["condition"]["reason"] == "WaypointAccepted"
    # Opted out, and the waypoints' own Services: no binding.
    assert ("Service", "direct") not in binds and ("Service", "waypoint") not in binds
    assert binds[("Pod", env["peer"].name)]["bound"] is True
    # Pods of a waypoint (selected by its Service) never get one.
    assert ("Pod", env["wp"].name) not in binds and ("Pod", env["client"].name) not in binds
