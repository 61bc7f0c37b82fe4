"""The demo (scripts/demo.py) and its manifests (examples/demo/), so that `make demo` cannot rot unnoticed.

The manifests are what a user would hand zmeshd: `zmeshd check` must find them clean, with and without the
policy the demo's live step copies in. The demo itself runs end to end as `make demo` runs it (a smaller echo
to keep it short): exit 0, every step passed, the policy pushed to every ztunnel with its time from the write
to the last ACK, and nothing left behind. With `--no-mesh` the same story must fail, which shows that its
checks can fail."""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from topo import REPO, Topology

DEMO = os.path.join(REPO, "scripts", "demo.py")
MANIFESTS = os.path.join(REPO, "examples", "demo", "manifests")
POLICIES = os.path.join(REPO, "examples", "demo", "policies")


@pytest.fixture(scope="module")
def zmeshd_bin():
    path = os.path.join(Topology.bin_dir(), "zmeshd")
    if not os.access(path, os.X_OK):
        pytest.skip("no zmeshd binary at %s (run make all)" % path)
    return path


def check(zmeshd_bin, directory):
    return subprocess.run([zmeshd_bin, "check", "--manifests", directory], capture_output=True, text=True)


def test_manifests_are_clean(zmeshd_bin):
    r = check(zmeshd_bin, MANIFESTS)
    assert r.returncode == 0, r.stdout + r.stderr
    # Six pods (five enrolled, legacy not), the backend Service, no policy until the live step.
    assert r.stdout.strip().splitlines()[-1] == \
        "6 workloads, 1 services, 0 policies; 0 errors, 0 warnings, 0 infos", r.stdout


def test_manifests_with_the_policy_are_clean(zmeshd_bin):
    d = tempfile.mkdtemp(prefix="zm-demo-manifests-")
    try:
        for src in (MANIFESTS, POLICIES):
            for f in os.listdir(src):
                shutil.copy(os.path.join(src, f), d)
        r = check(zmeshd_bin, d)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip().splitlines()[-1] == \
            "6 workloads, 1 services, 1 policies; 0 errors, 0 warnings, 0 infos", r.stdout
    finally:
        shutil.rmtree(d)


def run_demo(*args):
    return subprocess.run(["/usr/bin/python3", DEMO, "--no-color", "--mib", "4"] + list(args),
                          capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, PYTHONIOENCODING="utf-8"))


def test_demo_passes(ztunnel_bin, zmeshd_bin):
    r = run_demo()
    out = r.stdout
    assert r.returncode == 0, out[-4000:] + r.stderr[-2000:]
    assert re.search(r"^✔ 9 of 9 steps passed in ", out, re.M), out[-2000:]
    # The live policy step: pushed from the manifest write to every ztunnel's ACK, timed.
    m = re.search(r"zmeshd pushed the policy, 5 of 5 ztunnels ACKed it: (\d+) ms from the write to the last "
                  r"ACK", out)
    assert m, out
    assert int(m.group(1)) < 5000, m.group(0)
    # zmesh ztunnel-config output is part of the story.
    assert re.search(r"^\s+legacy\s+legacy\s+10\.0\.2\.3\s+node2\s+None\s+TCP$", out, re.M), out
    assert "nothing left behind" in out, out[-2000:]


def test_demo_without_the_mesh_fails(ztunnel_bin, zmeshd_bin):
    r = run_demo("--no-mesh")
    assert r.returncode == 1, r.stdout[-3000:]
    assert "PLAINTEXT ON THE WIRE" in r.stdout and "nothing left behind" in r.stdout, r.stdout[-3000:]
