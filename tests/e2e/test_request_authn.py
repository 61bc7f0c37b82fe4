"""RequestAuthentication (JWT) end to end on `zmesh up` (src/waypoint/README.md "JWT", src/zmeshd/README.md): zmeshd
converts a RequestAuthentication with targetRefs, fetches its jwksUri from an HTTP server this test runs on the host
(python's http.server, JWKS made from a key `openssl genrsa` wrote) and pushes the JWKS inline; the waypoint verifies
tokens signed here with `openssl dgst -sha256 -sign` and answers as Envoy's jwt_authn does; AuthorizationPolicies on
requestPrincipals and request.auth.claims[] decide with the token's identity.

One cluster serves the module: namespace `ra` in ambient mode with its waypoint; pod `app` (node2, apps.py l7app: its
/headers lists the request's header fields as the app saw them) behind Services `svc` and `svc-bad`; pod `client`
(node1) makes the requests from its network namespace. The RequestAuthentication `jwt` targets the Gateway
(issuer https://idp.test, audience web, jwksUri on the test's server, claim sub copied to x-jwt-sub); `bad-jwks`
targets Service `svc-bad` with a jwksUri that answers 404 (istiod's fake JWKS stands in, so its tokens fail).

Checked: a valid token gives 200 and the app sees no Authorization header but x-jwt-sub (a client's own x-jwt-sub
is dropped, with or without a token); a token in access_token is accepted and removed from the path; expired -> 401 `Jwt is
expired` with `www-authenticate: Bearer realm="http://<host>/<path>", error="invalid_token"`; another issuer -> 401
`Jwt issuer is not configured`; another key's signature -> 401 `Jwt verification fails`; another audience -> 403
`Audiences in Jwt are not allowed`; no token -> 200 (authorization decides); an ALLOW on requestPrincipals: no token
-> 403 `RBAC: access denied`, a matching principal -> 200, another -> 403; an ALLOW on request.auth.claims[groups]:
admin -> 200, dev -> 403; the failed jwksUri -> 401 for that Service's tokens while `svc` still accepts them; a
query token percent-encoded is decoded, removed, and not brought back by a VirtualService rewrite; a cached token
is refused once expired; a gRPC 401 is trailers-only with www-authenticate; an HTTPS jwksUri verified with the
extra root zmeshd is given (JWKS_RESOLVER_EXTRA_ROOT_CA, a CA made here with openssl) and one of an unknown CA
refused, both dropped from zmeshd's cache once their policy is deleted.

Addresses of its own: prefix zj<hex>, state /run/zmesh-upjwt-<hex>, nodes 172.23.<o>.0/24, pods 10.<o>.0.0/16 with o
in 250..254 (10.1-249 are the other tests', see test_waypoint_l7.py and test_up.py)."""
import base64
import contextlib
import http.server
import json
import os
import random
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse

import h2.config
import h2.connection
import h2.events
import pytest

from helpers import connect

from test_up import _force_cleanup, poll
from test_waypoint_l7 import L7Cluster, pod, req

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "apps.py")
NS = "ra"
HTTP, GRPC = 8080, 9090
ISSUER = "https://idp.test"
APPLY_WAIT = 30
GATEWAY_REF = "{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}"


# -- keys, JWKS and tokens -------------------------------------------------------------------------------------------

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Keys:
    def __init__(self, d):
        self.good = os.path.join(d, "good.pem")
        self.other = os.path.join(d, "other.pem")
        for k in (self.good, self.other):
            subprocess.run(["openssl", "genrsa", "-out", k, "2048"], check=True, capture_output=True)
        self.jwks = self.jwks_of(self.good, "k1")

    @staticmethod
    def jwks_of(key, kid):
        out = subprocess.run(["openssl", "rsa", "-in", key, "-noout", "-modulus"], check=True, capture_output=True,
                             text=True).stdout
        n = bytes.fromhex(out.strip().split("=", 1)[1])
        return json.dumps({"keys": [{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64u(n),
                                     "e": "AQAB"}]})

    def token(self, claims, key=None, kid="k1"):
        h = b64u(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}, separators=(",", ":")).encode())
        p = b64u(json.dumps(claims, separators=(",", ":")).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key or self.good], input=(h + "." + p).encode(),
                             check=True, capture_output=True).stdout
        return "%s.%s.%s" % (h, p, b64u(sig))


