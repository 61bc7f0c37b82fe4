#!/usr/bin/python3
"""zmesh demo: adopting the ambient mesh on a running application, told and checked step by step.

Run as root after `make all` (or simply `make demo`):

    /usr/bin/python3 scripts/demo.py [--prefix P --node-subnet A.B.C.0 --pod-subnet A.B.0.0 --state-dir DIR]
                                     [--bin-dir DIR] [--no-color] [--keep]

It starts a local cluster with `zmesh up examples/bookinfo-lite` (docs/local-cluster.md: nodes are network
namespaces on a bridge, pods wired by the real CNI plugins with zmesh-cni chained, zmeshd, and per node a
shared ztunnel and the node agent) whose namespace `shop` starts OUTSIDE the mesh, and then tells the story of
adopting it, with the zmesh commands an operator types:

  1. the app runs without the mesh: client -> frontend -> catalog/ratings works, and a capture on node1's
     uplink shows plaintext HTTP (the catalog's answer readable on the wire);
  2. `zmesh label ns shop istio.io/dataplane-mode=ambient`: no pod restarts (same container pids, same network
     namespaces, RESTARTS 0), the same traffic is now HBONE (only TLS to port 15008 on the wire), the ztunnels'
     access logs carry both SPIFFE identities, node1's ztunnel holds a certificate per service account; the
     time from the label to the first HBONE connection on the wire is measured;
  3. an AuthorizationPolicy (examples/bookinfo-lite/policies/catalog-allow-frontend.yaml) is applied: client ->
     catalog directly is refused, client -> frontend -> catalog still works; then it is deleted;
  4. the label is removed: plaintext again, no in-pod rules left (iptables-save), still no pod restarted;
  5. re-labelled, a long-lived TCP connection from client to catalog's echo survives `zmesh rollout ztunnel
     node1` (it echoes after the old ztunnel got SIGTERM), a new connection goes through the new ztunnel, and
     the old one exits once the long-lived connection ends;
  6. Istio's TCP metrics from node1's (new) ztunnel;
  7. `zmesh waypoint apply -n shop --enroll-namespace --wait`, `zmesh waypoint list`, the WAYPOINT column of
     `zmesh ztunnel-config services` (shop bound, warehouse not), ratings now called from the waypoint's IP;
  8. HTTPRoutes (examples/bookinfo-lite/waypoint/): ratings split 90/10 between ratings-v1 and ratings-v2
     (200 requests on one keep-alive connection, counted per version), then `x-user: tester` to v2 only; then
     a Service over both ratings pods called with ?fail=v2 (v2 answers 503): Istio's default retry policy on the
     waypoint sends those to v1, so the client sees only 200s while ratings-v2's log shows its 503s;
  9. an L7 AuthorizationPolicy (targetRefs: the ratings Service) allowing GET: GET 200, POST 403 `RBAC: access
     denied`, and `zmesh why` explaining that POST (the waypoint, the policy); the waypoint's istio_requests_total
     table; warehouse (no waypoint) still on the L4 path.

Every step is also a check: the exit status is 0 only if all of them pass. The cluster is torn down at the end
(`zmesh down`), also on errors and on Ctrl-C / SIGTERM. docs/demo.md explains how to read the output. The
defaults (prefix zmesh, 172.30.0.0, 10.244.0.0, /run/zmesh) are zmesh up's; a second cluster on the same host
needs its own (tests/e2e/test_demo.py passes its own).
"""
import argparse
import calendar
import ctypes
import http.client
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
from topo import ipv4_tcp, read_pcap  # noqa: E402  (the e2e tests' pcap reader, standard library only)

SAMPLE = os.path.join(REPO, "examples", "bookinfo-lite")
POLICY = os.path.join(SAMPLE, "policies", "catalog-allow-frontend.yaml")
NS = "shop"
PODS = ("catalog", "client", "frontend", "ratings")
LABEL = "istio.io/dataplane-mode"
FRONTEND_URL = "http://10.96.20.12/"          # the frontend's Service VIP (examples/bookinfo-lite/30-frontend.yaml)
CATALOG_URL = "http://10.96.20.10:9080/"      # the catalog's Service VIP
ECHO_PORT = 9090                              # catalog's TCP echo (ECHO_PORT in 10-catalog.yaml)
# Bytes of the catalog's answer (a book title in app.py): the capture looks for them on the wire.
APP_BYTES = b"Unix Network Programming"
HBONE_PORT, XDS_PORT = 15008, 15012
SPIFFE = "spiffe://cluster.local/ns/%s/sa/%%s" % NS
# Step 7-9: shop's waypoint and its L7 resources (examples/bookinfo-lite/waypoint/); warehouse keeps no waypoint.
RATINGS_PODS = ("ratings", "ratings-v2")
RATINGS_IP, RATINGS_PORT = "10.96.20.11", 9080    # the ratings Service (20-ratings.yaml)
INVENTORY_URL = "http://10.96.20.20:9080/"        # warehouse's inventory Service (50-warehouse.yaml)
L4_NS = "warehouse"
L7_DIR = os.path.join(SAMPLE, "waypoint")
RATINGS_V2 = os.path.join(L7_DIR, "ratings-v2.yaml")      # the pod ratings-v2, Services ratings-v1, -v2
WAREHOUSE = os.path.join(L7_DIR, "warehouse.yaml")
ROUTE_SPLIT = os.path.join(L7_DIR, "ratings-split.yaml")
ROUTE_TESTER = os.path.join(L7_DIR, "ratings-tester.yaml")
POLICY_L7 = os.path.join(L7_DIR, "ratings-get-only.yaml")
RETRY_SVC = os.path.join(L7_DIR, "ratings-any.yaml")
RETRY_IP = "10.96.20.15"                   # ratings-any: both ratings pods, no route (ratings-any.yaml)
RETRY_REQUESTS = 20
SPLIT_REQUESTS = 200                # requests counted per version for the 90/10 split
# v2's share must land here: 10% expected; at 200 requests a fair 90/10 falls below 4% (under 8 requests) with
# probability 0.05% and above 20% with 0.0007% (binomial), while 50/50 (no route) or 100/0 fail for certain.
SPLIT_V2_MIN, SPLIT_V2_MAX = 0.04, 0.20
TESTER_REQUESTS = 20                # requests with x-user: tester, all of which must reach v2
WAYPOINT_TIMEOUT = 30.0             # the waypoint pod's start and the first config it applies
N_STEPS = 9
CONVERGE_TIMEOUT = 30.0
PROBE_EVERY_MS = 20
_CLONE_NEWNET = 0x40000000


# ---- presentation ------------------------------------------------------------------------------------------
class Style:
    """ANSI styling, enabled only when stdout is a terminal (and NO_COLOR is unset)."""

    def __init__(self, enabled):
        self.on = enabled
        utf8 = (getattr(sys.stdout, "encoding", "") or "").lower().replace("-", "") == "utf8"
        self.ok_mark = "✔" if utf8 else "OK"
        self.bad_mark = "✘" if utf8 else "FAIL"
        self.arrow = "→" if utf8 else "->"

    def _c(self, code, s):
        return "\033[%sm%s\033[0m" % (code, s) if self.on else s

    def bold(self, s):
        return self._c("1", s)

    def dim(self, s):
        return self._c("2", s)

    def green(self, s):
        return self._c("32", s)

    def red(self, s):
        return self._c("31;1", s)

    def cyan(self, s):
        return self._c("36", s)

    def yellow(self, s):
        return self._c("33", s)

    def magenta(self, s):
        return self._c("35", s)


class StepFailed(Exception):
    pass


