"""Strict peer identities on a running ztunnel, both sides: a certificate must carry exactly one URI SAN, a
SPIFFE id of the mesh's trust domain, and must not be a CA (basicConstraints CA:TRUE).

Server side: an independent client (Python ssl + h2) in n1p1's netns (SO_MARK 0x539, not captured) offers
certificates signed by the mesh root to n2p1's ztunnel on 15008. Client side: n1p1's ztunnel dials n2p2, a
declared HBONE workload whose 15008 is an independent HBONE server (hbone_peer.py) presenting n2p2's id plus
a second URI SAN. The certificates are minted here with the openssl CLI so each test chooses its SANs."""
import json
import os
import subprocess

import pytest

from helpers import Mesh, connect, denied, start_hbone_server, wait_for
from hbone_peer import HboneClient, HboneError

ECHO = 8080
EVIL = "spiffe://evil.example/ns/kube-system/sa/admin"
ADMIN = "spiffe://cluster.local/ns/kube-system/sa/admin"


def mint(topo, name, sans, ca=False):
    """A leaf signed by the mesh root (EC P-256, EKU serverAuth+clientAuth) with subjectAltName sans (a list
    of OpenSSL SAN entries such as "URI:spiffe://..."), CA:TRUE when ca. Returns (cert, key) paths."""
    root = topo.ca()
    d = os.path.join(topo.workdir, "strict-certs")
    os.makedirs(d, exist_ok=True)
    cert, key, csr, ext = (os.path.join(d, name + s) for s in (".pem", "-key.pem", ".csr", ".ext"))
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:%s\n" % ("TRUE" if ca else "FALSE"))
        f.write("keyUsage=critical,digitalSignature%s\n" % (",keyCertSign" if ca else ""))
        f.write("extendedKeyUsage=serverAuth,clientAuth\n")
        if sans:
            f.write("subjectAltName=%s\n" % ",".join(sans))
    run = lambda cmd: subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])
    run(["openssl", "req", "-new", "-key", key, "-subj", "/O=zmesh-e2e/CN=%s" % name, "-out", csr])
    run(["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(root, "root-cert.pem"), "-CAkey",
         os.path.join(root, "root-key.pem"), "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
         "-days", "1", "-sha256", "-extfile", ext, "-out", cert])
    return cert, key


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=2, meshed=["n1p1", "n2p1"])
    try:
        m.up()
        m.app(m.pod("n2p1"), "echo", ECHO)
        t, impostor = m.topo, m.pod("n2p2")
        # n2p2's server names n2p2 (what n1p1's ztunnel expects) and, second, an outside identity.
        cert, key = mint(t, "server-two-sans", ["URI:" + impostor.spiffe, "URI:" + EVIL])
        m.record = os.path.join(t.workdir, "record-n2p2.jsonl")
        start_hbone_server(t, impostor, cert, key, os.path.join(t.ca(), "root-cert.pem"), m.record)
        yield m
    finally:
        m.down()


def _attempt(m, cert, key):
    """The status of a CONNECT to n2p1's echo app with this client certificate, or "rejected: <error>"."""
    src, dst = m.pod("n1p1"), m.pod("n2p1")
    try:
        s = connect(src.netns, dst.ip, 15008, mark=0x539)
        c = HboneClient(s, cert, key, os.path.join(m.topo.ca(), "root-cert.pem"), timeout=10)
        sid = c.connect("%s:%d" % (dst.ip, ECHO))
        status, _ = c.response(sid, timeout=5)
        if status == 200:
            c.send(sid, b"x")
            assert c.recv(sid, timeout=3) == b"x"
        c.close()
        return status
    except (HboneError, OSError) as e:
        return "rejected: %s" % e


def _failures(m, pod):
    """The error fields of pod's "connection failed" log lines."""
    return [l.get("error", "") for l in m.log_json(pod) if l.get("message") == "connection failed"]


def test_one_san_minted_here_is_accepted(mesh):
    """The control: the same minting with one good URI SAN (and a DNS SAN, which is not an identity)."""
    cert, key = mint(mesh.topo, "client-one-san", ["DNS:n1p1.example", "URI:" + mesh.pod("n1p1").spiffe])
    assert _attempt(mesh, cert, key) == 200


@pytest.mark.parametrize("order", ["evil-first", "evil-second", "same-domain-admin-first"])
def test_client_with_two_uri_sans_is_refused(mesh, order):
    good = mesh.pod("n1p1").spiffe
    sans = {"evil-first": [EVIL, good], "evil-second": [good, EVIL],
            "same-domain-admin-first": [ADMIN, good]}[order]
    cert, key = mint(mesh.topo, "client-" + order, ["URI:" + s for s in sans])
    server = mesh.pod("n2p1")
    result = _attempt(mesh, cert, key)
    assert str(result).startswith("rejected"), result
    assert wait_for(lambda: any("2 URI SANs" in e for e in _failures(mesh, server))), mesh.logs_tail()


def test_ca_leaf_is_refused(mesh):
    cert, key = mint(mesh.topo, "client-ca", ["URI:" + mesh.pod("n1p1").spiffe], ca=True)
    result = _attempt(mesh, cert, key)
    assert str(result).startswith("rejected"), result
    assert wait_for(lambda: any("CA:TRUE" in e for e in _failures(mesh, mesh.pod("n2p1")))), mesh.logs_tail()


def test_server_with_two_uri_sans_is_refused(mesh):
    """n1p1's ztunnel expects n2p2's id; the server presents it, but beside a second URI SAN."""
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p2")
    assert denied(src, dst, ECHO)
    with open(mesh.record) if os.path.exists(mesh.record) else open(os.devnull) as f:
        requests = [json.loads(l) for l in f if l.strip()]
    assert not [r for r in requests if r.get("method")], "a CONNECT reached a server with two URI SANs"
    assert wait_for(lambda: "identity verification error" in mesh.log(src)), mesh.logs_tail()
    # The line says why the certificate was refused, not an empty peer identity.
    assert "2 URI SANs" in mesh.log(src), mesh.logs_tail()
