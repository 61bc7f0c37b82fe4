"""zmesh's ztunnel against xDS and CA servers zmesh did not write: a Python grpcio server implementing
envoy's DeltaAggregatedResources and Istio's IstioCertificateService (stubs generated at test time from zmesh's
proto/ by grpc_tools' protoc; certificates signed with `cryptography`), over TLS with a server certificate for
istiod.istio-system.svc.

Checked, as Istio's ztunnel behaves (istio/ztunnel src/xds/client.rs, src/identity/caclient.rs): the Node id and
metadata, the authorization and clusterid metadata on both services, wildcard initial requests for Address then
Authorization, an ACK echoing the nonce; a response with one bad resource is NACKed naming it ("name: reason")
while the good one is applied; the CSR carries one URI SAN and the requested TTL, and the signed certificate is
served (Available in /config_dump)."""
import datetime
import glob
import json
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from helpers import wait_for
from topo import Topology, tail

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(REPO, "proto")
ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHZ = "type.googleapis.com/istio.security.Authorization"
ISTIOD = "istiod.istio-system.svc"
PORT = 15012


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    import grpc_tools
    out = str(tmp_path_factory.mktemp("peer-stubs"))
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    protos = [p for p in glob.glob(os.path.join(PROTO_DIR, "**", "*.proto"), recursive=True)]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + PROTO_DIR, "-I" + wkt,
                    "--python_out=" + out, "--grpc_python_out=" + out] + protos, check=True)
    sys.path.insert(0, out)
    try:
        from envoy.service.discovery.v3 import discovery_pb2, discovery_pb2_grpc
        import workload_pb2
        import citadel_pb2
        import citadel_pb2_grpc
    finally:
        sys.path.remove(out)

    class PB:
        pass
    p = PB()
    p.d, p.dg, p.wl, p.c, p.cg = discovery_pb2, discovery_pb2_grpc, workload_pb2, citadel_pb2, citadel_pb2_grpc
    return p


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, cn)])


class Pki:
    """A root, istiod's serving certificate, and a signer for CSRs."""

    def __init__(self, d):
        now = datetime.datetime.utcnow()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.root = (x509.CertificateBuilder().subject_name(_name("cluster.local")).issuer_name(_name("cluster.local"))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=1))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.root_pem = self.root.public_bytes(serialization.Encoding.PEM)
        self.root_path = os.path.join(d, "root-cert.pem")
        with open(self.root_path, "wb") as f:
            f.write(self.root_pem)
        skey = ec.generate_private_key(ec.SECP256R1())
        self.server_key_pem = skey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption())
        self.server_pem = self._sign(skey.public_key(), [x509.DNSName(ISTIOD)], 3600).public_bytes(
            serialization.Encoding.PEM)

    def _sign(self, pub, sans, ttl):
        now = datetime.datetime.utcnow()
        return (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.root.subject)
                .public_key(pub).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=2))
                .not_valid_after(now + datetime.timedelta(seconds=ttl))
                .add_extension(x509.SubjectAlternativeName(sans), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))

    def sign_csr(self, pem, ttl):
        csr = x509.load_pem_x509_csr(pem.encode())
        assert csr.is_signature_valid
        uris = csr.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
        leaf = self._sign(csr.public_key(), [x509.UniformResourceIdentifier(u) for u in uris], ttl)
        return uris, leaf.public_bytes(serialization.Encoding.PEM).decode()


