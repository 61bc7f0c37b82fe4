"""The zmeshd program (src/zmeshd/cmd/main.c, src/zmeshd/daemon.c, src/zmeshd/watch.c), run as a user runs it:

- `zmeshd check` on a good and a broken manifest directory: the findings as `file#doc: field: message`, the
  counts, and the exit code (1 when a finding is an error, as istioctl analyze fails on errors);
- the daemon on a temporary manifest directory: each edit (written in place, or written to a temporary file
  and renamed over, as editors and kubectl-like tools do), a file added, a broken file and a file deleted
  makes one reload whose log line counts what was added, changed and removed; SIGTERM exits 0;
- `zmeshd token`: a JWT signed with the state directory's key whose claims are a Kubernetes projected
  service-account token's (kubernetes/kubernetes pkg/serviceaccount/claims.go) for Istio's CA.

No network namespaces are needed: zmeshd reads files (its ports are exercised by test_zmeshd_ca.py,
test_zmeshd_xds.py and test_control_plane.py)."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from topo import Topology

NS = """apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels:
    istio.io/dataplane-mode: ambient
"""


def pod(name, ip, node="node1", sa="web"):
    return """---
apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: demo
  labels: {app: web}
spec:
  nodeName: %s
  serviceAccountName: %s
  containers:
  - name: app
    ports: [{containerPort: 8080, name: http}]
status:
  phase: Running
  podIP: %s
  conditions: [{type: Ready, status: "True"}]
""" % (name, node, sa, ip)


SVC = """---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: http}]
"""

POLICY = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-demo, namespace: demo}
spec:
  rules:
  - from: [{source: {namespaces: [demo]}}]
"""

# The second document's spec.containers is a scalar: that document is an error and is left out.
BROKEN = pod("ok", "10.0.0.20") + """---
apiVersion: v1
kind: Pod
metadata: {name: bad, namespace: demo}
spec:
  containers: 5
"""


@pytest.fixture(scope="module")
def zmeshd_bin():
    path = os.path.join(Topology.bin_dir(), "zmeshd")
    if not os.access(path, os.X_OK):
        pytest.skip("no zmeshd binary at %s (run make all)" % path)
    return path


