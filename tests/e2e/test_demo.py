"""The demo (scripts/demo.py) on `zmesh up examples/bookinfo-lite`, so that `make demo` cannot rot unnoticed.

The sample with the demo's policy, and with its waypoint resources (ratings-v2, warehouse, two versions of an
HTTPRoute, an L7 policy), must pass `zmesh apply`'s reader (zmeshd check: no error or warning). The demo runs end
to end with its own prefix, subnets and state directory (a cluster of the defaults may be up on the
same host): exit 0, every step's pass line and the checks that tell the story (plaintext, then HBONE with no app
bytes on the wire, identities, certificates, no pod restarted, the policy refusing client -> catalog, the rules
gone, the long-lived connection across the rollout, the old ztunnel's exit, metrics; then the waypoint: applied,
listed Programmed, every shop Service bound to it and warehouse's not, the 90/10 split within its tolerance, the
header route 100% to v2, GET 200 and POST 403 from the L7 policy, the waypoint's istio_requests_total per
version and code, warehouse still on the L4 path), and nothing
left behind (no namespace with the prefix, no bridge, no state directory). Interrupted with Ctrl-C (SIGINT) in
the middle, it still tears everything down and exits 130."""
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile

import pytest

from topo import REPO, Topology

DEMO = os.path.join(REPO, "scripts", "demo.py")
SAMPLE = os.path.join(REPO, "examples", "bookinfo-lite")
POLICY = os.path.join(SAMPLE, "policies", "catalog-allow-frontend.yaml")
L7_DIR = os.path.join(SAMPLE, "waypoint")


@pytest.fixture(scope="module")
def bins():
    for prog in ("zmesh", "zmeshd", "ztunnel", "zmesh-cni"):
        if not os.access(os.path.join(Topology.bin_dir(), prog), os.X_OK):
            pytest.skip("no %s binary in %s (run make all)" % (prog, Topology.bin_dir()))
    return Topology.bin_dir()


class Run:
    """One demo cluster's names: its own prefix, subnets (clear of test_up.py's 172.31.x / 10.150-249) and
    state directory."""

    def __init__(self):
        tag = random.randrange(100, 150)
        self.prefix = "zd%04x" % random.randrange(1 << 16)
        self.node_subnet = "172.29.%d.0" % tag
        self.pod_subnet = "10.%d.0.0" % tag
        self.state = "/run/zmesh-demo-%s" % self.prefix

    def argv(self):
        return ["/usr/bin/python3", DEMO, "--no-color", "--prefix", self.prefix, "--node-subnet",
                self.node_subnet, "--pod-subnet", self.pod_subnet, "--state-dir", self.state]

    def netns(self):
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [l.split()[0] for l in out.splitlines() if l.startswith(self.prefix + "-")]

    def assert_gone(self):
        assert self.netns() == [], "network namespaces left: %s" % self.netns()
        assert not os.path.exists("/sys/class/net/%s0" % self.prefix), "bridge %s0 left" % self.prefix
        assert not os.path.exists(self.state), "state directory %s left" % self.state

    def cleanup(self, bin_dir):
        """Last resort after a failed assertion: zmesh down, then whatever it left."""
        if os.path.exists(self.state):
            subprocess.run([os.path.join(bin_dir, "zmesh"), "down", "--state-dir", self.state],
                           capture_output=True, timeout=150)
        for ns in self.netns():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.prefix + "0"], capture_output=True)
        shutil.rmtree(self.state, ignore_errors=True)


