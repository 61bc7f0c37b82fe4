#!/usr/bin/python3
"""zmesh control-plane benchmark (zmeshd): push latency, resources per push, memory and CPU at scale, CA rate.
Each figure is printed beside its target or a baseline measured in the same run, with the ratio.

Four parts (--only to pick some):

  ztunnels  push latency to real ztunnels: the end-to-end tests' topology (tests/e2e/topo.py) with --nodes
            nodes x (--ztunnels / --nodes) pods, one dedicated-mode build/bin/ztunnel per pod, each with its
            own service-account token, its certificate from zmeshd's CA and its config over delta xDS from one
            zmeshd in node 1's namespace (as tests/e2e/test_control_plane.py). --edits manifest edits, one at
            a time, alternately one pod changed and one policy changed, each written by rename; latency =
            the rename to the last ztunnel's "ACK (1 resources ...)" log line (ztunnel's own timestamps).
  sim       the same with --clients simulated clients (build/bench/xds_clients, bench/xds_clients.c: one TLS
            connection and one delta ADS stream each, subscribed as ztunnel subscribes; they decode every
            response and ACK it, and apply nothing) against a zmeshd in the host namespace.
            Also the resources and bytes each client is sent for the full push against a one-pod change.
  scale     zmeshd with --big-pods pods, --big-services services and --big-policies AuthorizationPolicies
            (generated manifests, one file per namespace): RSS and CPU after the load, after the full push to
            --big-clients simulated clients, and for --big-edits one-pod changes (latency to the last ACK,
            resources and bytes per client). Baselines: zmeshd's RSS with a one-pod mesh, and the full push's
            bytes per zmeshd CPU-second against `openssl speed -evp aes-128-gcm` (the push must at least
            encrypt those bytes).
  ca        CreateCertificate calls per second (xds_clients ca: --ca-inflight calls in flight over --ca-conns
            connections for --ca-seconds) against `openssl speed -seconds N ecdsap256`'s sign rate on one core
            (and against the per-call floor of one ECDSA sign and two verifies: the token and the CSR).

Run as root: bench/run.sh cp [options] (or /usr/bin/python3 bench/cp.py). Output: a table on stdout, progress on
stderr, build/bench/cp.json (--out), logs in build/bench/cp-logs/. See bench/README.md.
"""
import argparse
import datetime
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import bench  # noqa: E402  (bench/bench.py: Procs, host_info, finish)
from bench import BenchError  # noqa: E402

PARTS = ("ztunnels", "sim", "scale", "ca")
ISTIOD = "istiod.istio-system.svc"
ADDRESS = "type.googleapis.com/istio.workload.Address"
AUTHZ = "type.googleapis.com/istio.security.Authorization"
TARGET_ZTUNNEL_P50_MS = 150.0    # 20 ztunnels, including the 100 ms debounce
TARGET_SIM_P50_MS = 1000.0       # 500 clients
TARGET_RSS_MB = 150.0            # zmeshd with 10 000 pods, 2 000 services, 500 policies
TARGET_ONE_POD_RESOURCES = 1     # a one-pod change sends that pod's Address, nothing else
DEBOUNCE_MS = 100.0              # PILOT_DEBOUNCE_AFTER's default, the floor of every push latency
NOFILE = 1048576
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[cp] {msg}", file=sys.stderr, flush=True)