@pytest.fixture
def work():
    d = tempfile.mkdtemp(prefix="zmesh-zmeshd-")
    os.mkdir(os.path.join(d, "manifests"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def write_by_rename(path, text):
    """Writes a hidden temporary file beside path and renames it over path (one atomic replace)."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    write(tmp, text)
    os.rename(tmp, path)


def run(bin_, *args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([bin_] + list(args), capture_output=True, text=True, timeout=30, env=e)


# ---- zmeshd check ----

def test_check_good(zmeshd_bin, work):
    m = os.path.join(work, "manifests")
    write(os.path.join(m, "app.yaml"), NS + pod("web-1", "10.0.0.5") + SVC + POLICY)
    r = run(zmeshd_bin, "check", "--manifests", m)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == \
        "1 workloads, 1 services, 1 policies; 0 errors, 0 warnings, 0 infos"


def test_check_broken(zmeshd_bin, work):
    m = os.path.join(work, "manifests")
    write(os.path.join(m, "app.yaml"), NS + SVC)
    write(os.path.join(m, "pods.yaml"), BROKEN)
    r = run(zmeshd_bin, "check", "--manifests", m)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"^Error: pods\.yaml#2: spec\.containers: expected a list, got a scalar \(line \d+\)$",
                     r.stdout, re.M), r.stdout
    # The good pod of the same file still counts.
    assert "1 workloads, 1 services, 0 policies; 1 errors" in r.stdout


def test_check_usage(zmeshd_bin, work):
    r = run(zmeshd_bin, "check", "--manifests", work, "--frobnicate")
    assert r.returncode == 2
    assert "unknown option --frobnicate" in r.stderr
    r = run(zmeshd_bin, "check")
    assert r.returncode == 2 and "--manifests is required" in r.stderr
    missing = os.path.join(work, "nope")
    r = run(zmeshd_bin, "check", "--manifests", missing)
    assert r.returncode == 1 and missing in r.stderr and "No such file" in r.stderr
    r = run(zmeshd_bin, "check", "--manifests", work, env={"PILOT_DEBOUNCE_MAX": "soon"})
    assert r.returncode == 2 and "PILOT_DEBOUNCE_MAX=soon" in r.stderr
    r = run(zmeshd_bin, "frob")
    assert r.returncode == 2 and "unknown command frob" in r.stderr
    r = run(zmeshd_bin, "--help")
    assert r.returncode == 0 and "zmeshd check" in r.stdout and "PILOT_DEBOUNCE_AFTER" in r.stdout
    r = run(zmeshd_bin, "--version")
    assert r.returncode == 0 and r.stdout.startswith("version.BuildInfo{")


# ---- the daemon ----

class Daemon:
    def __init__(self, bin_, work, *extra, env=None):
        self.log_path = os.path.join(work, "zmeshd.log")
        self.manifests = os.path.join(work, "manifests")
        e = dict(os.environ)
        e.update({"LOG_FORMAT": "json", "PILOT_DEBOUNCE_AFTER": "50ms", "PILOT_DEBOUNCE_MAX": "2s"})
        e.update(env or {})
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([bin_, "--manifests", self.manifests, "--state-dir",
                                          os.path.join(work, "state")] + list(extra),
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=e)

    def lines(self):
        out = []
        with open(self.log_path) as f:
            for l in f:
                try:
                    out.append(json.loads(l))
                except ValueError:
                    raise AssertionError("not a JSON log line: %r" % l)
        return out

    def loads(self):
        return [l for l in self.lines() if l.get("scope") == "zmeshd" and
                l["message"].startswith(("manifests loaded", "manifests reloaded"))]

    def wait_loads(self, n, timeout=10.0):
        """Waits until n load lines were written; returns the last one."""
        end = time.time() + timeout
        while time.time() < end:
            ls = self.loads()
            if len(ls) >= n:
                return ls[n - 1]
            assert self.proc.poll() is None, "zmeshd exited: %s" % open(self.log_path).read()
            time.sleep(0.05)
        raise AssertionError("no load line #%d in:\n%s" % (n, open(self.log_path).read()))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


def diff(line):
    """The per-kind (+added, ~changed, -removed) counts of a reload line."""
    m = re.fullmatch(r"manifests reloaded: workloads \+(\d+) ~(\d+) -(\d+), services \+(\d+) ~(\d+) -(\d+), "
                     r"policies \+(\d+) ~(\d+) -(\d+)", line["message"])
    assert m, line["message"]
    v = [int(x) for x in m.groups()]
    return {"workloads": tuple(v[0:3]), "services": tuple(v[3:6]), "policies": tuple(v[6:9])}


def test_daemon_reloads(zmeshd_bin, work):
    m = os.path.join(work, "manifests")
    app = os.path.join(m, "app.yaml")
    write(app, NS + pod("web-1", "10.0.0.5") + SVC)
    d = Daemon(zmeshd_bin, work)
    try:
        first = d.wait_loads(1)
        assert first["message"] == "manifests loaded"
        assert (first["workloads"], first["services"], first["policies"]) == (1, 1, 0)
        assert (first["errors"], first["warnings"], first["infos"]) == (0, 0, 0)
        assert first["version"] == 1
        # The CA and the token key are in the state directory.
        for f in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "token-key.pem"):
            assert os.path.exists(os.path.join(work, "state", f)), f
        assert os.stat(os.path.join(work, "state", "token-key.pem")).st_mode & 0o777 == 0o600

        # 1. Edited in place: the pod's address changes.
        write(app, NS + pod("web-1", "10.0.0.6") + SVC)
        l = d.wait_loads(2)
        assert diff(l) == {"workloads": (0, 1, 0), "services": (0, 0, 0), "policies": (0, 0, 0)}
        assert l["version"] == 2 and l["events"] >= 1
        assert re.fullmatch(r"\d+\.\d{3}ms", l["took"]), l["took"]

        # 2. Edited through a rename: the service's port changes and a policy appears.
        write_by_rename(app, NS + pod("web-1", "10.0.0.6") + SVC.replace("port: 80", "port: 81") + POLICY)
        l = d.wait_loads(3)
        assert diff(l) == {"workloads": (0, 1, 0), "services": (0, 1, 0), "policies": (1, 0, 0)}, l
        # (the workload changes too: its service port map follows the service)

        # 3. A file added.
        more = os.path.join(m, "more.yaml")
        write(more, pod("web-2", "10.0.0.7"))
        l = d.wait_loads(4)
        assert diff(l) == {"workloads": (1, 0, 0), "services": (0, 0, 0), "policies": (0, 0, 0)}
        assert l["workloads"] == 2

        # 4. A broken file: reported with file#doc and field, its bad document left out, zmeshd still up.
        broken = os.path.join(m, "broken.yaml")
        write(broken, BROKEN)
        l = d.wait_loads(5)
        assert diff(l) == {"workloads": (1, 0, 0), "services": (0, 0, 0), "policies": (0, 0, 0)}
        assert l["errors"] == 1 and l["workloads"] == 3
        findings = [x["message"] for x in d.lines() if x.get("scope") == "manifest" and x["level"] == "error"]
        assert any(re.fullmatch(r"broken\.yaml#2: spec\.containers: expected a list, got a scalar \(line \d+\)",
                                f) for f in findings), findings

        # 5. Files deleted.
        os.unlink(more)
        os.unlink(broken)
        l = d.wait_loads(6)
        assert diff(l) == {"workloads": (0, 0, 2), "services": (0, 0, 0), "policies": (0, 0, 0)}
        assert l["workloads"] == 1 and l["errors"] == 0 and l["version"] == 6

        # 6. A swap file and a non-manifest file cause no reload; a rewrite with the same content reloads but
        # publishes nothing new (same version).
        write(os.path.join(m, ".app.yaml.swp"), "x")
        write(os.path.join(m, "notes.txt"), "x")
        time.sleep(0.5)
        assert len(d.loads()) == 6
        write_by_rename(app, open(app).read())
        l = d.wait_loads(7)
        assert l["message"] == "manifests reloaded: no changes" and l["version"] == 6

        # 7. The directory replaced by another one (a deploy tool's swap): the watch follows it.
        new = os.path.join(work, "manifests.new")
        os.mkdir(new)
        write(os.path.join(new, "app.yaml"), NS + pod("web-1", "10.0.0.6") + pod("web-3", "10.0.0.8"))
        os.rename(m, os.path.join(work, "manifests.old"))
        os.rename(new, m)
        end = time.time() + 10
        while time.time() < end and d.loads()[-1].get("workloads") != 2:
            time.sleep(0.05)
        l = d.loads()[-1]
        assert l["workloads"] == 2 and l["services"] == 0 and l["policies"] == 0, l
        n = len(d.loads())
        write(os.path.join(m, "more.yaml"), pod("web-4", "10.0.0.9"))
        l = d.wait_loads(n + 1)
        assert diff(l)["workloads"] == (1, 0, 0)
    finally:
        rc = d.stop()
    assert rc == 0, open(d.log_path).read()
    assert any(x["message"] == "received SIGTERM, exiting" for x in d.lines())


def test_daemon_refuses_bad_settings(zmeshd_bin, work):
    r = run(zmeshd_bin, "--manifests", os.path.join(work, "manifests"), "--state-dir", os.path.join(work, "s"),
            "--listen", "nowhere")
    assert r.returncode == 1 and 'listen address \\"nowhere\\"' in r.stderr, r.stderr
    r = run(zmeshd_bin, "--manifests", os.path.join(work, "manifests"), "--state-dir", os.path.join(work, "s"),
            env={"CA_TRUSTED_NODE_ACCOUNTS": "justaname"})
    assert r.returncode == 1 and "CA_TRUSTED_NODE_ACCOUNTS" in r.stderr, r.stderr
    r = run(zmeshd_bin, "--manifests", os.path.join(work, "missing"), "--state-dir", os.path.join(work, "s"))
    assert r.returncode == 1 and "missing" in r.stderr, r.stderr
    r = run(zmeshd_bin, "--manifests", os.path.join(work, "manifests"))
    assert r.returncode == 2 and "--state-dir is required" in r.stderr
    r = run(zmeshd_bin, "--manifests", os.path.join(work, "manifests"), "--state-dir", work, "--sa", "a/b")
    assert r.returncode == 2 and "unknown option --sa" in r.stderr


def test_sigint_and_sighup(zmeshd_bin, work):
    write(os.path.join(work, "manifests", "app.yaml"), NS + pod("web-1", "10.0.0.5"))
    d = Daemon(zmeshd_bin, work)
    try:
        d.wait_loads(1)
        d.proc.send_signal(signal.SIGHUP)
        l = d.wait_loads(2)
        assert l["message"] == "manifests reloaded: no changes"
        d.proc.send_signal(signal.SIGINT)
        assert d.proc.wait(timeout=10) == 0
    finally:
        d.stop()


# ---- zmeshd token ----

def test_token(zmeshd_bin, work):
    state = os.path.join(work, "state")
    r = run(zmeshd_bin, "token", "--sa", "istio-system/ztunnel", "--node", "node1", "--ttl", "30m",
            "--state-dir", state)
    assert r.returncode == 0, r.stderr
    tok = r.stdout.strip()
    assert tok.count(".") == 2 and "\n" not in tok
    key_path = os.path.join(state, "token-key.pem")
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    with open(key_path, "rb") as f:
        pub = serialization.load_pem_private_key(f.read(), password=None).public_key()
    assert jwt.get_unverified_header(tok)["alg"] == "ES256"
    now = time.time()
    claims = jwt.decode(tok, pub, algorithms=["ES256"], audience="istio-ca",
                        issuer="https://zmeshd.istio-system.svc")
    assert claims["sub"] == "system:serviceaccount:istio-system:ztunnel"
    assert claims["aud"] == ["istio-ca"]
    assert abs(claims["iat"] - now) < 60 and claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == 1800
    assert claims["jti"]
    k = claims["kubernetes.io"]
    assert k["namespace"] == "istio-system"
    assert k["serviceaccount"]["name"] == "ztunnel"
    assert k["node"]["name"] == "node1"
    # The same key signs the next token (created once), and the default lifetime is an hour.
    r2 = run(zmeshd_bin, "token", "--sa", "demo/web", "--pod", "web-1", "--state-dir", state)
    assert r2.returncode == 0, r2.stderr
    c2 = jwt.decode(r2.stdout.strip(), pub, algorithms=["ES256"], audience="istio-ca",
                    issuer="https://zmeshd.istio-system.svc")
    assert c2["exp"] - c2["iat"] == 3600
    assert c2["kubernetes.io"]["pod"]["name"] == "web-1" and "node" not in c2["kubernetes.io"]


def test_token_usage(zmeshd_bin, work):
    state = os.path.join(work, "state")
    for args, text in [((), "--sa is required"),
                       (("--sa", "nosep"), "expected <namespace>/<service account>"),
                       (("--sa", "a/b/c"), "expected <namespace>/<service account>"),
                       (("--sa", "a/b", "--ttl", "forever"), "not a duration"),
                       (("--sa", "a/b", "--ttl", "400d"), "between 1s and 366d"),
                       (("--sa", "a/b", "--manifests", "x"), "unknown option --manifests")]:
        r = run(zmeshd_bin, "token", "--state-dir", state, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert text in r.stderr, (args, r.stderr)
    r = run(zmeshd_bin, "token", "--sa", "a/b")
    assert r.returncode == 2 and "--state-dir is required" in r.stderr
