#!/usr/bin/env python3
"""Enrolment latency of `zmesh up` with the mesh: how long from an operator's command until a pod's connections
are captured by its node's ztunnel, median of N rounds, in one local cluster (one node, the real node agent and
CNI plugins, a shared ztunnel).

Pods: `a` (service account sa-a) and `n` (label istio.io/dataplane-mode=none, never enrolled), both echo servers
that greet each connection with the address they see the caller at. A connection from a pod to `n` is captured
exactly when the app at `n` sees another source port than the client's own (ztunnel opened its own connection
to it; `n` has no rules, so nothing else is in between).

- label: `zmesh label ns bench istio.io/dataplane-mode=ambient` until the first captured connection from `a`
  (the bench connects from a's network namespace every 5 ms); then the label is removed and the next round waits
  until a's rules are gone.
- apply: `zmesh apply -f` of a fresh pod into the labelled namespace whose container connects to `n` at once and
  every 5 ms until captured, printing the wall-clock time of the first captured connection and how many went
  out uncaptured or failed (refused) before it; the pod is deleted after each round.

Printed: median, min and max of each (ms), uncaptured first connections of the applied pods, and how many times
the node agent exited during the run (controller.log), since an agent restart delays enrolment.

Usage: bench/run.sh enrol [--rounds N]        (root; python3 bench/enrol.py --rounds 5 does the same)"""
import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

import test_up_mesh as m  # noqa: E402
from helpers import connect  # noqa: E402

NS = "bench"
PROBE = r'''
import socket, sys, time
t0, miss, errors = time.time(), 0, 0
while time.time() - t0 < 60:
    try:
        s = socket.create_connection((sys.argv[2], int(sys.argv[1])), timeout=5)
        local = s.getsockname()
        f = s.makefile("rb")
        seen = f.readline().decode().split()
        f.close()
        s.close()
        if int(seen[2]) != local[1]:
            print("captured %.6f after %d %d" % (time.time(), miss, errors), flush=True)
            break
        miss += 1
    except Exception as e:  # refused while the rules are in and ztunnel's listeners not yet: counted
        errors += 1
    time.sleep(0.005)
time.sleep(3600)
'''


def log(msg):
    print("[enrol] %s" % msg, file=sys.stderr, flush=True)


def pod(name, sa, cmd, labels="", ready=True):
    probe = "    readinessProbe: {tcpSocket: {port: %d}, periodSeconds: 1}\n" % m.PORT if ready else ""
    return ("apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: %s, labels: {app: %s%s}}\n"
            "spec:\n  nodeName: node1\n  serviceAccountName: %s\n  terminationGracePeriodSeconds: 1\n"
            "  containers:\n  - name: c\n    command: %s\n%s" % (name, NS, name, labels, sa, cmd, probe))


def captured(c, src, dst_ip):
    try:
        s = connect(c.netns_of(src), dst_ip, m.PORT, timeout=5)
    except OSError:
        return False
    try:
        local = s.getsockname()[1]
        greet = b""
        while not greet.endswith(b"\n"):
            b = s.recv(1)
            if not b:
                return False
            greet += b
        return int(greet.split()[2]) != local
    except OSError:
        return False
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    m.NS = NS
    d = tempfile.mkdtemp(prefix="zmesh-bench-enrol-")
    with open(os.path.join(d, "echo.py"), "w") as f:
        f.write(m.ECHO_PY)
    with open(os.path.join(d, "probe.py"), "w") as f:
        f.write(PROBE)
    with open(os.path.join(d, "pods.yaml"), "w") as f:
        f.write("apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n---\n" % NS +
                pod("a", "sa-a", '["python3", "-u", "echo.py", "%d"]' % m.PORT) + "---\n" +
                pod("n", "sa-n", '["python3", "-u", "echo.py", "%d"]' % m.PORT, ", %s: none" % m.LABEL))
    c = m.MeshCluster(d)
    c.nodes = 1
    label_ms, apply_ms, uncaptured_first, failed = [], [], 0, 0
    try:
        c.up()
        n_ip = c.ip("n")
        for i in range(args.rounds):
            t0 = time.monotonic()
            c.run("label", "ns", NS, m.LABEL + "=ambient")
            while not captured(c, "a", n_ip):
                if time.monotonic() - t0 > 60:
                    raise SystemExit("a not captured 60 s after the label")
                time.sleep(0.005)
            label_ms.append((time.monotonic() - t0) * 1000)
            path = os.path.join(d, "p%d.yaml" % i)
            with open(path, "w") as f:
                f.write(pod("p%d" % i, "sa-p", '["python3", "-u", "probe.py", "%d", "%s"]' % (m.PORT, n_ip), ready=False))
            t1 = time.time()
            c.run("apply", "-f", path)
            line = m.poll(lambda: re.search(r"^captured .*$", c.run("logs", "p%d" % i, "-n", NS,
                                                                            check=False).stdout, re.M),
                          what="p%d's first captured connection" % i).group(0)
            _, when, _, miss, errors = line.split()
            apply_ms.append((float(when) - t1) * 1000)
            uncaptured_first += int(miss) > 0
            failed += int(errors) > 0
            log("round %d: label %.0f ms, apply %.0f ms (%s uncaptured, %s failed connections first)" % (
                i, label_ms[-1], apply_ms[-1], miss, errors))
            c.run("delete", "-f", path)
            c.run("label", "ns", NS, m.LABEL + "-")
            m.poll(lambda: c.rules("a") == [] and not captured(c, "a", n_ip), what="a out of the mesh")
        exits = c.log("controller").count("agent node1 exited")
    finally:
        m._force_cleanup(c)
        shutil.rmtree(d, ignore_errors=True)
    for name, v in (("zmesh label ns -> first captured connection", label_ms),
                    ("zmesh apply pod -> its first captured connection", apply_ms)):
        print("%-50s median %7.1f ms  min %7.1f  max %7.1f  (%d rounds)" % (
            name, statistics.median(v), min(v), max(v), len(v)))
    print("applied pods whose first connection went out uncaptured: %d of %d" % (uncaptured_first, len(apply_ms)))
    print("applied pods with failed (refused) connections before the first captured one: %d of %d" % (
        failed, len(apply_ms)))
    print("node agent exits during the run: %d" % exits)


if __name__ == "__main__":
    main()