class Peer:
    """The grpcio servers, recording what ztunnel sent."""

    def __init__(self, pb, pki, resources, gates=None):
        self.pb, self.pki = pb, pki
        self.gates = gates or {}  # type_url -> threading.Event the first response of that type waits for
        self.resources = resources  # type_url -> [(name, Any bytes of that type)]
        self.requests = queue.Queue()
        self.metadata = {}
        self.csrs = []
        peer = self

        class Ads(pb.dg.AggregatedDiscoveryServiceServicer):
            def DeltaAggregatedResources(self, it, context):
                peer.metadata["xds"] = dict(context.invocation_metadata())
                nonce = 0
                for req in it:
                    peer.requests.put(req)
                    if req.response_nonce:
                        continue  # an ACK or NACK
                    gate = peer.gates.get(req.type_url)
                    if gate:
                        gate.wait(30)
                    nonce += 1
                    r = pb.d.DeltaDiscoveryResponse(type_url=req.type_url, nonce="n%d" % nonce,
                                                    system_version_info="v1")
                    for name, value in peer.resources.get(req.type_url, []):
                        res = r.resources.add(name=name, version="1")
                        res.resource.type_url = req.type_url
                        res.resource.value = value
                    yield r

        class Ca(pb.cg.IstioCertificateServiceServicer):
            def CreateCertificate(self, req, context):
                peer.metadata["ca"] = dict(context.invocation_metadata())
                uris, leaf = pki.sign_csr(req.csr, req.validity_duration)
                peer.csrs.append((uris, req.validity_duration))
                return pb.c.IstioCertificateResponse(cert_chain=[leaf, pki.root_pem.decode()])

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb.dg.add_AggregatedDiscoveryServiceServicer_to_server(Ads(), self.server)
        pb.cg.add_IstioCertificateServiceServicer_to_server(Ca(), self.server)
        creds = grpc.ssl_server_credentials([(pki.server_key_pem, pki.server_pem)])
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    def stop(self):
        self.server.stop(0)


def workload(pb, name, ip, sa="sa-a"):
    a = pb.wl.Address()
    w = a.workload
    w.uid, w.name, w.namespace, w.service_account = "Kubernetes//Pod/default/" + name, name, "default", sa
    w.addresses.append(bytes(int(x) for x in ip.split(".")))
    w.tunnel_protocol = pb.wl.HBONE
    w.trust_domain = "cluster.local"
    return w.uid, a.SerializeToString()