class Interrupted(BaseException):
    """Raised from SIGTERM/SIGHUP handlers so that the normal finally-teardown runs."""


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def table(rows, header, st, colors=None):
    """Renders rows (lists of str) as aligned columns; widths ignore ANSI codes since colors apply after."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    out = ["    " + st.dim("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())]
    for r in rows:
        cells = []
        for i, (c, w) in enumerate(zip(r, widths)):
            cell = str(c).ljust(w)
            if colors and colors.get(i):
                cell = colors[i](cell)
            cells.append(cell)
        out.append("    " + "  ".join(cells).rstrip())
    return "\n".join(out)


def times(n):
    return "once" if n == 1 else "%d times" % n


def hexdump_line(b, n=16):
    return " ".join("%02x" % x for x in b[:n])


def printable(b, n=64):
    return "".join(chr(x) if 32 <= x < 127 else "." for x in b[:n])


# ---- network namespaces and the wire -----------------------------------------------------------------------
def netns_socket(netns):
    """A new TCP socket created inside network namespace netns (its traffic stays there for its whole life),
    as a process of that pod or node would make it. The namespace switch happens in a helper thread."""
    out = {}

    def worker():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open("/run/netns/" + netns, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, "setns(%s): %s" % (netns, os.strerror(e)))
            finally:
                os.close(fd)
            out["sock"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except BaseException as e:  # handed to the caller's thread
            out["err"] = e

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    if "err" in out:
        raise out["err"]
    return out["sock"]


class Capture:
    """tcpdump on iface inside netns while the with-block runs (full snap length, written unbuffered), stopped
    with SIGINT so that the pcap is complete."""

    def __init__(self, netns, iface, path):
        self.netns, self.iface, self.path = netns, iface, path

    def __enter__(self):
        cmd = ["ip", "netns", "exec", self.netns, "tcpdump", "-i", self.iface, "--immediate-mode", "-U", "-s",
               "0", "-n", "-Z", "root", "-w", self.path, "ip and not igmp"]
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
        sel = selectors.DefaultSelector()
        sel.register(self.p.stderr, selectors.EVENT_READ)
        buf, deadline = b"", time.monotonic() + 5
        while b"listening on" not in buf:
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.p.kill()
                raise RuntimeError("tcpdump did not start: %s" % buf.decode(errors="replace"))
            if sel.select(timeout=0.1):
                chunk = os.read(self.p.stderr.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        sel.close()
        return self

    def __exit__(self, *exc):
        time.sleep(0.3)     # let the last packets reach the capture buffer
        self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.p.stderr.close()
        return False


class Prober(threading.Thread):
    """Connects from netns to ip:port every PROBE_EVERY_MS (a new TCP connection and an HTTP/1.0 GET each), so
    that the capture of the enrolment dates the switch to HBONE to within that period."""

    def __init__(self, netns, ip, port):
        super().__init__(daemon=True)
        self.netns, self.ip, self.port = netns, ip, port
        self.halt = threading.Event()
        self.tries = self.ok = 0

    def run(self):
        while not self.halt.is_set():
            self.tries += 1
            try:
                s = netns_socket(self.netns)
                try:
                    s.settimeout(1)
                    s.connect((self.ip, self.port))
                    s.sendall(b"GET /probe HTTP/1.0\r\n\r\n")
                    if s.recv(12).startswith(b"HTTP/1.0 200"):
                        self.ok += 1
                finally:
                    s.close()
            except OSError:
                pass
            self.halt.wait(PROBE_EVERY_MS / 1000)

    def stop(self):
        self.halt.set()
        self.join(5)


class NetnsHTTP(http.client.HTTPConnection):
    """http.client's connection whose socket is made in a pod's network namespace (also when it reconnects)."""

    def __init__(self, netns, host, port, timeout=3):
        super().__init__(host, port, timeout=timeout)
        self.netns = netns

    def connect(self):
        self.sock = netns_socket(self.netns)
        self.sock.settimeout(self.timeout)
        self.sock.connect((self.host, self.port))


def parse_kv(line):
    """A text access-log line's key=value fields (values may be quoted)."""
    return {k: (v[1:-1] if v.startswith('"') else v)
            for k, v in re.findall(r'(\S+?)=("(?:[^"\\]|\\.)*"|\S+)', line)}


