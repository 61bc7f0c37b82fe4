"""zmeshd's delta ADS (DeltaAggregatedResources on its gRPC port) with Python grpcio as the xDS client, code zmesh
did not write: stubs are generated at test time from zmesh's proto/ by grpc_tools' protoc; the client speaks as
Istio's ztunnel does (node id "ztunnel~...", wildcard subscriptions to Address then Authorization, ACK with the
nonce, initial_resource_versions on reconnect).

Checked: manifests in -> Workload and Service resources named as istiod names them; a pod added to the manifest
directory arrives as one resource, a pod deleted as removed_resources; a reconnect that reports its versions is
sent nothing unchanged; a stream without a token is UNAUTHENTICATED.

zmesh's own PodEnrolment type (proto/zmesh/enrolment.proto), with the client speaking as zmesh's node agent
(node id "istio-cni~...", a wildcard subscription to that type only): every pod, with or without an IP; a pod
added without an IP arrives alone although the workloads did not change; a namespace label flipped arrives as
that namespace's pods, not ambient any more; a reconnect reporting its versions is sent nothing unchanged; a
ztunnel's stream on the same zmeshd never carries the type."""
import glob
import os
import queue
import subprocess
import sys
import threading
import time

import grpc
import pytest

from test_zmeshd import Daemon, NS, POLICY, SVC, pod, write, write_by_rename, zmeshd_bin, work  # noqa: F401
from test_zmeshd_ca import ISTIOD

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(REPO, "proto")
ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHZ = "type.googleapis.com/istio.security.Authorization"
ENROL = "type.googleapis.com/zmesh.v1.PodEnrolment"
NODE = "ztunnel~10.0.0.100~ztunnel-a.istio-system~istio-system.svc.cluster.local"
CNI_NODE = "istio-cni~10.0.0.2~istio-cni-node-x.istio-system~istio-system.svc.cluster.local"


ENROL_PB = {}


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    import grpc_tools
    out = str(tmp_path_factory.mktemp("xds-stubs"))
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    protos = [p for p in glob.glob(os.path.join(PROTO_DIR, "**", "*.proto"), recursive=True)
              if not os.path.relpath(p, PROTO_DIR).startswith("google/")]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + PROTO_DIR, "-I" + wkt,
                    "--python_out=" + out, "--grpc_python_out=" + out] + protos +
                   [os.path.join(PROTO_DIR, "google", "rpc", "status.proto")], check=True)
    sys.path.insert(0, out)
    try:
        from envoy.service.discovery.v3 import discovery_pb2, discovery_pb2_grpc
        import workload_pb2
        import authorization_pb2
        from zmesh import enrolment_pb2
    finally:
        sys.path.remove(out)
    # Other test files unpack the four modules; zmesh's own type is kept aside for this file's tests.
    ENROL_PB["module"] = enrolment_pb2
    return discovery_pb2, discovery_pb2_grpc, workload_pb2, authorization_pb2


class Stream:
    """One DeltaAggregatedResources stream: requests go in through a queue, responses come out of another."""

    def __init__(self, stub, pb, token, initial=None, types=(ADDRESS, AUTHZ), node=NODE):
        self.pb = pb
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        md = [("clusterid", "Kubernetes")] + ([("authorization", "Bearer " + token)] if token else [])
        self.call = stub.DeltaAggregatedResources(iter(self.requests.get, None), metadata=md)
        self.error = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        for t in types:
            req = pb.DeltaDiscoveryRequest(type_url=t)
            req.node.id = node
            req.node.metadata.fields["CLUSTER_ID"].string_value = "Kubernetes"
            for name, v in (initial or {}).get(t, {}).items():
                req.initial_resource_versions[name] = v
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

    def close(self):
        self.requests.put(None)
        self.call.cancel()