def test_ztunnel_against_grpcio_xds_and_ca(pb, ztunnel_bin, tmp_path):
    pki = Pki(str(tmp_path))
    good = workload(pb, "a", "10.9.0.2")
    bad_addr = pb.wl.Address()
    bad_addr.workload.uid = "Kubernetes//Pod/default/bad"
    bad_addr.workload.name, bad_addr.workload.namespace = "bad", "default"
    bad_addr.workload.addresses.append(b"\x01\x02\x03\x04\x05")  # 5 bytes: not an IP address
    peer = Peer(pb, pki, {ADDRESS: [good, ("Kubernetes//Pod/default/bad", bad_addr.SerializeToString())]})
    token = tmp_path / "token"
    token.write_text("header.payload.signature\n")
    addr = "https://127.0.0.1:%d" % peer.port
    env = dict(os.environ, PROXY_MODE="dedicated", PROXY_WORKLOAD_INFO="default/a/sa-a", XDS_ADDRESS=addr,
               CA_ADDRESS=addr, XDS_ROOT_CA=pki.root_path, CA_ROOT_CA=pki.root_path, ALT_XDS_HOSTNAME=ISTIOD,
               ALT_CA_HOSTNAME=ISTIOD, AUTH_TOKEN=str(token), ISTIO_META_CLUSTER_ID="east",
               ISTIO_METAJSON_LABELS='{"app":"ztunnel"}', POD_NAME="ztunnel-x", POD_NAMESPACE="istio-system",
               INSTANCE_IP="10.9.0.100", NODE_NAME="node-7", SECRET_TTL="2h", CA_HEADER_X_TEAM="mesh",
               ADMIN_PORT="0", METRICS_PORT="0", READINESS_PORT="0", LOG_FORMAT="json")
    for k in ("LOCAL_XDS_PATH", "LOCAL_CA_DIR"):
        env.pop(k, None)
    log_path = tmp_path / "ztunnel.log"
    # In the test's own network namespace, beside the grpcio server; admin ports are picked by the kernel.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([os.path.join(Topology.bin_dir(), "ztunnel")], env=env, stdout=log, stderr=log)
    try:
        reqs = []

        def got(n):
            while not peer.requests.empty():
                reqs.append(peer.requests.get())
            return len(reqs) >= n

        assert wait_for(lambda: got(4), timeout=15), (reqs, tail(str(log_path)))
        first = [r for r in reqs if not r.response_nonce]
        assert [r.type_url for r in first] == [ADDRESS, AUTHZ]
        for r in first:
            assert not r.resource_names_subscribe  # wildcard
            assert r.node.id == "ztunnel~10.9.0.100~ztunnel-x.istio-system~istio-system.svc.cluster.local"
        md = {k: v.string_value for k, v in first[0].node.metadata.fields.items() if k != "LABELS"}
        assert md == {"NAME": "ztunnel-x", "NAMESPACE": "istio-system", "INSTANCE_IPS": "10.9.0.100",
                      "NODE_NAME": "node-7", "CLUSTER_ID": "east"}, md
        assert first[0].node.metadata.fields["LABELS"].struct_value.fields["app"].string_value == "ztunnel"
        acks = {r.type_url: r for r in reqs if r.response_nonce}
        # The Address response held one bad resource: NACKed by name, with ztunnel's reason.
        nack = acks[ADDRESS]
        assert nack.response_nonce == "n1" and nack.error_detail.message.startswith(
            "Kubernetes//Pod/default/bad: "), nack
        assert "5 bytes" in nack.error_detail.message, nack.error_detail.message
        assert acks[AUTHZ].response_nonce == "n2" and not acks[AUTHZ].error_detail.message
        assert peer.metadata["xds"]["authorization"] == "Bearer header.payload.signature"
        assert peer.metadata["xds"]["clusterid"] == "east"
        # The certificate: one URI SAN for the pod, the asked lifetime, headers as configured.
        assert wait_for(lambda: peer.csrs, timeout=10), tail(str(log_path))
        assert peer.csrs[0] == (["spiffe://cluster.local/ns/default/sa/sa-a"], 7200)
        assert peer.metadata["ca"]["authorization"] == "Bearer header.payload.signature"
        assert peer.metadata["ca"]["x_team"] == "mesh"

        def lines():
            with open(log_path) as f:
                return [json.loads(l) for l in f if l.startswith("{")]
        # The good resource is applied, the bad one is not: ztunnel found its own workload and is ready.
        assert wait_for(lambda: any(l.get("message") == "certificate ready, accepting connections"
                                    for l in lines()), timeout=10), tail(str(log_path))
        admin = next(l for l in lines() if l.get("message", "").startswith("admin on"))
        port = admin["message"].split("127.0.0.1:")[1].split(",")[0]
        import urllib.request
        dump = json.loads(urllib.request.urlopen("http://127.0.0.1:%s/config_dump" % port, timeout=5).read())
        assert [w["uid"] for w in dump["workloads"]] == ["Kubernetes//Pod/default/a"]
        assert dump["certificates"][0]["state"] == "Available"
        # Istio's xDS client metrics: one response per type, and the bytes of its resources' values.
        mport = admin["message"].split("metrics on :")[1].split(",")[0]
        metrics = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % mport, timeout=5).read().decode()
        assert 'istio_xds_message_total{url="%s"} 1' % ADDRESS in metrics, metrics
        assert 'istio_xds_message_total{url="%s"} 1' % AUTHZ in metrics, metrics
        size = len(good[1]) + len(bad_addr.SerializeToString())
        assert 'istio_xds_message_bytes_total{url="%s"} %d' % (ADDRESS, size) in metrics, metrics
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        peer.stop()