def claims(sub="alice", groups=("admin",), aud="web", exp_in=600, iss=ISSUER):
    now = int(time.time())
    return {"iss": iss, "sub": sub, "aud": aud, "groups": list(groups), "iat": now, "exp": now + exp_in}


class JwksServer:
    """http.server on the host's loopback (zmeshd runs on the host): /jwks.json is the JWKS, anything else 404."""

    def __init__(self, jwks, tls=None):
        srv = self
        self.hits = 0
        self.jwks = jwks  # what /jwks.json serves now (a test rotates it)

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/jwks.json":
                    srv.hits += 1
                    body, code = srv.jwks.encode(), 200
                else:
                    body, code = b"no such key set", 404
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        if tls:  # (cert, key): HTTPS
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def make_ca(d, name):
    """A CA (openssl req -x509) and a server certificate for IP 127.0.0.1 it signed: (ca.pem, leaf.pem, leaf.key)."""
    ca, cakey = os.path.join(d, name + "-ca.pem"), os.path.join(d, name + "-ca.key")
    leaf, key, csr = (os.path.join(d, name + x) for x in ("-leaf.pem", "-leaf.key", "-leaf.csr"))
    ext = os.path.join(d, name + "-ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for cmd in (["openssl", "req", "-x509"] + ec + ["-keyout", cakey, "-out", ca, "-days", "2", "-subj",
                                                    "/CN=" + name + " test CA", "-addext",
                                                    "basicConstraints=critical,CA:TRUE", "-addext",
                                                    "keyUsage=critical,keyCertSign"],
                ["openssl", "req"] + ec + ["-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
                ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", cakey, "-CAcreateserial", "-out",
                 leaf, "-days", "2", "-extfile", ext]):
        subprocess.run(cmd, check=True, capture_output=True)
    return ca, leaf, key


# -- the cluster -----------------------------------------------------------------------------------------------------

def service(name):
    return ("apiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: %s}\n"
            "spec:\n  selector: {app: app}\n  ports: [{name: http, port: 80, targetPort: %d, appProtocol: http},"
            " {name: grpc, port: %d, targetPort: %d, appProtocol: grpc}]\n" % (name, NS, HTTP, GRPC, GRPC))


def manifests(d):
    app = ["/usr/bin/python3", "-u", APPS, "l7app", str(HTTP), "app", str(GRPC), os.path.join(d, "app.log")]
    docs = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: %s, labels: {istio.io/dataplane-mode: ambient}}\n" % NS,
            pod("app", "node2", "app", {"app": "app"}, app, HTTP).replace("namespace: l7", "namespace: " + NS),
            pod("client", "node1", "client", {"app": "client"}, ["sleep", "100000"]).replace(
                "namespace: l7", "namespace: " + NS),
            service("svc"), service("svc-bad")]
    return "---\n".join(docs)


class JwtCluster(L7Cluster):
    def __init__(self, manifests_dir):
        super().__init__(manifests_dir)
        tag = "%04x" % random.randrange(1 << 16)
        self.prefix = "zj" + tag
        self.state = "/run/zmesh-upjwt-" + tag
        octet = random.randrange(250, 255)
        self.node_subnet = "172.23.%d.0" % octet
        self.pod_subnet = "10.%d.0.0" % octet
        self.host_ip = "172.23.%d.1" % octet

    def netns_of(self, pod):
        return "%s-%s_%s" % (self.prefix, NS, pod)

    def vip(self, svc):
        return self.api("Service", NS, svc)["spec"]["clusterIP"]


def request_authn(port):
    return """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: %(ns)s}
spec:
  targetRefs: [%(gw)s]
  jwtRules:
  - issuer: %(iss)s
    audiences: [web]
    jwksUri: http://127.0.0.1:%(port)d/jwks.json
    outputClaimToHeaders: [{header: x-jwt-sub, claim: sub}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: bad-jwks, namespace: %(ns)s}
spec:
  targetRefs: [{group: "", kind: Service, name: svc-bad}]
  jwtRules:
  - issuer: https://idp.bad
    jwksUri: http://127.0.0.1:%(port)d/missing.json
""" % {"ns": NS, "gw": GATEWAY_REF, "iss": ISSUER, "port": port}


