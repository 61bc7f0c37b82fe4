"""zmeshd's CA (IstioCertificateService/CreateCertificate on its gRPC port) with Python grpcio as the client, code
zmesh did not write: stubs are generated at test time from zmesh's proto/citadel.proto by grpc_tools' protoc, CSRs
are made with `cryptography`, tokens come from `zmeshd token`.

Checked, as istiod decides (istio/istio security/pkg/server/ca/server.go, node_auth.go): a workload token gets its
own identity whatever its CSR asks; a trusted node account gets a pod's identity on its own node only; anything
else is UNAUTHENTICATED; a bad CSR or TTL is INVALID_ARGUMENT; the chain is leaf first, root last; the serving
certificate carries istiod's DNS name and verifies against the CA's root."""
import os
import subprocess
import sys
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from test_zmeshd import Daemon, NS, pod, zmeshd_bin, work  # noqa: F401  (fixtures)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(REPO, "proto")
TD = "cluster.local"
ISTIOD = "istiod.istio-system.svc"

ZTUNNEL_POD = """---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-a, namespace: istio-system}
spec: {nodeName: node1, serviceAccountName: ztunnel}
status: {phase: Running, podIP: 10.0.0.100}
"""


@pytest.fixture(scope="module")
def citadel(tmp_path_factory):
    """(citadel_pb2, citadel_pb2_grpc) from proto/citadel.proto."""
    import grpc_tools
    out = str(tmp_path_factory.mktemp("stubs"))
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + PROTO_DIR, "-I" + wkt,
                    "--python_out=" + out, "--grpc_python_out=" + out,
                    os.path.join(PROTO_DIR, "citadel.proto")], check=True)
    sys.path.insert(0, out)
    try:
        import citadel_pb2
        import citadel_pb2_grpc
    finally:
        sys.path.remove(out)
    return citadel_pb2, citadel_pb2_grpc


class CA:
    """A running zmeshd with two nodes' pods, and a grpcio stub to its CA."""

    def __init__(self, zmeshd_bin, work, citadel):
        self.work, self.bin = work, zmeshd_bin
        with open(os.path.join(work, "manifests", "pods.yaml"), "w") as f:
            f.write(NS + pod("web-1", "10.0.0.5", node="node1", sa="web") +
                    pod("db-1", "10.0.0.6", node="node2", sa="db") + ZTUNNEL_POD)
        self.d = Daemon(zmeshd_bin, work, "--listen", "127.0.0.1:0")
        self.d.wait_loads(1)
        line = self.wait_line(lambda l: l["message"].startswith("serving the CA"))
        self.port = int(line["port"])
        with open(os.path.join(work, "state", "root-cert.pem"), "rb") as f:
            self.root = f.read()
        creds = grpc.ssl_channel_credentials(root_certificates=self.root)
        self.channel = grpc.secure_channel("127.0.0.1:%d" % self.port, creds,
                                           options=[("grpc.ssl_target_name_override", ISTIOD)])
        self.pb, pb_grpc = citadel
        self.stub = pb_grpc.IstioCertificateServiceStub(self.channel)

    def wait_line(self, pred, timeout=10.0):
        end = time.time() + timeout
        while time.time() < end:
            for l in self.d.lines():
                if pred(l):
                    return l
            assert self.d.proc.poll() is None, open(self.d.log_path).read()
            time.sleep(0.05)
        raise AssertionError("no such log line in:\n" + open(self.d.log_path).read())

    def token(self, sa, node=None, state=None):
        args = ["token", "--sa", sa, "--state-dir", state or os.path.join(self.work, "state")]
        if node:
            args += ["--node", node]
        r = subprocess.run([self.bin] + args, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def ask(self, token, san="spiffe://cluster.local/ns/demo/sa/web", impersonate=None, ttl=3600,
            cluster="Kubernetes", csr=None):
        key = ec.generate_private_key(ec.SECP256R1())
        if csr is None:
            csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
                   .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=True)
                   .sign(key, hashes.SHA256()).public_bytes(serialization_pem()).decode())
        req = self.pb.IstioCertificateRequest(csr=csr, validity_duration=ttl)
        if impersonate:
            req.metadata.fields["ImpersonatedIdentity"].string_value = impersonate
        md = [("clusterid", cluster)] if cluster else []
        if token:
            md.append(("authorization", "Bearer " + token))
        return self.stub.CreateCertificate(req, metadata=md, timeout=10)

    def close(self):
        self.channel.close()
        assert self.d.stop() == 0