def test_not_ready_until_synced_and_backoff_grows(ztunnel_bin, tmp_path):
    """With an xDS server that is not there, ztunnel starts, is not ready ("state manager" pending, as Istio's
    readiness lists it), and retries with a doubling backoff instead of spinning."""
    Pki(str(tmp_path))  # writes root-cert.pem
    root = tmp_path / "root-cert.pem"
    env = dict(os.environ, PROXY_MODE="dedicated", PROXY_WORKLOAD_INFO="default/a/sa-a",
               XDS_ADDRESS="https://127.0.0.1:1", CA_ADDRESS="https://127.0.0.1:1", XDS_ROOT_CA=str(root),
               CA_ROOT_CA=str(root), ADMIN_PORT="0", METRICS_PORT="0", READINESS_PORT="0", LOG_FORMAT="json")
    for k in ("LOCAL_XDS_PATH", "LOCAL_CA_DIR", "AUTH_TOKEN"):
        env.pop(k, None)
    log_path = tmp_path / "ztunnel.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([os.path.join(Topology.bin_dir(), "ztunnel")], env=env, stdout=log, stderr=log)
    try:
        def lines():
            with open(log_path) as f:
                return [json.loads(l) for l in f if l.startswith("{")]

        def retries():
            return [l for l in lines() if l.get("scope") == "xds" and "retrying in" in l.get("message", "")]
        assert wait_for(lambda: len(retries()) >= 6, timeout=10), tail(str(log_path))
        delays = [int(l["message"].rsplit("retrying in ", 1)[1].rstrip("ms")) for l in retries()[:6]]
        # Istio doubles the 10 ms initial backoff before each wait after a connection error (client.rs run_loop).
        assert delays == [20, 40, 80, 160, 320, 640], delays
        admin = next(l for l in lines() if l.get("message", "").startswith("admin on"))
        ready_port = admin["message"].rsplit("readiness on :", 1)[1]
        import urllib.error
        import urllib.request
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen("http://127.0.0.1:%s/healthz/ready" % ready_port, timeout=5)
        assert e.value.code == 500  # Istio's readiness answers 500 with the pending tasks
        assert "state manager" in e.value.read().decode()
        # Each failed connect is counted as Istio's ztunnel counts it.
        mport = admin["message"].split("metrics on :")[1].split(",")[0]
        metrics = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % mport, timeout=5).read().decode()
        counts = [int(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
                  if l.startswith('istio_xds_connection_terminations_total{reason="ConnectionError"}')]
        assert counts and counts[0] >= 6, metrics
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_nothing_served_before_policies_arrive(pb, ztunnel_bin, tmp_path):
    """Fail closed: while the Authorization type has had no response, ztunnel has its workloads but opens no
    listener (a connection admitted then could be one a DENY policy on its way refuses); once it arrives the
    listeners open."""
    import socket
    pki = Pki(str(tmp_path))
    gate = threading.Event()
    peer = Peer(pb, pki, {ADDRESS: [workload(pb, "a", "127.0.0.1")]}, gates={AUTHZ: gate})
    token = tmp_path / "token"
    token.write_text("t")
    addr = "https://127.0.0.1:%d" % peer.port
    env = dict(os.environ, PROXY_MODE="dedicated", PROXY_WORKLOAD_INFO="default/a/sa-a", XDS_ADDRESS=addr,
               CA_ADDRESS=addr, XDS_ROOT_CA=pki.root_path, CA_ROOT_CA=pki.root_path, ALT_XDS_HOSTNAME=ISTIOD,
               ALT_CA_HOSTNAME=ISTIOD, AUTH_TOKEN=str(token), ADMIN_PORT="0", METRICS_PORT="0",
               READINESS_PORT="0", LOG_FORMAT="json", RUST_LOG="info,xds=debug")
    for k in ("LOCAL_XDS_PATH", "LOCAL_CA_DIR"):
        env.pop(k, None)
    log_path = tmp_path / "ztunnel.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([os.path.join(Topology.bin_dir(), "ztunnel")], env=env, stdout=log, stderr=log)

    def lines():
        with open(log_path) as f:
            return [json.loads(l) for l in f if l.startswith("{")]

    def listening():
        s = socket.socket()
        try:
            s.settimeout(1)
            s.connect(("127.0.0.1", 15008))
            return True
        except OSError:
            return False
        finally:
            s.close()
    try:
        assert wait_for(lambda: any("ACK (1 resources" in l.get("message", "") for l in lines()), timeout=10), \
            tail(str(log_path))
        time.sleep(0.5)
        assert not listening(), "15008 accepts before the policies arrived"
        assert not any(l.get("message") == "listeners ready" for l in lines())
        gate.set()
        assert wait_for(listening, timeout=10), tail(str(log_path))
    finally:
        gate.set()
        proc.terminate()
        proc.wait(timeout=10)
        peer.stop()