@pytest.fixture(scope="module")
def env():
    d = tempfile.mkdtemp(prefix="zmesh-upjwt-m-")
    keys = Keys(d)
    jwks = JwksServer(keys.jwks)
    # HTTPS jwksUri: one server with a certificate of the CA zmeshd is given (JWKS_RESOLVER_EXTRA_ROOT_CA), one
    # with a certificate of a CA it does not know.
    trusted_ca, leaf, leaf_key = make_ca(d, "trusted")
    _, other_leaf, other_key = make_ca(d, "untrusted")
    tls_ok = JwksServer(keys.jwks, tls=(leaf, leaf_key))
    tls_bad = JwksServer(keys.jwks, tls=(other_leaf, other_key))
    with open(os.path.join(d, "ra.yaml"), "w") as f:
        f.write(manifests(d))
    c = JwtCluster(d)
    try:
        # zmeshd inherits the environment of `zmesh up`: refresh jwksUri documents every 2 s instead of istiod's
        # 20 min, so the rotation test sees a new key without waiting (only zmeshd reads this variable).
        set_env = {"PILOT_JWT_PUB_KEY_REFRESH_INTERVAL": "2s", "JWKS_RESOLVER_EXTRA_ROOT_CA": trusted_ca}
        old = {k: os.environ.get(k) for k in set_env}
        os.environ.update(set_env)
        try:
            c.up()
        finally:
            for k, v in old.items():
                if v is None:
                    del os.environ[k]
                else:
                    os.environ[k] = v
        p = c.run("waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait", "--waypoint-timeout", "60s",
                  check=False, timeout=90)
        assert p.returncode == 0, p.stdout + p.stderr
        poll(lambda: _try(c, "/"), timeout=APPLY_WAIT, what="svc answering through the waypoint")
        c.apply(request_authn(jwks.port))
        c.tls_jwks = (tls_ok, tls_bad)
        yield c, keys, jwks
    finally:
        if os.environ.get("ZMESH_KEEP_CLUSTER") == "1":
            print("kept cluster: --state-dir %s, manifests %s" % (c.state, d))
        else:
            _force_cleanup(c)
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(c.work, ignore_errors=True)
        jwks.close()
        tls_ok.close()
        tls_bad.close()


def _try(c, path, **kw):
    try:
        return req(c, path, **kw)
    except OSError:
        return None


def until(c, path, pred, what, **kw):
    def once():
        r = _try(c, path, **kw)
        return r if r is not None and pred(r) else None
    return poll(once, timeout=APPLY_WAIT, every=0.2, what=what)


def bearer(tok):
    return {"Authorization": "Bearer " + tok}


def app_headers(resp):
    status, _, body = resp
    assert status == 200, resp
    return [(k.lower(), v) for k, v in json.loads(body)["headers"]]


def in_force(env):
    """Waits until the JWKS fetched from jwksUri reached the waypoint: a valid token passes."""
    c, keys, _ = env
    return until(c, "/headers", lambda r: r[0] == 200 and any(k == "x-jwt-sub" for k, _ in app_headers(r)),
                 "a valid token accepted (the JWKS fetched by zmeshd and pushed)",
                 headers=bearer(keys.token(claims())))


def test_valid_token(env):
    c, keys, jwks = env
    r = in_force(env)
    hs = app_headers(r)
    # forwardOriginalToken false: the token is not sent upstream; the claim is.
    assert "authorization" not in [k for k, _ in hs], hs
    assert ("x-jwt-sub", "alice") in hs
    assert jwks.hits >= 1  # zmeshd fetched the document (the waypoint has no route to this server)
    # A client's own x-jwt-sub is replaced by the token's.
    r = req(c, "/headers", headers=dict(bearer(keys.token(claims(sub="bob"))), **{"x-jwt-sub": "forged"}))
    assert [v for k, v in app_headers(r) if k == "x-jwt-sub"] == ["bob"]
    # No token: passes to authorization (none here); a client's own x-jwt-sub never reaches the app (Envoy
    # sanitizes the headers a rule writes).
    hs = app_headers(req(c, "/headers", headers={"x-jwt-sub": "forged"}))
    assert "x-jwt-sub" not in [k for k, _ in hs], hs
    # The token in the access_token parameter: accepted, and the parameter removed from the path upstream.
    r = req(c, "/info?a=1&access_token=%s&b=2" % keys.token(claims(sub="dave")))
    assert r[0] == 200, r
    info = json.loads(r[2])
    assert info["path"] == "/info?a=1&b=2", info
    assert info["headers"].get("x-jwt-sub") == "dave", info


