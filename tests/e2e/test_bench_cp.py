"""Smoke test of the control-plane benchmark (bench/cp.py): every part runs end to end with tiny sizes (2 real
ztunnels, 3 simulated clients, 2 edits, a 200-pod "big" mesh, 1 s of CA calls), so the benchmark cannot rot
silently. It checks that each part produced its figures and that the counts are right (a one-pod change is one
resource per client); it asserts no wall-clock time."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_cp_tiny(ztunnel_bin, tmp_path):
    clients = os.path.join(REPO, "build", "bench", "xds_clients")
    if not os.access(clients, os.X_OK):
        pytest.skip("no %s (run make all)" % clients)
    out = str(tmp_path / "cp.json")
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "cp.py"), "--ztunnels", "2", "--nodes", "1",
                        "--clients", "3", "--edits", "2", "--mesh-pods", "20", "--big-pods", "200",
                        "--big-services", "40", "--big-policies", "10", "--big-namespaces", "4",
                        "--big-clients", "3", "--big-edits", "1", "--ca-seconds", "1", "--ca-warmup", "0",
                        "--ca-inflight", "4", "--ca-conns", "1", "--openssl-seconds", "1", "--stall", "10",
                        "--out", out], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.load(open(out))
    res = doc["results"]
    z, s, b, ca = res["ztunnels"], res["sim"], res["scale"], res["ca"]
    for part in (z, s, b, ca):
        assert "error" not in part and "push_error" not in part, part
    assert z["ztunnels"] == 2 and z["latency_ms"]["n"] == 2 and z["one_pod_resources_per_ztunnel"] == 1
    assert s["clients"] == 3 and s["latency_ms"]["n"] == 2 and s["one_pod_resources_per_client"] == 1
    assert s["full_push_resources_per_client"] > 20
    # 200 pods, 40 services, 10 policies, plus the edited pod and policy.
    assert b["counts"]["workloads"] == 201 and b["counts"]["services"] == 40 and b["counts"]["policies"] == 11
    assert b["full_push_resources_per_client"] == 201 + 40 + 11
    assert b["one_pod"]["resources_per_client"] == 1 and b["mem_kb_loaded"]["VmRSS"] > 0
    # zmeshd's own bookkeeping (its per-push debug lines) agrees with what the clients counted.
    one = b["one_pod"]
    assert (one["zmeshd_pushes"], one["zmeshd_resources_max"], one["zmeshd_bytes_max"]) == \
        (3, 1, one["bytes_per_client"]), one
    assert ca["ok"] > 0 and ca["errors"] == 0 and ca["answer_checked"] and ca["openssl_sign_s"] > 0
    for k in ("ztunnel_push_p50", "sim_push_p50", "sim_one_pod_resources", "scale_one_pod_resources",
              "ztunnel_one_pod_resources", "scale_rss"):
        assert k in doc["checks"], doc["checks"]
    assert "load average" in r.stdout and "push to last ACK" in r.stdout
