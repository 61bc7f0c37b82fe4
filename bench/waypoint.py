#!/usr/bin/env python3
"""The waypoint's HTTP cost, side by side in one run (issue 9): requests per second, latency and the waypoint's
CPU per request, for the same client, app and ztunnels, with and without the waypoint in the path.

Topology (tests/e2e's Mesh, 2 nodes x 2 pods, dedicated ztunnels with in-pod rules on n1p2 and n2p1): n1p1
runs the waypoint (one worker unless --workers), n1p2 is the client (wrk, HTTP/1.1 keep-alive), n2p1 the app: HAProxy answering every request with a fixed 200 (`http-request return`), so the app is
not the bottleneck. Two services share that endpoint: `l4` (VIP 10.96.0.11, no waypoint: ztunnel to ztunnel)
and `l7` (VIP 10.96.0.10, bound to the waypoint: client ztunnel -> waypoint -> app's ztunnel). Rows:

  l4 http1      wrk to the l4 VIP (the floor: two ztunnels, no L7 proxy)
  l7 http1      wrk to the l7 VIP (the waypoint parses, routes, counts every request)

Per row: requests/s, latency p50/p99 (wrk's --latency), the waypoint's CPU ms per 1000
requests (utime+stime from /proc around the run), its RSS after the run, and the ratio of l7 to l4 requests/s.
Istio's published figure for its Envoy waypoint is about 4k requests/s per vCPU; this prints zmesh's per CPU
second of the waypoint process. Wall-clock figures on a shared 2-core VM are noisy: compare rows of one run.

Usage: bench/run.sh waypoint [--time S] [--conns N] [--workers N] [--access-log]"""
import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

from helpers import Mesh, wait_for  # noqa: E402
from topo import tail  # noqa: E402

L7_VIP, L4_VIP = "10.96.0.10", "10.96.0.11"
WP_HOST = "waypoint.default.svc.cluster.local"
HAPROXY_CFG = """global
    maxconn 4000
defaults
    mode http
    timeout client 30s
    timeout server 30s
    timeout connect 5s
frontend f
    bind :8080
    http-request return status 200 content-type text/plain string ok
"""


def log(msg):
    print(f"[waypoint] {msg}", file=sys.stderr, flush=True)


def cpu_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def l7_config(routes, policies):
    """A VirtualService on Service l7 of routes http routes, every one but the last for a path and a header
    the benchmark never sends (so a request is matched against all of them), and policies DENY
    AuthorizationPolicies for paths it never asks for (so all are evaluated and none denies)."""
    docs = ["apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bench, namespace: "
            "default}\nspec:\n  hosts: [l7]\n  http:\n" + "".join(
                "  - match: [{uri: {prefix: /r%d/}, headers: {x-tenant: {exact: t%d}}}]\n"
                "    route: [{destination: {host: l7}}]\n" % (i, i) for i in range(routes - 1)) +
            "  - route: [{destination: {host: l7}}]\n    headers: {response: {set: {x-bench-route: last}}}\n"]
    for i in range(policies):
        docs.append("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p%d, "
                    "namespace: default}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: l7}]\n"
                    "  action: DENY\n  rules: [{to: [{operation: {paths: [/deny-%d/*], methods: [POST]}}]}]\n"
                    % (i, i))
    return "---\n".join(docs)