def serialization_pem():
    from cryptography.hazmat.primitives import serialization
    return serialization.Encoding.PEM


@pytest.fixture
def ca(zmeshd_bin, work, citadel):
    c = CA(zmeshd_bin, work, citadel)
    yield c
    c.close()


def leaf_uri(resp):
    leaf = x509.load_pem_x509_certificate(resp.cert_chain[0].encode())
    return leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value \
        .get_values_for_type(x509.UniformResourceIdentifier), leaf


def code_of(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def test_workload_gets_its_own_identity(ca):
    # The CSR asks for someone else: the CA ignores it and signs the caller's own identity.
    resp = ca.ask(ca.token("demo/web"), san="spiffe://cluster.local/ns/istio-system/sa/admin", ttl=7200)
    uris, leaf = leaf_uri(resp)
    assert uris == ["spiffe://cluster.local/ns/demo/sa/web"]
    life = leaf.not_valid_after - leaf.not_valid_before
    assert 7200 <= life.total_seconds() <= 7200 + 180  # backdated by istiod's 2-minute grace
    root = x509.load_pem_x509_certificate(resp.cert_chain[-1].encode())
    assert root.subject == root.issuer and resp.cert_chain[-1].encode().strip() == ca.root.strip()
    # The leaf verifies against the root.
    root.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))


def test_node_proxy_impersonates_pods_on_its_node_only(ca):
    node1 = ca.token("istio-system/ztunnel", node="node1")
    web = "spiffe://cluster.local/ns/demo/sa/web"
    uris, _ = leaf_uri(ca.ask(node1, impersonate=web))
    assert uris == [web]
    # db-1 runs on node2; and no pod at all has account demo/ghost.
    for other in ("spiffe://cluster.local/ns/demo/sa/db", "spiffe://cluster.local/ns/demo/sa/ghost"):
        code, details = code_of(lambda: ca.ask(node1, impersonate=other))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "node" not in details  # the caller gets no detail
    # The reason is in zmeshd's log.
    ca.wait_line(lambda l: l.get("scope") == "ca" and "refused" in l["message"] and "ghost" in l["message"])


def test_workload_cannot_impersonate(ca):
    code, _ = code_of(lambda: ca.ask(ca.token("demo/web", node="node1"),
                                     impersonate="spiffe://cluster.local/ns/demo/sa/db"))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_bad_credentials_refused(ca, tmp_path):
    code, _ = code_of(lambda: ca.ask(None))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: ca.ask("not.a.jwt"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # A token signed by another zmeshd's key.
    foreign = ca.token("demo/web", state=str(tmp_path / "other-state"))
    code, _ = code_of(lambda: ca.ask(foreign))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # A client claiming another cluster.
    code, _ = code_of(lambda: ca.ask(ca.token("demo/web"), cluster="elsewhere"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    ca.wait_line(lambda l: l.get("scope") == "ca" and "elsewhere" in l["message"])


def test_bad_requests_invalid_argument(ca):
    tok = ca.token("demo/web")
    code, details = code_of(lambda: ca.ask(tok, csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("CSR signing error (")
    code, details = code_of(lambda: ca.ask(tok, ttl=91 * 24 * 3600))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max allowed TTL" in details
    # The default TTL when none is asked for (24 h).
    _, leaf = leaf_uri(ca.ask(tok, ttl=0))
    assert abs((leaf.not_valid_after - leaf.not_valid_before).total_seconds() - 24 * 3600) <= 180
