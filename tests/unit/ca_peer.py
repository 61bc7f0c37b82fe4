#!/usr/bin/python3
"""Checks zmesh's CA output with code zmesh did not write (run by tests/unit/test_issuer.c).

usage: ca_peer.py DIR ISSUER SPIFFE_ID
DIR holds `token` and `token-pub.pem` (a zmesh bearer token and zmeshd's public key) and chain<i>.<j>.pem
(the cert_chain elements of CreateCertificate answers, j = 0 the leaf, the last one the roots).
PyJWT (Debian's python3-jwt) verifies the token pinned to ES256; Python's cryptography parses each chain and
checks that every element is signed by the next and the last by one of the roots. Exits non-zero with the
reason on the first failure."""
import glob
import os
import re
import sys
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID


def check_token(d, issuer):
    tok = open(os.path.join(d, "token")).read()
    pub = open(os.path.join(d, "token-pub.pem")).read()
    claims = jwt.decode(tok, pub, algorithms=["ES256"], audience="istio-ca", issuer=issuer,
                        options={"require": ["exp", "iat", "nbf", "sub", "iss", "aud"]})
    assert jwt.get_unverified_header(tok)["alg"] == "ES256"
    assert claims["sub"] == "system:serviceaccount:istio-system:ztunnel", claims
    assert claims["aud"] == ["istio-ca"], claims
    assert claims["exp"] > time.time() and claims["iat"] <= time.time() + 60, claims
    k8s = claims["kubernetes.io"]
    assert k8s["namespace"] == "istio-system", k8s
    assert k8s["serviceaccount"]["name"] == "ztunnel", k8s
    assert k8s["node"]["name"] == "node-a", k8s
    assert k8s["pod"] == {"name": "cart-7d9f", "uid": "1234-abcd"}, k8s
    # The same token with any other key or algorithm list is refused.
    try:
        jwt.decode(tok, pub, algorithms=["HS256"], audience="istio-ca")
    except jwt.InvalidTokenError:
        pass
    else:
        raise AssertionError("PyJWT accepted the token as HS256")


def signed_by(cert, issuer):
    key = issuer.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    elif isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes)
    else:
        raise AssertionError("unexpected issuer key type %r" % key)
    assert cert.issuer == issuer.subject


def check_chain(files, spiffe_id):
    elems = [open(f, "rb").read() for f in files]
    certs = [x509.load_pem_x509_certificate(e) for e in elems[:-1]]
    # Debian 12's cryptography (38) has no load_pem_x509_certificates: split the bundle here.
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", elems[-1], re.S)
    roots = [x509.load_pem_x509_certificate(b) for b in blocks]
    assert roots, "no root in " + files[-1]
    leaf = certs[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.critical and sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id], sans
    assert len(list(sans.value)) == 1, sans
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku, eku
    assert leaf.subject == x509.Name([]), leaf.subject
    for child, parent in zip(certs, certs[1:]):
        signed_by(child, parent)
    last = certs[-1]
    for root in roots:
        try:
            signed_by(last, root)
            return
        except Exception:
            continue
    raise AssertionError("%s: not signed by any root of the last element" % files[-2])


def main():
    d, issuer, spiffe_id = sys.argv[1:4]
    check_token(d, issuer)
    chains = sorted({os.path.basename(f).split(".")[0] for f in glob.glob(os.path.join(d, "chain*.pem"))})
    assert chains, "no chains in " + d
    for c in chains:
        files = sorted(glob.glob(os.path.join(d, c + ".*.pem")), key=lambda f: int(f.split(".")[-2]))
        assert len(files) >= 2, files
        check_chain(files, spiffe_id)
    print("ca_peer: PyJWT verified the token; cryptography verified %d chains" % len(chains))


if __name__ == "__main__":
    main()