def test_invalid_tokens(env):
    c, keys, _ = env
    in_force(env)
    cases = [
        (claims(exp_in=-300), None, 401, b"Jwt is expired"),
        (claims(iss="https://elsewhere"), None, 401, b"Jwt issuer is not configured"),
        (claims(), keys.other, 401, b"Jwt verification fails"),
        (claims(aud="mobile"), None, 403, b"Audiences in Jwt are not allowed"),
    ]
    for cl, key, status, body in cases:
        r = req(c, "/headers?x=1", headers=bearer(keys.token(cl, key)))
        assert (r[0], r[2]) == (status, body), (cl, r)
        assert r[1].get("www-authenticate") == 'Bearer realm="http://%s/headers", error="invalid_token"' % c.vip(
            "svc"), r[1]
    r = req(c, "/", headers={"Authorization": "Bearer not.a-token"})
    assert r[0] == 401, r


def authz(name, rules):
    return """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s, namespace: %s}
spec:
  targetRefs: [%s]
  action: ALLOW
  rules: %s
""" % (name, NS, GATEWAY_REF, rules)


@contextlib.contextmanager
def applied(c, text, gone):
    d = c.apply(text)
    try:
        yield
    finally:
        c.delete(d)
        gone()


def test_request_principals(env):
    c, keys, _ = env
    in_force(env)
    alice = bearer(keys.token(claims(sub="alice")))
    text = authz("need-jwt", "[{from: [{source: {requestPrincipals: [\"%s/alice\"]}}]}]" % ISSUER)
    with applied(c, text, lambda: until(c, "/", lambda r: r[0] == 200, "no token allowed again")):
        r = until(c, "/", lambda r: r[0] == 403, "a request without a token denied")
        assert r[2] == b"RBAC: access denied"
        assert req(c, "/headers", headers=alice)[0] == 200
        r = req(c, "/headers", headers=bearer(keys.token(claims(sub="mallory"))))
        assert (r[0], r[2]) == (403, b"RBAC: access denied")


def test_claims_condition(env):
    c, keys, _ = env
    in_force(env)
    admin = bearer(keys.token(claims(sub="a", groups=["dev", "admin"])))
    dev = bearer(keys.token(claims(sub="d", groups=["dev"])))
    text = authz("admins", "[{when: [{key: \"request.auth.claims[groups]\", values: [admin]}]}]")
    with applied(c, text, lambda: until(c, "/", lambda r: r[0] == 200, "dev allowed again", headers=dev)):
        r = until(c, "/", lambda r: r[0] == 403, "dev denied", headers=dev)
        assert r[2] == b"RBAC: access denied"
        assert req(c, "/headers", headers=admin)[0] == 200
        assert req(c, "/")[0] == 403  # no token, no claims


def test_jwks_fetch_failure(env):
    """svc-bad's jwksUri answers 404: istiod's fake JWKS stands in, so its issuer's tokens are rejected; svc's
    policy (the Gateway's, with its fetched JWKS) still accepts its own tokens there."""
    c, keys, _ = env
    in_force(env)
    tok = keys.token(claims(iss="https://idp.bad"))
    r = req(c, "/headers", svc="svc-bad", headers=bearer(tok))
    assert (r[0], r[2]) == (401, b"Jwks doesn't have key to match kid or alg from Jwt"), r
    assert req(c, "/headers", svc="svc-bad", headers=bearer(keys.token(claims())))[0] == 200
    # The failure is reported with the resource and field.
    log = c.log("zmeshd")
    assert "spec.jwtRules[0].jwksUri" in log and "status 404" in log, log[-2000:]