# ---- the demo ----------------------------------------------------------------------------------------------
class Demo:
    def __init__(self, args, st):
        self.args = args
        self.st = st
        self.bin = args.bin_dir
        self.zmesh_bin = os.path.join(self.bin, "zmesh")
        self.state = args.state_dir
        self.prefix = args.prefix
        # Every zmesh command finds the cluster through ZMESH_STATE_DIR (ztunnel-config --node reads only it),
        # so the commands shown are the ones an operator types.
        self.env = dict(os.environ, ZMESH_STATE_DIR=self.state)
        self.workdir = None
        self.up_done = False
        self.results = []       # (step title, ok, detail)
        self.failed_checks = []
        self.agent_exits_seen = 0
        self.pre_netns, self.pre_bridge = set(), False
        self.baseline = None
        self.ips = {}

    def say(self, s=""):
        print(s, flush=True)

    def check(self, ok, text, detail=""):
        st = self.st
        mark = st.green(st.ok_mark) if ok else st.red(st.bad_mark)
        self.say("    %s %s%s" % (mark, text, (" " + st.dim(detail)) if detail else ""))
        if not ok:
            self.failed_checks.append(text + (" " + detail if detail else ""))
        return ok

    def show(self, text, style=None, indent="    "):
        for line in text.rstrip("\n").splitlines():
            self.say(indent + (style(line) if style else line))

    def cmd(self, text, note=""):
        self.say("  %s %s%s" % (self.st.yellow("$"), text, ("   " + self.st.dim(note)) if note else ""))

    def zmesh(self, *args, timeout=90):
        return subprocess.run([self.zmesh_bin] + list(args), capture_output=True, text=True, timeout=timeout,
                              env=self.env, stdin=subprocess.DEVNULL)

    def prefixed_netns(self):
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [l.split()[0] for l in out.splitlines() if l.startswith(self.prefix + "-")]

    def pod_netns(self, pod):
        return "%s-%s_%s" % (self.prefix, NS, pod)

    def node_netns(self, node):
        return "%s-%s" % (self.prefix, node)

    @staticmethod
    def poll(fn, timeout=10.0, every=0.2):
        """Calls fn until it returns something true or timeout passes; returns the last result."""
        deadline = time.monotonic() + timeout
        while True:
            r = fn()
            if r or time.monotonic() > deadline:
                return r
            time.sleep(every)

    # ---- reading the cluster -------------------------------------------------------------------------------
    def pods(self):
        """NAME -> the `zmesh get pods -o wide -n shop` columns, and the table's text."""
        r = self.zmesh("get", "pods", "-n", NS, "-o", "wide")
        lines = r.stdout.splitlines()
        rows = {}
        if lines:
            head = re.split(r"\s{2,}", lines[0].strip())
            for line in lines[1:]:
                row = dict(zip(head, re.split(r"\s{2,}", line.strip())))
                if "NAME" in row:
                    rows[row["NAME"]] = row
        return rows, r.stdout

    def containers(self):
        """pod -> (its container's pid, its network namespace's inode): what a restart would change."""
        out = {}
        for pod in PODS:
            ns = self.pod_netns(pod)
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            pids = []
            for pid in r.stdout.split():
                try:
                    with open("/proc/%s/cmdline" % pid, "rb") as f:
                        argv = f.read().split(b"\0")
                except OSError:
                    continue
                if b"app.py" in argv:     # the pod's one container (ratings-v2 runs app.py ratings too)
                    pids.append(int(pid))
            try:
                ino = os.stat("/run/netns/" + ns).st_ino
            except OSError:
                ino = None
            out[pod] = (min(pids) if pids else None, ino)
        return out

    def exec_curl(self, pod, url, timeout=3):
        """`zmesh exec <pod> -n shop -- curl -s -m T URL`: (exit status, body)."""
        r = self.zmesh("exec", pod, "-n", NS, "--", "curl", "-s", "-m", str(timeout), url, timeout=timeout + 10)
        return r.returncode, r.stdout

    def page(self):
        """client -> frontend (-> catalog, ratings): the frontend's page as a dict, or None."""
        rc, body = self.exec_curl("client", FRONTEND_URL, timeout=4)
        try:
            return json.loads(body) if rc == 0 else None
        except ValueError:
            return None

    @staticmethod
    def page_ok(p):
        return bool(p) and p.get("pod") == "frontend" and p.get("catalog", {}).get("pod") == "catalog" \
            and p.get("ratings", {}).get("pod") in RATINGS_PODS

    def show_page(self, p):
        st = self.st
        if not p:
            self.say("    %s" % st.red("no answer"))
            return
        self.say("    %s" % st.dim("frontend=%s catalog=%s ratings=%s (each names its pod and who called it: "
                                   "catalog saw %s)" % (p.get("pod"), p.get("catalog", {}).get("pod", "-"),
                                                        p.get("ratings", {}).get("pod", "-"),
                                                        p.get("catalog", {}).get("caller", "-"))))
        for k in ("catalog", "ratings"):
            if "error" in p.get(k, {}):
                self.say("    %s" % st.red("%s: %s" % (k, p[k]["error"])))

    def log_lines(self, component):
        """The lines of <state>/logs/<component>.log (ztunnel-node1, agent-node2, controller...)."""
        try:
            with open(os.path.join(self.state, "logs", component + ".log"), errors="replace") as f:
                return f.read().splitlines()
        except OSError:
            return []

    def access(self, node, since=0.0):
        """node's ztunnel access-log lines (all its generations write the same file) logged at or after since
        (epoch seconds), as dicts with _time."""
        out = []
        for line in self.log_lines("ztunnel-" + node):
            if "\taccess\t" not in line or "connection complete" not in line:
                continue
            try:
                t = calendar.timegm(time.strptime(line[:19], "%Y-%m-%dT%H:%M:%S")) \
                    + float("0" + line[19:line.index("Z")])
            except ValueError:
                continue
            if t >= since:
                kv = parse_kv(line)
                kv["_time"], kv["_level"] = t, line.split("\t")[1]
                out.append(kv)
        return out

    def agent_exits(self):
        """controller.log lines saying a node agent exited (a crash, restarted with backoff)."""
        return [l for l in self.log_lines("controller") if re.search(r" agent \S+ exited", l)]

    def check_agents(self):
        """Fails the step when a node agent exited since the last call, quoting the controller's lines."""
        ex = self.agent_exits()
        new = ex[self.agent_exits_seen:]
        self.agent_exits_seen = len(ex)
        self.check(not new, "the node agents kept running (no exit in zmesh logs controller)",
                   "" if not new else "(%d exits: %s)" % (len(new), "; ".join(l[21:] for l in new[:3])))
        if new:
            self.say(self.st.red("      zmesh bug: zmesh-cni agent dies with SIGSEGV (status 139) when two pods of "
                                 "one node change enrolment at once; the controller restarts it with backoff and "
                                 "the mesh converges late. See zmesh logs agent/<node>."))

    def check_no_restart(self):
        now = self.containers()
        rows, _ = self.pods()
        changed = ["%s: pid %s -> %s, netns inode %s -> %s" % (p, self.baseline[p][0], now[p][0],
                                                               self.baseline[p][1], now[p][1])
                   for p in PODS if now.get(p) != self.baseline.get(p)]
        restarts = {p: rows.get(p, {}).get("RESTARTS", "?") for p in PODS}
        ok = not changed and all(v == "0" for v in restarts.values())
        self.check(ok, "no pod restarted: each container is the same process (pids %s), in the same network "
                   "namespace, RESTARTS 0" % ", ".join("%s %s" % (p, now[p][0]) for p in PODS),
                   "" if ok else "(%s; RESTARTS %s)" % ("; ".join(changed) or "pids unchanged", restarts))

    def wire(self, path):
        """What a capture on node1's uplink holds: pod-to-pod TCP (both ends pod IPs) and the control plane."""
        lt, pkts = read_pcap(path, times=True)
        pod_ips = set(self.ips.values())
        tcp = [(ts, x) for ts, x in ((ts, ipv4_tcp(lt, p)) for ts, p in pkts) if x]
        between = [(ts, x) for ts, x in tcp if x[0] in pod_ips and x[2] in pod_ips]
        control = [x for _, x in tcp if XDS_PORT in (x[1], x[3])]
        ports = sorted({min(x[1], x[3]) for _, x in between})
        data = [x for _, x in between if x[5]]
        hits = sum(x[5].count(APP_BYTES) for x in data)
        syn15008 = [ts for ts, x in between if x[3] == HBONE_PORT and x[4] & 0x02 and not x[4] & 0x10]
        return {"packets": len(pkts), "tcp": len(tcp), "between": between, "control": control, "ports": ports,
                "data": data, "hits": hits, "first_hbone": min(syn15008) if syn15008 else None,
                "other": len(tcp) - len(between) - len(control)}

    def say_wire(self, w):
        self.say("    captured %d IP packets: %d between pods (ports %s), %d of the node's ztunnel/agent with "
                 "zmeshd (:%d), %d other" % (w["packets"], len(w["between"]),
                                             ", ".join(str(p) for p in w["ports"]) or "-", len(w["control"]),
                                             XDS_PORT, w["other"]))

    def converged(self, since):
        """Once client -> frontend -> catalog/ratings works and node2's ztunnel logged the frontend's calls to
        both as inbound HBONE with its identity (the catalog's and ratings' pods served): the page."""
        p = self.page()
        if not self.page_ok(p):
            return None
        inbound = {l.get("dst.workload") for l in self.access("node2", since)
                   if l.get("direction") == "inbound" and l.get("src.identity") == SPIFFE % "frontend"
                   and l["_level"] == "info"}
        return p if "catalog" in inbound and inbound & set(RATINGS_PODS) else None

    # ---- steps ---------------------------------------------------------------------------------------------
    def step_up(self):
        st = self.st
        args = ["up", SAMPLE, "--prefix", self.prefix, "--node-subnet", self.args.node_subnet, "--pod-subnet",
                self.args.pod_subnet, "--bin-dir", self.bin]
        defaults = (self.prefix == "zmesh" and self.args.node_subnet == "172.30.0.0"
                    and self.args.pod_subnet == "10.244.0.0")
        self.cmd("zmesh up %s%s" % (os.path.relpath(SAMPLE, REPO), "" if defaults else
                                    " --prefix %s --node-subnet %s --pod-subnet %s" % (
                                        self.prefix, self.args.node_subnet, self.args.pod_subnet)))
        self.pre_netns = set(self.prefixed_netns())
        self.pre_bridge = os.path.exists("/sys/class/net/%s0" % self.prefix)
        t0 = time.monotonic()
        self.up_done = True     # from here on, teardown runs zmesh down (also after a partial up)
        r = self.zmesh(*args, timeout=120)
        secs = time.monotonic() - t0
        self.show(r.stdout + r.stderr, None if r.returncode == 0 else st.red)
        if not self.check(r.returncode == 0, "cluster up in %.1f s: zmeshd, and per node a shared ztunnel and "
                          "the node agent" % secs, "" if r.returncode == 0 else "(exit %d)" % r.returncode):
            raise StepFailed("zmesh up failed")
        rows, text = self.pods()
        self.cmd("zmesh get pods -n shop -o wide")
        self.show(text)
        self.ips = {p: rows.get(p, {}).get("IP") for p in PODS}
        ok = set(rows) == set(PODS) and all(r.get("STATUS") == "Running" and r.get("READY") == "1/1"
                                             for r in rows.values())
        self.check(ok, "4 pods Running and ready, on two nodes")
        self.check(all(r.get("MODE") == "none" for r in rows.values()),
                   "MODE none: namespace shop carries no istio.io/dataplane-mode label, nothing is meshed")
        self.baseline = self.containers()
        self.check(all(v[0] and v[1] for v in self.baseline.values()), "each pod's container found by its "
                   "network namespace (ip netns pids %s-shop_<pod>)" % self.prefix)

    def step_plaintext(self):
        st = self.st
        path = os.path.join(self.workdir, "1-plaintext.pcap")
        self.say("  tcpdump on node1's uplink (eth0 in netns %s) while:" % self.node_netns("node1"))
        self.cmd("zmesh exec client -n shop -- curl -s %s" % FRONTEND_URL)
        with Capture(self.node_netns("node1"), "eth0", path):
            p = self.page()
        self.show_page(p)
        self.check(self.page_ok(p), "client %s frontend %s catalog and ratings (node2) answered"
                   % (st.arrow, st.arrow))
        self.check(p is not None and p.get("catalog", {}).get("caller") == self.ips["frontend"],
                   "catalog saw the frontend's pod IP %s: a direct connection, nothing in between"
                   % self.ips["frontend"])
        w = self.wire(path)
        self.say_wire(w)
        clear = next((x for x in w["data"] if APP_BYTES in x[5]), None)
        if clear:
            i = clear[5].find(b"{")
            self.say("    a payload from %s:%d reads: %s" % (clear[0], clear[1],
                                                            st.red(printable(clear[5][max(i, 0):], 90))))
        self.check(w["hits"] > 0 and HBONE_PORT not in w["ports"],
                   "PLAINTEXT: the catalog's answer (\"%s\") is readable on the wire (%s), nothing on "
                   ":%d" % (APP_BYTES.decode(), times(w["hits"]), HBONE_PORT), "(pcap: %s)" % path)

    def step_enrol(self):
        st = self.st
        path = os.path.join(self.workdir, "2-enrol.pcap")
        self.cmd("zmesh label ns shop %s=ambient" % LABEL, "(live: no pod is restarted)")
        probe = Prober(self.pod_netns("frontend"), self.ips["catalog"], 9080)
        with Capture(self.node_netns("node1"), "eth0", path):
            probe.start()
            try:
                time.sleep(0.1)
                t0 = time.time()
                r = self.zmesh("label", "ns", NS, "%s=ambient" % LABEL)
                self.show(r.stdout + r.stderr, None if r.returncode == 0 else st.red)
                self.say("  %s" % st.dim("(meanwhile a probe in frontend's network namespace connects to catalog "
                                         "%s:9080 every %d ms, and the client calls the frontend until the mesh "
                                         "carries every call)" % (self.ips["catalog"], PROBE_EVERY_MS)))
                p = self.poll(lambda: self.converged(t0), timeout=CONVERGE_TIMEOUT)
                t_ok = time.time()
            finally:
                probe.stop()
        w = self.wire(path)
        if w["first_hbone"]:
            self.say("    label %s first HBONE connection (SYN to :%d) on node1's uplink: %s"
                     % (st.arrow, HBONE_PORT, st.bold("%d ms" % round((w["first_hbone"] - t0) * 1000))))
        last_plain = [ts for ts, x in w["between"] if x[3] == 9080 and x[4] & 0x02 and not x[4] & 0x10]
        if last_plain and max(last_plain) >= t0:
            self.say("    label %s last plaintext connection (SYN to :9080): %d ms" % (
                st.arrow, round((max(last_plain) - t0) * 1000)))
        self.say("    label %s the whole path meshed (a page served, node2's ztunnel logged both calls): %d ms"
                 % (st.arrow, round((t_ok - t0) * 1000)))
        self.say(st.dim("    probe: %d connections, %d answered, %d failed while the pods were handed over"
                        % (probe.tries, probe.ok, probe.tries - probe.ok)))
        self.check(r.returncode == 0 and self.page_ok(p), "the same calls work inside the mesh",
                   "" if p else "(not within %.0f s)" % CONVERGE_TIMEOUT)
        self.check_agents()

        path = os.path.join(self.workdir, "2-hbone.pcap")
        self.cmd("zmesh exec client -n shop -- curl -s %s" % FRONTEND_URL, "(captured again)")
        with Capture(self.node_netns("node1"), "eth0", path):
            p = self.page()
        self.show_page(p)
        w = self.wire(path)
        self.say_wire(w)
        rec = next((x for x in w["data"] if x[5][:3] == b"\x17\x03\x03"), None)
        if rec:
            self.say("    a payload to %s:%d starts %s %s" % (rec[2], rec[3], st.magenta(hexdump_line(rec[5])),
                                                             st.dim("(17 03 03: a TLS application-data record)")))
        self.check(self.page_ok(p) and w["ports"] == [HBONE_PORT] and rec is not None and w["hits"] == 0,
                   "ENCRYPTED: every pod-to-pod packet is TLS to/from :%d, the app's bytes appear 0 times"
                   % HBONE_PORT, "" if w["ports"] == [HBONE_PORT] else "(ports %s; pcap %s)" % (w["ports"], path))
        self.check(p is not None and p.get("catalog", {}).get("caller") == self.ips["frontend"],
                   "catalog still sees the frontend's own pod IP %s (ztunnel connects from it)"
                   % self.ips["frontend"])

        self.cmd("zmesh logs ztunnel/node2", "(catalog's and ratings' node; some fields of the newest lines)")
        lines = [l for l in self.access("node2", t0) if l.get("direction") == "inbound"
                 and l.get("src.identity") == SPIFFE % "frontend"]
        for l in lines[-2:]:
            self.say("    %s" % st.dim("direction=inbound src.workload=%s dst.hbone_addr=%s bytes_sent=%s"
                                       % (l.get("src.workload"), l.get("dst.hbone_addr"), l.get("bytes_sent"))))
            self.say("      src.identity=%s dst.identity=%s" % (st.cyan(l.get("src.identity", "-")),
                                                               st.cyan(l.get("dst.identity", "-"))))
        got = {l.get("dst.workload"): l.get("dst.identity") for l in lines}
        rat = {got[w] for w in RATINGS_PODS if w in got}
        self.check(got.get("catalog") == SPIFFE % "catalog" and rat == {SPIFFE % "ratings"},
                   "node2's ztunnel verified the caller as %s and answered as the catalog's and ratings' own "
                   "service accounts" % (SPIFFE % "frontend"))

        self.cmd("zmesh ztunnel-config certificates --node node1", "(frontend and client run on node1)")
        r = self.zmesh("ztunnel-config", "certificates", "--node", "node1")
        self.show(r.stdout if r.returncode == 0 else r.stderr, None if r.returncode == 0 else st.red)
        leaves = {m.group(1) for m in re.finditer(r"^(\S+)\s+Leaf\s+Available\s+true\s", r.stdout, re.M)}
        self.check(leaves == {SPIFFE % "client", SPIFFE % "frontend"}, "node1's one ztunnel holds a "
                   "certificate per service account of its pods (issued by zmeshd's CA, by impersonation)",
                   "" if leaves == {SPIFFE % "client", SPIFFE % "frontend"} else "(leaves: %s)" % sorted(leaves))
        rows, text = self.pods()
        self.check(all(r.get("MODE") == "ambient" for r in rows.values()), "zmesh get pods: MODE ambient")
        self.check_no_restart()

    def step_policy(self):
        st = self.st
        rel = os.path.relpath(POLICY, REPO)
        with open(POLICY) as f:
            body = [l.rstrip() for l in f if l.strip() and not l.lstrip().startswith("#")]
        spec = body[body.index("spec:"):] if "spec:" in body else body
        self.say("  %s: only %s may call the catalog" % (st.bold(rel), SPIFFE % "frontend"))
        for l in spec:
            self.say("    " + st.dim(l))
        self.cmd("zmesh apply -f %s" % rel)
        t0 = time.time()
        r = self.zmesh("apply", "-f", POLICY)
        self.show(r.stdout + r.stderr, None if r.returncode == 0 else st.red)

        def refused():
            rc, body = self.exec_curl("client", CATALOG_URL, timeout=2)
            return (rc, body) if rc != 0 else None
        got = self.poll(refused, timeout=10)
        ms = round((time.time() - t0) * 1000)
        self.cmd("zmesh exec client -n shop -- curl -s %s" % CATALOG_URL, "(client straight to the catalog)")
        self.say("    %s" % ("curl exit %d, no answer (%d ms after the apply)" % (got[0], ms) if got
                             else st.red("answered: the policy is not enforced")))
        deny = self.poll(lambda: [l for l in self.access("node2", t0) if l.get("src.workload") == "client"
                                  and "policy" in l.get("error", "")], timeout=3)
        if deny:
            self.say("    node2's ztunnel: %s" % st.dim("src.identity=%s dst.workload=%s error=%s" % (
                deny[-1].get("src.identity"), deny[-1].get("dst.workload"), st.red('"%s"' % deny[-1]["error"]))))
        self.check(r.returncode == 0 and got is not None and bool(deny),
                   "client %s catalog is refused by catalog's ztunnel (client's identity is not allowed)"
                   % st.arrow)
        self.cmd("zmesh exec client -n shop -- curl -s %s" % FRONTEND_URL)
        p = self.page()
        self.show_page(p)
        self.check(self.page_ok(p), "client %s frontend %s catalog still works: the frontend is allowed"
                   % (st.arrow, st.arrow))
        self.cmd("zmesh delete -f %s" % rel)
        t1 = time.time()
        r = self.zmesh("delete", "-f", POLICY)
        self.show(r.stdout + r.stderr, None if r.returncode == 0 else st.red)
        ok = self.poll(lambda: self.exec_curl("client", CATALOG_URL, timeout=2)[0] == 0, timeout=10)
        self.check(r.returncode == 0 and ok, "policy gone: client %s catalog answers again (%d ms after the "
                   "delete)" % (st.arrow, round((time.time() - t1) * 1000)))

    def rules_left(self):
        """pod -> the ISTIO lines iptables-save still shows in its network namespace."""
        out = {}
        for pod in PODS:
            r = subprocess.run(["ip", "netns", "exec", self.pod_netns(pod), "iptables-save"],
                               capture_output=True, text=True)
            left = [l for l in r.stdout.splitlines() if "ISTIO" in l]
            if left or r.returncode != 0:
                out[pod] = left or ["iptables-save failed: %s" % r.stderr.strip()]
        return out

    def step_unenrol(self):
        st = self.st
        self.cmd("zmesh label ns shop %s-" % LABEL)
        t0 = time.time()
        r = self.zmesh("label", "ns", NS, "%s-" % LABEL)
        self.show(r.stdout + r.stderr, None if r.returncode == 0 else st.red)
        left = self.poll(lambda: not self.rules_left(), timeout=CONVERGE_TIMEOUT) or self.rules_left()
        ms = round((time.time() - t0) * 1000)
        self.cmd("ip netns exec %s iptables-save | grep -c ISTIO" % self.pod_netns("catalog"),
                 "(and the same in every pod)")
        left = self.rules_left() if left is not True else {}
        self.say("    %s" % ("0" if not left else st.red("; ".join("%s: %d lines" % (p, len(v))
                                                                   for p, v in left.items()))))
        self.check(r.returncode == 0 and not left, "the node agents removed the in-pod rules of every pod "
                   "(%d ms after the label went)" % ms)
        path = os.path.join(self.workdir, "4-plaintext.pcap")
        self.cmd("zmesh exec client -n shop -- curl -s %s" % FRONTEND_URL, "(captured on node1's uplink)")
        p = self.poll(lambda: (lambda p: p if self.page_ok(p) else None)(self.page()), timeout=10)
        with Capture(self.node_netns("node1"), "eth0", path):
            p = self.page()
        self.show_page(p)
        w = self.wire(path)
        self.say_wire(w)
        self.check(self.page_ok(p) and w["hits"] > 0 and HBONE_PORT not in w["ports"],
                   "plaintext again: the app's bytes on the wire (%s), nothing on :%d"
                   % (times(w["hits"]), HBONE_PORT), "(pcap: %s)" % path)
        rows, _ = self.pods()
        self.check(all(r.get("MODE") == "none" for r in rows.values()), "zmesh get pods: MODE none")
        self.check_agents()
        self.check_no_restart()

    def owner(self, pod, local_port):
        """The pid of the process holding the other end of a redirected connection: the socket accepted on
        :15001 in pod's namespace whose peer is local_port (ss -tnp inside the pod's namespace)."""
        r = subprocess.run(["ip", "netns", "exec", self.pod_netns(pod), "ss", "-tnpH", "state", "established"],
                           capture_output=True, text=True)
        for line in r.stdout.splitlines():
            f = line.split()
            if len(f) >= 5 and f[2].endswith(":15001") and f[3].endswith(":%d" % local_port):
                m = re.search(r"pid=(\d+)", line)
                return int(m.group(1)) if m else None
        return None

    def echo_conn(self):
        """A TCP connection from the client pod's network namespace to the catalog's echo (pod IP :9090)."""
        s = netns_socket(self.pod_netns("client"))
        s.settimeout(5)
        s.connect((self.ips["catalog"], ECHO_PORT))
        return s

    @staticmethod
    def echo(s, msg):
        data = msg.encode()
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            b = s.recv(len(data) - len(got))
            if not b:
                break
            got += b
        return got == data

    def step_rollout(self):
        st = self.st
        self.cmd("zmesh label ns shop %s=ambient" % LABEL, "(back in the mesh)")
        t0 = time.time()
        r = self.zmesh("label", "ns", NS, "%s=ambient" % LABEL)
        self.show(r.stdout + r.stderr, None if r.returncode == 0 else st.red)
        p = self.poll(lambda: self.converged(t0), timeout=CONVERGE_TIMEOUT)
        self.check(r.returncode == 0 and self.page_ok(p), "meshed again in %d ms" % round((time.time() - t0) * 1000))
        self.check_agents()

        self.say("  client opens a long-lived TCP connection to catalog's echo %s:%d and keeps it open "
                 "%s" % (self.ips["catalog"], ECHO_PORT, st.dim("(a socket in the client pod's network namespace)")))
        long = self.echo_conn()
        try:
            lport = long.getsockname()[1]
            ok1 = self.echo(long, "before the rollout\n")
            old_pid = self.owner("client", lport)
            self.check(ok1 and old_pid is not None, "it echoes, through node1's ztunnel (pid %s holds its "
                       "redirected end)" % old_pid)
            self.cmd("zmesh rollout ztunnel node1")
            t_roll = time.time()
            r = self.zmesh("rollout", "ztunnel", "node1")
            self.show(r.stdout + r.stderr, None if r.returncode == 0 else st.red)
            m = re.search(r"generation (\d+) ready \(pid (\d+), admin port (\d+)\); generation (\d+) \(pid (\d+)\) "
                          r"is draining", r.stdout)
            if not self.check(r.returncode == 0 and m is not None and int(m.group(5)) == old_pid,
                              "a new ztunnel generation is ready; the old one (pid %s) got SIGTERM and drains"
                              % old_pid, "" if m else "(no \"is draining\" in the output)"):
                raise StepFailed("rollout did not leave the old ztunnel draining")
            new_pid, self.admin_port = int(m.group(2)), int(m.group(3))
            term = self.poll(lambda: [l for l in self.log_lines("ztunnel-node1") if "received SIGTERM: draining" in l
                                      and l[:19] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_roll - 1))],
                             timeout=3)
            if term:
                self.say("    zmesh logs ztunnel/node1: %s" % st.dim(term[-1].split("\t", 3)[-1].strip()))
            alive = os.path.exists("/proc/%d" % old_pid)
            ok2 = self.echo(long, "after the old ztunnel got SIGTERM\n")
            self.check(bool(term) and alive and ok2, "the long-lived connection still echoes after the SIGTERM, "
                       "served by the draining ztunnel")

            s2 = self.echo_conn()
            try:
                ok3 = self.echo(s2, "a new connection\n")
                new_owner = self.owner("client", s2.getsockname()[1])
                s2_addr = "%s:%d" % s2.getsockname()[:2]
            finally:
                s2.close()
            self.check(ok3 and new_owner == new_pid, "a new connection goes through the new ztunnel (pid %s "
                       "holds it)" % new_owner, "" if new_owner == new_pid else "(expected pid %d)" % new_pid)
            line = self.poll(lambda: [l for l in self.access("node1", t_roll) if l.get("src.addr") == s2_addr],
                             timeout=3)
            if line:
                self.say(st.dim("    (both generations append to zmesh logs ztunnel/node1; ss -tnp in the client's "
                                "namespace shows which process holds a connection)"))
                self.say("    its access line: %s" % st.dim("src.workload=%s dst.hbone_addr=%s src.identity=%s "
                                                           "duration=%s" % tuple(line[-1].get(k) for k in (
                                                               "src.workload", "dst.hbone_addr", "src.identity",
                                                               "duration"))))
            p = self.page()
            self.check(self.page_ok(p) and bool(line), "client %s frontend %s catalog/ratings works through the "
                       "new ztunnel, which logged the new connection" % (st.arrow, st.arrow))
        finally:
            long.close()
        t_close = time.time()
        gone = self.poll(lambda: not os.path.exists("/proc/%d" % old_pid), timeout=10, every=0.05)
        self.check(gone, "the long-lived connection closed: the old ztunnel exited %d ms later"
                   % round((time.time() - t_close) * 1000), "" if gone else "(pid %d still runs)" % old_pid)
        drained = [l for l in self.log_lines("ztunnel-node1") if "drained, exiting" in l]
        if drained:
            self.say("    zmesh logs ztunnel/node1: %s" % st.dim(drained[-1].split("\t", 3)[-1].strip()))
        self.check_no_restart()

    def scrape(self, netns, port):
        s = netns_socket(netns)
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
        finally:
            s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise StepFailed("GET /metrics on 127.0.0.1:%d: %r" % (port, head[:60]))
        if b"transfer-encoding: chunked" in head.lower():
            out, rest = b"", body
            while rest:
                n, _, rest = rest.partition(b"\r\n")
                size = int(n.split(b";")[0] or b"0", 16)
                if size == 0:
                    break
                out, rest = out + rest[:size], rest[size + 2:]
            body = out
        samples = []
        for line in body.decode(errors="replace").splitlines():
            m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)', line)
            if not m or line.startswith("#"):
                continue
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            try:
                samples.append((m.group(1), labels, float(m.group(3))))
            except ValueError:
                pass
        return samples

    def step_metrics(self):
        st = self.st
        port = getattr(self, "admin_port", 15000) + 20
        self.say("  node1's ztunnel serves /metrics on 127.0.0.1:%d in the node's netns %s"
                 % (port, st.dim("(15020, moved by the same 100 as its admin port %d after the rollout; "
                                 "zmesh get does not show it)" % getattr(self, "admin_port", 15000))))
        self.cmd("ip netns exec %s curl -s 127.0.0.1:%d/metrics" % (self.node_netns("node1"), port))
        samples = self.scrape(self.node_netns("node1"), port)
        cols = {"istio_tcp_%s_total" % m: c for m, c in (
            ("connections_opened", "opened"), ("connections_closed", "closed"), ("received_bytes", "received"),
            ("sent_bytes", "sent"))}
        agg = {}
        for name, ls, v in samples:
            if name in cols:
                k = (ls.get("reporter", "?"), ls.get("source_workload", "?"), ls.get("destination_workload", "?"),
                     ls.get("source_principal", "?"))
                row = agg.setdefault(k, {c: 0 for c in cols.values()})
                row[cols[name]] += v
        n_tcp = len([s for s in samples if s[0].startswith("istio_tcp_")])
        self.say(st.dim("    %d samples, %d of them istio_tcp_*; summed per reporter, source and destination:"
                        % (len(samples), n_tcp)))
        rows = [[k[0], "%s %s %s" % (k[1], st.arrow, k[2]), "%d" % r["opened"], "%d" % r["closed"],
                 "%d B" % r["received"], "%d B" % r["sent"]] for k, r in sorted(agg.items())]
        if rows:
            self.say(table(rows, ["reporter", "source → destination workload", "opened", "closed", "received",
                                  "sent"], st, colors={0: st.magenta}))
        echo = [r for k, r in agg.items() if k[0] == "source" and k[1] == "client" and k[2] == "catalog"]
        fe = [r for k, r in agg.items() if k[1] == "client" and k[2] == "frontend"]
        self.check(any(r["opened"] >= 1 and r["sent"] > 0 for r in echo),
                   "client %s catalog: the new connection of step 5, counted by the new generation" % st.arrow)
        self.check(any(r["opened"] >= 1 for r in fe), "client %s frontend counted (istio_tcp_connections_opened_"
                   "total, with the workloads' labels)" % st.arrow)

    # ---- steps 7-9: a waypoint, L7 routing, an L7 policy -------------------------------------------------
    def http(self, timeout=3):
        """One HTTP/1.1 connection from the client pod's network namespace to the ratings Service VIP (what
        the client's ztunnel captures and, once shop uses a waypoint, sends through it)."""
        return NetnsHTTP(self.pod_netns("client"), RATINGS_IP, RATINGS_PORT, timeout=timeout)

    @staticmethod
    def request(conn, method="GET", headers=None):
        """(status, body as a dict or text) of one request on conn (kept alive between calls)."""
        conn.request(method, "/", body=b"{}" if method == "POST" else None, headers=dict(headers or {}))
        r = conn.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, data.decode(errors="replace").strip()

    def wp_log(self, since=0.0, text="config applied"):
        """The waypoint pod's log lines containing text, logged at or after since (epoch seconds)."""
        r = self.zmesh("logs", self.wp_pod, "-n", NS)
        out = []
        for line in r.stdout.splitlines():
            if text not in line:
                continue
            try:
                t = calendar.timegm(time.strptime(line[:19], "%Y-%m-%dT%H:%M:%S")) \
                    + float("0" + line[19:line.index("Z")])
            except ValueError:
                continue
            if t >= since:
                out.append(line)
        return out

    def applied(self, since, routes, policies):
        """Waits until the waypoint logged a config with that many routes and L7 policies after since: the
        moment the applied resource takes effect (zmeshd -> delta xDS -> the waypoint's view)."""
        want = "routes=%d l7_policies=%d" % (routes, policies)
        got = self.poll(lambda: [l for l in self.wp_log(since) if want in l], timeout=10)
        if got:
            self.say("    zmesh logs %s -n shop: %s" % (self.wp_pod, self.st.dim(
                got[-1].split("\t", 3)[-1].strip() + " (%d ms after the apply)" % round(
                    (calendar.timegm(time.strptime(got[-1][:19], "%Y-%m-%dT%H:%M:%S"))
                     + float("0" + got[-1][19:got[-1].index("Z")]) - since) * 1000))))
        return bool(got)

    def show_yaml(self, path):
        with open(path) as f:
            body = [l.rstrip() for l in f if l.strip() and not l.lstrip().startswith("#")]
        spec = body[body.index("spec:"):] if "spec:" in body else body
        for l in spec:
            self.say("    " + self.st.dim(l))

    def apply(self, path):
        rel = os.path.relpath(path, REPO)
        self.cmd("zmesh apply -f %s" % rel)
        t0 = time.time()
        r = self.zmesh("apply", "-f", path)
        self.show(r.stdout + r.stderr, None if r.returncode == 0 else self.st.red)
        if not self.check(r.returncode == 0, "applied"):
            raise StepFailed("zmesh apply -f %s failed" % rel)
        return t0

    def zc_services(self):
        """`zmesh ztunnel-config services`: rows as dicts, and the text."""
        r = self.zmesh("ztunnel-config", "services", "--node", "node1")
        lines = r.stdout.splitlines()
        rows = []
        # istioctl's tabwriter pads with one space, and two headers hold a space: split the rows on whitespace.
        head = ["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"]
        if r.returncode == 0 and lines and lines[0].split() == " ".join(head).split():
            rows = [dict(zip(head, l.split())) for l in lines[1:] if len(l.split()) == len(head)]
        return rows, (r.stdout if r.returncode == 0 else r.stderr)

    def step_waypoint(self):
        st = self.st
        self.say("  deploy, live: a second version of ratings into shop, and a second meshed namespace, warehouse, "
                 "that gets no waypoint")
        self.cmd("zmesh apply -f %s" % os.path.relpath(RATINGS_V2, REPO),
                 "(pod ratings-v2, version: v2; Services ratings-v1 and ratings-v2)")
        r = self.zmesh("apply", "-f", RATINGS_V2)
        self.show(r.stdout + r.stderr, None if r.returncode == 0 else st.red)
        self.cmd("zmesh apply -f %s" % os.path.relpath(WAREHOUSE, REPO), "(labelled istio.io/dataplane-mode=ambient)")
        r2 = self.zmesh("apply", "-f", WAREHOUSE)
        self.show(r2.stdout + r2.stderr, None if r2.returncode == 0 else st.red)
        if not self.check(r.returncode == 0 and r2.returncode == 0, "applied"):
            raise StepFailed("zmesh apply failed")

        def ready(ns, pod):
            rows = self.zmesh("get", "pods", "-n", ns, "-o", "wide").stdout
            m = re.search(r"^%s\s+1/1\s+Running\s+0\s+\S+\s+(\S+)\s+(\S+)\s+ambient\s*$" % re.escape(pod), rows, re.M)
            return m.groups() if m else None
        t0 = time.time()
        v2 = self.poll(lambda: ready(NS, "ratings-v2"), timeout=CONVERGE_TIMEOUT)
        inv = self.poll(lambda: ready(L4_NS, "inventory"), timeout=CONVERGE_TIMEOUT)
        self.check(bool(v2 and inv), "ratings-v2 (%s) and warehouse/inventory (%s) Running, ready and MODE ambient, "
                   "%d ms after the apply" % (v2 and v2[0], inv and inv[0], round((time.time() - t0) * 1000)))
        self.cmd("zmesh waypoint apply -n shop --enroll-namespace --wait", "(istioctl's command; live)")
        t0 = time.time()
        r = self.zmesh("waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait", timeout=WAYPOINT_TIMEOUT + 60)
        self.show(r.stdout + r.stderr, None if r.returncode == 0 else st.red)
        ok = r.returncode == 0 and "waypoint shop/waypoint is ready!" in r.stdout \
            and 'namespace shop labeled with "istio.io/use-waypoint: waypoint"' in r.stdout
        if not self.check(ok, "the waypoint Gateway is Programmed (its pod ready) and shop uses it, %d ms after "
                          "the command" % round((time.time() - t0) * 1000)):
            raise StepFailed("zmesh waypoint apply failed")
        self.cmd("zmesh waypoint list -n shop")
        r = self.zmesh("waypoint", "list", "-n", NS)
        self.show(r.stdout if r.returncode == 0 else r.stderr, None if r.returncode == 0 else st.red)
        self.check(r.returncode == 0 and re.search(r"^waypoint\s+default\s+\S+\s+True\s*$", r.stdout, re.M)
                   is not None, "zmesh waypoint list: waypoint, PROGRAMMED True")
        rows, _ = self.pods()
        wp = [n for n in rows if n.startswith("waypoint-")]
        if not self.check(len(wp) == 1 and rows[wp[0]].get("STATUS") == "Running",
                          "its pod %s runs (build/bin/waypoint, MODE %s: ztunnel does not capture its own "
                          "waypoint)" % (wp[0] if wp else "-", rows[wp[0]].get("MODE") if wp else "-")):
            raise StepFailed("no waypoint pod")
        self.wp_pod, self.wp_ip = wp[0], rows[wp[0]].get("IP")

        def bound():
            rows, text = self.zc_services()
            by = {(x.get("NAMESPACE"), x.get("SERVICE NAME")): x.get("WAYPOINT") for x in rows}
            return (rows, text) if by.get((NS, "ratings")) == "waypoint" else None
        got = self.poll(bound, timeout=10)
        rows, text = got or self.zc_services()
        self.cmd("zmesh ztunnel-config services --node node1", "(node1's ztunnel: where it sends each Service)")
        self.show("\n".join(l for i, l in enumerate(text.splitlines())
                            if i == 0 or re.match(r"(%s|%s)\s" % (NS, L4_NS), l)))
        by = {(x.get("NAMESPACE"), x.get("SERVICE NAME")): x.get("WAYPOINT") for x in rows}
        shop = {k[1]: v for k, v in by.items() if k[0] == NS and k[1] != "waypoint"}
        self.check(bool(shop) and all(v == "waypoint" for v in shop.values()),
                   "every Service of shop has WAYPOINT waypoint (%s)" % ", ".join(sorted(shop)))
        self.check(by.get((L4_NS, "inventory")) == "None", "warehouse/inventory has WAYPOINT None: that namespace "
                   "keeps the L4 path", "" if by.get((L4_NS, "inventory")) == "None"
                   else "(got %s)" % by.get((L4_NS, "inventory")))

        self.cmd("zmesh exec client -n shop -- curl -s %s" % FRONTEND_URL)
        p = self.poll(lambda: (lambda p: p if self.page_ok(p) and p["ratings"].get("caller") == self.wp_ip
                               else None)(self.page()), timeout=10)
        self.show_page(p)
        self.check(p is not None, "client %s frontend %s ratings works, and ratings now sees the waypoint's IP %s "
                   "as its caller (waypoints do not impersonate)" % (st.arrow, st.arrow, self.wp_ip))

    def split_counts(self, n, headers=None):
        counts, other = {}, []
        conn = self.http()
        try:
            for _ in range(n):
                status, body = self.request(conn, headers=headers)
                if status == 200 and isinstance(body, dict):
                    counts[body.get("version", "?")] = counts.get(body.get("version", "?"), 0) + 1
                else:
                    other.append(status)
        finally:
            conn.close()
        return counts, other

    def show_counts(self, counts, n):
        for v in ("v1", "v2"):
            self.say("    ratings %s: %3d  %s" % (v, counts.get(v, 0), self.st.cyan("#" * round(40 * counts.get(v, 0)
                                                                                       / n))))

    def step_routing(self):
        st = self.st
        self.say("  %s: 90%% of ratings' requests to v1, 10%% to v2 %s" % (
            st.bold(os.path.relpath(ROUTE_SPLIT, REPO)), st.dim("(the versions are Services ratings-v1, "
                                                                 "ratings-v2: Gateway API has no subsets)")))
        self.show_yaml(ROUTE_SPLIT)
        t0 = self.apply(ROUTE_SPLIT)
        self.check(self.applied(t0, 1, 0), "the waypoint applied the route")
        self.say("  %d requests from the client pod to ratings %s:%d on one keep-alive connection %s" % (
            SPLIT_REQUESTS, RATINGS_IP, RATINGS_PORT, st.dim("(the waypoint routes each request, not each "
                                                               "connection)")))
        t1 = time.monotonic()
        counts, other = self.split_counts(SPLIT_REQUESTS)
        secs = time.monotonic() - t1
        self.show_counts(counts, SPLIT_REQUESTS)
        share = counts.get("v2", 0) / SPLIT_REQUESTS
        self.check(not other and counts.get("v1", 0) + counts.get("v2", 0) == SPLIT_REQUESTS
                   and SPLIT_V2_MIN <= share <= SPLIT_V2_MAX,
                   "90/10: v2 got %.1f%% (between %d%% and %d%%), every request answered 200 (%.0f requests/s)"
                   % (share * 100, SPLIT_V2_MIN * 100, SPLIT_V2_MAX * 100, SPLIT_REQUESTS / secs),
                   "" if not other else "(other statuses: %s)" % sorted(set(other)))

        self.say("  %s: requests with %s go to v2, the rest keep the split" % (
            st.bold(os.path.relpath(ROUTE_TESTER, REPO)), st.cyan("x-user: tester")))
        self.show_yaml(ROUTE_TESTER)
        t0 = self.apply(ROUTE_TESTER)
        self.check(self.applied(t0, 1, 0), "the waypoint applied the changed route")
        self.cmd("zmesh exec client -n shop -- curl -s -H 'x-user: tester' http://%s:%d/" % (RATINGS_IP, RATINGS_PORT),
                 "(%d times)" % TESTER_REQUESTS)
        counts, other = self.split_counts(TESTER_REQUESTS, headers={"x-user": "tester"})
        self.show_counts(counts, TESTER_REQUESTS)
        self.check(counts.get("v2", 0) == TESTER_REQUESTS and not other,
                   "x-user: tester: %d of %d to v2 (100%%)" % (counts.get("v2", 0), TESTER_REQUESTS))
        counts, other = self.split_counts(TESTER_REQUESTS)
        self.check(counts.get("v1", 0) > 0 and not other, "without the header the split still applies (%d v1, "
                   "%d v2 of %d)" % (counts.get("v1", 0), counts.get("v2", 0), TESTER_REQUESTS))

    def step_retry(self):
        st = self.st
        self.say("  %s: a Service over both ratings pods %s" % (st.bold(os.path.relpath(RETRY_SVC, REPO)), st.dim(
            "(no route: Istio's default retry policy still applies, 2 retries on 503, each on another host)")))
        t0 = self.apply(RETRY_SVC)
        url = "http://%s:%d/?fail=v2" % (RETRY_IP, RATINGS_PORT)
        self.cmd("zmesh exec client -n shop -- curl -s '%s'" % url, "ratings-v2 answers 503 to this one")

        def through_waypoint():
            conn = NetnsHTTP(self.pod_netns("client"), RETRY_IP, RATINGS_PORT, timeout=3)
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                return r.getheader("x-envoy-upstream-service-time") is not None
            except OSError:
                return False
            finally:
                conn.close()
        self.check(self.poll(through_waypoint, timeout=15), "ratings-any answers through the waypoint")
        before = self.retries()
        conn = NetnsHTTP(self.pod_netns("client"), RETRY_IP, RATINGS_PORT, timeout=5)
        got = {}
        try:
            for _ in range(RETRY_REQUESTS):
                conn.request("GET", "/?fail=v2")
                r = conn.getresponse()
                body = r.read()
                key = r.status if r.status != 200 else json.loads(body).get("version")
                got[key] = got.get(key, 0) + 1
        finally:
            conn.close()
        after = self.retries()
        self.say("    %d requests: %s" % (RETRY_REQUESTS, ", ".join("%s %d" % (k, v) for k, v in sorted(
            got.items(), key=str))))
        failed = [l for l in self.zmesh("logs", "ratings-v2", "-n", NS).stdout.splitlines()
                  if "fail=v2" in l and " 503 " in l and l[:8] >= time.strftime("%H:%M:%S", time.localtime(t0))]
        if failed:
            self.say("    zmesh logs ratings-v2 -n shop: %s" % st.dim(failed[-1].strip()))
        self.say("    the waypoint's zmesh_waypoint_upstream_rq_retry_total: %d -> %d" % (before, after))
        self.check(got == {"v1": RETRY_REQUESTS}, "the client saw only v1's 200s: no 503 reached it",
                   "" if got == {"v1": RETRY_REQUESTS} else "(got %s)" % got)
        self.check(len(failed) >= 1 and after - before >= len(failed),
                   "ratings-v2 answered 503 %d times (its own log), each retried by the waypoint on v1" % len(failed),
                   "" if failed else "(no 503 in ratings-v2's log: the pick never chose it)")

    def retries(self):
        for name, ls, v in self.scrape(self.pod_netns(self.wp_pod), 15020):
            if name == "zmesh_waypoint_upstream_rq_retry_total":
                return int(v)
        return 0

    def step_l7_policy(self):
        st = self.st
        self.say("  %s: ratings may only be read %s" % (st.bold(os.path.relpath(POLICY_L7, REPO)),
                                                       st.dim("(targetRefs: the Service; the waypoint enforces it "
                                                              "on the HTTP method)")))
        self.show_yaml(POLICY_L7)
        t0 = self.apply(POLICY_L7)
        self.check(self.applied(t0, 1, 1), "the waypoint applied the policy")
        url = "http://%s:%d/" % (RATINGS_IP, RATINGS_PORT)
        conn = self.http()
        try:
            self.cmd("zmesh exec client -n shop -- curl -s %s" % url)
            g_status, g_body = self.request(conn)
            self.say("    %s %s" % (st.green("HTTP %d" % g_status), st.dim(json.dumps(g_body)[:110])))
            self.cmd("zmesh exec client -n shop -- curl -s -X POST -d '{}' %s" % url)
            p_status, p_body = self.request(conn, "POST", {"Content-Type": "application/json"})
            self.say("    %s %s" % (st.red("HTTP %d" % p_status), p_body))
        finally:
            conn.close()
        self.check(g_status == 200, "GET allowed: 200 from %s" % (g_body.get("pod") if isinstance(g_body, dict)
                                                                   else "-"), "" if g_status == 200 else
                   "(got %d)" % g_status)
        self.check(p_status == 403 and p_body == "RBAC: access denied", "POST refused by the waypoint: 403 RBAC: "
                   "access denied", "" if p_status == 403 else "(got %d %r)" % (p_status, p_body))
        denied = self.poll(lambda: [l for l in self.wp_log(t0, '"POST / HTTP/1.1" 403')], timeout=3)
        if denied:
            self.say("    zmesh logs %s -n shop: %s" % (self.wp_pod, st.dim(denied[-1].split("\t")[-1].strip())))
        # zmesh why explains the same request from the cluster's objects, with the mesh's own code.
        self.cmd("zmesh why client.shop ratings.shop -X POST", "one request explained end to end")
        w = self.zmesh("why", "client.shop", "ratings.shop", "-X", "POST")
        lines = w.stdout.splitlines()
        for l in lines[:1] + [l for l in lines if l.strip().startswith(("Service shop/ratings uses", "L7 "))]:
            self.say("    " + (st.bold(l) if l.startswith("RESULT") else st.dim(l.strip())))
        want = ("RESULT: DENIED: 403 RBAC: access denied, by the waypoint shop/waypoint (no ALLOW policy matches: "
                "shop/ratings-get-only)")
        self.check(w.returncode == 1 and lines[:1] == [want], "zmesh why names the waypoint and the policy that "
                   "refuses the POST", "" if lines[:1] == [want] else "(exit %d: %s)" % (w.returncode,
                                                                                        (lines or [w.stderr])[0]))
        p = self.page()
        self.check(self.page_ok(p), "client %s frontend %s catalog/ratings still works (its calls are GETs)"
                   % (st.arrow, st.arrow))

        port = 15020
        self.say("  the waypoint serves Istio's HTTP metrics on :%d in its pod's network namespace" % port)
        self.cmd("ip netns exec %s curl -s 127.0.0.1:%d/metrics" % (self.pod_netns(self.wp_pod), port))
        samples = self.scrape(self.pod_netns(self.wp_pod), port)
        agg = {}
        for name, ls, v in samples:
            if name == "istio_requests_total" and ls.get("reporter") == "waypoint":
                k = (ls.get("source_workload", "?"), ls.get("destination_service_name", "?"),
                     ls.get("destination_workload", "?"), ls.get("destination_version", "?"),
                     ls.get("response_code", "?"))
                agg[k] = agg.get(k, 0) + v
        self.say(st.dim("    istio_requests_total{reporter=\"waypoint\"}, summed per source, destination "
                        "service, workload, version and response code:"))
        rows = [[k[0], k[1], k[2], k[3], k[4], "%d" % v] for k, v in sorted(agg.items())]
        if rows:
            self.say(table(rows, ["source_workload", "destination_service", "destination_workload", "version",
                                  "response_code", "count"], st, colors={4: st.magenta}))
        n = lambda svc, code, wl=None: sum(v for k, v in agg.items() if k[0] == "client" and k[1] == svc
                                           and k[4] == code and (wl is None or k[2] == wl))
        self.check(n("ratings-v1", "200", "ratings") > 0 and n("ratings-v2", "200", "ratings-v2") >= TESTER_REQUESTS,
                   "client %s ratings-v1 and ratings-v2 counted per version (v2 at least the %d tester requests)"
                   % (st.arrow, TESTER_REQUESTS))
        self.check(n("ratings", "403") >= 1, "client %s ratings: the refused POST counted with response_code 403"
                   % st.arrow)

        self.say("  and warehouse, without a waypoint, keeps ambient's L4 path:")
        self.cmd("zmesh exec client -n shop -- curl -s %s" % INVENTORY_URL)
        t1 = time.time()
        rc, body = self.exec_curl("client", INVENTORY_URL)
        try:
            inv = json.loads(body) if rc == 0 else None
        except ValueError:
            inv = None
        self.say("    %s" % (st.dim(body.strip()[:120]) if inv else st.red("curl exit %d" % rc)))
        self.check(inv is not None and inv.get("pod") == "inventory" and inv.get("caller") == self.ips["client"],
                   "inventory answered and saw the client's own pod IP %s: no waypoint in between"
                   % self.ips["client"], "" if inv else "(no answer)")
        # The client's call, not the readiness probe's (the controller probes from the node, in plain text).
        line = self.poll(lambda: [l for l in self.access("node2", t1) if l.get("dst.workload") == "inventory"
                                  and l.get("direction") == "inbound" and l.get("src.workload") == "client"],
                         timeout=3)
        if line:
            self.say("    node2's ztunnel: %s" % st.dim("direction=inbound src.identity=%s dst.identity=%s" % (
                line[-1].get("src.identity"), line[-1].get("dst.identity"))))
        self.check(bool(line) and line[-1].get("src.identity") == SPIFFE % "client",
                   "node2's ztunnel took it over HBONE straight from the client's ztunnel (mTLS, L4 only)")
        self.check_no_restart()

    # ---- run and teardown ----------------------------------------------------------------------------------
    def teardown(self):
        st = self.st
        if not self.up_done:
            return True
        if any(not r[2] for r in self.results) or len(self.results) < N_STEPS:
            # zmesh down removes the state directory: keep the components' logs for whoever reads the failure.
            try:
                shutil.copytree(os.path.join(self.state, "logs"), os.path.join(self.workdir, "logs"))
            except OSError:
                pass
        r = self.zmesh("down", timeout=150)
        # What another cluster of the same prefix owned before the demo started (zmesh up then refused) is
        # not the demo's to remove.
        left_ns = sorted(set(self.prefixed_netns()) - self.pre_netns)
        bridge = os.path.exists("/sys/class/net/%s0" % self.prefix) and not self.pre_bridge
        ok = r.returncode == 0 and not left_ns and not bridge
        if ok:
            done = (r.stdout.strip().splitlines() or ["done"])[-1]
            if self.pre_netns or self.pre_bridge:
                self.say(st.dim("  zmesh down: %s; nothing left behind of the demo's (another cluster's %d %s-* "
                                "namespaces%s, there before it, untouched)" % (
                                    done, len(self.pre_netns), self.prefix,
                                    " and bridge %s0" % self.prefix if self.pre_bridge else "")))
            else:
                self.say(st.dim("  zmesh down: %s; no %s-* namespace, no bridge %s0: nothing left behind"
                                % (done, self.prefix, self.prefix)))
        else:
            self.say(st.red("  zmesh down (exit %d) left behind: namespaces %s, bridge %s\n%s"
                            % (r.returncode, left_ns, bridge, (r.stdout + r.stderr).strip())))
        return ok

    def run(self):
        st = self.st
        t_start = time.monotonic()
        self.say(st.bold("zmesh demo") + st.dim(" — adopting the ambient mesh on a running app: shared ztunnel "
                                                "per node, HBONE (HTTP/2 CONNECT over mTLS 1.3) on :15008"))
        steps = [("A cluster, the app outside the mesh: plaintext on the wire", [self.step_up,
                                                                                 self.step_plaintext]),
                 ("Into the mesh, live: label the namespace", [self.step_enrol]),
                 ("An L4 authorization policy: only the frontend may call the catalog", [self.step_policy]),
                 ("Out of the mesh again: remove the label", [self.step_unenrol]),
                 ("Upgrade a node's ztunnel under a long-lived connection", [self.step_rollout]),
                 ("What node1's ztunnel counted: Istio's TCP metrics", [self.step_metrics]),
                 ("A waypoint for shop, live: L7 in the path of its Services", [self.step_waypoint]),
                 ("L7 routing on the waypoint: a 90/10 canary, a header route, a retry hiding a failure",
                  [self.step_routing, self.step_retry]),
                 ("An L7 policy (GET yes, POST no), the waypoint's metrics, and a namespace without a waypoint",
                  [self.step_l7_policy])]
        assert len(steps) == N_STEPS
        for n, (title, fns) in enumerate(steps, start=1):
            self.say()
            self.say(st.bold("%d. %s" % (n, title)))
            self.failed_checks = []
            t0 = time.monotonic()
            try:
                for fn in fns:
                    fn()
                if self.failed_checks:
                    raise StepFailed("; ".join(self.failed_checks))
                self.results.append((n, title, True, ""))
                self.say(st.green("  %s step %d passed (%.1f s)" % (st.ok_mark, n, time.monotonic() - t0)))
            except StepFailed as e:
                self.results.append((n, title, False, str(e)))
                self.say(st.red("  %s step %d failed (%.1f s)" % (st.bad_mark, n, time.monotonic() - t0)))
                if n == 1:
                    break       # no cluster, no story
            except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                self.say("    %s %s: %s" % (st.red(st.bad_mark), type(e).__name__, e))
                self.results.append((n, title, False, "%s: %s" % (type(e).__name__, e)))
                self.say(st.red("  %s step %d failed (%.1f s)" % (st.bad_mark, n, time.monotonic() - t0)))
                if n == 1:
                    break
        return time.monotonic() - t_start