def test_sample_with_the_policy_is_clean(bins):
    d = tempfile.mkdtemp(prefix="zm-demo-manifests-")
    try:
        for f in os.listdir(SAMPLE):
            if f.endswith(".yaml"):
                shutil.copy(os.path.join(SAMPLE, f), d)
        shutil.copy(POLICY, d)
        r = subprocess.run([os.path.join(bins, "zmeshd"), "check", "--manifests", d], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        # The pods have no IP before zmesh up runs them (4 infos); 3 Services, the one policy.
        assert re.search(r"^0 workloads, 3 services, 1 policies; 0 errors, 0 warnings, \d+ infos$",
                         r.stdout, re.M), r.stdout
        # Step 7-9's objects with the sample: ratings-v2 and warehouse's pods (2 more infos), 3 more Services,
        # and the L7 policy, the waypoint's rather than ztunnel's (an info). The two routes are one HTTPRoute
        # (ratings) in two versions: each is checked with the rest.
        for f in ("ratings-v2.yaml", "warehouse.yaml", "ratings-get-only.yaml", "ratings-tester.yaml"):
            shutil.copy(os.path.join(L7_DIR, f), d)
        for route in ("ratings-tester.yaml", "ratings-split.yaml"):
            if route == "ratings-split.yaml":
                os.remove(os.path.join(d, "ratings-tester.yaml"))
                shutil.copy(os.path.join(L7_DIR, route), d)
            r = subprocess.run([os.path.join(bins, "zmeshd"), "check", "--manifests", d], capture_output=True,
                               text=True)
            assert r.returncode == 0, r.stdout + r.stderr
            assert re.search(r"^0 workloads, 6 services, 1 policies; 0 errors, 0 warnings, 7 infos$",
                             r.stdout, re.M), route + ": " + r.stdout
            assert "ratings-get-only.yaml#1: spec.targetRefs: a policy for a waypoint" in r.stdout, r.stdout
    finally:
        shutil.rmtree(d)


# Each step's checks, in the demo's words: the story the output must tell.
STORY = [
    r"✔ MODE none: namespace shop carries no istio\.io/dataplane-mode label",
    r"✔ client → frontend → catalog and ratings \(node2\) answered",
    r"✔ PLAINTEXT: the catalog's answer \(\"Unix Network Programming\"\) is readable on the wire",
    r"✔ step 1 passed",
    r"label → first HBONE connection \(SYN to :15008\) on node1's uplink: \d+ ms",
    r"✔ the node agents kept running",
    r"✔ ENCRYPTED: every pod-to-pod packet is TLS to/from :15008, the app's bytes appear 0 times",
    r"src\.identity=spiffe://cluster\.local/ns/shop/sa/frontend dst\.identity=spiffe://cluster\.local/ns/shop/sa/"
    r"catalog",
    r"✔ node1's one ztunnel holds a certificate per service account of its pods",
    r"✔ no pod restarted: each container is the same process",
    r"✔ step 2 passed",
    r"✔ client → catalog is refused by catalog's ztunnel",
    r"✔ client → frontend → catalog still works: the frontend is allowed",
    r"✔ policy gone: client → catalog answers again",
    r"✔ step 3 passed",
    r"✔ the node agents removed the in-pod rules of every pod",
    r"✔ plaintext again: the app's bytes on the wire",
    r"✔ step 4 passed",
    r"ztunnel node1: generation 1 ready \(pid \d+, admin port 15100\); generation 0 \(pid \d+\) is draining",
    r"✔ the long-lived connection still echoes after the SIGTERM, served by the draining ztunnel",
    r"✔ a new connection goes through the new ztunnel",
    r"✔ the long-lived connection closed: the old ztunnel exited \d+ ms later",
    r"✔ step 5 passed",
    r"node1's ztunnel serves /metrics on 127\.0\.0\.1:15120",
    r"✔ client → catalog: the new connection of step 5, counted by the new generation",
    r"✔ step 6 passed",
    r"pod/ratings-v2 created",
    r"namespace/warehouse created",
    r"✔ ratings-v2 \(\S+\) and warehouse/inventory \(\S+\) Running, ready and MODE ambient",
    r"✅ waypoint shop/waypoint is ready!",
    r"✅ namespace shop labeled with \"istio\.io/use-waypoint: waypoint\"",
    r"^    waypoint\s+default\s+none\s+True$",
    r"^    warehouse inventory\s+10\.96\.20\.20 None",
    r"✔ every Service of shop has WAYPOINT waypoint \(catalog, frontend, ratings, ratings-v1, ratings-v2\)",
    r"✔ warehouse/inventory has WAYPOINT None",
    r"✔ client → frontend → ratings works, and ratings now sees the waypoint's IP",
    r"✔ step 7 passed",
    r"routes=1 l7_policies=0",
    r"✔ 90/10: v2 got \d+\.\d% \(between 4% and 20%\), every request answered 200",
    r"✔ x-user: tester: 20 of 20 to v2 \(100%\)",
    r"✔ without the header the split still applies",
    r"✔ the client saw only v1's 200s: no 503 reached it",
    r"✔ ratings-v2 answered 503 \d+ times \(its own log\), each retried by the waypoint on v1",
    r"✔ step 8 passed",
    r"routes=1 l7_policies=1",
    r"^    HTTP 200 \{\"service\": \"ratings\"",
    r"^    HTTP 403 RBAC: access denied$",
    r"✔ POST refused by the waypoint: 403 RBAC: access denied",
    r"RESULT: DENIED: 403 RBAC: access denied, by the waypoint shop/waypoint \(no ALLOW policy matches: "
    r"shop/ratings-get-only\)",
    r"✔ zmesh why names the waypoint and the policy that refuses the POST",
    r"source_workload\s+destination_service\s+destination_workload\s+version\s+response_code\s+count",
    r"^    client\s+ratings\s+unknown\s+unknown\s+403\s+1$",
    r"^    client\s+ratings-v1\s+ratings\s+v1\s+200\s+\d+$",
    r"^    client\s+ratings-v2\s+ratings-v2\s+v2\s+200\s+\d+$",
    r"✔ inventory answered and saw the client's own pod IP",
    r"✔ node2's ztunnel took it over HBONE straight from the client's ztunnel",
    r"✔ step 9 passed",
    r"nothing left behind",
]


def test_demo_passes_and_leaves_nothing_behind(bins):
    run = Run()
    try:
        r = subprocess.run(run.argv(), capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, PYTHONIOENCODING="utf-8"))
        out = r.stdout
        assert r.returncode == 0, out[-6000:] + r.stderr[-2000:]
        pos = 0
        for pat in STORY:
            m = re.compile(pat, re.M).search(out, pos)
            assert m, "missing (in order): %s\n%s" % (pat, out[pos:pos + 3000])
            pos = m.end()
        m = re.search(r"^✔ 9 of 9 steps passed in ([\d.]+) s", out, re.M)
        assert m, out[-2000:]
        assert "✘" not in out, out
        run.assert_gone()
    finally:
        run.cleanup(bins)


def test_demo_interrupted_tears_down(bins):
    run = Run()
    try:
        p = subprocess.Popen(run.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, PYTHONIOENCODING="utf-8"))
        seen = ""
        try:
            for line in p.stdout:
                seen += line
                if "step 1 passed" in line or "step 1 failed" in line:
                    break
            assert "step 1 passed" in seen, seen
            p.send_signal(signal.SIGINT)     # Ctrl-C in step 2
            rest, _ = p.communicate(timeout=200)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        out = seen + rest
        assert p.returncode == 130, out[-3000:]
        assert "interrupted (KeyboardInterrupt); everything was torn down" in out, out[-3000:]
        assert "nothing left behind" in out, out[-3000:]
        run.assert_gone()
        assert not [d for d in os.listdir("/tmp") if d.startswith("zmesh-demo-%s-" % run.prefix)], \
            "the interrupted demo left its workdir in /tmp"
    finally:
        run.cleanup(bins)