def test_cached_token_expires(env):
    """The waypoint caches verified tokens (Envoy's JwtCache): a token accepted, and so cached, is refused once
    its exp plus the 60 s clock skew has passed, as an uncached one would be."""
    c, keys, _ = env
    in_force(env)
    exp = int(time.time()) - 52                 # within the skew for ~8 s more
    cl = dict(claims(sub="gina"), exp=exp)
    h = bearer(keys.token(cl))
    r = req(c, "/headers", headers=h)
    assert ("x-jwt-sub", "gina") in app_headers(r)
    assert ("x-jwt-sub", "gina") in app_headers(req(c, "/headers", headers=h))   # the cached entry
    time.sleep(max(0.0, exp + 60 + 1.5 - time.time()))
    r = req(c, "/headers", headers=h)
    assert (r[0], r[2]) == (401, b"Jwt is expired"), r


def test_query_token_decoded_and_rewritten(env):
    """A token in the query is percent-decoded before it is verified (Envoy's extractor decodes the parameters; a
    client that encodes each '.' as %2E and the name's '_' as %5F is accepted), the parameter is removed, and a
    VirtualService rewrite of that request starts from the path without it (the rewrite does not bring it back)."""
    c, keys, _ = env
    in_force(env)
    enc = keys.token(claims(sub="erin")).replace(".", "%2E")
    r = req(c, "/info?a=1&access%%5Ftoken=%s&b=%%41" % enc)
    assert r[0] == 200, r
    info = json.loads(r[2])
    assert info["path"] == "/info?a=1&b=%41", info    # the other parameters as the client wrote them
    assert info["headers"].get("x-jwt-sub") == "erin", info
    # Undecoded, the same value is not a JWT; decoding a broken escape leaves it broken.
    r = req(c, "/info?access_token=%s%%zz" % enc)
    assert r[0] == 401, r
    text = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: rw, namespace: %s}
spec:
  hosts: [svc-bad]
  http:
  - match: [{uri: {prefix: /rw}}]
    rewrite: {uri: /moved}
    route: [{destination: {host: svc-bad}}]
    headers: {response: {set: {x-route: rw}}}
  - route: [{destination: {host: svc-bad}}]
""" % NS
    tok = keys.token(claims(sub="frank"))
    with applied(c, text, lambda: until(c, "/rw", lambda r: "x-route" not in r[1], "the rewrite gone",
                                        svc="svc-bad")):
        r = until(c, "/rw/x?access_token=%s&q=2" % tok, lambda r: r[1].get("x-route") == "rw",
                  "the VirtualService rewrite in force", svc="svc-bad")
        info = json.loads(r[2])
        assert info["path"] == "/moved/x?q=2", info
        assert info["headers"].get("x-jwt-sub") == "frank", info
        r = req(c, "/rw?access_token=%s" % tok, svc="svc-bad")
        assert json.loads(r[2])["path"] == "/moved", r


def test_https_jwks_uri(env):
    """zmeshd fetches an HTTPS jwksUri whose server certificate the extra root (JWKS_RESOLVER_EXTRA_ROOT_CA)
    signed, and the waypoint accepts that issuer's tokens; a server whose CA zmeshd does not know fails the
    fetch (the resource's field and the certificate error in zmeshd's log) and that issuer's tokens meet the fake
    JWKS. Once the policy is deleted, zmeshd drops both sources from its cache."""
    c, keys, _ = env
    in_force(env)
    ok, bad = c.tls_jwks
    text = """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: tls-jwks, namespace: %s}
spec:
  targetRefs: [{group: "", kind: Service, name: svc-bad}]
  jwtRules:
  - issuer: https://idp.tls
    jwksUri: https://127.0.0.1:%d/jwks.json
  - issuer: https://idp.wrongca
    jwksUri: https://127.0.0.1:%d/jwks.json
