#!/usr/bin/python3
"""zmesh demo: two nodes, six pods written as Kubernetes manifests, zmeshd serving them, a ztunnel per meshed
pod, and a short story told in the terminal.

Run as root after `make all` (or simply `make demo`):

    /usr/bin/python3 scripts/demo.py [--mib N] [--no-color] [--no-mesh]

It brings up a network-namespace topology (tests/e2e/topo.py) and starts small apps in the pods. The cast is
the manifest directory examples/demo/manifests/ (namespaces, service accounts, pods with their nodes, the
backend Service): the demo copies it into its workdir and starts zmeshd on it in node 1's namespace, then
installs the in-pod redirection rules and one ztunnel per enrolled pod, each configured (delta xDS) and
certified (Istio's CA protocol, with its service-account token) by zmeshd, as istiod configures Istio's
ztunnel; no ztunnel sees a CA key. It then shows: the cast, what zmeshd served (zmesh ztunnel-config), an HTTP
call across nodes, an echo of a few MiB with sha256 check, the ztunnels' access logs, a packet capture proving
the wire is encrypted (with a pod outside the mesh as the contrast), a Service VIP spreading requests over
three backend replicas, an ALLOW policy written into the manifest directory (pushed by zmeshd, with the time
from the write to the last ztunnel's ACK) that refuses the auditor, and the backend ztunnel's Istio TCP
metrics. Every step is also a check: the exit status is 0 only if all of them pass, so the demo doubles as a
smoke test. Everything is torn down at the end, on errors and on Ctrl-C / SIGTERM. docs/demo.md explains how
to read the output.

--no-mesh runs the same story without zmeshd, in-pod rules or ztunnels (developer aid: the mesh checks then
fail, which shows what the demo catches).
"""
import argparse
import base64
import collections
import concurrent.futures
import datetime
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
import topo as topo_mod  # noqa: E402  (path set just above)
from helpers import closed_without_data  # noqa: E402  (the e2e tests' helper)

PY = "/usr/bin/python3"
APPS = os.path.join(REPO, "examples", "demo", "apps.py")
HTTP_PORT, ECHO_PORT = 8080, 9000

EXAMPLES = os.path.join(REPO, "examples", "demo")
MANIFESTS = os.path.join(EXAMPLES, "manifests")
# The policy of the live-policy step: copied into the manifest directory zmeshd watches, then deleted.
POLICY_FILE = os.path.join(EXAMPLES, "policies", "backend-allow-frontend.yaml")
POLICY = "backend-allow-frontend"
ISTIOD = "istiod.istio-system.svc"     # the name on zmeshd's serving certificate, as istiod's
XDS_PORT = 15012
ADDRESS_TYPE = "type.googleapis.com/istio.workload.Address"
AUTHZ_TYPE = "type.googleapis.com/istio.security.Authorization"
PUSH_TIMEOUT = 8.0
DEBOUNCE_MS = 100     # zmeshd's PILOT_DEBOUNCE_AFTER: its default (istiod's), set so that the output is true

# Who is who: topo's pod slot (n<node>p<index>, the network namespace) -> the Pod of the manifests that lives
# there (name, namespace, service account) and what it does. examples/demo/manifests/ must agree (the pod IPs
# and nodeName are the slot's); the control-plane step checks that zmeshd served exactly this.
CAST = {
    "n1p1": ("frontend", "default", "frontend", "meshed: calls backend over HTTP, streams data to its echo"),
    "n1p2": ("auditor", "default", "auditor", "meshed: also calls backend, under its own identity"),
    "n1p3": ("backend-2", "default", "backend",
             "meshed: a second backend replica (HTTP :%d), same identity" % HTTP_PORT),
    "n2p1": ("backend", "default", "backend",
             "meshed: HTTP :%d (answers with who called), echo :%d" % (HTTP_PORT, ECHO_PORT)),
    "n2p2": ("legacy", "legacy", "legacy",
             "NOT meshed: no ambient label, no ztunnel, plain TCP; echo :%d" % ECHO_PORT),
    "n2p3": ("backend-3", "default", "backend",
             "meshed: a third backend replica (HTTP :%d), same identity" % HTTP_PORT),
}
PLAIN = {"legacy"}
# The Service in front of the backend replicas (step 7), as examples/demo/manifests/backend.yaml declares it.
SVC_NAME, SVC_NS, SVC_VIP, SVC_PORT = "backend", "default", "10.96.0.10", 80
SVC_HOST = "%s.%s.svc.cluster.local" % (SVC_NAME, SVC_NS)
BACKENDS = ("backend", "backend-2", "backend-3")
VIP_REQUESTS = 40

# `zmesh proxy-status` (istioctl proxy-status: what zmeshd sent each ztunnel and whether it was ACKed), run in
# node 1's network namespace, where zmeshd's debug port listens on 127.0.0.1:15014.
PROXY_STATUS_ARGS = ["proxy-status"]


# ---- presentation ------------------------------------------------------------------------------------------
class Style:
    """ANSI styling, enabled only when stdout is a terminal (and NO_COLOR is unset)."""

    def __init__(self, enabled):
        self.on = enabled
        utf8 = (getattr(sys.stdout, "encoding", "") or "").lower().replace("-", "") == "utf8"
        self.ok_mark = "✔" if utf8 else "OK"
        self.bad_mark = "✘" if utf8 else "FAIL"
        self.arrow = "→" if utf8 else "->"
        self.both = "⇄" if utf8 else "<->"
        self.bar = "█" if utf8 else "#"

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


def human_bytes(n):
    n = int(n)
    if n >= 1 << 20:
        return "%.1f MiB" % (n / (1 << 20))
    if n >= 10 * 1024:
        return "%.1f KiB" % (n / 1024)
    return "%d B" % n


def short_id(spiffe):
    """spiffe://cluster.local/ns/default/sa/frontend -> sa/frontend (the table's legend says the rest)."""
    if not spiffe:
        return "-"
    return spiffe.rsplit("/", 2)[-2] + "/" + spiffe.rsplit("/", 1)[-1] if "/sa/" in spiffe else spiffe


def hexdump_line(b, n=16):
    return " ".join("%02x" % x for x in b[:n])


def printable(b, n=48):
    return "".join(chr(x) if 32 <= x < 127 else "." for x in b[:n])