def pct(values, q):
    """Nearest-rank percentile of values (q in 0..100)."""
    v = sorted(values)
    if not v:
        return None
    k = max(0, min(len(v) - 1, int(-(-q * len(v) // 100)) - 1))
    return v[k]


def parse_time(s):
    """zmesh's log timestamp (2026-12-02T00:10:40.249651Z) as Unix seconds."""
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def proc_cpu(pid):
    """utime+stime of pid (all threads) in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            k, _, v = ln.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon"):
                out[k] = int(v.split()[0])
    return out


class LogTail:
    """The JSON lines appended to a log file since the last call (partial lines kept for the next one)."""

    def __init__(self, path):
        self.path, self.off, self.buf = path, 0, b""

    def new(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except FileNotFoundError:
            return []
        self.off += len(data)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for ln in lines:
            if ln.startswith(b"{"):
                try:
                    out.append(json.loads(ln))
                except ValueError:
                    pass
        return out


# ----------------------------------------------------------------------------------------------------------
# Manifests.

NS_TMPL = """apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
  labels: {{istio.io/dataplane-mode: ambient}}
"""

POD_TMPL = """---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{app: {app}, version: {version}}}
spec:
  nodeName: {node}
  serviceAccountName: {sa}
  containers: [{{name: app, ports: [{{name: http, containerPort: 8080}}]}}]
status:
  phase: Running
  podIP: {ip}
  conditions: [{{type: Ready, status: "True"}}]
"""

SVC_TMPL = """---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {app}}}
  clusterIP: {ip}
  ports: [{{name: http, port: 80, targetPort: http}}, {{name: grpc, port: 9090, targetPort: 9090}}]
"""

ALLOW_TMPL = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/{ns}/sa/{sa}", "cluster.local/ns/{ns}/sa/sa-{k}"]}}}}]
    to: [{{operation: {{ports: ["8080", "9090"]}}}}]
"""

DENY_TMPL = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  action: DENY
  rules:
  - from: [{{source: {{notNamespaces: ["{ns}", "istio-system"]}}}}]
    to: [{{operation: {{ports: ["9090"]}}}}]
"""


def ip_of(base, g):
    """The g-th address of a /9 or /10 starting at base (first octets), e.g. ip_of((10, 128), 5)."""
    return "%d.%d.%d.%d" % (base[0], base[1] + g // 65536, (g // 256) % 256, g % 256)


def split(total, parts, i):
    return total // parts + (1 if i < total % parts else 0)


def write_mesh(d, pods, services, policies, namespaces):
    """One file per namespace (ns-NNN.yaml) with its Namespace, Services, Pods and AuthorizationPolicies.
    Pods carry app=svc-<k> so that each Service selects some; half the policies are namespace-wide ALLOWs, half
    selector DENYs. Returns the bytes written."""
    os.makedirs(d, exist_ok=True)
    g_pod = g_svc = 0
    size = 0
    for i in range(namespaces):
        ns = "ns%03d" % i
        npods, nsvc, npol = split(pods, namespaces, i), split(services, namespaces, i), split(policies, namespaces, i)
        parts = [NS_TMPL.format(ns=ns)]
        for k in range(nsvc):
            parts.append(SVC_TMPL.format(name="svc-%d" % k, ns=ns, app="svc-%d" % k,
                                         ip=ip_of((10, 96), g_svc + 1)))
            g_svc += 1
        for j in range(npods):
            app = "svc-%d" % (j % nsvc) if nsvc else "app-%d" % j
            parts.append(POD_TMPL.format(name="pod-%d" % j, ns=ns, app=app, version="v1",
                                         node="node%d" % (g_pod % 100), sa="sa-%d" % (j % 10),
                                         ip=ip_of((10, 128), g_pod + 1)))
            g_pod += 1
        for k in range(npol):
            if k % 2 == 0:
                parts.append(ALLOW_TMPL.format(name="allow-%d" % k, ns=ns, sa="sa-%d" % (k % 10), k=k))
            else:
                parts.append(DENY_TMPL.format(name="deny-%d" % k, ns=ns, app="svc-%d" % (k % max(1, nsvc))))
        text = "".join(parts)
        size += len(text)
        with open(os.path.join(d, "%s.yaml" % ns), "w") as f:
            f.write(text)
    return size


def write_by_rename(d, name, text):
    tmp = os.path.join(d, "." + name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(d, name))


EDIT_POD = "zz-edit-pod.yaml"
EDIT_POLICY = "zz-edit-policy.yaml"


def edit_pod_text(n):
    """The pod that edits change: its version label (so its Workload's canonical revision) is v<n>."""
    return NS_TMPL.format(ns="edit") + POD_TMPL.format(name="edited", ns="edit", app="edited", version="v%d" % n,
                                                       node="node0", sa="edited", ip="10.127.255.1")


def edit_policy_text(n):
    return ALLOW_TMPL.format(name="edited", ns="edit", sa="caller-%d" % n, k=n).lstrip("-\n")


def write_edit(d, i):
    """Edit i (1-based): odd ones change the pod, even ones the policy. Returns (kind, type URL)."""
    if i % 2:
        write_by_rename(d, EDIT_POD, edit_pod_text(i))
        return "pod", ADDRESS
    write_by_rename(d, EDIT_POLICY, edit_policy_text(i))
    return "policy", AUTHZ


def write_edit_files(d):
    write_by_rename(d, EDIT_POD, edit_pod_text(0))
    write_by_rename(d, EDIT_POLICY, edit_policy_text(0))


# ----------------------------------------------------------------------------------------------------------
# zmeshd and the simulated clients.

class Zmeshd:
    """One zmeshd: manifests in dir/manifests, state in dir/state, JSON log in dir/zmeshd.log. In a network
    namespace through topo (ip netns exec execs in place, so the pid is zmeshd's), else in ours."""

    def __init__(self, args, procs, d, listen="127.0.0.1:0", topo=None, netns=None, rust_log="info"):
        self.args, self.procs, self.dir, self.rust_log = args, procs, d, rust_log
        self.manifests = os.path.join(d, "manifests")
        self.state = os.path.join(d, "state")
        os.makedirs(self.manifests, exist_ok=True)
        self.bin = os.path.join(args.bin_dir, "zmeshd")
        self.listen, self.topo, self.netns = listen, topo, netns
        self.log_path = os.path.join(d, "zmeshd.log")
        self.proc = None
        self.port = None

    def start(self, timeout=120):
        env = dict(os.environ, LOG_FORMAT="json", RUST_LOG=self.rust_log)
        for k in ("PILOT_DEBOUNCE_AFTER", "PILOT_DEBOUNCE_MAX"):
            env.pop(k, None)  # istiod's defaults (100 ms, 10 s): the latency targets include the debounce
        argv = [self.bin, "--manifests", self.manifests, "--state-dir", self.state, "--listen", self.listen]
        log_f = open(self.log_path, "ab")
        try:
            if self.topo:
                self.proc = self.topo.popen(self.netns, argv, env=env, stdout=log_f, stderr=log_f,
                                            stdin=subprocess.DEVNULL)
            else:
                self.proc = self.procs.start(argv, "zmeshd", env=env, stdout=log_f, stderr=log_f)
        finally:
            log_f.close()
        self.tail = LogTail(self.log_path)
        self.t_start = time.time()
        end = time.monotonic() + timeout
        self.loaded = self.first_push = None
        while time.monotonic() < end:
            for l in self.tail.new():
                m = l.get("message", "")
                if m == "manifests loaded":
                    self.loaded = l
                elif m.startswith("pushing:") and self.first_push is None:
                    self.first_push = l
                elif m.startswith("serving the CA"):
                    self.port = int(l["port"])
                    return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise BenchError(f"zmeshd did not start (exit {self.proc.poll()}): {bench_tail(self.log_path)}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def token(self, sa, name=None):
        path = os.path.join(self.dir, "token-" + (name or sa.replace("/", "-")))
        r = subprocess.run([self.bin, "token", "--sa", sa, "--state-dir", self.state, "--ttl", "24h"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"zmeshd token --sa {sa}: {r.stderr.strip()}")
        with open(path, "w") as f:
            f.write(r.stdout)
        return path

    @property
    def root(self):
        return os.path.join(self.state, "root-cert.pem")

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def mem(self):
        return proc_mem(self.proc.pid)

    def wait_log(self, pred, timeout=30):
        """The first new log line for which pred is true (None after timeout)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for l in self.tail.new():
                if pred(l):
                    return l
            time.sleep(0.01)
        return None


def zm_busy(zm, since):
    """zmeshd's CPU use since (cpu, monotonic), as text."""
    try:
        busy = (zm.cpu() - since[0]) / max(1e-3, time.monotonic() - since[1])
    except OSError:
        return "zmeshd gone"
    return f"zmeshd used {busy * 100:.0f}% of a core meanwhile{': livelocked?' if busy > 0.5 else ''}"


def bench_tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


class Sims:
    """build/bench/xds_clients ads: n simulated delta ADS clients in one process; its stdout is read by a
    thread into self.events (kind, t_ns, client, type, resources, removed, bytes)."""

    def __init__(self, args, procs, zm, n, token, host="127.0.0.1", prefix="sim"):
        self.n, self.zm, self.stall = n, zm, args.stall
        argv = [args.clients_bin, "ads", "--addr", f"{host}:{zm.port}", "--roots", zm.root, "--alt-hostname",
                ISTIOD, "--token", token, "--clients", str(n), "--node-prefix", prefix]
        self.err_path = os.path.join(zm.dir, f"xds_clients-{prefix}.log")
        err = open(self.err_path, "ab")
        self.t_start_ns = time.monotonic_ns()
        self.proc = procs.start(argv, f"xds_clients {prefix}", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err)
        err.close()
        self.procs = procs
        self.events, self.errors = [], []
        self.synced_ns = None
        self.last_event = time.monotonic()
        self.cv = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for raw in self.proc.stdout:
            f = raw.decode(errors="replace").split()
            if not f:
                continue
            with self.cv:
                if f[0] == "R":
                    self.events.append((int(f[1]), int(f[2]), ADDRESS if f[3] == "A" else AUTHZ, int(f[4]),
                                        int(f[5]), int(f[6])))
                elif f[0] == "S":
                    self.synced_ns = int(f[1])
                elif f[0] == "E":
                    self.errors.append(" ".join(f[2:]))
                self.last_event = time.monotonic()
                self.cv.notify_all()
        with self.cv:
            self.errors.append("xds_clients exited")
            self.cv.notify_all()

    def _stalled(self, what):
        """Raises when nothing arrived for self.stall seconds, saying what zmeshd did meanwhile. Called with
        self.cv held."""
        quiet = time.monotonic() - self.last_event
        if quiet < self.stall:
            if not hasattr(self, "_cpu_mark") or self._cpu_mark[0] != self.last_event:
                self._cpu_mark = (self.last_event, self.zm.cpu(), time.monotonic())
            return
        _, c0, t0 = self._cpu_mark
        busy = (self.zm.cpu() - c0) / max(1e-3, time.monotonic() - t0)
        why = (f"zmeshd used {busy * 100:.0f}% of a core meanwhile without sending anything: livelocked "
               f"(see bench/README.md, Control plane)" if busy > 0.5 else f"zmeshd used {busy * 100:.0f}% of a core")
        raise BenchError(f"{what}: no response for {quiet:.0f}s; {why}")

    def wait_synced(self, timeout):
        end = time.monotonic() + timeout
        with self.cv:
            while not (self.synced_ns or self.errors):
                left = end - time.monotonic()
                got = len(set(e[1] for e in self.events))
                if left <= 0:
                    raise BenchError(f"{self.n} simulated clients not synced after {timeout}s ({got} got a response)")
                self._stalled(f"{self.n} simulated clients, {got} got a response")
                self.cv.wait(min(left, 1.0))
            if self.errors:
                raise BenchError(f"simulated clients: {self.errors[0]} ({len(self.errors)} errors); "
                                 f"{bench_tail(self.err_path, 3)}")
            return self.synced_ns

    def mark(self):
        with self.cv:
            return len(self.events)

    def wait_change(self, mark, type_url, timeout):
        """Per client, its first response of type_url after events[mark] that carried something:
        {client: (t_ns, resources, removed, bytes)}."""
        got = {}
        end = time.monotonic() + timeout
        with self.cv:
            i = mark
            while True:
                while i < len(self.events):
                    t, c, ty, res, rem, nb = self.events[i]
                    i += 1
                    if ty == type_url and (res or rem) and c not in got:
                        got[c] = (t, res, rem, nb)
                if len(got) == self.n:
                    return got
                if self.errors:
                    raise BenchError(f"simulated clients: {self.errors[0]}")
                left = end - time.monotonic()
                if left <= 0:
                    raise BenchError(f"only {len(got)}/{self.n} clients ACKed the change after {timeout}s")
                self._stalled(f"{len(got)}/{self.n} clients ACKed the change")
                self.cv.wait(min(left, 1.0))

    def initial(self):
        """Per client, the resources and bytes of everything received up to the sync (the full push)."""
        per = {}
        with self.cv:
            for t, c, ty, res, rem, nb in self.events:
                if t <= self.synced_ns:
                    r = per.setdefault(c, [0, 0])
                    r[0] += res
                    r[1] += nb
        return per

    def stop(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.procs.stop(self.proc)


def edits_sim(zm, sims, numbers, timeout):
    """The edits numbered (write_edit) against a zmeshd with simulated clients: per edit, latency (ms) from the
    rename to the last client's ACK, the median client's, and per client resources/bytes."""
    out = []
    for i in numbers:
        time.sleep(0.05)
        mark = sims.mark()
        zm.tail.new()
        t_wall = time.time()
        t0 = time.monotonic_ns()
        kind, ty = write_edit(zm.manifests, i)
        got = sims.wait_change(mark, ty, timeout)
        lat = sorted((v[0] - t0) / 1e6 for v in got.values())
        res = [v[1] + v[2] for v in got.values()]
        nb = [v[3] for v in got.values()]
        e = {"kind": kind, "last_ms": lat[-1], "median_client_ms": pct(lat, 50), "first_ms": lat[0],
             "resources_max": max(res), "resources_min": min(res), "bytes_max": max(nb),
             "bytes_mean": sum(nb) / len(nb)}
        e.update(zmeshd_breakdown(zm, t_wall))
        out.append(e)
        log(f"edit {i} ({kind}): last ACK {lat[-1]:.1f} ms, median client {e['median_client_ms']:.1f} ms, "
            f"{max(res)} resource(s), {max(nb)} B per client")
    return out


def zmeshd_breakdown(zm, t_wall):
    """When zmeshd logged the reload and the push for the edit written at t_wall (ms after the write)."""
    out = {}
    pushes = []
    for l in zm.tail.new():
        m = l.get("message", "")
        pm = PUSH_RE.search(m)
        if pm:
            pushes.append((int(pm.group(1)) + int(pm.group(2)), int(pm.group(3))))
        if m.startswith("manifests reloaded") and "reload_ms" not in out:
            out["reload_ms"] = (parse_time(l["time"]) - t_wall) * 1e3
            tk = l.get("took", "")
            if tk.endswith("ms"):
                out["load_build_ms"] = float(tk[:-2])
        elif m.startswith("pushing:") and "push_ms" not in out:
            out["push_ms"] = (parse_time(l["time"]) - t_wall) * 1e3
            mm = re.search(r"encoded in ([0-9.]+) ms", m)
            if mm:
                out["encode_ms"] = float(mm.group(1))
    if pushes:  # only with RUST_LOG ads=debug
        out["zmeshd_pushes"] = len(pushes)
        out["zmeshd_resources_max"] = max(p[0] for p in pushes)
        out["zmeshd_bytes_max"] = max(p[1] for p in pushes)
    return out


PUSH_RE = re.compile(r"PUSH for node:\S+ resources:(\d+) removed:(\d+) size:(\d+)")


def summarize(edits, key="last_ms"):
    v = [e[key] for e in edits if e.get(key) is not None]
    return {"p50": pct(v, 50), "p90": pct(v, 90), "max": max(v) if v else None, "n": len(v)}


# ----------------------------------------------------------------------------------------------------------
# Parts.

def small_mesh(d, args):
    """The mesh of the latency parts: --mesh-pods pods, a tenth as many services, a twentieth as many
    policies, plus the edited pod and policy."""
    write_mesh(d, args.mesh_pods, max(1, args.mesh_pods // 10), max(1, args.mesh_pods // 20),
               max(1, args.mesh_pods // 100))
    write_edit_files(d)


def part_sim(args, procs, work):
    zm = Zmeshd(args, procs, os.path.join(work, "sim"))
    small_mesh(zm.manifests, args)
    zm.start()
    token = zm.token("istio-system/ztunnel")
    cpu0, t0 = zm.cpu(), time.monotonic_ns()
    sims = Sims(args, procs, zm, args.clients, token)
    try:
        synced = sims.wait_synced(120)
        connect_ms = (synced - t0) / 1e6
        cpu_sync = zm.cpu() - cpu0
        per = sims.initial()
        full_res = [v[0] for v in per.values()]
        full_bytes = [v[1] for v in per.values()]
        log(f"sim: {args.clients} clients connected and synced in {connect_ms:.0f} ms "
            f"({full_res[0]} resources, {full_bytes[0]} B each)")
        cpu1 = zm.cpu()
        edits = edits_sim(zm, sims, range(1, args.edits + 1), 60)
        cpu_edits = zm.cpu() - cpu1
        mem = zm.mem()
    finally:
        sims.stop()
        zm.stop()
    pod_edits = [e for e in edits if e["kind"] == "pod"]
    return {"clients": args.clients, "mesh_pods": args.mesh_pods, "connect_and_sync_ms": connect_ms,
            "zmeshd_cpu_s_connect_and_sync": cpu_sync, "zmeshd_cpu_s_per_edit": cpu_edits / max(1, len(edits)),
            "full_push_resources_per_client": max(full_res), "full_push_bytes_per_client": max(full_bytes),
            "one_pod_resources_per_client": max((e["resources_max"] for e in pod_edits), default=None),
            "one_pod_bytes_per_client": max((e["bytes_max"] for e in pod_edits), default=None),
            "latency_ms": summarize(edits), "median_client_ms": summarize(edits, "median_client_ms"),
            "reload_ms": summarize(edits, "reload_ms"), "push_ms": summarize(edits, "push_ms"),
            "zmeshd_mem_kb": mem, "edits": edits}


ACK_RE = re.compile(r"type=(\S+) nonce=\S+: ACK \((\d+) resources, (\d+) removed\)")


def part_ztunnels(args, procs, work):
    import topo as topo_mod
    per_node = -(-args.ztunnels // args.nodes)
    t = topo_mod.Topology(nodes=args.nodes, pods_per_node=per_node, workdir=os.path.join(work, "ztunnels"))
    pods = t.pods[:args.ztunnels]
    try:
        ts = time.monotonic()
        t.up()
        log(f"ztunnels: topology {args.nodes} nodes x {per_node} pods up in {time.monotonic() - ts:.1f}s")
        zm = Zmeshd(args, procs, os.path.join(t.workdir, "zmeshd"), listen="0.0.0.0:15012", topo=t,
                    netns=t.nodes[0])
        small_mesh(zm.manifests, args)
        with open(os.path.join(zm.manifests, "pods.yaml"), "w") as f:
            f.write(NS_TMPL.format(ns="default"))
            for p in pods:
                f.write(POD_TMPL.format(name=p.name, ns=p.namespace, app=p.name, version="v1",
                                        node="node%d" % p.node, sa=p.sa, ip=p.ip))
        zm.start()
        root = zm.root
        addr = "https://%s:15012" % t.node_ip(1)
        zts = []
        for p in pods:
            env = {"LOCAL_XDS_PATH": "", "LOCAL_CA_DIR": "", "XDS_ADDRESS": addr, "CA_ADDRESS": addr,
                   "XDS_ROOT_CA": root, "CA_ROOT_CA": root, "ALT_XDS_HOSTNAME": ISTIOD, "ALT_CA_HOSTNAME": ISTIOD,
                   "AUTH_TOKEN": zm.token("%s/%s" % (p.namespace, p.sa), p.name), "POD_NAME": "ztunnel-" + p.name,
                   "POD_NAMESPACE": "istio-system", "INSTANCE_IP": p.ip, "NODE_NAME": "node%d" % p.node,
                   "RUST_LOG": "info,xds=debug"}
            zts.append(t.start_ztunnel(p, "", env=env, wait_ports=()))
        tails = [LogTail(z.log_path) for z in zts]
        # Ready: each ztunnel synced both types (its first ACKs) and got its certificate (it listens).
        full = [None] * len(zts)
        synced = [False] * len(zts)
        busy0 = (zm.cpu(), time.monotonic())
        acks = [dict() for _ in zts]
        end = time.monotonic() + 60
        progress = time.monotonic()
        while not all(synced) and time.monotonic() < end and time.monotonic() - progress < args.stall:
            for i, tl in enumerate(tails):
                for l in tl.new():
                    m = ACK_RE.search(l.get("message", ""))
                    if m:
                        progress = time.monotonic()
                        acks[i].setdefault(m.group(1), int(m.group(2)))
                    if "first sync of every type" in l.get("message", ""):
                        synced[i] = True
                        full[i] = sum(acks[i].values())
            for z in zts:
                if z.poll() is not None:
                    raise BenchError(f"ztunnel {z.pod.name} exited: {bench_tail(z.log_path)}")
            time.sleep(0.05)
        if not all(synced):
            raise BenchError(f"{synced.count(False)} ztunnels not synced ({sum(map(len, acks))} ACKs, the last "
                             f"{time.monotonic() - progress:.0f}s ago; {zm_busy(zm, busy0)}): "
                             f"{bench_tail(zts[synced.index(False)].log_path)}")
        for p, z in zip(pods, zts):
            if not t.wait_listen(p.netns, (15001, 15006, 15008), 30, z):
                raise BenchError(f"ztunnel {p.name} not ready: {bench_tail(z.log_path)}")
        log(f"ztunnels: {len(zts)} ztunnels synced and ready ({full[0]} resources each)")
        edits = []
        cpu0 = zm.cpu()
        for i in range(1, args.edits + 1):
            time.sleep(0.1)
            for tl in tails:
                tl.new()
            zm.tail.new()
            t_wall = time.time()
            kind, ty = write_edit(zm.manifests, i)
            got = [None] * len(zts)
            busy0 = (zm.cpu(), time.monotonic())
            end = time.monotonic() + 30
            while None in got and time.monotonic() < end:
                for k, tl in enumerate(tails):
                    if got[k] is not None:
                        continue
                    for l in tl.new():
                        m = ACK_RE.search(l.get("message", ""))
                        if m and m.group(1) == ty and int(m.group(2)) + int(m.group(3)) > 0:
                            got[k] = (parse_time(l["time"]), int(m.group(2)) + int(m.group(3)))
                            break
                time.sleep(0.005)
            if None in got:
                k = got.index(None)
                raise BenchError(f"edit {i}: ztunnel {pods[k].name} did not ACK within 30s ({zm_busy(zm, busy0)}): "
                                 f"{bench_tail(zts[k].log_path)}")
            lat = sorted((g[0] - t_wall) * 1e3 for g in got)
            e = {"kind": kind, "last_ms": lat[-1], "median_client_ms": pct(lat, 50), "first_ms": lat[0],
                 "resources_max": max(g[1] for g in got)}
            e.update(zmeshd_breakdown(zm, t_wall))
            edits.append(e)
            log(f"edit {i} ({kind}): last ztunnel ACK {lat[-1]:.1f} ms (zmeshd reloaded at "
                f"{e.get('reload_ms', float('nan')):.1f} ms, pushed at {e.get('push_ms', float('nan')):.1f} ms)")
        cpu_edits = zm.cpu() - cpu0
        mem = zm.mem()
        zm.stop()
    finally:
        t.down()
    pod_edits = [e for e in edits if e["kind"] == "pod"]
    return {"ztunnels": len(pods), "nodes": args.nodes, "mesh_pods": args.mesh_pods,
            "full_push_resources_per_ztunnel": max(full),
            "one_pod_resources_per_ztunnel": max((e["resources_max"] for e in pod_edits), default=None),
            "latency_ms": summarize(edits), "median_client_ms": summarize(edits, "median_client_ms"),
            "reload_ms": summarize(edits, "reload_ms"), "push_ms": summarize(edits, "push_ms"),
            "zmeshd_cpu_s_per_edit": cpu_edits / max(1, len(edits)), "zmeshd_mem_kb": mem, "edits": edits}


def openssl_speed(argv, timeout=60):
    r = subprocess.run(["openssl", "speed"] + argv, capture_output=True, text=True, timeout=timeout)
    return r.stdout + r.stderr


def aes_gcm_mb_s(seconds):
    out = openssl_speed(["-seconds", str(seconds), "-bytes", "16384", "-evp", "aes-128-gcm"])
    m = re.search(r"^AES-128-GCM\s+([0-9.]+)k", out, re.M | re.I)
    return float(m.group(1)) * 1000 / 1e6 if m else None


def part_scale(args, procs, work):
    # Baseline: zmeshd with a one-pod mesh, in the same run.
    base = Zmeshd(args, procs, os.path.join(work, "scale-base"))
    write_mesh(base.manifests, 1, 1, 1, 1)
    base.start()
    time.sleep(0.2)
    base_mem = base.mem()
    base.stop()
    r = scale_run(args, procs, os.path.join(work, "scale"), args.big_clients, base_mem)
    fb = args.big_fallback_clients
    if "push_error" in r and fb and fb < args.big_clients:
        # The rest of the figures (push CPU, one-pod changes) from a fresh zmeshd with fewer clients.
        log(f"scale: again with {fb} clients")
        r["fallback"] = scale_run(args, procs, os.path.join(work, "scale-fallback"), fb, base_mem)
    return r


def scale_run(args, procs, d, n_clients, base_mem):
    # ads=debug: zmeshd logs each push per client (its ADS bookkeeping), a cross-check of the clients' counts.
    zm = Zmeshd(args, procs, d, rust_log="info,ads=debug")
    ts = time.monotonic()
    nbytes = write_mesh(zm.manifests, args.big_pods, args.big_services, args.big_policies, args.big_namespaces)
    write_edit_files(zm.manifests)
    log(f"scale: {args.big_pods} pods, {args.big_services} services, {args.big_policies} policies in "
        f"{args.big_namespaces} files ({nbytes / 1e6:.1f} MB of YAML) written in {time.monotonic() - ts:.1f}s")
    t0 = time.monotonic()
    zm.start()
    r = {"pods": args.big_pods, "services": args.big_services, "policies": args.big_policies,
         "namespaces": args.big_namespaces, "yaml_bytes": nbytes, "clients": n_clients,
         "start_s": time.monotonic() - t0, "load_took": zm.loaded.get("took"), "zmeshd_cpu_s_load": zm.cpu(),
         "mem_kb_baseline": base_mem, "mem_kb_loaded": zm.mem(),
         "counts": {k: zm.loaded.get(k) for k in ("workloads", "services", "policies", "errors", "warnings")}}
    if r["counts"]["errors"]:
        zm.stop()
        raise BenchError(f"generated manifests have {r['counts']['errors']} errors: {bench_tail(zm.log_path)}")
    log(f"scale: zmeshd started in {r['start_s']:.2f}s (load {r['load_took']}), {r['zmeshd_cpu_s_load']:.2f} CPU-s, "
        f"RSS {r['mem_kb_loaded']['VmRSS'] / 1024:.1f} MB")
    token = zm.token("istio-system/ztunnel")
    cpu0, t0 = zm.cpu(), time.monotonic_ns()
    sims = Sims(args, procs, zm, n_clients, token, prefix="big%d" % n_clients)
    try:
        synced = sims.wait_synced(300)
        r["full_push_ms"] = (synced - t0) / 1e6
        r["zmeshd_cpu_s_full_push"] = zm.cpu() - cpu0
        r["mem_kb_full_push"] = zm.mem()
        per = sims.initial()
        r["full_push_resources_per_client"] = max(v[0] for v in per.values())
        r["full_push_bytes_per_client"] = max(v[1] for v in per.values())
        log(f"scale: full push to {n_clients} clients in {r['full_push_ms']:.0f} ms, "
            f"{r['zmeshd_cpu_s_full_push']:.2f} zmeshd CPU-s, {r['full_push_resources_per_client']} resources / "
            f"{r['full_push_bytes_per_client'] / 1e6:.2f} MB per client")
        edits = []
        for i in range(args.big_edits):
            c0 = zm.cpu()
            e = edits_sim(zm, sims, [2 * i + 1], 120)[0]  # odd edits change the pod
            e["zmeshd_cpu_s"] = zm.cpu() - c0
            edits.append(e)
        r["mem_kb_after_edits"] = zm.mem()
        r["one_pod"] = {"latency_ms": summarize(edits), "zmeshd_cpu_s": pct([e["zmeshd_cpu_s"] for e in edits], 50),
                        "resources_per_client": max(e["resources_max"] for e in edits),
                        "bytes_per_client": max(e["bytes_max"] for e in edits),
                        "reload_ms": summarize(edits, "reload_ms"), "push_ms": summarize(edits, "push_ms"),
                        "load_build_ms": summarize(edits, "load_build_ms"),
                        "encode_ms": summarize(edits, "encode_ms"),
                        # zmeshd's own bookkeeping (its debug log): pushes per edit, largest push
                        "zmeshd_pushes": max((e.get("zmeshd_pushes", 0) for e in edits), default=0),
                        "zmeshd_resources_max": max((e.get("zmeshd_resources_max", 0) for e in edits), default=0),
                        "zmeshd_bytes_max": max((e.get("zmeshd_bytes_max", 0) for e in edits), default=0)}
        r["edits"] = edits
    except BenchError as e:
        # What was measured before stays in the results (the load figures); the push part failed.
        log(f"scale: {e}")
        r["push_error"] = str(e)
        try:
            r["mem_kb_at_failure"] = zm.mem()
        except OSError:
            pass
    finally:
        sims.stop()
        zm.stop()
    return r


def part_ca(args, procs, work):
    zm = Zmeshd(args, procs, os.path.join(work, "ca"))
    write_mesh(zm.manifests, 1, 1, 1, 1)
    zm.start()
    token = zm.token("ns000/sa-ca")
    argv = [args.clients_bin, "ca", "--addr", f"127.0.0.1:{zm.port}", "--roots", zm.root, "--alt-hostname", ISTIOD,
            "--token", token, "--identity", "spiffe://cluster.local/ns/ns000/sa/sa-ca", "--conns",
            str(args.ca_conns), "--inflight", str(args.ca_inflight), "--seconds", str(args.ca_seconds),
            "--warmup", str(args.ca_warmup)]
    try:
        c0 = zm.cpu()
        p = procs.start(argv, "xds_clients ca", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=args.ca_seconds + args.ca_warmup + 60)
        cpu = zm.cpu() - c0
        procs.stop(p)
    finally:
        zm.stop()
    line = next((ln for ln in out.decode().splitlines() if ln.startswith("CA ")), None)
    if p.returncode != 0 or not line:
        raise BenchError(f"xds_clients ca exited {p.returncode}: {err.decode().strip()[-300:]}")
    kv = dict(f.split("=", 1) for f in line.split()[1:])
    r = {"ok": int(kv["ok"]), "errors": int(kv["errors"]), "seconds": float(kv["seconds"]),
         "rate": float(kv["rate"]), "p50_ms": float(kv["p50_ms"]), "p99_ms": float(kv["p99_ms"]),
         "max_ms": float(kv["max_ms"]), "answer_checked": kv["checked"] == "1", "first_error": kv["first_error"],
         "inflight": args.ca_inflight, "conns": args.ca_conns}
    if r["errors"]:
        raise BenchError(f"CreateCertificate: {r['errors']} errors, first {r['first_error']}")
    # zmeshd's CPU over warm-up and measurement: signatures per zmeshd CPU-second (the client shares the cores).
    r["zmeshd_cpu_s"] = cpu
    total = r["ok"] + int(kv["warmup_ok"])
    r["per_zmeshd_cpu_s"] = total / cpu if cpu > 0 else None
    log(f"ca: {r['rate']:.0f} CreateCertificate/s (p50 {r['p50_ms']:.1f} ms), "
        f"{r['per_zmeshd_cpu_s'] or 0:.0f} per zmeshd CPU-second")
    out = openssl_speed(["-seconds", str(args.openssl_seconds), "ecdsap256"], timeout=4 * args.openssl_seconds + 30)
    m = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+\s+\S+\s+([0-9.]+)\s+([0-9.]+)", out)
    if m:
        r["openssl_sign_s"], r["openssl_verify_s"] = float(m.group(1)), float(m.group(2))
        # One CreateCertificate: verify the token (ES256), verify the CSR's signature, sign the leaf.
        r["openssl_floor_s"] = 1 / (1 / r["openssl_sign_s"] + 2 / r["openssl_verify_s"])
    else:
        log(f"ca: cannot read openssl speed's output: {out[-300:]}")
    return r


# ----------------------------------------------------------------------------------------------------------
# Report.

def fmtv(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def report(results, args):
    rows, checks, ratios = [], {}, {}

    def row(name, value, unit, base, base_label, ratio=None, check=None):
        rows.append((name, value, unit, base, base_label, ratio, check))

    def chk(key, value, target, ok):
        checks[key] = {"value": value, "target": target, "pass": ok}
        return "PASS" if ok else "FAIL"

    z = results.get("ztunnels")
    if z and "error" not in z:
        lat = z["latency_ms"]
        n = z["ztunnels"]
        c = chk("ztunnel_push_p50", lat["p50"], f"<= {TARGET_ZTUNNEL_P50_MS:.0f} ms",
                lat["p50"] <= TARGET_ZTUNNEL_P50_MS)
        row(f"push to last ACK, {n} ztunnels, p50", lat["p50"], "ms", TARGET_ZTUNNEL_P50_MS, "target",
            lat["p50"] / TARGET_ZTUNNEL_P50_MS, c)
        row(f"  p90 / max over {lat['n']} edits", f"{fmtv(lat['p90'])} / {fmtv(lat['max'])}", "ms", DEBOUNCE_MS,
            "debounce (floor)", lat["p90"] / DEBOUNCE_MS)
        rl, pu = z["reload_ms"], z["push_ms"]
        row("  zmeshd reloaded / pushed at, p50", f"{fmtv(rl['p50'])} / {fmtv(pu['p50'])}", "ms", DEBOUNCE_MS,
            "debounce (floor)", (rl["p50"] or 0) / DEBOUNCE_MS)
        row("  last ACK minus zmeshd's push, p50",
            pct([e["last_ms"] - e["push_ms"] for e in z["edits"] if "push_ms" in e], 50), "ms", None, "")
        ratios["ztunnel_p50_vs_target"] = lat["p50"] / TARGET_ZTUNNEL_P50_MS
        ratios["ztunnel_p50_vs_debounce"] = lat["p50"] / DEBOUNCE_MS
    s = results.get("sim")
    if s and "error" not in s:
        lat = s["latency_ms"]
        n = s["clients"]
        target = TARGET_SIM_P50_MS
        c = chk("sim_push_p50", lat["p50"], f"<= {target:.0f} ms", lat["p50"] <= target)
        row(f"push to last ACK, {n} sim clients, p50", lat["p50"], "ms", target, "target", lat["p50"] / target, c)
        row(f"  p90 / max over {lat['n']} edits", f"{fmtv(lat['p90'])} / {fmtv(lat['max'])}", "ms", DEBOUNCE_MS,
            "debounce (floor)", lat["p90"] / DEBOUNCE_MS)
        row("  median client, p50", s["median_client_ms"]["p50"], "ms", DEBOUNCE_MS, "debounce (floor)",
            s["median_client_ms"]["p50"] / DEBOUNCE_MS)
        row("  zmeshd reloaded / pushed at, p50", f"{fmtv(s['reload_ms']['p50'])} / {fmtv(s['push_ms']['p50'])}",
            "ms", DEBOUNCE_MS, "debounce (floor)", (s["reload_ms"]["p50"] or 0) / DEBOUNCE_MS)
        row(f"  connect + full push to {n} clients", s["connect_and_sync_ms"], "ms", None,
            f"zmeshd CPU {s['zmeshd_cpu_s_connect_and_sync'] * 1e3:.0f} ms")
        row("  zmeshd CPU per edit", s["zmeshd_cpu_s_per_edit"] * 1e3, "ms", None, "")
        ratios["sim_p50_vs_target"] = lat["p50"] / target
        if z and "error" not in z:
            ratios["sim_p50_vs_ztunnel_p50"] = lat["p50"] / z["latency_ms"]["p50"]
    # O(1) resources per one-pod change.
    big = results.get("scale") or {}
    big = big.get("fallback", big) if "push_error" in big else big
    for key, r, who in (("sim", s, "sim client"), ("scale", big, "sim client (big mesh)")):
        if not r or "error" in r or (key == "scale" and "one_pod" not in r):
            continue
        one = r["one_pod"] if key == "scale" else r
        res1, b1 = one.get("one_pod_resources_per_client", one.get("resources_per_client")), \
            one.get("one_pod_bytes_per_client", one.get("bytes_per_client"))
        if res1 is None:
            continue
        c = chk(f"{key}_one_pod_resources", res1, f"== {TARGET_ONE_POD_RESOURCES} resource",
                res1 == TARGET_ONE_POD_RESOURCES)
        row(f"one-pod change, per {who}", f"{res1} res / {b1} B", "", f"{r['full_push_resources_per_client']} res"
            f" / {r['full_push_bytes_per_client']} B", "full push", b1 / r["full_push_bytes_per_client"], c)
        ratios[f"{key}_one_pod_bytes_vs_full_push"] = b1 / r["full_push_bytes_per_client"]
        if key == "scale" and one.get("zmeshd_pushes"):
            row("  zmeshd's own count (ADS bookkeeping)", f"{one['zmeshd_resources_max']} res / "
                f"{one['zmeshd_bytes_max']} B", "", f"{one['zmeshd_pushes']} pushes", "per change", None,
                "PASS" if (one["zmeshd_resources_max"], one["zmeshd_bytes_max"]) == (res1, b1) else "DIFF")
    if z and "error" not in z and z.get("one_pod_resources_per_ztunnel") is not None:
        r1 = z["one_pod_resources_per_ztunnel"]
        c = chk("ztunnel_one_pod_resources", r1, f"== {TARGET_ONE_POD_RESOURCES} resource",
                r1 == TARGET_ONE_POD_RESOURCES)
        row("one-pod change, per ztunnel (its ACK)", f"{r1} res", "", f"{z['full_push_resources_per_ztunnel']} res",
            "full push", r1 / z["full_push_resources_per_ztunnel"], c)
    b = results.get("scale")
    if b and "error" not in b:
        mb = lambda kb: kb / 1024  # noqa: E731
        base = mb(b["mem_kb_baseline"]["VmRSS"])
        label = f"{b['pods']} pods/{b['services']} svcs/{b['policies']} pols"
        worst = max(b[k]["VmHWM"] for k in ("mem_kb_loaded", "mem_kb_full_push", "mem_kb_after_edits",
                                            "mem_kb_at_failure") if k in b)
        c = chk("scale_rss", mb(worst), f"<= {TARGET_RSS_MB:.0f} MB", mb(worst) <= TARGET_RSS_MB)
        row(f"zmeshd peak RSS (VmHWM), {label}", mb(worst), "MB", TARGET_RSS_MB, "target", mb(worst) / TARGET_RSS_MB, c)
        ratios["scale_rss_vs_target"] = mb(worst) / TARGET_RSS_MB
        for k, what in (("mem_kb_loaded", "RSS loaded, no client"),
                        ("mem_kb_full_push", f"RSS with {b['clients']} clients synced"),
                        ("mem_kb_after_edits", "RSS after the one-pod changes")):
            if k in b:
                row("  " + what, mb(b[k]["VmRSS"]), "MB", base, "one-pod mesh", mb(b[k]["VmRSS"]) / base)
        row("  zmeshd CPU: start (load, build, encode)", b["zmeshd_cpu_s_load"] * 1e3, "ms", None,
            f"load took {b['load_took']}")
        if "push_error" in b:
            checks["scale_full_push"] = {"value": None, "target": f"full push to {b['clients']} clients",
                                         "pass": False}
            row(f"  full push to {b['clients']} clients", "FAILED", "", None, "see below", None, "FAIL")
            f = b.get("fallback")
            if f and "push_error" not in f:
                row(f"  again with {f['clients']} clients: peak RSS", mb(f["mem_kb_full_push"]["VmHWM"]), "MB",
                    TARGET_RSS_MB, "target", mb(f["mem_kb_full_push"]["VmHWM"]) / TARGET_RSS_MB)
                b = f
        if "push_error" not in b:
            pushed_mb = b["full_push_bytes_per_client"] * b["clients"] / 1e6
            rate = pushed_mb / b["zmeshd_cpu_s_full_push"] if b["zmeshd_cpu_s_full_push"] else None
            aes = results.get("aes_gcm_mb_s")
            row(f"  zmeshd CPU: full push to {b['clients']} clients", b["zmeshd_cpu_s_full_push"] * 1e3, "ms", None,
                f"{pushed_mb:.1f} MB in {b['full_push_ms']:.0f} ms")
            if rate:
                row("  full push MB per zmeshd CPU-s", rate, "MB/s", aes, "AES-128-GCM 16K (openssl)",
                    rate / aes if aes else None)
                if aes:
                    ratios["scale_push_mb_per_cpu_s_vs_aes_gcm"] = rate / aes
            o = b["one_pod"]
            row("  one-pod change: zmeshd CPU (p50)", (o["zmeshd_cpu_s"] or 0) * 1e3, "ms", None,
                f"reload {fmtv(o['load_build_ms']['p50'])} ms + encode {fmtv(o['encode_ms']['p50'])} ms")
            row(f"  one-pod change: last ACK of {b['clients']} (p50)", o["latency_ms"]["p50"], "ms", DEBOUNCE_MS,
                "debounce (floor)", o["latency_ms"]["p50"] / DEBOUNCE_MS)
    ca = results.get("ca")
    if ca and "error" not in ca:
        sign = ca.get("openssl_sign_s")
        row(f"CA CreateCertificate/s ({ca['inflight']} in flight)", ca["rate"], "/s", sign,
            "openssl P-256 sign/s", ca["rate"] / sign if sign else None)
        if ca.get("per_zmeshd_cpu_s"):
            row("  per zmeshd CPU-second", ca["per_zmeshd_cpu_s"], "/s", ca.get("openssl_floor_s"),
                "1 sign + 2 verify (openssl)",
                ca["per_zmeshd_cpu_s"] / ca["openssl_floor_s"] if ca.get("openssl_floor_s") else None)
        row("  latency p50 / p99", f"{ca['p50_ms']:.1f} / {ca['p99_ms']:.1f}", "ms", None, "")
        if sign:
            ratios["ca_rate_vs_openssl_sign"] = ca["rate"] / sign
        if ca.get("openssl_floor_s") and ca.get("per_zmeshd_cpu_s"):
            ratios["ca_per_cpu_s_vs_openssl_floor"] = ca["per_zmeshd_cpu_s"] / ca["openssl_floor_s"]

    print()
    print(f"{'figure':<46} {'value':>20} {'unit':<5} {'baseline / target':>22} {'of':<28} {'ratio':>7} check")
    print("-" * 140)
    for name, value, unit, base, blabel, ratio, check in rows:
        v = value if isinstance(value, str) else fmtv(value)
        bs = base if isinstance(base, str) else fmtv(base)
        print(f"{name:<46} {v:>20} {unit:<5} {bs:>22} {blabel:<28} {fmtv(ratio, '.3f'):>7} {check or ''}")
    for p in PARTS:
        r = results.get(p)
        if r and "error" in r:
            print(f"{p}: FAILED: {r['error']}")
        elif r and "push_error" in r:
            print(f"{p}: full push FAILED: {r['push_error']}")
    return ratios, checks


# ----------------------------------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description="zmeshd control-plane benchmark: push latency to ztunnels and "
                                 "simulated clients, resources per push, RSS/CPU at scale, CA rate")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated of: " + ",".join(PARTS))
    ap.add_argument("--ztunnels", type=int, default=20, help="real ztunnels (default 20)")
    ap.add_argument("--nodes", type=int, default=10, help="nodes they are spread over (default 10)")
    ap.add_argument("--clients", type=int, default=500, help="simulated clients for the latency (default 500)")
    ap.add_argument("--edits", type=int, default=20, help="edits per latency part, pod and policy in turn (20)")
    ap.add_argument("--mesh-pods", type=int, default=200,
                    help="pods in the latency parts' mesh (a tenth as many services, a twentieth policies; 200)")
    ap.add_argument("--big-pods", type=int, default=10000)
    ap.add_argument("--big-services", type=int, default=2000)
    ap.add_argument("--big-policies", type=int, default=500)
    ap.add_argument("--big-namespaces", type=int, default=100, help="namespaces = manifest files (100)")
    ap.add_argument("--big-clients", type=int, default=100,
                    help="simulated clients of the big mesh (100: one per node of the generated pods)")
    ap.add_argument("--big-edits", type=int, default=3, help="one-pod changes on the big mesh (3)")
    ap.add_argument("--big-fallback-clients", type=int, default=20,
                    help="when the full push to --big-clients fails, measure again with this many (20; 0: no)")
    ap.add_argument("--ca-seconds", type=int, default=3)
    ap.add_argument("--ca-warmup", type=int, default=1)
    ap.add_argument("--ca-inflight", type=int, default=32)
    ap.add_argument("--ca-conns", type=int, default=4)
    ap.add_argument("--openssl-seconds", type=int, default=3, help="openssl speed -seconds (3)")
    ap.add_argument("--stall", type=float, default=20,
                    help="give up on simulated clients after this many seconds without a response (20)")
    ap.add_argument("--bin-dir", default=os.environ.get("ZMESH_BIN", os.path.join(ROOT, "build", "bin")))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "cp.json"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (manifests, logs)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    a = ap.parse_args(argv)
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in a.only if s not in PARTS]
    if bad or not a.only:
        ap.error(f"--only: unknown part(s) {bad}")
    if not (1 <= a.nodes <= 50 and 1 <= a.ztunnels <= 250 * a.nodes and 1 <= a.edits <= 1000 and
            1 <= a.clients <= 20000 and 1 <= a.big_clients <= 20000 and a.big_namespaces >= 1 and
            a.big_pods >= 1 and a.big_edits >= 1 and a.mesh_pods >= 1 and a.openssl_seconds >= 1):
        ap.error("a size is out of range")
    a.bin_dir = os.path.abspath(a.bin_dir)
    a.clients_bin = os.path.join(ROOT, "build", "bench", "xds_clients")
    return a


def main(argv):
    args = parse_args(argv)
    if os.geteuid() != 0 and "ztunnels" in args.only:
        print("cp: the ztunnels part needs root (network namespaces); --only sim,scale,ca runs without",
              file=sys.stderr)
        return 2
    for b in [os.path.join(args.bin_dir, "zmeshd"), args.clients_bin] + \
            ([os.path.join(args.bin_dir, "ztunnel")] if "ztunnels" in args.only else []):
        if not os.access(b, os.X_OK):
            print(f"cp: {b} missing (make all)", file=sys.stderr)
            return 2
    os.environ["ZMESH_BIN"] = args.bin_dir  # topo.py's start_ztunnel
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    load0 = os.getloadavg()
    if load0[0] > 0.5:
        log(f"warning: load average {load0[0]:.2f} before the run; other work here makes the figures noisy")
    work = tempfile.mkdtemp(prefix="zmesh-cp-")
    procs = bench.Procs()
    results = {}
    started = datetime.datetime.now(datetime.timezone.utc)
    t_run = time.monotonic()
    try:
        if "scale" in args.only:
            results["aes_gcm_mb_s"] = aes_gcm_mb_s(1)
        for p in PARTS:
            if p not in args.only:
                continue
            log(f"part {p}")
            tp = time.monotonic()
            fn = {"ztunnels": part_ztunnels, "sim": part_sim, "scale": part_scale, "ca": part_ca}[p]
            try:
                results[p] = fn(args, procs, work)
            except BenchError as e:
                log(f"part {p} failed: {e}")
                results[p] = {"error": str(e)}
            finally:
                procs.stop_all()
            results.setdefault(p, {})["part_seconds"] = time.monotonic() - tp
    except KeyboardInterrupt:
        log("interrupted: tearing down")
        procs.stop_all()
        return 130
    finally:
        procs.stop_all()
        logs = os.path.join(os.path.dirname(args.out), "cp-logs")
        shutil.rmtree(logs, ignore_errors=True)
        os.makedirs(logs, exist_ok=True)
        for dp, _, fs in os.walk(work):
            for f in fs:
                if f.endswith(".log"):
                    rel = os.path.relpath(os.path.join(dp, f), work).replace(os.sep, "-")
                    shutil.copy(os.path.join(dp, f), os.path.join(logs, rel))
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    ratios, checks = report(results, args)
    host = bench.host_info()
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    host["git_head"] = head.stdout.strip() or None
    host["loadavg_before"] = load0
    host["loadavg_after"] = os.getloadavg()
    print(f"\nrun took {time.monotonic() - t_run:.0f}s; load average (1/5/15 min) before: "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, after: {' '.join('%.2f' % x for x in os.getloadavg())}")
    params = {k: v for k, v in vars(args).items() if k not in ("bin_dir", "clients_bin", "out")}
    doc = {"date": started.isoformat(timespec="seconds"), "host": host, "params": params, "results": results,
           "ratios": ratios,
           "targets": {"ztunnel_push_p50_ms": TARGET_ZTUNNEL_P50_MS, "sim_push_p50_ms": TARGET_SIM_P50_MS,
                       "scale_rss_mb": TARGET_RSS_MB, "one_pod_resources": TARGET_ONE_POD_RESOURCES},
           "checks": checks}
    # A part whose push failed (the scale part keeps its load figures) fails the run as a failed part does.
    parts = {p: ({"error": r["push_error"]} if "push_error" in r else r) for p, r in results.items()
             if isinstance(r, dict)}
    return bench.finish(args.out, doc, load0[0], parts, checks, args.strict)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