""" % (NS, ok.port, bad.port)
    good = bearer(keys.token(claims(iss="https://idp.tls", sub="tina")))
    d = c.apply(text)
    try:
        r = until(c, "/headers", lambda r: r[0] == 200, "the HTTPS JWKS fetched and pushed", svc="svc-bad",
                  headers=good)
        assert ok.hits >= 1
        r = req(c, "/headers", svc="svc-bad", headers=bearer(keys.token(claims(iss="https://idp.wrongca"))))
        assert (r[0], r[2]) == (401, b"Jwks doesn't have key to match kid or alg from Jwt"), r
        assert bad.hits == 0  # the TLS handshake failed before any request
        poll(lambda: any("spec.jwtRules[1].jwksUri" in l and "SSL certificate problem" in l
                         for l in c.log("zmeshd").splitlines()),
             timeout=APPLY_WAIT, what="the certificate failure reported on the resource's field")
    finally:
        c.delete(d)
    poll(lambda: "JWKS of issuer https://idp.tls from https://127.0.0.1:%d/jwks.json any more: dropped" % ok.port
         in c.log("zmeshd"), timeout=APPLY_WAIT, what="zmeshd dropping the unused HTTPS source")
    assert "JWKS of issuer https://idp.wrongca from https://127.0.0.1:%d/jwks.json any more: dropped" % bad.port \
        in c.log("zmeshd")
    # The Gateway's own policy (its source still in use) is untouched.
    assert not any("issuer %s from" % ISSUER in l for l in c.log("zmeshd").splitlines() if "dropped" in l)
    time.sleep(1)  # a fetch under way when it was dropped ends
    hits = ok.hits
    time.sleep(3)  # the 2 s refresh would have fetched it again
    assert ok.hits == hits


def h2c(c, headers):
    """One HTTP/2 (prior knowledge) request to svc's gRPC port from the client pod: (status, headers dict, body)."""
    vip = c.vip("svc")
    s = connect(c.netns_of("client"), vip, GRPC, timeout=15)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "%s:%d" % (vip, GRPC)),
                          (":path", "/echo.Echo/Say")] + headers, end_stream=True)
    s.sendall(conn.data_to_send())
    hs, body = {}, b""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    hs.update(dict(ev.headers))
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return int(hs.get(":status", "0")), hs, body
            s.sendall(conn.data_to_send())
    finally:
        s.close()
    return int(hs.get(":status", "0")), hs, body


def test_h2c_and_grpc(env):
    """The same check on HTTP/2: a bad token's 401 carries www-authenticate; a gRPC call gets Envoy's
    trailers-only answer, grpc-status 16 UNAUTHENTICATED with the text as grpc-message and the same
    www-authenticate."""
    c, keys, _ = env
    in_force(env)
    expired = [("authorization", "Bearer " + keys.token(claims(exp_in=-300)))]
    st, hs, body = h2c(c, expired)
    assert (st, body) == (401, b"Jwt is expired"), (st, hs, body)
    assert hs.get("www-authenticate", "").startswith('Bearer realm="http://'), hs
    assert hs["www-authenticate"].endswith('/echo.Echo/Say", error="invalid_token"'), hs
    st, hs, body = h2c(c, expired + [("content-type", "application/grpc")])
    assert (st, hs.get("grpc-status")) == (200, "16"), (st, hs)
    assert urllib.parse.unquote(hs.get("grpc-message", "")) == "Jwt is expired", hs
    # jwt_authn's www-authenticate is set on the gRPC local reply too (its header modifier runs before the
    # trailers-only conversion), with no body: the trailers-only answer ends the stream.
    assert hs.get("www-authenticate", "").endswith('/echo.Echo/Say", error="invalid_token"'), hs
    assert body == b"", body
    assert hs.get("content-type") == "application/grpc", hs


def test_key_rotation(env):
    """The JWKS at jwksUri changes (a new key, kid k2, replaces k1): zmeshd's refresh (PILOT_JWT_PUB_KEY_REFRESH_
    INTERVAL, 2 s here) fetches it and pushes it; then tokens of the new key pass and those of the old key fail.
    Runs last in the module and puts the old key back."""
    c, keys, jwks = env
    in_force(env)
    new = keys.token(claims(sub="carol"), key=keys.other, kid="k2")
    assert req(c, "/headers", headers=bearer(new))[2] == b"Jwks doesn't have key to match kid or alg from Jwt"
    hits = jwks.hits
    jwks.jwks = keys.jwks_of(keys.other, "k2")
    try:
        r = until(c, "/headers", lambda r: r[0] == 200, "the rotated JWKS pushed", headers=bearer(new))
        assert ("x-jwt-sub", "carol") in app_headers(r)
        assert jwks.hits > hits  # refetched, not pushed by anything else
        r = req(c, "/headers", headers=bearer(keys.token(claims())))
        assert (r[0], r[2]) == (401, b"Jwks doesn't have key to match kid or alg from Jwt"), r
    finally:
        jwks.jwks = keys.jwks
        in_force(env)