@pytest.fixture
def xds(zmeshd_bin, work, pb):
    manifests = os.path.join(work, "manifests")
    write(os.path.join(manifests, "app.yaml"), NS + pod("web-1", "10.0.0.5") + SVC + POLICY)
    d = Daemon(zmeshd_bin, work, "--listen", "127.0.0.1:0")
    d.wait_loads(1)
    end = time.time() + 10
    port = None
    while time.time() < end and port is None:
        for l in d.lines():
            if l["message"].startswith("serving the CA"):
                port = int(l["port"])
        time.sleep(0.05)
    assert port, open(d.log_path).read()
    with open(os.path.join(work, "state", "root-cert.pem"), "rb") as f:
        root = f.read()
    ch = grpc.secure_channel("127.0.0.1:%d" % port, grpc.ssl_channel_credentials(root_certificates=root),
                             options=[("grpc.ssl_target_name_override", ISTIOD)])
    discovery_pb2, discovery_grpc, wl, az = pb
    stub = discovery_grpc.AggregatedDiscoveryServiceStub(ch)
    token = subprocess.run([zmeshd_bin, "token", "--sa", "istio-system/ztunnel", "--node", "node1",
                            "--state-dir", os.path.join(work, "state")], capture_output=True, text=True,
                           check=True).stdout.strip()

    class X:
        pass
    x = X()
    x.d, x.stub, x.pb, x.wl, x.az, x.token, x.manifests = d, stub, discovery_pb2, wl, az, token, manifests
    x.enrol = ENROL_PB["module"]
    x.cni_token = subprocess.run([zmeshd_bin, "token", "--sa", "istio-system/istio-cni", "--node", "node1",
                                  "--state-dir", os.path.join(work, "state")], capture_output=True, text=True,
                                 check=True).stdout.strip()
    yield x
    ch.close()
    assert d.stop() == 0


def by_type(stream, n=2):
    """The next n responses keyed by type URL (the server takes the types in turn)."""
    out = {}
    for _ in range(n):
        r = stream.next()
        out[r.type_url] = r
        stream.ack(r)
    return out


def test_snapshot_then_deltas(xds):
    s = Stream(xds.stub, xds.pb, xds.token)
    try:
        first = by_type(s)
        addr = first[ADDRESS]
        names = sorted(r.name for r in addr.resources)
        assert names == ["Kubernetes//Pod/demo/web-1", "demo/web.demo.svc.cluster.local"], names
        for r in addr.resources:
            assert r.resource.type_url == ADDRESS and r.version
            a = xds.wl.Address()
            a.ParseFromString(r.resource.value)
            if a.HasField("workload"):
                w = a.workload
                assert (w.uid, w.name, w.namespace, w.service_account) == \
                    ("Kubernetes//Pod/demo/web-1", "web-1", "demo", "web")
                assert w.tunnel_protocol == xds.wl.HBONE and bytes(w.addresses[0]) == bytes([10, 0, 0, 5])
                assert list(w.services) == ["demo/web.demo.svc.cluster.local"]
                # The named targetPort (http) resolved per pod, as istiod does.
                assert [(p.service_port, p.target_port) for p in w.services["demo/web.demo.svc.cluster.local"]
                        .ports] == [(80, 8080)]
            else:
                assert a.service.hostname == "web.demo.svc.cluster.local"
                # A named targetPort is 0 on the Service: each endpoint resolves it.
                assert [(p.service_port, p.target_port) for p in a.service.ports] == [(80, 0)]
        authz = first[AUTHZ]
        assert [r.name for r in authz.resources] == ["demo/allow-demo"]
        pol = xds.az.Authorization()
        pol.ParseFromString(authz.resources[0].resource.value)
        assert pol.namespace == "demo" and pol.scope == xds.az.NAMESPACE

        # A pod added to the directory: one new Workload, and the others are not resent.
        write_by_rename(os.path.join(xds.manifests, "more.yaml"), pod("web-2", "10.0.0.6"))
        r = s.next()
        assert r.type_url == ADDRESS and [x.name for x in r.resources] == ["Kubernetes//Pod/demo/web-2"], r
        assert not r.removed_resources
        s.ack(r)
        # And deleted again: removed_resources names it.
        os.unlink(os.path.join(xds.manifests, "more.yaml"))
        r = s.next()
        assert r.type_url == ADDRESS and not r.resources and list(r.removed_resources) == \
            ["Kubernetes//Pod/demo/web-2"], r
        s.ack(r)
        versions = {t: {x.name: x.version for x in first[t].resources} for t in (ADDRESS, AUTHZ)}
    finally:
        s.close()

    # A reconnect that reports what it holds is sent nothing unchanged (istiod skips matching versions), and is
    # told what vanished meanwhile.
    versions[ADDRESS]["Kubernetes//Pod/demo/gone"] = "0123456789abcdef"
    s = Stream(xds.stub, xds.pb, xds.token, initial=versions)
    try:
        again = by_type(s)
        assert not again[ADDRESS].resources and list(again[ADDRESS].removed_resources) == \
            ["Kubernetes//Pod/demo/gone"]
        assert not again[AUTHZ].resources
    finally:
        s.close()