def wrk(t, pod, url, secs, conns):
    out = t.run(pod.netns, ["wrk", "-t1", "-c%d" % conns, "-d%ds" % secs, "--latency", url], check=False).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def lat(p):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)" % p, out, re.M)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v * 1000 if u == "s" else v
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat(50), "p99": lat(99), "errors": int(errors.group(1)) if errors else 0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", type=int, default=5)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--access-log", action="store_true", help="keep the waypoint's access log on (default off)")
    ap.add_argument("--routes", type=int, default=50, help="http routes of the VirtualService of the last row")
    ap.add_argument("--policies", type=int, default=10, help="AuthorizationPolicies of the last row")
    a = ap.parse_args()

    def svc(name, vip, waypoint):
        s = {"name": name, "namespace": "default", "hostname": "%s.default.svc.cluster.local" % name,
             "vips": ["/" + vip], "ports": {80: 8080}}
        if waypoint:
            s["waypoint"] = {"destination": "default/" + WP_HOST, "hboneMtlsPort": 15008}
        return s
    services = [svc("l7", L7_VIP, True), svc("l4", L4_VIP, False),
                {"name": "waypoint", "namespace": "default", "hostname": WP_HOST, "vips": ["/10.96.0.2"],
                 "ports": {15008: 15008}}]
    extra = {"n2p1": {"services": {"default/l7.default.svc.cluster.local": {80: 8080},
                                   "default/l4.default.svc.cluster.local": {80: 8080}}},
             "n1p1": {"services": {"default/" + WP_HOST: {15008: 15008}}}}
    m = Mesh(nodes=2, pods=2, meshed=["n1p2", "n2p1"], workload_extra=extra, services=services,
             env={"RUST_LOG": "warn"})
    m.pod("n1p1").sa = "waypoint"
    rows = []
    try:
        m.up()
        t = m.topo
        cfg = os.path.join(t.workdir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG)
        t.popen(m.pod("n2p1").netns, ["haproxy", "-f", cfg, "-db"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        assert t.wait_listen(m.pod("n2p1").netns, (8080,), 10)
        wp = m.pod("n1p1")
        client = m.pod("n1p2")
        l7_dir = os.path.join(t.workdir, "l7")
        os.makedirs(l7_dir)
        with open(os.path.join(l7_dir, "l7.yaml"), "w") as f:
            f.write(l7_config(a.routes, a.policies))

        def start_waypoint(l7):
            env = dict(os.environ)
            env.update({"LOCAL_XDS_PATH": m.config, "LOCAL_CA_DIR": t.ca(), "POD_NAME": wp.name, "POD_NAMESPACE":
                        "default", "SERVICE_ACCOUNT": "waypoint", "INSTANCE_IP": wp.ip,
                        "WAYPOINT_WORKER_THREADS": str(a.workers), "LOG_LEVEL": "info" if a.access_log else "warn"})
            if l7:
                env["LOCAL_L7_PATH"] = l7_dir
            log_path = os.path.join(t.workdir, "waypoint.log")
            with open(log_path, "ab") as lf:
                proc = t.popen(wp.netns, [os.path.join(t.bin_dir(), "waypoint")], env=env, stdout=lf, stderr=lf)
            if not t.wait_listen(wp.netns, (15008,), 10, proc):
                raise RuntimeError("waypoint did not start:\n" + tail(log_path))
            return proc

        proc = start_waypoint(False)
        rows_plan = [("l4 http1", L4_VIP, "/"), ("l7 http1", L7_VIP, "/")]
        for phase in (0, 1):
            pid = proc.pid  # `ip netns exec` execs the waypoint
            for name, vip, path in rows_plan:
                c0 = cpu_ms(pid)
                r = wrk(t, client, "http://%s%s" % (vip, path), a.time, a.conns)
                r["cpu_ms_per_1k"] = (cpu_ms(pid) - c0) / max(1.0, r["rps"] * a.time) * 1000
                r["rss_kb"] = rss_kb(pid)
                rows.append((name, r))
                log("%s: %.0f req/s" % (name, r["rps"]))
            if phase == 0:
                # The same waypoint with a VirtualService of --routes http routes (the request matches the last)
                # and --policies AuthorizationPolicies (all evaluated, none denies) on the Service.
                proc.terminate()
                proc.wait(timeout=10)
                proc = start_waypoint(True)
                # Only a measurement of the routes if they are in force: the last route tags its answers.
                head = t.run(client.netns, ["curl", "-s", "-m", "5", "-D", "-", "-o", "/dev/null",
                                            "http://%s/last" % L7_VIP], check=False).stdout
                if "x-bench-route: last" not in head.lower():
                    raise RuntimeError("the VirtualService is not in force:\n" + head)
                rows_plan = [("l7 %dr/%dp" % (a.routes, a.policies), L7_VIP, "/last")]
    finally:
        m.down()
    l4 = dict(rows).get("l4 http1", {}).get("rps")
    print("%-10s %10s %8s %8s %7s %14s %9s %10s" % ("row", "req/s", "p50 ms", "p99 ms", "errors", "wp CPU ms/1k",
                                                      "wp RSS KB", "vs l4"))
    for name, r in rows:
        print("%-10s %10.0f %8.2f %8.2f %7d %14.1f %9d %10s" % (
            name, r["rps"], r["p50"], r["p99"], r["errors"], r["cpu_ms_per_1k"] if name != "l4 http1" else 0,
            r["rss_kb"], "%.2fx" % (r["rps"] / l4) if l4 else "-"))
    l7 = dict(rows).get("l7 http1")
    if l7 and l7["cpu_ms_per_1k"] > 0:
        print("waypoint: %.0f requests per CPU second (Istio's Envoy waypoint: about 4000 per vCPU)" %
              (1000.0 * 1000 / l7["cpu_ms_per_1k"]))
    big = dict(rows).get("l7 %dr/%dp" % (a.routes, a.policies))
    if l7 and big and big["cpu_ms_per_1k"] > 0:
        ratio = l7["cpu_ms_per_1k"] / big["cpu_ms_per_1k"]
        print("with %d routes and %d policies: %.0f requests per CPU second, %.2fx the route-free figure "
              "(target >= 0.90): %s" % (a.routes, a.policies, 1000.0 * 1000 / big["cpu_ms_per_1k"], ratio,
                                        "PASS" if ratio >= 0.9 else "FAIL"))


if __name__ == "__main__":
    main()