def main():
    ap = argparse.ArgumentParser(description="zmesh demo (run as root): adopting the ambient mesh on zmesh up")
    ap.add_argument("--prefix", default="zmesh", help="zmesh up --prefix (default zmesh)")
    ap.add_argument("--node-subnet", default="172.30.0.0", help="zmesh up --node-subnet (default 172.30.0.0)")
    ap.add_argument("--pod-subnet", default="10.244.0.0", help="zmesh up --pod-subnet (default 10.244.0.0)")
    ap.add_argument("--state-dir", default=os.environ.get("ZMESH_STATE_DIR") or "/run/zmesh",
                    help="the cluster's state directory (default $ZMESH_STATE_DIR or /run/zmesh)")
    ap.add_argument("--bin-dir", default=os.environ.get("ZMESH_BIN") or os.path.join(REPO, "build", "bin"),
                    help="where zmesh, ztunnel, zmeshd, zmesh-cni are (default $ZMESH_BIN or build/bin)")
    ap.add_argument("--no-color", action="store_true", help="never use colors")
    ap.add_argument("--keep", action="store_true", help="keep the pcaps even on success")
    args = ap.parse_args()
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except AttributeError:
        pass
    st = Style(sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR"))
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces, iptables, tcpdump); try: sudo make demo", file=sys.stderr)
        return 2
    for prog in ("zmesh", "ztunnel", "zmeshd", "zmesh-cni", "waypoint"):
        if not os.access(os.path.join(args.bin_dir, prog), os.X_OK):
            print("demo: %s not found; run `make all` first (or `make demo`)" % os.path.join(args.bin_dir, prog),
                  file=sys.stderr)
            return 2
    for tool in ("tcpdump", "curl", "iptables-save", "ss"):
        if not shutil.which(tool):
            print("demo: %s is needed (scripts/deps.sh installs it)" % tool, file=sys.stderr)
            return 2
    if os.path.exists(os.path.join(args.state_dir, "cluster.json")):
        # Someone's cluster: the demo must neither use it nor tear it down.
        print("demo: a cluster is already up in %s; run the demo with its own --state-dir, --prefix, "
              "--node-subnet and --pod-subnet (or zmesh down --state-dir %s first)" % (args.state_dir,
                                                                                     args.state_dir),
              file=sys.stderr)
        return 2
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    demo = Demo(args, st)
    demo.workdir = "/tmp/zmesh-demo-%s-%d" % (args.prefix, os.getpid())
    os.makedirs(demo.workdir, exist_ok=True)
    elapsed, interrupted = None, None
    try:
        elapsed = demo.run()
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = type(e).__name__ if isinstance(e, KeyboardInterrupt) else str(e)
    except Exception as e:  # report, then tear down
        print(st.red("\n  demo failed: %s: %s" % (type(e).__name__, e)), flush=True)
    finally:
        # Ctrl-C during teardown must not leave namespaces behind: ignore further signals while cleaning up.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        print(flush=True)
        clean = demo.teardown()
    if interrupted:
        if not args.keep:
            shutil.rmtree(demo.workdir, ignore_errors=True)
        print(st.yellow("interrupted (%s); everything was torn down" % interrupted), flush=True)
        return 130
    if elapsed is None:
        return 1
    failed = [r for r in demo.results if not r[2]]
    not_run = N_STEPS - len(demo.results)
    if failed or not_run or not clean:
        print(st.red("%s %d of %d steps failed%s in %.1f s%s:" % (
            st.bad_mark, len(failed), N_STEPS, ", %d not run" % not_run if not_run else "", elapsed,
            "" if clean else "; the teardown left something behind")))
        for n, title, _, detail in failed:
            print(st.red("    - %d. %s: %s" % (n, title, detail)))
        print(st.dim("pcaps and the cluster's logs kept in %s" % demo.workdir))
        return 1
    print(st.green("%s %d of %d steps passed in %.1f s: enrolled live without a restart, plaintext became mTLS "
                   "between SPIFFE identities, an L4 policy, out and back in, a ztunnel upgraded under a live "
                   "connection, Istio metrics; then a waypoint: a 90/10 canary, a header route, an L7 policy"
                   % (st.ok_mark, N_STEPS, N_STEPS, elapsed)))
    if args.keep:
        print(st.dim("pcaps kept in %s" % demo.workdir))
    else:
        shutil.rmtree(demo.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
