#!/usr/bin/env python3
"""Memory per pod of a shared-mode ztunnel (issue 8 item 8): RSS of one ztunnel serving N idle enrolled pods of N
service accounts, beside the same ztunnel serving none, in one run.

Each pod is a fresh network namespace (no links: an idle pod needs none), listed in a LocalConfig file as a
workload with its own service account, and handed to ztunnel over ZDS by the Python node agent of the tests
(tests/e2e/zds_agent.py). The local CA signs one certificate per service account. Figures: VmRSS (and RssAnon)
of the ztunnel process serving one pod (so the code that signs, parses and loads a certificate is paged in
already: that is paid once, not per pod), and after N more pods are served and every certificate is Available;
the difference divided by N is the cost of one pod (its listener sockets per worker, its view, its certificate
and the two SSL_CTXs of that certificate). The RSS of the empty ztunnel is printed too. Target: <= 64 KB per
pod.

Usage: bench/run.sh pods [--pods N] [--workers N] [--out FILE]"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

import topo  # noqa: E402
import zds_agent  # noqa: E402

TARGET_KB_PER_POD = 64


def log(msg):
    print(f"[pods] {msg}", file=sys.stderr, flush=True)


def status_kb(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0])
    return out


def settle(pid, seconds=1.0):
    """RSS after it stops moving (glibc returns freed arenas lazily; the identity thread finishes last)."""
    prev = None
    for _ in range(20):
        time.sleep(seconds)
        cur = status_kb(pid)
        if prev and abs(cur["VmRSS"] - prev["VmRSS"]) <= 8:
            return cur
        prev = cur
    return prev


def admin(ns, path):
    r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", f"http://127.0.0.1:15000{path}"],
                       capture_output=True, text=True, timeout=10)
    return r.stdout


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--workers", type=int, default=0, help="ZTUNNEL_WORKER_THREADS (default: ztunnel's)")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "pods.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("ZMESH_BIN", args.bin_dir)
    prefix = f"zmp{os.getpid() % 10000}"
    t = topo.Topology(prefix=prefix, nodes=1, pods_per_node=0)
    t.up()
    pods = []
    proc = conn = None
    try:
        node = t.nodes[0]
        for i in range(args.pods + 1):
            ns = f"{prefix}-p{i}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            p = topo.Pod(f"p{i}", ns, f"10.9.{i // 250}.{i % 250 + 1}", 1, node, sa=f"sa-{i}")
            pods.append(p)
        cfg = t.write_config(t.config_yaml(extra_workloads=[p.workload() for p in pods]))
        sock = os.path.join(t.workdir, "zds.sock")
        agent = zds_agent.Agent(zds_agent.stubs(), sock)
        env = dict(os.environ, PROXY_MODE="shared", INPOD_UDS=sock, LOCAL_XDS_PATH=cfg, LOCAL_CA_DIR=t.ca(),
                   RUST_LOG="warn")
        if args.workers:
            env["ZTUNNEL_WORKER_THREADS"] = str(args.workers)
        log_path = os.path.join(t.workdir, "ztunnel.log")
        with open(log_path, "ab") as lf:
            proc = t.popen(node, [os.path.join(args.bin_dir, "ztunnel")], env=env, stdout=lf, stderr=lf,
                           stdin=subprocess.DEVNULL)
        conn = agent.accept()
        assert conn.snapshot_sent() == ""
        empty = settle(proc.pid)
        log(f"empty: {empty}")

        def serve(batch, want):
            for p in batch:
                err = conn.add(p)
                if err:
                    raise SystemExit(f"Add {p.name}: {err}")
            deadline = time.time() + 120
            while True:
                certs = json.loads(admin(node, "/config_dump") or "{}").get("certificates", [])
                avail = sum(1 for c in certs if c.get("state") == "Available")
                if avail >= want:
                    return
                if time.time() > deadline:
                    raise SystemExit(f"only {avail} of {want} certificates became Available")
                time.sleep(0.5)
        serve(pods[:1], 1)
        warm = settle(proc.pid)
        log(f"one pod: {warm}")
        t0 = time.time()
        serve(pods[1:], args.pods + 1)
        added = time.time() - t0
        full = settle(proc.pid)
        log(f"{args.pods} pods: {full}")
        per_pod = (full["VmRSS"] - warm["VmRSS"]) / args.pods
        anon_per_pod = (full["RssAnon"] - warm["RssAnon"]) / args.pods
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        doc = {"pods": args.pods, "service_accounts": args.pods, "threads": threads, "fds": fds,
               "empty_kb": empty, "one_pod_kb": warm, "full_kb": full, "kb_per_pod": per_pod, "anon_kb_per_pod": anon_per_pod,
               "add_seconds": added, "target_kb_per_pod": TARGET_KB_PER_POD,
               "pass": per_pod <= TARGET_KB_PER_POD}
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"\nshared ztunnel, {args.pods} idle pods of {args.pods} service accounts, {threads} threads, "
              f"{fds} fds")
        print(f"RSS empty {empty['VmRSS']} kB (anon {empty['RssAnon']}), one pod {warm['VmRSS']} kB (anon "
              f"{warm['RssAnon']}), {args.pods + 1} pods {full['VmRSS']} kB (anon {full['RssAnon']})")
        print(f"per pod: {per_pod:.1f} kB RSS ({anon_per_pod:.1f} kB anonymous); target <= {TARGET_KB_PER_POD} "
              f"kB: {'PASS' if per_pod <= TARGET_KB_PER_POD else 'FAIL'}; {args.pods} Adds answered and their "
              f"certificates ready in {added * 1000:.0f} ms")
        print(f"results: {os.path.relpath(args.out, os.getcwd())}")
        return 0
    finally:
        if conn:
            conn.close()
        if proc:
            t.stop(proc)
        for p in pods:
            subprocess.run(["ip", "netns", "del", p.netns], stderr=subprocess.DEVNULL)
        t.down()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