def test_stream_without_token_refused(xds):
    s = Stream(xds.stub, xds.pb, None)
    assert s.responses.get(timeout=10) is None
    assert s.error.code() == grpc.StatusCode.UNAUTHENTICATED


PENDING_POD = """---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: demo, uid: 5d1e-2}
spec: {nodeName: node1, serviceAccountName: web, containers: [{name: app, image: x}]}
status: {phase: Pending}
"""


def enrolments(xds, r):
    """name -> (ambient, reason, uid, service_account, node_name) of a PodEnrolment response."""
    assert r.type_url == ENROL
    out = {}
    for res in r.resources:
        assert res.resource.type_url == ENROL and res.version
        m = xds.enrol.PodEnrolment()
        assert res.resource.Unpack(m)
        assert res.name == "%s/%s" % (m.namespace, m.name)
        out[res.name] = (m.ambient, m.reason, m.uid, m.service_account, m.node_name)
    return out


def test_pod_enrolment(xds):
    zt = Stream(xds.stub, xds.pb, xds.token)
    s = Stream(xds.stub, xds.pb, xds.cni_token, types=(ENROL,), node=CNI_NODE)
    try:
        first = s.next()
        s.ack(first)
        assert enrolments(xds, first) == {"demo/web-1": (True, "namespace-label", "", "web", "node1")}
        versions = {res.name: res.version for res in first.resources}
        zt_seen = [r.type_url for r in by_type(zt).values()]

        # A pod without an IP is no workload, so the snapshot does not change, but it has an enrolment.
        write_by_rename(os.path.join(xds.manifests, "pending.yaml"), PENDING_POD)
        r = s.next()
        s.ack(r)
        assert enrolments(xds, r) == {"demo/web-2": (True, "namespace-label", "5d1e-2", "web", "node1")}
        assert not r.removed_resources
        versions.update({res.name: res.version for res in r.resources})

        # The namespace's label removed: both of its pods change, in one response.
        write_by_rename(os.path.join(xds.manifests, "app.yaml"),
                        NS.replace("istio.io/dataplane-mode: ambient", "team: a") + pod("web-1", "10.0.0.5") +
                        SVC + POLICY)
        r = s.next()
        s.ack(r)
        assert enrolments(xds, r) == {"demo/web-1": (False, "not-labelled", "", "web", "node1"),
                                      "demo/web-2": (False, "not-labelled", "5d1e-2", "web", "node1")}
        flipped = {res.name: res.version for res in r.resources}
        assert all(flipped[n] != versions[n] for n in flipped)

        # The ztunnel sees web-1's tunnel protocol change, and never the node agents' type.
        r = zt.next()
        zt.ack(r)
        zt_seen.append(r.type_url)
        assert r.type_url == ADDRESS
        (w,) = [x for x in r.resources if x.name == "Kubernetes//Pod/demo/web-1"]
        a = xds.wl.Address()
        assert w.resource.Unpack(a) and a.workload.tunnel_protocol == xds.wl.NONE
        while not zt.responses.empty():
            zt_seen.append(zt.next().type_url)
        assert ENROL not in zt_seen and set(zt_seen) <= {ADDRESS, AUTHZ}
    finally:
        s.close()
        zt.close()

    # A reconnect that reports its versions is sent nothing unchanged, and told what vanished.
    flipped["demo/gone"] = "0123456789abcdef"
    s = Stream(xds.stub, xds.pb, xds.cni_token, initial={ENROL: flipped}, types=(ENROL,), node=CNI_NODE)
    try:
        r = s.next()
        assert r.type_url == ENROL and not r.resources and list(r.removed_resources) == ["demo/gone"]
    finally:
        s.close()