# ---- the demo ----------------------------------------------------------------------------------------------
class Demo:
    def __init__(self, args, st):
        self.args = args
        self.st = st
        self.mesh = not args.no_mesh
        self.t = None
        self.ztunnels = {}
        self.zmeshd = None
        self.results = []       # (step title, ok, detail)
        self.flows = []         # client connections made, for matching access log lines
        self.marker = "ZMESH-DEMO-SECRET-%s" % os.urandom(4).hex()

    def say(self, s=""):
        print(s, flush=True)

    def check(self, ok, text, detail=""):
        st = self.st
        mark = st.green(st.ok_mark) if ok else st.red(st.bad_mark)
        self.say("    %s %s%s" % (mark, text, (" " + st.dim(detail)) if detail else ""))
        if not ok:
            # Keep going within the step (later checks still tell something); the step fails at its end.
            self.failed_checks.append(text + (" " + detail if detail else ""))
        return ok

    def pod(self, name):
        return next(p for p in self.t.pods if p.name == name)

    def role(self, pod):
        return pod.name

    def who(self, ip):
        """Pod name for a pod IP (or the IP itself)."""
        for p in self.t.pods:
            if p.ip == ip:
                return self.role(p)
        return ip

    # ---- setup / teardown ----------------------------------------------------------------------------------
    def setup(self):
        st = self.st
        t0 = time.monotonic()
        self.t = topo_mod.Topology(nodes=2, pods_per_node=3)
        self.t.up()
        # The slots become the manifests' pods: the network namespaces keep topo's names (n<node>p<index>),
        # everything the mesh sees (the ztunnel's PROXY_WORKLOAD_INFO, SPIFFE ids, logs) uses the Pod's.
        for p in self.t.pods:
            p.slot = p.name
            p.name, p.namespace, p.sa = CAST[p.slot][:3]
            p.uid = "Kubernetes//Pod/%s/%s" % (p.namespace, p.name)
        apps = {name: [("http", HTTP_PORT, name)] for name in BACKENDS}
        apps["backend"].append(("echo", ECHO_PORT))
        apps["legacy"] = [("echo", ECHO_PORT)]
        for name, servers in apps.items():
            p = self.pod(name)
            log = open(os.path.join(self.t.workdir, "app-%s.log" % p.name), "ab")
            try:
                for srv in servers:
                    self.t.popen(p.netns, [PY, APPS] + [str(x) for x in srv], stdout=log, stderr=log,
                                 stdin=subprocess.DEVNULL)
            finally:
                log.close()
        for name, ports in ((n, [x[1] for x in servers]) for n, servers in apps.items()):
            if not self.t.wait_listen(self.pod(name).netns, ports, timeout=10):
                raise RuntimeError("apps in %s did not start; see %s/app-%s.log"
                                   % (name, self.t.workdir, name))
        if self.mesh:
            self.start_zmeshd()
            # Pods are independent: install rules and start ztunnels for all of them at once (the rules
            # script alone takes about 2 s per pod).
            meshed = [p for p in self.t.pods if p.name not in PLAIN]
            with concurrent.futures.ThreadPoolExecutor(len(meshed)) as ex:
                futs = {p.name: ex.submit(self._mesh_pod, p) for p in meshed}
                for name, fut in futs.items():
                    self.ztunnels[name] = fut.result()
        self.say(st.dim("  (topology, apps%s up in %.1f s; workdir %s)" % (
            ", zmeshd, in-pod rules and %d ztunnels" % len(self.ztunnels) if self.mesh
            else " (mesh disabled)",
            time.monotonic() - t0, self.t.workdir)))

    def start_zmeshd(self):
        """Copies the demo's manifests into the workdir (the live-policy step edits that copy) and starts
        zmeshd on them in node 1's network namespace, its state (CA, token key) in workdir/zmeshd/state."""
        self.manifests = os.path.join(self.t.workdir, "manifests")
        shutil.copytree(MANIFESTS, self.manifests)
        self.cp_dir = os.path.join(self.t.workdir, "zmeshd")
        self.state = os.path.join(self.cp_dir, "state")
        os.makedirs(self.cp_dir)
        self.zmeshd_bin = os.path.join(topo_mod.Topology.bin_dir(), "zmeshd")
        self.zmeshd_log = os.path.join(self.cp_dir, "zmeshd.log")
        self.xds_addr = "https://%s:%d" % (self.t.node_ip(1), XDS_PORT)
        log = open(self.zmeshd_log, "ab")
        try:
            self.zmeshd = self.t.popen(self.t.nodes[0], [self.zmeshd_bin, "--manifests", self.manifests,
                                                         "--state-dir", self.state,
                                                         "--listen", "0.0.0.0:%d" % XDS_PORT],
                                       env=dict(os.environ, LOG_FORMAT="json", RUST_LOG="info",
                                                PILOT_DEBOUNCE_AFTER="%dms" % DEBOUNCE_MS),
                                       stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        if not self.t.wait_listen(self.t.nodes[0], (XDS_PORT,), 10, self.zmeshd):
            raise RuntimeError("zmeshd did not listen on :%d (exit %s); log tail:\n%s"
                               % (XDS_PORT, self.zmeshd.poll(), topo_mod.tail(self.zmeshd_log)))

    def token(self, p):
        """Mints p's service-account token with zmeshd (the projected token a kubelet would mount); returns
        the file holding it."""
        path = os.path.join(self.cp_dir, "token-%s" % p.name)
        r = subprocess.run([self.zmeshd_bin, "token", "--sa", "%s/%s" % (p.namespace, p.sa), "--pod", p.name,
                            "--node", "node%d" % p.node, "--state-dir", self.state, "--ttl", "24h"],
                           capture_output=True, text=True)
        if r.returncode != 0 or not r.stdout.strip():
            raise RuntimeError("zmeshd token for %s/%s failed (%d): %s" % (p.namespace, p.sa, r.returncode,
                                                                         r.stderr.strip()))
        with open(path, "w") as f:
            f.write(r.stdout)
        return path

    @staticmethod
    def principal(pod):
        """The principal form policies use: the SPIFFE id without spiffe://."""
        return pod.spiffe[len("spiffe://"):]

    def _mesh_pod(self, p):
        """In-pod rules and a ztunnel configured and certified by zmeshd, as Istio's ztunnel is by istiod:
        XDS_ADDRESS and CA_ADDRESS, zmeshd's root to verify it, the pod's service-account token, no local
        config and no CA key."""
        self.t.inpod_rules(p)
        root = os.path.join(self.state, "root-cert.pem")
        env = {"LOCAL_XDS_PATH": "", "LOCAL_CA_DIR": "",
               "XDS_ADDRESS": self.xds_addr, "CA_ADDRESS": self.xds_addr,
               "XDS_ROOT_CA": root, "CA_ROOT_CA": root, "ALT_XDS_HOSTNAME": ISTIOD, "ALT_CA_HOSTNAME": ISTIOD,
               "AUTH_TOKEN": self.token(p), "POD_NAME": "ztunnel-" + p.name, "POD_NAMESPACE": "istio-system",
               "INSTANCE_IP": p.ip, "NODE_NAME": "node%d" % p.node, "RUST_LOG": "info,xds=debug"}
        e = dict(os.environ, PROXY_MODE="dedicated", LOG_FORMAT="json",
                 PROXY_WORKLOAD_INFO="%s/%s/%s" % (p.namespace, p.name, p.sa), **env)
        log_path = os.path.join(self.t.workdir, "ztunnel-%s.log" % p.name)
        log = open(log_path, "ab")
        try:
            proc = self.t.popen(p.netns, [os.path.join(topo_mod.Topology.bin_dir(), "ztunnel")], env=e,
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        proc.log_path = log_path
        # The ports listen once the first config arrived from zmeshd (the pod's own workload among it).
        if not self.t.wait_listen(p.netns, (15001, 15006, 15008), 20, proc):
            raise RuntimeError("ztunnel for %s did not listen on 15001/15006/15008 (exit %s); log tail:\n%s"
                               % (p.name, proc.poll(), topo_mod.tail(log_path)))
        return proc

    def teardown(self):
        if self.t is None:
            return True
        prefix = self.t.prefix + "-"
        procs = list(self.t._procs)
        self.t.down()
        left_ns = [l.split()[0] for l in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                         text=True).stdout.splitlines()
                   if l.startswith(prefix)]
        left_procs = [p for p in procs if p.poll() is None]
        ok = not left_ns and not left_procs
        st = self.st
        if ok:
            self.say(st.dim("  teardown: %d namespaces and %d processes removed, nothing left behind"
                            % (len(self.t._all_netns()), len(procs))))
        else:
            self.say(st.red("  teardown left behind: namespaces %s, pids %s"
                            % (left_ns, [p.pid for p in left_procs])))
        return ok

    # ---- client helpers (sockets created inside the source pod's netns) ------------------------------------
    def connect(self, src, ip, port):
        s = topo_mod.netns_socket(src.netns)
        s.settimeout(10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((ip, port))
        return s

    def http_get(self, src, dst, path):
        t0 = time.monotonic()
        s = self.connect(src, dst.ip, HTTP_PORT)
        local = "%s:%d" % s.getsockname()[:2]
        conn = http.client.HTTPConnection(dst.ip, HTTP_PORT, timeout=10)
        conn.sock = s
        conn.request("GET", path, headers={"User-Agent": "demo/" + self.role(src), "Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        ms = (time.monotonic() - t0) * 1000
        self.flows.append({"src": src, "dst": dst, "port": HTTP_PORT, "local": local, "bytes": None})
        return resp.status, body, local, ms

    def echo(self, src, dst, data):
        """Streams data to dst's echo server while reading it back; returns (reply sha256, length, local
        address, seconds)."""
        t0 = time.monotonic()
        s = self.connect(src, dst.ip, ECHO_PORT)
        local = "%s:%d" % s.getsockname()[:2]
        err = []

        def writer():
            try:
                view = memoryview(data)
                for off in range(0, len(view), 1 << 16):
                    s.sendall(view[off:off + (1 << 16)])
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                err.append(e)

        th = threading.Thread(target=writer, daemon=True)
        th.start()
        h, n = hashlib.sha256(), 0
        try:
            while True:
                b = s.recv(1 << 18)
                if not b:
                    break
                h.update(b)
                n += len(b)
        finally:
            th.join(10)
            s.close()
        if err:
            raise err[0]
        self.flows.append({"src": src, "dst": dst, "port": ECHO_PORT, "local": local, "bytes": len(data)})
        return h.hexdigest(), n, local, time.monotonic() - t0

    # ---- the story -----------------------------------------------------------------------------------------
    def step_cast(self):
        st = self.st
        for i, node in enumerate(self.t.nodes, start=1):
            self.say("  %s %s" % (st.bold("node%d" % i), st.dim("uplink eth0 %s  (netns %s)"
                                                               % (self.t.node_ip(i), node))))
            if i == 1 and self.mesh:
                self.say("    %s %-9s %s" % (st.bold("%-9s" % "zmeshd"),
                                             "%s:%d" % (self.t.node_ip(1), XDS_PORT),
                                             st.dim("control plane (istiod's part): xDS and CA; pid %d"
                                                    % self.zmeshd.pid)))
            for p in [p for p in self.t.pods if p.node == i]:
                role, what = p.name, CAST[p.slot][3]
                meshed = p.name in self.ztunnels
                ident = st.cyan(p.spiffe) if p.name not in PLAIN else st.dim("(namespace %s, not enrolled: "
                                                                             "no identity)" % p.namespace)
                self.say("    %s %-9s %s" % (st.bold("%-9s" % role), p.ip, ident))
                z = ("; ztunnel pid %d" % self.ztunnels[p.name].pid) if meshed else ""
                self.say("    %-9s %s" % ("", st.dim(what + z)))
        if self.mesh:
            n = len(self.t.pods) - len(PLAIN)
            self.check(len(self.ztunnels) == n and all(z.poll() is None for z in self.ztunnels.values()),
                       "%d ztunnels running, each listening on 15001 (out), 15006 (in, plain), 15008 (HBONE)"
                       % n)
        else:
            self.check(False, "mesh disabled (--no-mesh): no ztunnels")

    # ---- the control plane ---------------------------------------------------------------------------------
    def zmeshd_lines(self):
        """Every JSON line of zmeshd's log."""
        out = []
        try:
            with open(self.zmeshd_log, errors="replace") as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        except OSError:
            pass
        return out

    def zc(self, p, *args):
        """Runs `zmesh ztunnel-config ARGS` inside p's network namespace (where its ztunnel's admin listens);
        returns the CompletedProcess."""
        return self.t.run(p.netns, [os.path.join(topo_mod.Topology.bin_dir(), "zmesh"), "ztunnel-config"]
                          + list(args), check=False)

    def dump(self, p):
        """p's ztunnel's /config_dump (through `zmesh ztunnel-config all -o json`), or {}."""
        r = self.zc(p, "all", "-o", "json")
        try:
            return json.loads(r.stdout) if r.returncode == 0 else {}
        except ValueError:
            return {}

    @staticmethod
    def ack_lines(lines, type_url):
        """The ztunnel log lines that ACK a response of type_url."""
        return [l for l in lines if str(l.get("message", "")).startswith("type=%s nonce=" % type_url)
                and ": ACK (" in l.get("message", "")]

    def show(self, text, style=None):
        for line in text.rstrip("\n").splitlines():
            self.say("    " + (style(line) if style else line))

    def step_control_plane(self):
        st = self.st
        if not self.mesh:
            self.check(False, "mesh disabled (--no-mesh): no zmeshd")
            return
        files = sorted(f for f in os.listdir(MANIFESTS) if f.endswith((".yaml", ".yml", ".json")))
        kinds = {}
        for f in files:
            with open(os.path.join(MANIFESTS, f)) as fh:
                for k in re.findall(r"^kind:\s*(\w+)", fh.read(), re.M):
                    kinds[k] = kinds.get(k, 0) + 1
        self.say("  manifests: %s %s %s" % (os.path.relpath(MANIFESTS, REPO) + "/", st.arrow,
                                           st.dim(self.manifests + "/ (the copy zmeshd watches)")))
        self.say("    %s" % "  ".join(files))
        self.say("    %s" % st.dim(", ".join("%d %s" % (n, k) for k, n in sorted(kinds.items()))))
        self.say("  %s zmeshd --manifests %s --state-dir %s --listen 0.0.0.0:%d   %s"
                 % (st.yellow("node1$"), os.path.relpath(self.manifests, self.t.workdir),
                    os.path.relpath(self.state, self.t.workdir), XDS_PORT,
                    st.dim("(pid %d, in node1's netns)" % self.zmeshd.pid)))
        zl = self.zmeshd_lines()
        loaded = next((l for l in zl if l.get("message") == "manifests loaded"), None)
        if loaded:
            keys = ("workloads", "services", "policies", "errors", "warnings", "took")
            self.say("    %s" % st.dim("manifests loaded: %s workloads, %s services, %s policies; %s errors, "
                                       "%s warnings (took %s)" % tuple(loaded.get(k, "?") for k in keys)))
        findings = [l for l in zl if l.get("scope") == "manifest"]
        for l in findings[:5]:
            self.say("    %s" % st.red("%s: %s" % (l.get("level"), l.get("message"))))
        want_w = len(self.t.pods)
        self.check(loaded is not None and str(loaded.get("workloads")) == str(want_w)
                   and str(loaded.get("services")) == "1" and str(loaded.get("errors")) == "0"
                   and str(loaded.get("warnings")) == "0",
                   "zmeshd loaded the manifests: %d workloads, 1 service, no error or warning" % want_w,
                   "" if loaded else "(no \"manifests loaded\" line in %s)" % self.zmeshd_log)

        # Each ztunnel: a token, an authenticated xDS stream, both types ACKed, a certificate from zmeshd.
        opened = [l.get("message", "")[len("stream of "):-len(" opened")] for l in self.zmeshd_lines()
                  if l.get("scope") == "xds" and re.match(r"stream of \S+ opened$", l.get("message", ""))]
        tally = {}
        for o in opened:
            tally[o] = tally.get(o, 0) + 1
        self.say("  zmeshd: %d xDS streams opened, each authenticated by its pod's service-account token: %s"
                 % (len(opened), st.dim(", ".join(k + (" ×%d" % n if n > 1 else "")
                                                  for k, n in sorted(tally.items())))))
        expect = sorted("%s/%s" % (self.pod(n).namespace, self.pod(n).sa) for n in self.ztunnels)
        self.check(sorted(opened) == expect, "one stream per ztunnel, under its pod's service account",
                   "" if sorted(opened) == expect else "(opened %s, expected %s)" % (sorted(opened), expect))
        root_pem = open(os.path.join(self.state, "root-cert.pem")).read().strip()
        xds_problems, cert_problems, env_problems = [], [], []
        for name, z in self.ztunnels.items():
            p = self.pod(name)
            lines = self.log_json(name)
            if not (self.ack_lines(lines, ADDRESS_TYPE) and self.ack_lines(lines, AUTHZ_TYPE)):
                xds_problems.append("%s has not ACKed both Address and Authorization" % name)
            nacks = [l for l in lines if "rejecting resources" in str(l.get("message", ""))]
            if nacks:
                xds_problems.append("%s rejected resources: %s" % (name, nacks[0].get("message")))

            def cert():
                c = [c for c in self.dump(p).get("certificates", []) if c.get("identity") == p.spiffe]
                return c if c and c[0].get("state") == "Available" else None
            c = self.poll(cert)
            with open("/proc/%d/environ" % z.pid, "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            if (env.get(b"LOCAL_CA_DIR") or env.get(b"LOCAL_XDS_PATH") or not env.get(b"XDS_ADDRESS")
                    or not env.get(b"CA_ADDRESS")):
                env_problems.append("%s's ztunnel was not started with XDS_ADDRESS and CA_ADDRESS alone"
                                    % name)
            if not c:
                cert_problems.append("%s has no Available certificate for %s" % (name, p.spiffe))
                continue
            try:
                roots = [base64.b64decode(r["pem"]).decode().strip() for r in c[0].get("rootCerts", [])]
                leaf = base64.b64decode(c[0]["certChain"][0]["pem"]).decode()
            except (KeyError, IndexError, ValueError) as e:
                cert_problems.append("%s's certificate in the dump is unreadable (%s)" % (name, e))
                continue
            leaf_path = os.path.join(self.cp_dir, "leaf-%s.pem" % name)
            with open(leaf_path, "w") as f:
                f.write(leaf)
            v = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(self.state, "root-cert.pem"),
                                leaf_path], capture_output=True, text=True)
            if v.returncode != 0 or roots != [root_pem]:
                cert_problems.append("%s's certificate does not chain to zmeshd's root (%s)"
                                     % (name, (v.stdout + v.stderr).strip() or "another root in the dump"))
        n = len(self.ztunnels)
        self.check(not xds_problems, "all %d ztunnels ACKed zmeshd's first push of both types (Address: "
                   "workloads and services; Authorization: policies), no NACK" % n, "; ".join(xds_problems))
        self.check(not cert_problems, "each holds a certificate for its own SPIFFE id from zmeshd's CA "
                   "(openssl verify against %s)" % os.path.relpath(os.path.join(self.state, "root-cert.pem"),
                                                                  self.t.workdir), "; ".join(cert_problems))
        self.check(not env_problems, "none was given a local config or a CA key (no LOCAL_XDS_PATH, no "
                   "LOCAL_CA_DIR: only zmeshd's address, its root certificate and a token)",
                   "; ".join(env_problems))

        fe = self.pod("frontend")
        self.say("  %s zmesh ztunnel-config workloads   %s"
                 % (st.yellow("frontend$"), st.dim("(frontend's ztunnel admin, inside its netns)")))
        r = self.zc(fe, "workloads")
        self.show(r.stdout if r.returncode == 0 else r.stderr, None if r.returncode == 0 else st.red)
        got = {}
        for w in self.dump(fe).get("workloads", []):
            got[w.get("name")] = (w.get("namespace"), ",".join(w.get("workloadIps", [])), w.get("node"),
                                  w.get("protocol"))
        want = {p.name: (p.namespace, p.ip, "node%d" % p.node, "TCP" if p.name in PLAIN else "HBONE")
                for p in self.t.pods}
        wrong = ["%s: %s, want %s" % (n, got.get(n), w) for n, w in sorted(want.items()) if got.get(n) != w]
        wrong += ["unexpected workload %s" % n for n in sorted(set(got) - set(want))]
        self.check(r.returncode == 0 and not wrong, "zmeshd served the pods where the demo wired them (IP, "
                   "node); legacy, not enrolled, is plain TCP and the others HBONE", "; ".join(wrong[:3]))
        self.proxy_status()

    def proxy_status(self):
        """Shows `zmesh proxy-status` and checks that every ztunnel is SYNCED on both types."""
        st = self.st
        zmesh = os.path.join(topo_mod.Topology.bin_dir(), "zmesh")
        self.say("  %s zmesh %s   %s" % (st.yellow("node1$"), " ".join(PROXY_STATUS_ARGS),
                                       st.dim("(what zmeshd sent each ztunnel)")))
        r = self.t.run(self.t.nodes[0], [zmesh] + PROXY_STATUS_ARGS, check=False)
        self.show(r.stdout if r.returncode == 0 else r.stdout + r.stderr,
                  None if r.returncode == 0 else st.red)
        synced = [l for l in r.stdout.splitlines() if l.count("SYNCED") >= 2]
        n = len(self.ztunnels)
        self.check(r.returncode == 0 and len(synced) == n,
                   "zmesh proxy-status: %d of %d ztunnels SYNCED on both types" % (len(synced), n),
                   "(exit %d)" % r.returncode)

    def step_http(self):
        st = self.st
        fe, au, be = self.pod("frontend"), self.pod("auditor"), self.pod("backend")
        for src in (fe, au):
            path = "/hello?from=%s" % self.role(src)
            self.say("  %s GET http://%s:%d%s" % (st.yellow(self.role(src) + "$"), be.ip, HTTP_PORT, path))
            status, body, local, ms = self.http_get(src, be, path)
            try:
                answer = json.loads(body)
            except ValueError:
                answer = {}
            if answer:
                shown = json.dumps({k: answer[k] for k in ("server", "client_addr") if k in answer})
            else:
                shown = body.decode(errors="replace").strip()[:100]
            self.say("    %s %s" % (st.dim("HTTP %d in %.1f ms:" % (status, ms)), shown))
            seen = answer.get("client_addr", "?").rsplit(":", 1)[0]
            self.check(status == 200 and answer.get("server") == "backend",
                       "backend answered across nodes (node1 %s node2)" % st.arrow)
            self.check(seen == src.ip, "backend saw the caller's real pod IP %s" % seen,
                       "(not a node's or a proxy's address)")

    def step_echo(self):
        st = self.st
        fe, be = self.pod("frontend"), self.pod("backend")
        n = self.args.mib << 20
        data = (hashlib.sha256(b"zmesh-demo").digest() * 32768)
        data = (data * (n // len(data) + 1))[:n]
        want = hashlib.sha256(data).hexdigest()
        self.say("  %s stream %d MiB to %s:%d and read it back"
                 % (st.yellow("frontend$"), self.args.mib, be.ip, ECHO_PORT))
        got, length, local, secs = self.echo(fe, be, data)
        self.say("    sent     sha256 %s" % want[:32])
        self.say("    received sha256 %s  %s" % (got[:32], st.dim("(%s in %.2f s, %.0f MiB/s round trip)"
                                                                  % (human_bytes(length), secs,
                                                                     length / (1 << 20) / max(secs, 1e-6)))))
        self.check(got == want and length == n, "%d MiB came back intact (sha256 match)" % self.args.mib)

    def access_lines(self):
        out = []
        for name, z in self.ztunnels.items():
            try:
                with open(z.log_path, errors="replace") as f:
                    for line in f:
                        try:
                            j = json.loads(line)
                        except ValueError:
                            continue
                        if j.get("scope") == "access" and j.get("message") == "connection complete":
                            j["_ztunnel"] = name
                            out.append(j)
            except OSError:
                pass
        return out

    def _match(self, lines, flow):
        """For one flow: the outbound line on the source's ztunnel, the inbound one on the destination's."""
        src, dst, target = flow["src"], flow["dst"], "%s:%d" % (flow["dst"].ip, flow["port"])
        out = [l for l in lines if l["_ztunnel"] == src.name and l.get("direction") == "outbound"
               and l.get("src.addr") == flow["local"]]
        inn = [l for l in lines if l["_ztunnel"] == dst.name and l.get("direction") == "inbound"
               and str(l.get("src.addr", "")).startswith(src.ip + ":") and l.get("dst.hbone_addr") == target
               and l.get("src.identity") == src.spiffe and l not in self._used]
        return (out[-1] if out else None), (inn[0] if inn else None)

    @staticmethod
    def _conv(l):
        """(source IP, destination ip:port) of an access log line: what both ztunnels agree on."""
        return (str(l.get("src.addr", "")).rsplit(":", 1)[0],
                str(l.get("dst.hbone_addr") or l.get("dst.addr", "")))

    def step_logs(self):
        st = self.st
        if not self.mesh:
            self.check(False, "no ztunnels, no access logs (--no-mesh)")
            return
        flows = [f for f in self.flows if f["dst"].name not in PLAIN]
        self._used = []
        deadline = time.monotonic() + 5
        while True:
            lines = self.access_lines()
            self._used = []
            pairs = []
            for f in flows:
                o, i = self._match(lines, f)
                if i is not None:
                    self._used.append(i)
                pairs.append((f, o, i))
            if all(o and i for _, o, i in pairs) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        rows = []
        # One pair of rows per conversation: the source's outbound line, then the destination's inbound one.
        first = {}
        for l in sorted(lines, key=lambda l: l.get("time", "")):
            first.setdefault(self._conv(l), l.get("time", ""))
        for l in sorted(lines, key=lambda l: (first[self._conv(l)], l.get("direction") != "outbound",
                                              l.get("time", ""))):
            src_ip = str(l.get("src.addr", "")).rsplit(":", 1)[0]
            dst_ip, _, dst_port = self._conv(l)[1].rpartition(":")
            rows.append([self.role(self.pod(l["_ztunnel"])),
                         "out" if l.get("direction") == "outbound" else "in",
                         self.who(src_ip),
                         "%s:%s" % (self.who(dst_ip), dst_port),
                         "%s %s %s" % (short_id(l.get("src.identity")), st.arrow,
                                       short_id(l.get("dst.identity"))),
                         human_bytes(l.get("bytes_sent", 0)), human_bytes(l.get("bytes_recv", 0)),
                         str(l.get("duration", "?")),
                         "ok" if l.get("level") != "error" else "error: %s" % l.get("error", "?")])
        if rows:
            self.say(table(rows, ["ztunnel of", "dir", "from", "to", "mTLS identities",
                                  "sent", "recv", "duration", "result"], st,
                           colors={1: st.magenta, 4: st.cyan,
                                   8: lambda c: st.green(c) if c.startswith("ok") else st.red(c)}))
            self.say(st.dim("    identities: spiffe://cluster.local/ns/default/sa/<name>; "
                            "sent/recv: app bytes as counted by that ztunnel"))
        else:
            self.say("    (no access log lines found in %s)" % self.t.workdir)
        for f, o, i in pairs:
            name = "%s %s %s:%d" % (self.role(f["src"]), st.arrow, self.role(f["dst"]), f["port"])
            problems = []
            if o is None:
                problems.append("no outbound line on %s's ztunnel" % self.role(f["src"]))
            elif (o.get("dst.addr") != "%s:15008" % f["dst"].ip or o.get("src.identity") != f["src"].spiffe
                  or o.get("dst.identity") != f["dst"].spiffe or o.get("level") == "error"):
                problems.append("outbound line is not a clean HBONE connection %s -> %s:15008"
                                % (short_id(f["src"].spiffe), f["dst"].ip))
            if i is None:
                problems.append("no inbound line with caller %s on %s's ztunnel"
                                % (short_id(f["src"].spiffe), self.role(f["dst"])))
            elif i.get("level") == "error":
                problems.append("inbound line reports an error")
            what = "both sides logged it (via :15008, caller verified as %s" % short_id(f["src"].spiffe)
            if f["bytes"] and o is not None and i is not None:
                counts = [(int(x.get("bytes_sent", -1)), int(x.get("bytes_recv", -1))) for x in (o, i)]
                if any(c != (f["bytes"], f["bytes"]) for c in counts):
                    problems.append("byte counts out %s, in %s, expected %d each way"
                                    % ("%d/%d" % counts[0], "%d/%d" % counts[1], f["bytes"]))
                what += ", %s each way" % human_bytes(f["bytes"])
            what += ")"
            self.check(not problems, "%s: %s" % (name, what if not problems else "; ".join(problems)))

    def capture(self, dst, tag):
        """Captures node1's uplink while frontend echoes the marker through dst; returns (linktype, packets,
        pcap path)."""
        fe = self.pod("frontend")
        payload = ((self.marker + "\n") * 200).encode()
        path = os.path.join(self.t.workdir, "uplink-%s.pcap" % tag)
        # IGMP membership reports (the kernel's, on a fresh veth) are no traffic of ours: left out of the capture.
        with self.t.capture(self.t.nodes[0], "eth0", "ip and not igmp", path):
            got, length, _, _ = self.echo(fe, dst, payload)
        if got != hashlib.sha256(payload).hexdigest():
            raise StepFailed("echo of the marker through %s came back damaged" % self.role(dst))
        lt, pkts = topo_mod.read_pcap(path)
        return lt, pkts, path

    def step_wire(self):
        st = self.st
        fe, be, legacy = self.pod("frontend"), self.pod("backend"), self.pod("legacy")
        mk = self.marker.encode()
        self.say("  marker: %s, sent 200 times by frontend; tcpdump on node1 eth0 (the uplink)"
                 % st.bold(self.marker))

        self.say("  %s frontend %s backend (meshed, HBONE)" % (st.bold("a)"), st.arrow))
        lt, pkts, path = self.capture(be, "meshed")
        tcp = [x for x in (topo_mod.ipv4_tcp_ports(lt, p) for p in pkts) if x]
        on_15008 = [x for x in tcp if 15008 in (x[1], x[3])]
        data = [x for x in on_15008 if x[4]]
        conns = sorted({"%s:%d %s %s:%d" % ((x[0], x[1], st.both, x[2], x[3]) if x[3] == 15008 else
                                           (x[2], x[3], st.both, x[0], x[1])) for x in on_15008})
        # node2's ztunnels reach zmeshd (node1, port 15012) over this same link: xDS and CA traffic, TLS too.
        on_15012 = [x for x in tcp if 15012 in (x[1], x[3])]
        hits = b"".join(pkts).count(mk)
        self.say("    captured %d IP packets: %d TCP, %d of them to/from port 15008, %d carrying data%s"
                 % (len(pkts), len(tcp), len(on_15008), len(data),
                    ", %d of zmeshd's xDS/CA on 15012 (TLS as well)" % len(on_15012) if on_15012 else ""))
        for c in conns[:3]:
            self.say("      " + st.dim(c))
        rec = next((x for x in data if x[4][:3] == b"\x17\x03\x03"), data[0] if data else None)
        if rec:
            self.say("    a payload starts: %s  %s" % (st.magenta(hexdump_line(rec[4])),
                                                       st.dim("(17 03 03: a TLS application-data record)"
                                                              if rec[4][:3] == b"\x17\x03\x03" else "")))
        ok = len(pkts) > 0 and len(tcp) == len(pkts) and len(on_15008) + len(on_15012) == len(tcp) and bool(data)
        self.check(ok, "every packet on the uplink is TCP to/from port 15008 (HBONE) or 15012 (the control plane)",
                   "" if ok else "(pcap: %s)" % path)
        if hits == 0:
            self.check(True, "the marker appears 0 times in the capture: the wire was encrypted")
        else:
            self.check(False, "the marker appears %d times in the capture: PLAINTEXT ON THE WIRE" % hits)

        self.say("  %s frontend %s legacy (not enrolled, served as plain TCP): the contrast"
                 % (st.bold("b)"), st.arrow))
        lt, pkts, path = self.capture(legacy, "plain")
        tcp = [x for x in (topo_mod.ipv4_tcp_ports(lt, p) for p in pkts) if x]
        plain = [x for x in tcp if ECHO_PORT in (x[1], x[3])]
        hits = b"".join(pkts).count(mk)
        self.say("    captured %d IP packets: %d TCP, %d to/from %s:%d, none on 15008: %s"
                 % (len(pkts), len(tcp), len(plain), legacy.ip, ECHO_PORT,
                    "yes" if not any(15008 in (x[1], x[3]) for x in tcp) else "no"))
        clear = next((x for x in plain if mk in x[4]), None)
        if clear:
            self.say("    a payload reads: %s" % st.red(printable(clear[4], 60)))
        passthrough = [l for l in self.access_lines() if l["_ztunnel"] == fe.name
                       and str(l.get("dst.addr", "")) == "%s:%d" % (legacy.ip, ECHO_PORT)]
        if passthrough:
            l = passthrough[-1]
            self.say("    frontend's ztunnel logged: %s to %s, identity %s, %s each way %s" % (
                l.get("direction"), l.get("dst.addr"), l.get("dst.identity", "none"),
                human_bytes(l.get("bytes_sent", 0)), st.dim("(plain TCP passthrough)")))
        if hits:
            self.check(True, "the marker appears %d times in clear: the capture would have caught a leak"
                       % hits)
        else:
            self.check(False, "the marker is not in the capture: this check cannot see plaintext",
                       "(pcap: %s)" % path)

    # ---- service VIP, live policy, metrics (steps 7-9) -----------------------------------------------------
    def get(self, src, ip, port, path):
        """One HTTP GET from src's netns to ip:port; returns (status, JSON answer or {}, local addr, ms)."""
        t0 = time.monotonic()
        s = self.connect(src, ip, port)
        local = "%s:%d" % s.getsockname()[:2]
        conn = http.client.HTTPConnection(ip, port, timeout=10)
        conn.sock = s
        try:
            conn.request("GET", path, headers={"User-Agent": "demo/" + self.role(src), "Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {}
        return resp.status, answer, local, (time.monotonic() - t0) * 1000

    def refused(self, src, dst, port, path):
        """Sends a GET from src to dst:port on a raw socket; returns (closed without an answer, bytes got,
        local address)."""
        try:
            s = self.connect(src, dst.ip, port)
        except (ConnectionRefusedError, ConnectionResetError):
            return True, b"", "?"
        local = "%s:%d" % s.getsockname()[:2]
        try:
            try:
                req = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, dst.ip)
                s.sendall(req.encode())
            except (BrokenPipeError, ConnectionResetError):
                return True, b"", local
            closed, got = closed_without_data(s, timeout=3.0)
            return closed and not got, got, local
        finally:
            s.close()

    def log_json(self, name):
        """Every JSON line of pod name's ztunnel log."""
        out = []
        try:
            with open(self.ztunnels[name].log_path, errors="replace") as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        except (OSError, KeyError):
            pass
        return out

    def poll(self, fn, timeout=5.0):
        """Calls fn until it returns something true or timeout passes; returns the last result."""
        deadline = time.monotonic() + timeout
        while True:
            r = fn()
            if r or time.monotonic() > deadline:
                return r
            time.sleep(0.1)

    @staticmethod
    def log_time(line):
        """A JSON log line's time (RFC 3339, UTC, microseconds) in epoch seconds, or None."""
        try:
            return datetime.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
        except (KeyError, TypeError, ValueError):
            return None

    def push(self, change):
        """Makes one manifest change (change() writes or deletes a file in the directory zmeshd watches) and
        follows it to every ztunnel: zmeshd's "manifests reloaded" and "pushing" lines, then in each ztunnel's
        log the ACK of a response of every type the push changed. Returns a dict: t0 (the write, epoch
        seconds), reload and pushing (zmeshd's lines or None), types (the type URLs that changed), acks
        {ztunnel: {type URL: ACK line}}, nacks [lines], missing [ztunnels still without every ACK], last (the
        latest ACK, epoch seconds, or None)."""
        zb = len(self.zmeshd_lines())
        before = {n: len(self.log_json(n)) for n in self.ztunnels}
        res = {"reload": None, "pushing": None, "types": [], "acks": {}, "nacks": [], "missing": [],
               "last": None}
        res["t0"] = time.time()
        change()

        def fresh(lines):
            # Lines logged since the change (a line half-written when the counts were taken could shift them).
            return [l for l in lines if (self.log_time(l) or 0) >= res["t0"]]

        def pushed():
            zl = fresh(self.zmeshd_lines()[zb:])
            rel = [l for l in zl if str(l.get("message", "")).startswith("manifests reloaded")]
            pu = [l for l in zl if l.get("scope") == "xds"
                  and str(l.get("message", "")).startswith("pushing:")]
            return (rel[0], pu[0]) if rel and pu else None
        got = self.poll(pushed, timeout=PUSH_TIMEOUT)
        if not got:
            res["missing"] = sorted(self.ztunnels)
            return res
        res["reload"], res["pushing"] = got
        m = re.search(r"addresses \+(\d+) ~(\d+) -(\d+), authorizations \+(\d+) ~(\d+) -(\d+)",
                      res["pushing"].get("message", ""))
        if m:
            n = [int(x) for x in m.groups()]
            res["types"] = [t for t, k in ((AUTHZ_TYPE, sum(n[3:])), (ADDRESS_TYPE, sum(n[:3]))) if k]

        def acked():
            res["acks"], res["nacks"] = {}, []
            for name in self.ztunnels:
                lines = fresh(self.log_json(name)[before[name]:])
                res["nacks"] += [l for l in lines if "rejecting resources" in str(l.get("message", ""))]
                for t in res["types"]:
                    a = self.ack_lines(lines, t)
                    if a:
                        res["acks"].setdefault(name, {})[t] = a[0]
            res["missing"] = [n for n in self.ztunnels if len(res["acks"].get(n, {})) < len(res["types"])]
            return not res["missing"] or res["nacks"]
        self.poll(acked, timeout=PUSH_TIMEOUT)
        times = [self.log_time(l) for a in res["acks"].values() for l in a.values()]
        res["last"] = max(times) if times and None not in times else None
        return res

    def show_push(self, res, table_too):
        """Prints what push() followed: zmeshd's two lines, then per ztunnel what it ACKed and when (a table,
        or one line); returns the milliseconds from the write to the last ACK, or None."""
        st = self.st

        def after(line):
            t = self.log_time(line)
            return "+%d ms" % round((t - res["t0"]) * 1000) if t is not None else "?"
        for l in (res["reload"], res["pushing"]):
            if l:
                msg = re.sub(r" \(encoded in [^)]*\)$", "", l.get("message", ""))
                self.say("    %s %-8s %s" % (st.bold("zmeshd"), after(l), st.dim(msg)))
        short = {ADDRESS_TYPE: "Address", AUTHZ_TYPE: "Authorization"}
        rows = []
        for name in self.ztunnels:
            acks = res["acks"].get(name, {})
            what = []
            for t in res["types"]:
                if t in acks:
                    m = re.search(r"ACK \((\d+) resources, (\d+) removed\)", acks[t].get("message", ""))
                    k, r = (int(x) for x in m.groups()) if m else (-1, -1)
                    parts = ["%d resource%s" % (k, "s" if k != 1 else "")] if k > 0 else []
                    parts += ["%d removed" % r] if r > 0 else []
                    what.append("%s %s" % (short[t], ", ".join(parts) or "nothing" if m else "?"))
                else:
                    what.append("%s: no ACK" % short[t])
            last = max((l for l in acks.values()), key=lambda l: l.get("time", ""), default=None)
            rows.append([name, "node%d" % self.pod(name).node, "; ".join(what), after(last) if last else "-"])
        if table_too:
            self.say(table(rows, ["ztunnel of", "node", "ACKed (delta xDS)", "after the write"], st,
                           colors={3: st.cyan}))
        else:
            self.say("    ACKed by %s" % ", ".join("%s %s" % (r[0], r[3]) for r in rows))
        for l in res["nacks"][:3]:
            self.say("    %s" % st.red(l.get("message")))
        return round((res["last"] - res["t0"]) * 1000) if res["last"] is not None else None

    def write_manifest(self, src, name):
        """Copies src into the watched directory as name: a dot-file first (zmeshd reads no dot-files), then a
        rename, so zmeshd never sees half a file."""
        tmp = os.path.join(self.manifests, "." + name + ".tmp")
        shutil.copyfile(src, tmp)
        os.rename(tmp, os.path.join(self.manifests, name))

    def step_vip(self):
        st = self.st
        if not self.mesh:
            self.check(False, "no ztunnels, no service VIPs (--no-mesh)")
            return
        fe = self.pod("frontend")
        eps = [self.pod(n) for n in BACKENDS]
        names = {self.role(p): p for p in eps}
        self.say("  Service %s: VIP %s:%d %s port %d of %d replicas (random pick, weighted by capacity)"
                 % (st.bold(SVC_HOST), SVC_VIP, SVC_PORT, st.arrow, HTTP_PORT, len(eps)))
        self.say("  %s %d × GET http://%s:%d/ (a new connection each)"
                 % (st.yellow("frontend$"), VIP_REQUESTS, SVC_VIP, SVC_PORT))
        counts = {n: 0 for n in names}
        answered, bad = [], []  # (client address, replica) per request answered as it should be
        t0, since = time.monotonic(), time.time()
        for i in range(VIP_REQUESTS):
            status, ans, local, _ = self.get(fe, SVC_VIP, SVC_PORT, "/via-vip?n=%d" % i)
            server = ans.get("server")
            if status != 200 or server not in names:
                bad.append("request %d: HTTP %d from %r" % (i, status, server))
            elif (ans.get("server_addr") != "%s:%d" % (names[server].ip, HTTP_PORT)
                  or str(ans.get("client_addr", "")).rsplit(":", 1)[0] != fe.ip):
                bad.append("request %d: %s saw %s %s %s" % (i, server, ans.get("client_addr"), st.arrow,
                                                             ans.get("server_addr")))
            else:
                counts[server] += 1
                answered.append((local, names[server]))
        secs = time.monotonic() - t0
        # The weights are what zmeshd served (a Pod's capacity is 1, as istiod sets it), read back from
        # frontend's ztunnel.
        cap = {w.get("name"): int(w.get("capacity", 1)) for w in self.dump(fe).get("workloads", [])}
        total = sum(cap.get(p.name, 1) for p in eps)
        rows = [[self.role(p), "node%d" % p.node, "%s:%d" % (p.ip, HTTP_PORT), str(cap.get(p.name, "?")),
                 "%d%%" % round(100 * cap.get(p.name, 1) / total), "%d" % counts[self.role(p)],
                 st.bar * counts[self.role(p)]] for p in eps]
        self.say(table(rows, ["endpoint", "node", "answered from", "capacity", "expected", "answers", ""], st,
                       colors={6: st.cyan}))
        self.say(st.dim("    %d requests in %.2f s, each over HBONE to the picked endpoint's ztunnel "
                        "(also to backend-2, on node1)" % (VIP_REQUESTS, secs)))
        self.vip_counts = counts
        self.check(not bad, "all %d answered by a backend replica on :%d, which saw frontend's own IP"
                   % (VIP_REQUESTS, HTTP_PORT), "; ".join(bad[:3]))
        missing = [n for n, c in counts.items() if c == 0]
        self.check(not missing, "every endpoint answered at least once (the spread follows the capacities)",
                   "(none from %s)" % ", ".join(missing) if missing else "")

        # frontend's ztunnel logged each connection with the service and the endpoint it picked. A line is
        # matched to its request by the client's address when that address is unique. Two cases are not:
        # the kernel may give a later connection an earlier one's port, and the in-pod REDIRECT then moves a
        # connection to another source port when an earlier connection's conntrack entry still holds its NAT
        # tuple. Those lines are matched by endpoint, and the output says how many.
        def window():
            return [l for l in self.log_json(fe.name) if l.get("message") == "connection complete"
                    and l.get("direction") == "outbound" and (self.log_time(l) or 0) >= since]
        lines = self.poll(lambda: len(window()) >= VIP_REQUESTS and window()) or window()

        def ep(p):
            return "%s:%d" % (p.ip, HTTP_PORT)
        by_addr, by_req = collections.defaultdict(list), collections.defaultdict(list)
        for l in lines:
            by_addr[l.get("src.addr")].append(l)
        for local, p in answered:
            by_req[local].append(p)
        wrong, left_lines, left_reqs = [], [], []
        for addr in set(by_addr) | set(by_req):
            ls, ps = by_addr.get(addr, []), by_req.get(addr, [])
            if len(ls) == 1 and len(ps) == 1:
                if ls[0].get("dst.service") != SVC_HOST or ls[0].get("dst.hbone_addr") != ep(ps[0]):
                    wrong.append("%s: dst.service=%s dst.hbone_addr=%s, answered by %s" % (
                        addr, ls[0].get("dst.service"), ls[0].get("dst.hbone_addr"), ps[0].name))
            else:
                left_lines += ls
                left_reqs += ps
        by_endpoint_ok = (all(l.get("dst.service") == SVC_HOST for l in left_lines) and
                          collections.Counter(l.get("dst.hbone_addr") for l in left_lines)
                          == collections.Counter(ep(p) for p in left_reqs))
        if lines:
            l = lines[0]
            self.say("    frontend's ztunnel logged, e.g.: %s" % st.dim(
                "dst.service=%s dst.hbone_addr=%s" % (l.get("dst.service"), l.get("dst.hbone_addr"))))
        if left_lines and by_endpoint_ok:
            self.say(st.dim("    (%d of them matched by endpoint, not by the client's address: a port used "
                            "twice, or moved by the in-pod REDIRECT off a NAT tuple an earlier connection's "
                            "conntrack entry still held)" % len(left_lines)))
        ok = bool(answered) and len(lines) == len(answered) and not wrong and by_endpoint_ok
        detail = "" if ok else "(%d lines for %d answered requests%s%s)" % (
            len(lines), len(answered), "".join("; " + w for w in wrong[:2]),
            "" if by_endpoint_ok else "; unmatched lines %s, unmatched answers from %s"
            % ([(l.get("src.addr"), l.get("dst.hbone_addr")) for l in left_lines[:3]],
               [p.name for p in left_reqs[:3]]))
        self.check(ok, "frontend's ztunnel logged each with dst.service and the endpoint that answered",
                   detail)

    def inbound_line(self, dst, src, needle):
        """dst's ztunnel's last inbound access line from src whose error contains needle, or None."""
        lines = [l for l in self.log_json(dst.name) if l.get("message") == "connection complete"
                 and l.get("direction") == "inbound" and str(l.get("src.addr", "")).startswith(src.ip + ":")
                 and needle in str(l.get("error", ""))]
        return lines[-1] if lines else None

    def step_policy(self):
        st = self.st
        if not self.mesh:
            self.check(False, "no ztunnels, no authorization (--no-mesh)")
            return
        fe, au, be = self.pod("frontend"), self.pod("auditor"), self.pod("backend")
        name = os.path.basename(POLICY_FILE)
        target = os.path.join(self.manifests, name)
        self.say("  %s, an AuthorizationPolicy for the pods labelled app=backend (the %d replicas):"
                 % (st.bold(os.path.relpath(POLICY_FILE, REPO)), len(BACKENDS)))
        with open(POLICY_FILE) as f:
            body = [l.rstrip() for l in f if l.strip() and not l.lstrip().startswith("#")]
        spec = body[body.index("spec:"):] if "spec:" in body else body
        for l in spec:
            self.say("    " + st.dim(l))
        self.say("  %s opens an echo connection to backend:%d before the change, and keeps it open"
                 % (st.yellow("auditor$"), ECHO_PORT))
        held = self.connect(au, be.ip, ECHO_PORT)
        try:
            held.sendall(b"before")
            got = b""
            while len(got) < 6:
                b = held.recv(6 - len(got))
                if not b:
                    break
                got += b
            if got != b"before":
                raise StepFailed("auditor's echo connection did not work before the policy")
            self.say("  %s cp %s %s/   %s" % (st.yellow("you$"), os.path.relpath(POLICY_FILE, REPO),
                                             os.path.relpath(self.manifests, self.t.workdir),
                                             st.dim("(the directory zmeshd watches; temp file + rename)")))
            res = self.push(lambda: self.write_manifest(POLICY_FILE, name))
            ms = self.show_push(res, table_too=True)
            n = len(self.ztunnels)
            ok = (res["pushing"] is not None and AUTHZ_TYPE in res["types"] and not res["missing"]
                  and not res["nacks"] and ms is not None)
            if res["pushing"] is None:
                why = ("(no \"manifests reloaded\" and \"pushing\" lines from zmeshd within %.0f s)"
                       % PUSH_TIMEOUT)
            elif not ok:
                why = "(no ACK from %s; %d NACKs; types pushed: %s)" % (", ".join(res["missing"]) or "-",
                                                                       len(res["nacks"]), res["types"])
            else:
                why = ""
            if ok:
                text = ("zmeshd pushed the policy, %d of %d ztunnels ACKed it: %d ms from the write to the "
                        "last ACK" % (n, n, ms))
            else:
                text = ("zmeshd pushed the policy and all %d ztunnels ACKed it within %.0f s"
                        % (n, PUSH_TIMEOUT))
            self.check(ok, text, why)
            if ok:
                pushed_at = self.log_time(res["pushing"])
                fan_out = round((res["last"] - pushed_at) * 1000) if pushed_at else "?"
                self.say(st.dim("      (%d ms of it is zmeshd waiting for the directory to be quiet, "
                                "PILOT_DEBOUNCE_AFTER, as istiod debounces; from zmeshd's \"pushing\" line "
                                "to the last ACK: %s ms)" % (DEBOUNCE_MS, fan_out)))
            self.say("  %s zmesh ztunnel-config policies" % st.yellow("backend$"))
            r = self.zc(be, "policies")
            self.show(r.stdout if r.returncode == 0 else r.stderr, None if r.returncode == 0 else st.red)
            row = r"^%s\s+%s\s+Allow\s+WorkloadSelector\s*$" % (SVC_NS, POLICY)
            self.check(r.returncode == 0 and re.search(row, r.stdout, re.M) is not None,
                       "backend's ztunnel holds %s/%s: Allow, WorkloadSelector" % (SVC_NS, POLICY))
            closed, got = closed_without_data(held, timeout=3.0)
            if not closed:
                # A reset may only be noticed on the next write.
                try:
                    held.sendall(b"after")
                    closed, got = closed_without_data(held, timeout=3.0)
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
            late = self.poll(lambda: self.inbound_line(be, au, "policy change"))
            self.check(closed and not got and late is not None,
                       "auditor's open connection was closed by the push",
                       "(backend's ztunnel: \"%s\")" % late.get("error") if late else
                       "(closed %s, got %r, log line %s)" % (closed, got, "found" if late else "missing"))
        finally:
            held.close()
        try:
            self.say("  %s GET http://%s:%d/after-policy" % (st.yellow("frontend$"), be.ip, HTTP_PORT))
            status, ans, _, ms = self.get(fe, be.ip, HTTP_PORT, "/after-policy")
            self.say("    %s %s" % (st.dim("HTTP %d in %.1f ms:" % (status, ms)),
                                    json.dumps({k: ans[k] for k in ("server", "client_addr") if k in ans})))
            self.check(status == 200 and ans.get("server") == "backend", "frontend, the allowed principal, "
                       "still gets through")
            self.say("  %s GET http://%s:%d/after-policy" % (st.yellow("auditor$"), be.ip, HTTP_PORT))
            ok, got, local = self.refused(au, be, HTTP_PORT, "/after-policy")
            self.say("    %s" % ("connection closed, 0 bytes of answer" if ok else
                                 "got %d bytes: %r" % (len(got), got[:60])))
            line = self.poll(lambda: self.inbound_line(be, au, "policy rejection"))
            if line:
                def kv(keys):
                    return " ".join("%s=%s" % (k, line[k]) for k in keys if k in line)
                self.say("    backend's ztunnel (the destination) logged, in JSON (some fields):")
                self.say("      %s" % st.dim(kv(("level", "direction", "src.addr", "dst.hbone_addr"))))
                self.say("      %s" % st.dim(kv(("src.identity",))))
                self.say("      %s" % st.red('error="%s"' % line.get("error")))
            out = self.poll(lambda: [l for l in self.log_json(au.name) if l.get("src.addr") == local
                                     and l.get("message") == "connection complete"], timeout=2)
            if out and out[-1].get("error"):
                self.say("    auditor's ztunnel (the source) logged:  %s" % st.dim('error="%s"'
                                                                         % out[-1].get("error")))
            self.check(ok and line is not None, "auditor is refused: its connection closes without data, "
                       "and the destination logs the rejection", "" if line else "(no access line with "
                       "\"connection closed due to policy rejection\" on backend's ztunnel)")
        finally:
            # Also when the step failed half-way: the next step starts from the manifests without the policy.
            res = None
            if os.path.exists(target):
                self.say("  %s rm %s/%s" % (st.yellow("you$"),
                                           os.path.relpath(self.manifests, self.t.workdir), name))
                res = self.push(lambda: os.unlink(target))
                ms = self.show_push(res, table_too=False)

        def through():
            try:
                status, ans, _, _ = self.get(au, be.ip, HTTP_PORT, "/after-restore")
            except (OSError, http.client.HTTPException):
                return False
            return status == 200 and ans.get("server") == "backend"
        ok = (res is not None and res["pushing"] is not None and AUTHZ_TYPE in res["types"]
              and not res["missing"] and not res["nacks"] and self.poll(through, timeout=1.0))
        self.check(ok, "policy deleted again (%s ms from the delete to the last ACK): auditor gets through "
                   "again"
                   % (ms if res and ms is not None else "?"), "" if ok else "(ACKs missing from %s)"
                   % (", ".join(res["missing"]) or "none" if res else "all"))

    def scrape(self, pod):
        """Prometheus text from pod's ztunnel (:15020 inside the pod's netns) as [(name, labels, value)]."""
        status, body = None, b""
        s = self.connect(pod, pod.ip, 15020)
        conn = http.client.HTTPConnection(pod.ip, 15020, timeout=10)
        conn.sock = s
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            status, body = resp.status, resp.read()
        finally:
            conn.close()
        if status != 200:
            raise StepFailed("GET /metrics on %s's ztunnel: HTTP %s" % (self.role(pod), status))
        out = []
        for line in body.decode(errors="replace").splitlines():
            m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)', line)
            if not m or line.startswith("#"):
                continue
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            try:
                out.append((m.group(1), labels, float(m.group(3))))
            except ValueError:
                pass
        return out

    def step_metrics(self):
        st = self.st
        if not self.mesh:
            self.check(False, "no ztunnels, no metrics (--no-mesh)")
            return
        be = self.pod("backend")
        self.say("  %s curl http://%s:15020/metrics   %s" % (st.yellow("backend$"), be.ip,
                                                             st.dim("(backend's ztunnel, inside its netns)")))
        keys = ("reporter", "source_workload", "destination_workload", "destination_service",
                "response_flags")
        cols = {"istio_tcp_%s_total" % m: c for m, c in (
            ("connections_opened", "opened"), ("connections_closed", "closed"),
            ("connections_failed", "failed"), ("received_bytes", "received"), ("sent_bytes", "sent"))}

        def series():
            samples = self.scrape(be)
            agg = {}
            for name, ls, v in samples:
                if name in cols:
                    row = agg.setdefault(tuple(ls.get(k, "?") for k in keys), {c: 0 for c in cols.values()})
                    row[cols[name]] += v
            return samples, agg

        def settled():
            # Closes are counted once both ends finished (the DENY one after the refusal): poll a little.
            samples, agg = series()
            deny = [r for k, r in agg.items() if k[1] == "auditor" and k[4] == "DENY"]
            # A connection is counted as opened under flags "-" and closed under its final flags (as Istio
            # does), so compare per conversation, over all flags.
            tally = {}
            for k, r in agg.items():
                t = tally.setdefault(k[:4], [0, 0])
                t[0] += r["opened"]
                t[1] += r["closed"]
            open_ = [k for k, t in tally.items() if t[0] > t[1]]
            return (samples, agg) if deny and not open_ else None
        got = self.poll(settled) or series()
        samples, agg = got
        n_tcp = len([s for s in samples if s[0].startswith("istio_tcp_")])
        self.say(st.dim("    %d samples, %d of them istio_tcp_*, summed below per series "
                        "(received: client %s server, sent: server %s client)"
                        % (len(samples), n_tcp, st.arrow, st.arrow)))

        def short(v):
            return v if v != SVC_HOST else "backend.default.svc…"
        rows = []
        for k in sorted(agg, key=lambda k: (k[0], k[1] != "frontend", k[1], k[3] != SVC_HOST, k[4] != "-")):
            r = agg[k]
            rows.append([k[0], "%s %s %s" % (k[1], st.arrow, k[2]), short(k[3]), k[4], "%d" % r["opened"],
                         "%d" % r["closed"], "%d" % r["failed"], human_bytes(r["received"]),
                         human_bytes(r["sent"])])
        if rows:
            self.say(table(rows, ["reporter", "source → destination workload", "destination_service",
                                  "flags", "opened", "closed", "failed", "received", "sent"], st,
                           colors={3: lambda c: st.red(c) if c.strip() == "DENY" else c}))
        fe_rows = [r for k, r in agg.items() if k[0] == "destination" and k[1] == "frontend" and k[4] == "-"]
        deny = [r for k, r in agg.items() if k[0] == "destination" and k[1] == "auditor" and k[4] == "DENY"]
        mib = self.args.mib << 20
        self.check(any(r["received"] >= mib and r["sent"] >= mib for r in fe_rows),
                   "frontend → backend counted, with at least the %d MiB echo each way" % self.args.mib)
        self.check(bool(deny) and all(r["received"] == 0 and r["sent"] == 0 for r in deny),
                   "the refused auditor connection shows up with response_flags=DENY and 0 bytes")
        via_vip = sum(r["opened"] for k, r in agg.items() if k[0] == "destination" and k[3] == SVC_HOST)
        want = getattr(self, "vip_counts", {}).get("backend")
        self.check(via_vip == want, "destination_service=%s: %d connections, the ones backend answered "
                   "via the VIP in step 7" % (short(SVC_HOST), via_vip), "" if via_vip == want else
                   "(step 7 counted %s)" % want)

    def run(self):
        st = self.st
        t_start = time.monotonic()
        self.say(st.bold("zmesh demo") + st.dim(" — sidecar-less mesh: a ztunnel per pod, HBONE "
                                                "(HTTP/2 CONNECT over mTLS 1.3) on port 15008"))
        self.say()
        self.setup()
        steps = [("The cast: nodes, pods, IPs, SPIFFE identities", self.step_cast),
                 ("The control plane: manifests %s zmeshd %s ztunnels" % (st.arrow, st.arrow),
                  self.step_control_plane),
                 ("Pod to pod HTTP across nodes", self.step_http),
                 ("An echo of %d MiB, checked with sha256" % self.args.mib, self.step_echo),
                 ("What the ztunnels logged: who talked to whom, as whom, how much", self.step_logs),
                 ("Proof the wire was encrypted", self.step_wire),
                 ("A Service VIP in front of three backend replicas", self.step_vip),
                 ("An L4 authorization policy written into the manifests, pushed live: only frontend may "
                  "call backend", self.step_policy),
                 ("What backend's ztunnel counted: Istio's TCP metrics", self.step_metrics)]
        for n, (title, fn) in enumerate(steps, start=1):
            self.say()
            self.say(st.bold("%d. %s" % (n, title)))
            self.failed_checks = []
            try:
                fn()
                if self.failed_checks:
                    raise StepFailed("; ".join(self.failed_checks))
                self.results.append((title, True, ""))
            except StepFailed as e:
                self.results.append((title, False, str(e)))
            except (OSError, RuntimeError, ValueError, http.client.HTTPException) as e:
                self.say("    %s %s: %s" % (st.red(st.bad_mark), type(e).__name__, e))
                self.results.append((title, False, "%s: %s" % (type(e).__name__, e)))
            for name, z in self.ztunnels.items():
                if z.poll() is not None:
                    self.say(st.red("    ztunnel of %s exited with %s; log tail:\n%s"
                                    % (name, z.returncode, topo_mod.tail(z.log_path, 15))))
                    self.results.append(("ztunnel of %s alive" % name, False, "exited %s" % z.returncode))
                    self.ztunnels = {k: v for k, v in self.ztunnels.items() if v.poll() is None}
                    break
            if self.zmeshd is not None and self.zmeshd.returncode is None and self.zmeshd.poll() is not None:
                self.say(st.red("    zmeshd exited with %s; log tail:\n%s"
                                % (self.zmeshd.returncode, topo_mod.tail(self.zmeshd_log, 15))))
                self.results.append(("zmeshd alive", False, "exited %s" % self.zmeshd.returncode))
        return time.monotonic() - t_start


def main():
    ap = argparse.ArgumentParser(description="zmesh demo (run as root)")
    ap.add_argument("--mib", type=int, default=16, help="size of the echo transfer (default 16)")
    ap.add_argument("--no-color", action="store_true", help="never use colors")
    ap.add_argument("--keep", action="store_true", help="keep the workdir (logs, pcaps) even on success")
    ap.add_argument("--no-mesh", action="store_true", help="skip in-pod rules and ztunnels (developer aid)")
    args = ap.parse_args()
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except AttributeError:
        pass
    st = Style(sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR"))
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces, iptables, tcpdump); try: sudo make demo",
              file=sys.stderr)
        return 2
    for prog in ("ztunnel", "zmeshd", "zmesh"):
        path = os.path.join(topo_mod.Topology.bin_dir(), prog)
        if not args.no_mesh and not os.access(path, os.X_OK):
            print("demo: %s not found; run `make all` first (or `make demo`)" % path, file=sys.stderr)
            return 2
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    demo = Demo(args, st)
    rc, elapsed, interrupted = 1, None, None
    try:
        elapsed = demo.run()
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = type(e).__name__ if isinstance(e, KeyboardInterrupt) else str(e)
    except Exception as e:  # setup errors: report them, then tear down
        print(st.red("\n  setup failed: %s: %s" % (type(e).__name__, e)), flush=True)
    finally:
        # Ctrl-C during teardown must not leave namespaces behind: ignore further signals while cleaning up.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        print(flush=True)
        clean = demo.teardown()
    if interrupted:
        print(st.yellow("interrupted (%s); everything was torn down" % interrupted), flush=True)
        return 130
    if elapsed is None:
        return 1
    failed = [r for r in demo.results if not r[1]]
    passed = len(demo.results) - len(failed)
    if not clean:
        failed.append(("teardown", False, "left namespaces or processes behind"))
    if failed:
        print(st.red("%s %d of %d steps failed in %.1f s:"
                     % (st.bad_mark, len(failed), len(demo.results), elapsed)))
        for title, _, detail in failed:
            print(st.red("    - %s: %s" % (title, detail)))
        rc = 1
    else:
        print(st.green("%s %d of %d steps passed in %.1f s: mutual TLS between verified SPIFFE identities, "
                       "no plaintext on the wire, a service VIP, an L4 policy pushed live from a manifest, "
                       "Istio metrics"
                       % (st.ok_mark, passed, len(demo.results), elapsed)))
        rc = 0
    if demo.t is not None:
        if rc == 0 and not args.keep:
            shutil.rmtree(demo.t.workdir, ignore_errors=True)
        else:
            print(st.dim("logs, manifests and pcaps kept in %s" % demo.t.workdir))
    return rc


if __name__ == "__main__":
    sys.exit(main())
