#!/usr/bin/python3
"""zmesh benchmark: direct TCP vs an HAProxy mTLS tunnel pair vs zmesh (two ztunnels, HBONE), side by side.

One run builds the two-node, two-pod topology of the end-to-end tests (tests/e2e/topo.py) and, for each
scenario, measures from pod A to pod B:
  * single-stream throughput: iperf3 -c ... -t N -J (Gbit/s, from the receiver's byte count);
  * 1-byte round-trip latency p50/p99/mean: build/bin/zm-rtt (bench/rtt.c) on one TCP connection;
  * proxy CPU seconds per GB moved during the iperf3 run: utime+stime of both proxy processes (and any
    children) from /proc/<pid>/stat, before and after, divided by the bytes received (GB = 1e9 bytes).
Then prints a table, the ratios, and pass/fail against the targets, and writes build/bench/results.json.

Run as root through `make bench` (or bench/run.sh [--only direct,haproxy] [--time N]).
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

SCENARIOS = ("direct", "floor", "haproxy", "zmesh", "shared")
# Targets (zmesh against the baselines measured in the same run).
TARGET_TPUT_VS_HAPROXY = 2.5    # zmesh throughput >= 2.5x HAProxy's
TARGET_RTT_VS_DIRECT = 2.5      # zmesh RTT p50 <= 2.5x direct
TARGET_CPU_S_PER_GB = 1.2       # both ztunnels together <= 1.2 CPU-seconds per GB
# Against the floor: a plaintext HAProxy relay pair (mode tcp, no TLS, no capture) on the same path, i.e. what any
# two user-space proxies cost here (issue 6 item 13). The CPU allowance is the AES-GCM cost of both sides.
TARGET_RTT_VS_FLOOR = 1.1       # zmesh RTT p50 <= 1.1x the floor's
TARGET_TPUT_VS_FLOOR = 0.9      # zmesh throughput >= 0.9x the floor's
TARGET_CPU_OVER_FLOOR = 0.7     # zmesh CPU-s/GB <= the floor's + 0.7

# Ports. Apps in pod B listen on the wildcard address; each scenario reaches them differently.
APP_IPERF, APP_RTT = 5201, 7000          # the apps themselves (direct and zmesh target these)
HAP_IN_IPERF, HAP_IN_RTT = 25201, 27000  # server-side haproxy in pod B (mTLS), forwards to 127.0.0.1:APP_*
HAP_OUT_IPERF, HAP_OUT_RTT = 15201, 17000  # client-side haproxy in pod A on 127.0.0.1
FLOOR_IN_IPERF, FLOOR_IN_RTT = 26201, 28000   # floor: server-side plaintext haproxy in pod B
FLOOR_OUT_IPERF, FLOOR_OUT_RTT = 16201, 18000  # floor: client-side plaintext haproxy in pod A on 127.0.0.1

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# Processes we start. Every one is recorded here and ended by its own pid at teardown, also on Ctrl-C.

class Procs:
    def __init__(self):
        self.procs = []

    def start(self, argv, name, **kw):
        log(f"start {name}: {' '.join(argv)}")
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        # Own process group, so Ctrl-C in the terminal reaches only us and we end children in order.
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        p.bench_name = name
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            try:
                p.terminate()
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=3)
            except ProcessLookupError:
                pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            try:
                self.stop(p)
            except Exception as e:  # teardown must go on whatever happens to one process
                log(f"stop {getattr(p, 'bench_name', p.pid)}: {e}")


def nsexec(ns, argv):
    return ["ip", "netns", "exec", ns] + list(argv)


def run(argv, timeout, check=True, stdin=None):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
                       input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return r


def wait_listen(ns, port, proc=None, timeout=10.0):
    """Waits until something listens on TCP port inside netns ns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{proc.bench_name} exited with {proc.returncode} before listening on {port}")
        r = run(nsexec(ns, ["ss", "-Hltn", f"sport = :{port}"]), timeout=5, check=False)
        if r.returncode == 0 and r.stdout.strip():
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on port {port} in {ns} after {timeout}s")


# ----------------------------------------------------------------------------------------------------------
# CPU accounting from /proc.

def _children(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return kids


def cpu_seconds(pids):
    """utime+stime (all threads) of pids and their descendants, in seconds."""
    total, todo, seen = 0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: fields resume after the last ')'. utime and stime are
        # fields 14 and 15 of proc(5), i.e. indexes 11 and 12 counting from field 3.
        fields = st[st.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
        todo += _children(pid)
    return total / CLK_TCK


# ----------------------------------------------------------------------------------------------------------
# Measurements.

def measure_rtt(ns, ip, port, count, rtt_bin):
    argv = nsexec(ns, [rtt_bin, "client", ip, str(port), str(count)])
    last = None
    for attempt in range(3):
        r = run(argv, timeout=120, check=False)
        m = re.search(r"p50_us=([\d.]+) p99_us=([\d.]+) mean_us=([\d.]+)", r.stdout)
        if r.returncode == 0 and m:
            return {"p50_us": float(m.group(1)), "p99_us": float(m.group(2)), "mean_us": float(m.group(3)),
                    "count": count}
        last = (r.stdout + r.stderr).strip()
        time.sleep(0.5)
    raise BenchError(f"zm-rtt to {ip}:{port} from {ns} failed: {last}")


def perf_start(pids, label, outdir):
    """Starts `perf record -g` on each pid; returns [(Popen, data path)]."""
    out = []
    os.makedirs(outdir, exist_ok=True)
    for side, pid in zip(("client", "server"), pids):
        path = os.path.join(outdir, f"perf-{label}-{side}.data")
        p = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-g", "-p", str(pid), "-o", path],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        out.append((p, path))
    time.sleep(0.3)   # perf attaches asynchronously
    return out


def perf_stop(recs):
    """Stops the recorders and writes a flat top-symbols report next to each data file."""
    for p, path in recs:
        p.send_signal(signal.SIGINT)
    for p, path in recs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        rep = subprocess.run(["perf", "report", "-i", path, "--stdio", "--no-children", "-g", "none",
                              "--percent-limit", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, timeout=120)
        with open(path[:-len(".data")] + ".txt", "w") as f:
            f.write(rep.stdout)
        log(f"profile: {os.path.relpath(path[:-len('.data')] + '.txt', os.getcwd())}")


def measure_iperf(ns, ip, port, seconds, proxy_pids, profile=None):
    argv = nsexec(ns, ["iperf3", "-c", ip, "-p", str(port), "-t", str(seconds), "-J"])
    last = None
    for attempt in range(3):
        each0 = [cpu_seconds([pid]) for pid in proxy_pids or ()]
        cpu0 = cpu_seconds(proxy_pids) if proxy_pids else 0.0
        recs = perf_start(proxy_pids, *profile) if profile and proxy_pids else []
        t0 = time.monotonic()
        try:
            r = run(argv, timeout=seconds + 60, check=False)
        finally:
            wall = time.monotonic() - t0
            if recs:
                perf_stop(recs)
        cpu1 = cpu_seconds(proxy_pids) if proxy_pids else 0.0
        each1 = [cpu_seconds([pid]) for pid in proxy_pids or ()]
        try:
            j = json.loads(r.stdout)
        except ValueError:
            j = {}
        if r.returncode == 0 and "error" not in j and "end" in j:
            recv = j["end"]["sum_received"]
            sent = j["end"]["sum_sent"]
            gb = recv["bytes"] / 1e9
            res = {"gbit_s": recv["bits_per_second"] / 1e9, "bytes": recv["bytes"],
                   "seconds": recv.get("seconds"), "retransmits": sent.get("retransmits"),
                   "client_cpu_pct": j["end"].get("cpu_utilization_percent", {}).get("host_total"),
                   "server_cpu_pct": j["end"].get("cpu_utilization_percent", {}).get("remote_total")}
            if proxy_pids:
                res["proxy_cpu_s"] = cpu1 - cpu0
                # Client side first, then server side: shows which end of the tunnel costs what.
                res["proxy_cpu_s_each"] = [round(b - a, 3) for a, b in zip(each0, each1)]
                res["proxy_cpu_s_per_gb"] = (cpu1 - cpu0) / gb if gb > 0 else None
                res["proxy_cpu_util"] = (cpu1 - cpu0) / wall  # in cores, over the whole iperf3 run
            return res
        last = j.get("error") or (r.stderr or r.stdout).strip()[-300:]
        time.sleep(1)
    raise BenchError(f"iperf3 to {ip}:{port} from {ns} failed: {last}")


def measure(ns, ip, rtt_port, iperf_port, proxy_pids, args):
    """args.repeat rounds of (RTT, iperf3). Medians of the per-round figures; CPU per GB over all rounds."""
    rtts, iperfs = [], []
    for i in range(args.repeat):
        try:
            rtts.append(measure_rtt(ns, ip, rtt_port, args.rtt_count, args.rtt_bin))
            prof = None
            if args.profile:
                prof = (args.scenario, os.path.join(os.path.dirname(args.out), "profile"))
            iperfs.append(measure_iperf(ns, ip, iperf_port, args.time, proxy_pids, prof))
        except BenchError as e:
            # Keep what was measured so far in the JSON; the scenario still counts as failed.
            e.partial = {"rtt_rounds": rtts, "iperf_rounds": iperfs}
            raise
    med = statistics.median
    rtt = {k: med(r[k] for r in rtts) for k in ("p50_us", "p99_us", "mean_us")}
    rtt["count"] = args.rtt_count
    ip_ = dict(max(iperfs, key=lambda r: -abs(r["gbit_s"] - med(x["gbit_s"] for x in iperfs))))
    ip_["gbit_s"] = med(r["gbit_s"] for r in iperfs)
    if proxy_pids:
        total_cpu = sum(r["proxy_cpu_s"] for r in iperfs)
        total_gb = sum(r["bytes"] for r in iperfs) / 1e9
        ip_["proxy_cpu_s_per_gb"] = total_cpu / total_gb if total_gb > 0 else None
        ip_["proxy_cpu_s_total"] = total_cpu
    ip_["bytes_total"] = sum(r["bytes"] for r in iperfs)
    out = {"rtt": rtt, "iperf": ip_}
    if args.repeat > 1:
        out["rounds"] = {"rtt": rtts, "iperf": iperfs}
    return out


# ----------------------------------------------------------------------------------------------------------
# Scenarios. Each returns a dict of figures; each stops the processes it started (the apps stay up).

def scenario_direct(t, procs, args):
    return measure(t.ns_a, t.ip_b, APP_RTT, APP_IPERF, None, args)


HAPROXY_GLOBAL = """global
    nbthread {threads}
    maxconn 1024
    log stderr format short local0 warning
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""


def haproxy_configs(t, workdir, threads, tls=True):
    """Writes the client-side (pod A) and server-side (pod B) configs; returns their paths. tls=False: the
    floor pair, the same two relays in plain `mode tcp` (no TLS between them) on their own ports."""
    a_pem, b_pem, root = t.haproxy_pem_a, t.haproxy_pem_b, t.root_pem
    tls_srv = f" ssl crt {a_pem} ca-file {root} verify required ssl-min-ver TLSv1.3" if tls else ""
    tls_bind = f" ssl crt {b_pem} ca-file {root} verify required ssl-min-ver TLSv1.3" if tls else ""
    client = HAPROXY_GLOBAL.format(threads=threads)
    server = HAPROXY_GLOBAL.format(threads=threads)
    ports = ((("iperf", HAP_OUT_IPERF, HAP_IN_IPERF, APP_IPERF), ("rtt", HAP_OUT_RTT, HAP_IN_RTT, APP_RTT)) if tls
             else (("iperf", FLOOR_OUT_IPERF, FLOOR_IN_IPERF, APP_IPERF), ("rtt", FLOOR_OUT_RTT, FLOOR_IN_RTT, APP_RTT)))
    for name, out_port, in_port, app_port in ports:
        client += f"""
listen out_{name}
    bind 127.0.0.1:{out_port}
    server s {t.ip_b}:{in_port}{tls_srv}
"""
        server += f"""
listen in_{name}
    bind :{in_port}{tls_bind}
    server app 127.0.0.1:{app_port}
"""
    paths = []
    tag = "" if tls else "-floor"
    for side, text in (("client", client), ("server", server)):
        p = os.path.join(workdir, f"haproxy{tag}-{side}.cfg")
        with open(p, "w") as f:
            f.write(text)
        paths.append(p)
    run(["haproxy", "-c", "-q", "-f", paths[0]], timeout=10)
    run(["haproxy", "-c", "-q", "-f", paths[1]], timeout=10)
    return paths


def start_haproxy_pair(t, procs, args, tls=True, wrap=(), threads=None, timeout=10.0):
    """Starts the server-side haproxy in pod B and the client-side one in pod A (the mTLS pair, or with
    tls=False the plaintext floor pair) and waits until both listen. Returns (client proc, server proc).
    wrap: a command prefix (valgrind for the profile); threads: nbthread instead of args.haproxy_threads."""
    cfg_client, cfg_server = haproxy_configs(t, t.workdir, threads or args.haproxy_threads, tls)
    # -db: stay in the foreground without master-worker, so the Popen pid is the one haproxy process
    # (ip netns exec execs the command in place).
    tag = "" if tls else "-floor"
    ports = ((HAP_IN_IPERF, HAP_IN_RTT, HAP_OUT_IPERF, HAP_OUT_RTT) if tls
             else (FLOOR_IN_IPERF, FLOOR_IN_RTT, FLOOR_OUT_IPERF, FLOOR_OUT_RTT))
    with open(os.path.join(t.workdir, f"haproxy{tag}.log"), "w") as logf:
        hb = procs.start(nsexec(t.ns_b, list(wrap) + ["haproxy", "-db", "-f", cfg_server]), f"haproxy{tag}-server",
                         stdout=logf, stderr=logf)
        ha = procs.start(nsexec(t.ns_a, list(wrap) + ["haproxy", "-db", "-f", cfg_client]), f"haproxy{tag}-client",
                         stdout=logf, stderr=logf)
    try:
        wait_listen(t.ns_b, ports[0], hb, timeout)
        wait_listen(t.ns_b, ports[1], hb, timeout)
        wait_listen(t.ns_a, ports[2], ha, timeout)
        wait_listen(t.ns_a, ports[3], ha, timeout)
    except BaseException:
        procs.stop(ha)
        procs.stop(hb)
        raise
    return ha, hb


def scenario_haproxy(t, procs, args):
    ha, hb = start_haproxy_pair(t, procs, args, tls=True)
    try:
        res = measure(t.ns_a, "127.0.0.1", HAP_OUT_RTT, HAP_OUT_IPERF, [ha.pid, hb.pid], args)
        res["nbthread"] = args.haproxy_threads
        res["haproxy_threads"] = [threads_of(ha.pid), threads_of(hb.pid)]
        # Proof that the tunnel was mutual TLS 1.3 and not something weaker.
        res["tls_checked"] = t.check_haproxy_tls(HAP_IN_RTT)
    finally:
        procs.stop(ha)
        procs.stop(hb)
    return res


def scenario_floor(t, procs, args):
    """The floor: the same HAProxy pair as scenario_haproxy, plaintext (mode tcp, no TLS, no capture)."""
    ha, hb = start_haproxy_pair(t, procs, args, tls=False)
    try:
        res = measure(t.ns_a, "127.0.0.1", FLOOR_OUT_RTT, FLOOR_OUT_IPERF, [ha.pid, hb.pid], args)
        res["nbthread"] = args.haproxy_threads
        res["haproxy_threads"] = [threads_of(ha.pid), threads_of(hb.pid)]
    finally:
        procs.stop(ha)
        procs.stop(hb)
    return res


def redirected_conns(ns, port):
    """Connections (first packets) that the in-pod nat rules of ns redirected to port so far."""
    r = run(nsexec(ns, ["iptables-save", "-c", "-t", "nat"]), timeout=10, check=False)
    total = 0
    for ln in r.stdout.splitlines():
        m = re.match(r"\[(\d+):\d+\] .*REDIRECT --to-ports (\d+)$", ln.strip())
        if m and int(m.group(2)) == port:
            total += int(m.group(1))
    return total


def scenario_zmesh(t, procs, args, shared=False):
    zts = t.start_zmesh(procs, shared=shared)
    try:
        before = redirected_conns(t.ns_a, 15001)
        res = measure(t.ns_a, t.ip_b, APP_RTT, APP_IPERF, [z.pid for z in zts], args)
        # A zmesh figure only counts if the client's connections were really captured: otherwise a broken rule
        # set would report direct TCP as zmesh. RTT (1) plus iperf3 (control + data) per round.
        captured = redirected_conns(t.ns_a, 15001) - before
        if captured < 3 * args.repeat:
            raise BenchError(f"only {captured} connections from pod A were redirected to 15001: "
                             "not measuring zmesh")
        res["captured_conns"] = captured
        ss = run(nsexec(t.ns_b, ["ss", "-Htn", "state", "established", "( sport = :15008 )"]), timeout=5,
                 check=False)
        res["hbone_conns_at_b"] = len([ln for ln in ss.stdout.splitlines() if ln.strip()])
        res.update(t.zmesh_info)
    finally:
        t.stop_zmesh(procs)
    return res


# ----------------------------------------------------------------------------------------------------------
# Topology adapter: everything that touches tests/e2e/topo.py lives here.

class Topology:
    """The e2e topology (tests/e2e/topo.py, 2 nodes x 2 pods as the tests use it); the benchmark goes from
    pod 1 of node 1 (A) to pod 1 of node 2 (B). Everything that touches topo.py lives in this class."""

    def __init__(self, args, procs):
        self.args = args
        self.procs = procs
        self.zts = []
        self.zmesh_info = {}
        self.t = None

    def __enter__(self):
        try:
            import topo  # tests/e2e/topo.py
        except ImportError as e:
            raise BenchError(f"cannot import tests/e2e/topo.py: {e}")
        try:
            self._build(topo)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _build(self, topo):
        os.environ.setdefault("ZMESH_BIN", self.args.bin_dir)
        self.t = topo.Topology(prefix=f"zmb{os.getpid() % 10000}")
        self.t.up()
        self.workdir = self.t.workdir
        self.pod_a, self.pod_b = self.t.pod(1, 1), self.t.pod(2, 1)
        self.ns_a, self.ip_a = self.pod_a.netns, self.pod_a.ip
        self.ns_b, self.ip_b = self.pod_b.netns, self.pod_b.ip
        self.root_pem = os.path.join(self.t.ca(), "root-cert.pem")
        # HAProxy wants the certificate and its key in one file. Same key type (P-256) and same root as zmesh.
        self.haproxy_pem_a = os.path.join(self.workdir, "haproxy-a.pem")
        self.haproxy_pem_b = os.path.join(self.workdir, "haproxy-b.pem")
        for pod, pem in ((self.pod_a, self.haproxy_pem_a), (self.pod_b, self.haproxy_pem_b)):
            cert, key = self.t.mint(pod.spiffe, "haproxy-" + pod.name)
            write_pem(pem, open(cert).read(), open(key).read())

    def start_zmesh(self, procs, shared=False):
        """In-pod rules on both pods and a dedicated ztunnel per pod, or (shared) one shared ztunnel per node
        in the node's namespace, handed its pod over ZDS by a Python node agent (tests/e2e/zds_agent.py);
        returns the ztunnel processes."""
        cfg = self.t.write_config(self.t.config_yaml())
        env = {}
        if self.args.ztunnel_workers:
            env["ZTUNNEL_WORKER_THREADS"] = str(self.args.ztunnel_workers)
        for pod in (self.pod_a, self.pod_b):
            self.t.inpod_rules(pod)
            self.rules_on = getattr(self, "rules_on", []) + [pod]
        try:
            for pod in (self.pod_a, self.pod_b):
                # ip netns exec execs ztunnel in place, so the Popen pid is ztunnel itself.
                if shared:
                    self.zts.append(self._start_shared(pod, cfg, env))
                else:
                    self.zts.append(self.t.start_ztunnel(pod, cfg, env=env, log_format="text"))
        except RuntimeError as e:
            raise BenchError(str(e))
        self.zmesh_info = {"ztunnel_threads": [threads_of(z.pid) for z in self.zts],
                           "ztunnel_worker_env": self.args.ztunnel_workers or "default"}
        return self.zts

    def _start_shared(self, pod, cfg, env):
        import zds_agent  # tests/e2e/zds_agent.py
        path = os.path.join(self.workdir, f"zds-{pod.name}.sock")
        if os.path.exists(path):
            os.unlink(path)
        agent = zds_agent.Agent(zds_agent.stubs(), path)
        e = dict(os.environ, PROXY_MODE="shared", INPOD_UDS=path, LOCAL_XDS_PATH=cfg, LOCAL_CA_DIR=self.t.ca(),
                 LOG_FORMAT="plain", RUST_LOG="info")
        e.pop("PROXY_WORKLOAD_INFO", None)
        e.update(env)
        log_path = os.path.join(self.workdir, f"ztunnel-shared-{pod.name}.log")
        with open(log_path, "ab") as log_f:
            proc = self.t.popen(pod.node_netns, [os.path.join(self.t.bin_dir(), "ztunnel")], env=e,
                                stdout=log_f, stderr=log_f, stdin=subprocess.DEVNULL)
        proc.log_path = log_path
        try:
            conn = agent.serve([pod])
        except (OSError, AssertionError) as ex:
            raise RuntimeError(f"shared ztunnel on {pod.node_netns} did not take {pod.name}: {ex}")
        self.zds_conns = getattr(self, "zds_conns", []) + [conn, agent]
        if not self.t.wait_listen(pod.netns, (15001, 15006, 15008), 10, proc):
            raise RuntimeError(f"shared ztunnel did not listen in {pod.netns}")
        return proc

    def stop_zmesh(self, procs):
        if self.t is None:
            return
        for z in self.zts:
            self.t.stop(z)
        self.zts = []
        for c in getattr(self, "zds_conns", []):
            (c.lsock if hasattr(c, "lsock") else c.sock).close()
        self.zds_conns = []
        for pod in getattr(self, "rules_on", []):
            try:
                self.t.inpod_rules(pod, remove=True)
            except RuntimeError as e:
                log(f"removing in-pod rules of {pod.name}: {e}")
        self.rules_on = []

    def check_haproxy_tls(self, port):
        """Checks that the server-side haproxy speaks mutual TLS 1.3 only; returns a short description."""
        base = ["openssl", "s_client", "-connect", f"{self.ip_b}:{port}", "-CAfile", self.root_pem,
                "-cert", self.haproxy_pem_a, "-key", self.haproxy_pem_a]
        r = run(nsexec(self.ns_a, base + ["-tls1_3", "-brief"]), timeout=10, check=False, stdin="")
        if "Protocol version: TLSv1.3" not in r.stderr + r.stdout:
            raise BenchError(f"haproxy tunnel is not TLS 1.3: {r.stderr.strip()[-300:]}")
        r12 = run(nsexec(self.ns_a, base + ["-tls1_2", "-brief"]), timeout=10, check=False, stdin="")
        if "Protocol version: TLSv1.2" in r12.stderr + r12.stdout:
            raise BenchError("haproxy tunnel accepts TLS 1.2")
        m = re.search(r"Ciphersuite: (\S+)", r.stderr + r.stdout)
        return f"TLS 1.3 ({m.group(1) if m else 'cipher unknown'}) with client certificate; TLS 1.2 refused"

    logs_dir = "logs"   # under build/bench/

    def keep_logs(self):
        """Copies the proxies' logs to build/bench/<logs_dir>/ (the topology's workdir goes away at teardown)."""
        dst = os.path.join(os.path.dirname(self.args.out), self.logs_dir)
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(dst, exist_ok=True)
        for name in os.listdir(self.t.workdir):
            if name.endswith(".log") or name.endswith(".cfg") or name == "config.yaml":
                shutil.copy(os.path.join(self.t.workdir, name), dst)

    def __exit__(self, *exc):
        if self.t is not None:
            try:
                self.stop_zmesh(self.procs)
                self.procs.stop_all()
                self.keep_logs()
            finally:
                self.procs.stop_all()   # our processes first, so down() finds the namespaces idle
                self.t.down()
                shutil.rmtree(self.t.workdir, ignore_errors=True)
                self.t = None
        return False


def threads_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("Threads:"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return None


def make_topology(args, procs):
    return Topology(args, procs)


def write_pem(path, *parts):
    with open(path, "w") as f:
        for p in parts:
            f.write(p if p.endswith("\n") else p + "\n")
    os.chmod(path, 0o600)


# ----------------------------------------------------------------------------------------------------------
# RTT profile (--profile-rtt, bench/profile_rtt.sh): where a 1-byte round trip's time and syscalls go in each
# proxy pair. Every per-round-trip figure is a difference of two runs on fresh client connections over the same
# warm proxies, (B - A) / (rtts(B) - rtts(A)), so connection set-up and tear-down cancel out; figures that count
# events (syscalls, instructions, CPU time) do not depend on how loaded the machine is, unlike wall-clock RTTs.

RTT_WARMUP = 1000   # zm-rtt's untimed round trips before the timed ones (bench/rtt.c)
NF_SYMS = re.compile(r"^(nf_|nft_|ipt_|iptable_|xt_|ip_tables|nf_nat|__nf_|conntrack|ct_|mangle_)")


def rtt_run(t, ns, ip, port, count, args):
    """One zm-rtt client run of count timed round trips (plus the warm-up); returns its parsed line."""
    return measure_rtt(ns, ip, port, count, args.rtt_bin)


def task_runtime_ns(pid):
    """Sum over pid's threads of the on-CPU time in ns (/proc/<pid>/task/*/schedstat, first field)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def ctx_switches(pid):
    """(voluntary, involuntary) context switches summed over pid's threads (/proc/<pid>/task/*/status)."""
    vol = inv = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for ln in f:
                    if ln.startswith("voluntary_ctxt_switches:"):
                        vol += int(ln.split()[1])
                    elif ln.startswith("nonvoluntary_ctxt_switches:"):
                        inv += int(ln.split()[1])
        except OSError:
            pass
    return vol, inv


def user_sys_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    fields = st[st.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12])


def parse_strace_c(path):
    """strace -c summary -> {syscall: (calls, errors)}."""
    out = {}
    with open(path) as f:
        for ln in f:
            tok = ln.split()
            if len(tok) in (5, 6) and re.fullmatch(r"[\d.]+", tok[0]) and tok[-1] != "total":
                try:
                    calls = int(tok[3])
                    errs = int(tok[4]) if len(tok) == 6 else 0
                except ValueError:
                    continue
                out[tok[-1]] = (calls, errs)
    return out


def prof_syscalls(t, procs, ns, ip, port, pids, args, outdir, label):
    """strace -c -f on each proxy over two client runs; returns {side: {syscall: calls per round trip}}."""
    n_a, n_b = 500, 500 + args.prof_count
    counts = {}
    for n in (n_a, n_b):
        recs = []
        for side, pid in zip(("client", "server"), pids):
            path = os.path.join(outdir, f"strace-{label}-{side}-{n}.txt")
            p = subprocess.Popen(["strace", "-c", "-f", "-qq", "-o", path, "-p", str(pid)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            recs.append((side, p, path))
        time.sleep(1.0)   # strace attaches to every thread asynchronously
        rtt_run(t, ns, ip, port, n, args)
        for side, p, path in recs:
            p.send_signal(signal.SIGINT)
        for side, p, path in recs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            counts[(side, n)] = parse_strace_c(path)
    rtts = n_b - n_a
    res = {}
    for side in ("client", "server"):
        a, b = counts[(side, n_a)], counts[(side, n_b)]
        per = {}
        for sc in set(a) | set(b):
            calls = (b.get(sc, (0, 0))[0] - a.get(sc, (0, 0))[0]) / rtts
            errs = (b.get(sc, (0, 0))[1] - a.get(sc, (0, 0))[1]) / rtts
            if abs(calls) >= 0.005:
                per[sc] = {"calls": round(calls, 3), "errors": round(errs, 3)}
        res[side] = {"per_rtt": dict(sorted(per.items(), key=lambda kv: -kv[1]["calls"])),
                     "total_per_rtt": round(sum(v["calls"] for v in per.values()), 3)}
    return res


def prof_cpu(t, ns, ip, port, pids, srv_pid, args):
    """On-CPU time per round trip: of the whole path (the client, the echo server and both proxies: softirq
    work, which the kernel charges to whichever task it interrupts, is inside it) and of each proxy (all
    threads, schedstat), with the proxies' user/system split (stat) and context switches. Differences of a
    short and a long client run, so connection set-up cancels out."""
    def snap():
        return [(task_runtime_ns(p), user_sys_ticks(p), ctx_switches(p)) for p in pids]
    n_a, n_b = 500, 500 + args.prof_count
    s0 = snap()
    _, path_a = rtt_run_cpu(t, ns, ip, port, n_a, args, [srv_pid] + list(pids))
    s1 = snap()
    p50, path_b = rtt_run_cpu(t, ns, ip, port, n_b, args, [srv_pid] + list(pids))
    s2 = snap()
    rtts = n_b - n_a
    out = {"rtt_p50_us_in_run": p50, "path_cpu_us_per_rtt": round((path_b - path_a) / rtts, 2)}
    for i, side in enumerate(("client", "server")):
        run_ns = ((s2[i][0] - s1[i][0]) - (s1[i][0] - s0[i][0])) / rtts
        # User/system split over the long run alone: the ticks are too coarse (10 ms) for a difference.
        ut, st = s2[i][1][0] - s1[i][1][0], s2[i][1][1] - s1[i][1][1]
        tot = ut + st
        sw = [((s2[i][2][k] - s1[i][2][k]) - (s1[i][2][k] - s0[i][2][k])) / rtts for k in (0, 1)]
        out[side] = {"cpu_us_per_rtt": round(run_ns / 1000, 2),
                     "user_share": round(ut / tot, 2) if tot > 0 else None,
                     "ctx_switches_per_rtt": round(sw[0], 2), "involuntary_per_rtt": round(sw[1], 2)}
    return out


def perf_report(path, sort, limit=25):
    """perf report --stdio of one data file; returns [(percent, key)] of the top entries."""
    argv = ["perf", "report", "-i", path, "--stdio", "--no-children", "-g", "none", "--sort", sort,
            "--percent-limit", "0.5"]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=300)
    rows = []
    for ln in r.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(.*\S)", ln)
        if m and not ln.lstrip().startswith("#"):
            rows.append((float(m.group(1)), re.sub(r"\s+", " ", m.group(2))))
    return rows[:limit]


def perf_nf(path):
    """(on-CPU ns in the file, ns of it in netfilter symbols): cpu-clock's event count is nanoseconds."""
    r = subprocess.run(["perf", "report", "-i", path, "--stdio", "--no-children", "-g", "none", "--sort", "sym",
                        "-F", "sample,sym"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                       timeout=300)
    m = re.search(r"Event count \(approx\.\): (\d+)", r.stdout)
    total_ns = int(m.group(1)) if m else 0
    n = nf = 0
    for ln in r.stdout.splitlines():
        m = re.match(r"\s*(\d+)\s+\[[kK.]\]\s+(\S+)", ln)
        if m:
            n += int(m.group(1))
            if NF_SYMS.match(m.group(2)):
                nf += int(m.group(1))
    return total_ns, (total_ns * nf / n if n else 0)


def prof_bulk(t, ns, ip, port, pids, args, outdir, label):
    """strace -c -f on both proxies during a short iperf3 run: syscalls per MB moved and bytes per data
    syscall, the bulk counterpart of prof_syscalls (strace slows the proxies, so the sizes are indicative)."""
    recs = []
    for side, pid in zip(("client", "server"), pids):
        path = os.path.join(outdir, f"strace-bulk-{label}-{side}.txt")
        recs.append((side, path, subprocess.Popen(["strace", "-c", "-f", "-qq", "-o", path, "-p", str(pid)],
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                  start_new_session=True)))
    time.sleep(1.0)
    r = run(nsexec(ns, ["iperf3", "-c", ip, "-p", str(port), "-t", "3", "-J"]), timeout=120, check=False)
    for side, path, p in recs:
        p.send_signal(signal.SIGINT)
    for side, path, p in recs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    try:
        nbytes = json.loads(r.stdout)["end"]["sum_received"]["bytes"]
    except (ValueError, KeyError):
        raise BenchError(f"iperf3 under strace failed: {(r.stdout + r.stderr).strip()[-300:]}")
    mb = nbytes / 1e6
    out = {"bytes": nbytes}
    for side, path, _ in recs:
        c = parse_strace_c(path)
        data = {k: v[0] for k, v in c.items() if k in ("read", "write", "recvfrom", "sendto", "readv", "writev",
                                                          "recvmsg", "sendmsg", "splice")}
        out[side] = {"syscalls_per_mb": round(sum(v[0] for v in c.values()) / mb, 1),
                     "per_mb": {k: round(v[0] / mb, 2) for k, v in sorted(c.items(), key=lambda kv: -kv[1][0])
                                if v[0] / mb >= 0.05},
                     # Each byte is read once and written once per proxy: bytes / (data calls / 2).
                     "bytes_per_data_call": round(2 * nbytes / sum(data.values())) if data else None}
    return out


def prof_queues(t, ns, ip, port, args, label):
    """Where bytes wait during a bulk transfer: a 4 s iperf3 run (no strace) while `ss -tn` samples every
    established TCP socket in both pods 15 times; returns, per socket (local -> peer, as seen in its pod), the
    median Recv-Q and Send-Q in KB. A full Recv-Q is a reader that does not keep up, a full Send-Q a peer (or the
    network) that does not take the bytes."""
    p = subprocess.Popen(nsexec(ns, ["iperf3", "-c", ip, "-p", str(port), "-t", "4", "-J"]),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    samples = {}
    time.sleep(1.0)
    for _ in range(15):
        for pod, pns in (("A", t.ns_a), ("B", t.ns_b)):
            r = run(nsexec(pns, ["ss", "-Htn", "state", "established"]), timeout=10, check=False)
            for ln in r.stdout.splitlines():
                f = ln.split()
                if len(f) >= 4 and f[0].isdigit():
                    key = f"{pod} {f[2]} -> {f[3]}"
                    samples.setdefault(key, []).append((int(f[0]), int(f[1])))
        time.sleep(0.15)
    out, _ = p.communicate(timeout=60)
    try:
        gbit = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    except (ValueError, KeyError):
        gbit = None
    med = statistics.median
    socks = {k: {"recv_q_kb": round(med(x[0] for x in v) / 1024), "send_q_kb": round(med(x[1] for x in v) / 1024)}
             for k, v in samples.items() if len(v) >= 8 and max(max(x) for x in v) > 65536}
    return {"gbit_s": gbit, "sockets": dict(sorted(socks.items()))}


def set_affinity(pids, cpus):
    """Moves every thread of each pid to the CPU list cpus (taskset -a -p)."""
    for pid in pids:
        run(["taskset", "-a", "-p", "-c", cpus, str(pid)], timeout=10)


def prof_pinned(t, ns, ip, port, pids, srv_pid, args):
    """RTT p50 with the whole path (both proxies, the echo server, the client) pinned to one CPU, then back on
    all CPUs: pinned, no hand-over wakes an idle vCPU (on this VM that wake-up costs tens of µs and decides
    whether a round is fast or slow), so the pinned RTT is the path's CPU work plus same-CPU switches and
    compares scenarios like with like. Other work on that CPU still adds time: medians of rounds."""
    cpu = str(os.cpu_count() - 1)
    allc = f"0-{os.cpu_count() - 1}"
    rounds = []
    try:
        set_affinity(list(pids) + [srv_pid], cpu)
        for _ in range(args.prof_rounds):
            r = run(["taskset", "-c", cpu] + nsexec(ns, [args.rtt_bin, "client", ip, str(port),
                                                          str(args.prof_count)]), timeout=300, check=False)
            m = re.search(r"p50_us=([\d.]+) p99_us=([\d.]+)", r.stdout)
            if not m:
                raise BenchError(f"pinned zm-rtt failed: {(r.stdout + r.stderr).strip()[-300:]}")
            rounds.append(float(m.group(1)))
    finally:
        set_affinity(list(pids) + [srv_pid], allc)
    return {"cpu": int(cpu), "rounds_p50_us": rounds, "p50_us": statistics.median(rounds), "best_p50_us": min(rounds)}


def prof_perf(t, procs, ns, ip, port, pids, srv_pid, args, outdir, label):
    """perf record -e cpu-clock (this VM has no hardware counters) of each proxy, the echo server and the
    client over prof_count round trips; returns each proxy's shares by library and top symbols, and the
    netfilter (capture rules, conntrack) time of the whole path per round trip."""
    freq = "4999"
    targets = [("client", pids[0]), ("server", pids[1]), ("echo-server", srv_pid)]
    recs = []
    for name, pid in targets:
        path = os.path.join(outdir, f"perf-{label}-{name}.data")
        recs.append((name, path, subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", freq, "-g", "-p", str(pid), "-o", path],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)))
    time.sleep(0.5)
    cl = os.path.join(outdir, f"perf-{label}-rtt-client.data")
    r = run(["perf", "record", "-q", "-e", "cpu-clock", "-F", freq, "-g", "-o", cl, "--"] +
            nsexec(ns, [args.rtt_bin, "client", ip, str(port), str(args.prof_count)]), timeout=300, check=False)
    for name, path, p in recs:
        p.send_signal(signal.SIGINT)
    for name, path, p in recs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    out = {"rtt_line": r.stdout.strip()}
    tot_ns = nf_ns = 0
    for name, path in [(n, p) for n, p, _ in recs] + [("rtt-client", cl)]:
        ns_, nf_ = perf_nf(path)
        tot_ns += ns_
        nf_ns += nf_
        d = {"netfilter_share": round(nf_ / ns_, 4) if ns_ else None}
        if name in ("client", "server"):
            d["by_dso"] = perf_report(path, "dso", limit=12)
            d["top_symbols"] = perf_report(path, "dso,sym", limit=30)
        out[name] = d
    # Shares only: perf's own sampling and unwinding inflate the absolute on-CPU time of what it samples (here
    # about 3x the schedstat figure), so absolute per-round-trip times come from prof_cpu.
    out["netfilter_share_of_path"] = round(nf_ns / tot_ns, 4) if tot_ns else None
    return out


def parse_callgrind_annotate(path, inclusive):
    """callgrind_annotate output -> (total Ir, {"function (object)": Ir})."""
    argv = ["callgrind_annotate", "--threshold=100", f"--inclusive={'yes' if inclusive else 'no'}", path]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=300)
    total, fns = 0, {}
    for ln in r.stdout.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?PROGRAM TOTALS", ln)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = re.match(r"\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?\S*?:(\S+)\s+\[(.*)\]\s*$", ln)
        if m:
            key = f"{m.group(2)} ({os.path.basename(m.group(3))})"
            fns[key] = fns.get(key, 0) + int(m.group(1).replace(",", ""))
    if not inclusive:
        # Zeroing the counters while a worker sits in loop_run leaves the frames then on its stack (clone,
        # start_thread, worker_main) with the whole run as "self" cost: not theirs, drop them.
        # (Not libcrypto's: in a bulk run AES-GCM itself can be over 90 % of the total.)
        fns = {k: v for k, v in fns.items() if v < 0.9 * total or "(libcrypto" in k}
    return total, fns


def callgrind_calls(path):
    """Calls per callee name in one callgrind output file ({"function": calls}); from its cfn=/calls= lines."""
    names, calls, callee = {}, {}, None
    pat = re.compile(r"^c?fn=\((\d+)\)(?: (.*))?$")
    with open(path, errors="replace") as f:
        for ln in f:
            if ln.startswith("fn=") or ln.startswith("cfn="):
                m = pat.match(ln.rstrip("\n"))
                if m:
                    if m.group(2):
                        names[m.group(1)] = m.group(2).strip()
                    callee = names.get(m.group(1)) if ln.startswith("cfn=") else None
            elif ln.startswith("calls=") and callee:
                calls[callee] = calls.get(callee, 0) + int(ln[6:].split()[0])
                callee = None
    return calls


CALLS_OF_INTEREST = re.compile(r"^(SSL_|BIO_|ERR_|EVP_|CRYPTO_malloc|CRYPTO_free|nghttp2_session_|malloc|free|"
                               r"calloc|realloc|memcpy|__memcpy|recv|send|read|write|epoll_wait|__libc_|"
                               r"hbone_|conn_|stream_|flush_|obuf_|bio_|out_|in_|loop_)")


def prof_callgrind(t, procs, args, outdir, label):
    """Both proxies of scenario label under valgrind --tool=callgrind, one thread each (a single ping-pong
    connection uses one thread per side anyway; with more, a run whose connection lands on a worker without a
    pooled HBONE connection pays a handshake that would not cancel out): user-space instructions per round
    trip, by library and by function (self cost), and the inclusive cost of TLS record handling."""
    vg = ["valgrind", "--tool=callgrind", "--trace-children=no",
          f"--callgrind-out-file={outdir}/callgrind-{label}.%p"]
    if label == "zmesh":
        wrap = os.path.join(outdir, "cg-bin")
        os.makedirs(wrap, exist_ok=True)
        real = os.path.join(args.bin_dir, "ztunnel")
        with open(os.path.join(wrap, "ztunnel"), "w") as f:
            f.write("#!/bin/sh\nexec " + " ".join(vg) + f" {real} \"$@\"\n")
        os.chmod(os.path.join(wrap, "ztunnel"), 0o755)
        old = os.environ.get("ZMESH_BIN")
        os.environ["ZMESH_BIN"] = wrap
        cfg = t.t.write_config(t.t.config_yaml())
        zts = []
        try:
            for pod in (t.pod_a, t.pod_b):
                t.t.inpod_rules(pod)
                t.rules_on = getattr(t, "rules_on", []) + [pod]
            for pod in (t.pod_a, t.pod_b):
                zts.append(t.t.start_ztunnel(pod, cfg, env={"ZTUNNEL_WORKER_THREADS": "1"}, log_format="text",
                                             timeout=120))
            t.zts = zts
        except BaseException:
            t.stop_zmesh(procs)
            raise
        finally:
            if old is None:
                os.environ.pop("ZMESH_BIN", None)
            else:
                os.environ["ZMESH_BIN"] = old
        pids, ip, port = [z.pid for z in zts], t.ip_b, APP_RTT
        stop = lambda: t.stop_zmesh(procs)  # noqa: E731
    else:
        ha, hb = start_haproxy_pair(t, procs, args, tls=(label == "haproxy"), wrap=vg, threads=1, timeout=120)
        pids, ip = [ha.pid, hb.pid], "127.0.0.1"
        port = HAP_OUT_RTT if label == "haproxy" else FLOOR_OUT_RTT

        def stop(ha=ha, hb=hb):
            procs.stop(ha)
            procs.stop(hb)
    try:
        rtt_run(t, t.ns_a, ip, port, 200, args)   # pools, code paths under valgrind
        n_a, n_b = 200, 200 + args.cg_count
        dumps = {}
        for n in (n_a, n_b):
            for pid in pids:
                run(["callgrind_control", "-z", str(pid)], timeout=60, check=False)
            rtt_run(t, t.ns_a, ip, port, n, args)
            for side, pid in zip(("client", "server"), pids):
                before = set(os.listdir(outdir))
                run(["callgrind_control", "-d", f"{side}-{n}", str(pid)], timeout=60, check=False)
                new = [x for x in set(os.listdir(outdir)) - before if x.startswith(f"callgrind-{label}.")]
                if not new:
                    raise BenchError(f"callgrind dump of the {label} {side} produced no file")
                dumps[(side, n)] = os.path.join(outdir, sorted(new)[-1])
        # Bulk: iperf3 -n of two sizes through the same proxies, the difference per MB (10^6 bytes moved).
        bulk_dumps = {}
        if args.cg_bulk_mb:
            bport = {"zmesh": APP_IPERF, "haproxy": HAP_OUT_IPERF, "floor": FLOOR_OUT_IPERF}[label]
            bip = t.ip_b if label == "zmesh" else "127.0.0.1"
            mb_a, mb_b = 4, 4 + args.cg_bulk_mb
            for mb in (mb_a, mb_b):
                for pid in pids:
                    run(["callgrind_control", "-z", str(pid)], timeout=60, check=False)
                r = run(nsexec(t.ns_a, ["iperf3", "-c", bip, "-p", str(bport), "-n", f"{mb * 1000000}", "-J"]),
                        timeout=900, check=False)
                if r.returncode != 0:
                    raise BenchError(f"iperf3 under callgrind failed: {(r.stdout + r.stderr).strip()[-300:]}")
                for side, pid in zip(("client", "server"), pids):
                    before = set(os.listdir(outdir))
                    run(["callgrind_control", "-d", f"{side}-bulk{mb}", str(pid)], timeout=120, check=False)
                    new = [x for x in set(os.listdir(outdir)) - before if x.startswith(f"callgrind-{label}.")]
                    if not new:
                        raise BenchError(f"callgrind dump of the {label} {side} produced no file")
                    bulk_dumps[(side, mb)] = os.path.join(outdir, sorted(new)[-1])
    finally:
        stop()
    rtts = n_b - n_a
    res = {}
    tls_fns = ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex")
    for side in ("client", "server"):
        ta, sa = parse_callgrind_annotate(dumps[(side, n_a)], False)
        tb, sb = parse_callgrind_annotate(dumps[(side, n_b)], False)
        _, ia = parse_callgrind_annotate(dumps[(side, n_a)], True)
        _, ib = parse_callgrind_annotate(dumps[(side, n_b)], True)
        per_fn = {k: (sb.get(k, 0) - sa.get(k, 0)) / rtts for k in set(sa) | set(sb)}
        by_obj = {}
        for k, v in per_fn.items():
            obj = k[k.rindex("(") + 1:-1]
            by_obj[obj] = by_obj.get(obj, 0) + v
        # TLS record handling: everything under SSL_read*/SSL_write* (record crypto, and the BIO callbacks into
        # the proxy's own buffers).
        incl = {k: (ib.get(k, 0) - ia.get(k, 0)) / rtts for k in set(ia) | set(ib)}
        tls = {k: round(v) for k, v in incl.items() if k.split(" (")[0] in tls_fns}
        ca, cb = callgrind_calls(dumps[(side, n_a)]), callgrind_calls(dumps[(side, n_b)])
        calls = {k: round((cb.get(k, 0) - ca.get(k, 0)) / rtts, 2) for k in set(ca) | set(cb)
                 if CALLS_OF_INTEREST.match(k)}
        calls = {k: v for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v >= 0.5}
        res[side] = {"ir_per_rtt": round((tb - ta) / rtts), "tls_ir_per_rtt": sum(tls.values()),
                     "calls_per_rtt": calls,
                     "by_object": {k: round(v) for k, v in sorted(by_obj.items(), key=lambda kv: -kv[1]) if v >= 50},
                     "top_self": [(k, round(v)) for k, v in sorted(per_fn.items(), key=lambda kv: -kv[1])[:30]],
                     "tls_inclusive": tls,
                     "top_inclusive": [(k, round(v)) for k, v in sorted(incl.items(), key=lambda kv: -kv[1])[:50]]}
        if bulk_dumps:
            res[side]["bulk"] = cg_bulk(bulk_dumps[(side, mb_a)], bulk_dumps[(side, mb_b)], mb_b - mb_a)
    return res


# AES-GCM arithmetic (AES-NI rounds, GHASH, CTR): the cost no TLS proxy avoids.
AES_GCM_FNS = re.compile(r"aesni_|aes_gcm|gcm_|GHASH|ghash|_gcm128_|ossl_gcm|gcm128|aesni|AES_ctr|_ctr32")
COPY_FNS = re.compile(r"^(__)?mem(cpy|move)|^__memmove|^__memcpy")


_CRYPTO_ASM = {}


def is_aes_gcm_code(fn, obj):
    """An unnamed function of libcrypto (no debug symbols: callgrind shows its address) that is AES-GCM code:
    its first 1.5 KB hold AES-NI (aesenc/aesdec) or carry-less multiply (pclmulqdq, GHASH) instructions."""
    if not fn.startswith("0x") or not obj.startswith("libcrypto"):
        return False
    key = (fn, obj)
    if key not in _CRYPTO_ASM:
        lib = next((os.path.join(d, obj) for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu",
                                                   "/usr/lib") if os.path.exists(os.path.join(d, obj))), None)
        ok = False
        if lib:
            a = int(fn, 16)
            r = subprocess.run(["objdump", "-d", f"--start-address={a:#x}", f"--stop-address={a + 0x600:#x}", lib],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=60)
            ok = bool(re.search(r"\b(v?aes(enc|dec)|v?pclmul)", r.stdout))
        _CRYPTO_ASM[key] = ok
    return _CRYPTO_ASM[key]


def cg_bulk(path_a, path_b, mb):
    """User-space Ir per MB moved (difference of two iperf3 runs), split: AES-GCM arithmetic, memcpy/memmove,
    the rest of OpenSSL (record plumbing), nghttp2, the rest of libc, the proxy's own code, other."""
    ta, sa = parse_callgrind_annotate(path_a, False)
    tb, sb = parse_callgrind_annotate(path_b, False)
    per_fn = {k: (sb.get(k, 0) - sa.get(k, 0)) / mb for k in set(sa) | set(sb)}
    split = {"aes_gcm": 0, "memcpy": 0, "openssl_other": 0, "nghttp2": 0, "libc_other": 0, "own": 0, "other": 0}
    for k, v in per_fn.items():
        fn, obj = k[:k.rindex(" (")], k[k.rindex("(") + 1:-1]
        if AES_GCM_FNS.search(fn) or is_aes_gcm_code(fn, obj):
            split["aes_gcm"] += v
        elif COPY_FNS.search(fn):
            split["memcpy"] += v
        elif obj.startswith("libssl") or obj.startswith("libcrypto"):
            split["openssl_other"] += v
        elif obj.startswith("libnghttp2"):
            split["nghttp2"] += v
        elif obj.startswith("libc"):
            split["libc_other"] += v
        elif obj in ("ztunnel", "haproxy"):
            split["own"] += v
        else:
            split["other"] += v
    return {"ir_per_mb": round((tb - ta) / mb), "split_per_mb": {k: round(v) for k, v in split.items()},
            "top_self_per_mb": [(k, round(v)) for k, v in sorted(per_fn.items(), key=lambda kv: -kv[1])[:20]]}


def rtt_run_cpu(t, ns, ip, port, count, args, pids):
    """zm-rtt client run under `perf stat -e task-clock`; returns (RTT p50, on-CPU us of the client and of
    pids, e.g. the echo server and any proxies, together, over the whole run)."""
    s0 = sum(task_runtime_ns(p) for p in pids)
    r = run(["perf", "stat", "-x", ",", "-e", "task-clock", "--"] +
            nsexec(ns, [args.rtt_bin, "client", ip, str(port), str(count)]), timeout=300, check=False)
    s1 = sum(task_runtime_ns(p) for p in pids)
    m = re.search(r"p50_us=([\d.]+)", r.stdout)
    c = re.search(r"^([\d.]+),msec,task-clock", r.stderr, re.M)
    if r.returncode != 0 or not m or not c:
        raise BenchError(f"zm-rtt under perf stat failed: {(r.stdout + r.stderr).strip()[-300:]}")
    cpu_us = float(c.group(1)) * 1000 + (s1 - s0) / 1000
    return float(m.group(1)), cpu_us


def rtt_cpu_diff(t, ns, ip, port, args, pids):
    """(RTT p50 of the long run, on-CPU us per round trip of client + pids), as a difference of two runs."""
    _, a = rtt_run_cpu(t, ns, ip, port, 500, args, pids)
    p50, b = rtt_run_cpu(t, ns, ip, port, 500 + args.prof_count, args, pids)
    return p50, round((b - a) / args.prof_count, 2)


def prof_capture(t, procs, args, srv_pid, label):
    """Cost of the in-pod rules on connections they do not redirect, on the direct path (label "direct") or
    the floor's (label "floor": the plaintext HAProxy pair): as is, then with both pods' rules installed plus
    one ACCEPT at the top of each nat chain for the pod-to-pod port (so conntrack, the mangle rules and the
    fwmark routing rule see every packet, in both pods and on the loopback legs; the REDIRECT's per-packet NAT
    is not in it). Interleaved rounds; medians of RTT p50 (wall-clock, noisy) and of the on-CPU time per round
    trip of everything on the path (client, echo server, proxies), where the kernel processes the packets."""
    if label == "floor":
        ha, hb = start_haproxy_pair(t, procs, args, tls=False)
        pids, ip, port, pod_port = [srv_pid, ha.pid, hb.pid], "127.0.0.1", FLOOR_OUT_RTT, FLOOR_IN_RTT
    else:
        pids, ip, port, pod_port = [srv_pid], t.ip_b, APP_RTT, APP_RTT
    plain, ruled = [], []
    accept = {t.ns_a: "ISTIO_OUTPUT", t.ns_b: "ISTIO_PRERT"}
    try:
        for _ in range(3):
            rtt_run(t, t.ns_a, ip, port, 200, args)
        for i in range(args.prof_rounds):
            plain.append(rtt_cpu_diff(t, t.ns_a, ip, port, args, pids))
            try:
                for pod in (t.pod_a, t.pod_b):
                    t.t.inpod_rules(pod)
                for ns, chain in accept.items():
                    run(nsexec(ns, ["iptables", "-w", "-t", "nat", "-I", chain, "1", "-p", "tcp", "--dport",
                                    str(pod_port), "-j", "ACCEPT"]), timeout=10)
                ruled.append(rtt_cpu_diff(t, t.ns_a, ip, port, args, pids))
            finally:
                for pod in (t.pod_a, t.pod_b):
                    t.t.inpod_rules(pod, remove=True)
    finally:
        if label == "floor":
            procs.stop(ha)
            procs.stop(hb)
    med = statistics.median
    # On this kind of VM a run is either "fast" (the path's tasks hand over on a busy CPU) or "slow" (every
    # hand-over wakes an idle vCPU: 3x the RTT and the CPU time); the best round compares like with like.
    return {"rounds_plain": plain, "rounds_with_rules": ruled,
            "p50_us_plain": med(x[0] for x in plain), "p50_us_with_rules": med(x[0] for x in ruled),
            "cpu_us_per_rtt_plain": round(med(x[1] for x in plain), 2),
            "cpu_us_per_rtt_with_rules": round(med(x[1] for x in ruled), 2),
            "best_p50_us_plain": min(x[0] for x in plain), "best_p50_us_with_rules": min(x[0] for x in ruled),
            "best_cpu_us_per_rtt_plain": min((x[1] for x in plain if x[1] > 0), default=None),
            "best_cpu_us_per_rtt_with_rules": min((x[1] for x in ruled if x[1] > 0), default=None)}


def profile_rtt(t, procs, args, srv_rtt):
    """Runs the RTT profile for each scenario in args.only; returns the summary dict."""
    outdir = os.path.join(os.path.dirname(args.out), "profile-rtt")
    shutil.rmtree(outdir, ignore_errors=True)
    os.makedirs(outdir, exist_ok=True)
    summary = {"outdir": outdir}
    for s in ("floor", "haproxy", "zmesh"):
        if s not in args.only:
            continue
        log(f"profile {s}")
        if s == "zmesh":
            zts = t.start_zmesh(procs)
            pids, ns, ip, port = [z.pid for z in zts], t.ns_a, t.ip_b, APP_RTT
            stop = lambda: t.stop_zmesh(procs)  # noqa: E731
        else:
            ha, hb = start_haproxy_pair(t, procs, args, tls=(s == "haproxy"))
            pids, ns, ip = [ha.pid, hb.pid], t.ns_a, "127.0.0.1"
            port = HAP_OUT_RTT if s == "haproxy" else FLOOR_OUT_RTT

            def stop(ha=ha, hb=hb):
                procs.stop(ha)
                procs.stop(hb)
        try:
            # Several connections, so that every worker's pool holds a warm HBONE connection (a connection lands on
            # a worker by SO_REUSEPORT hash) and no measured run pays a handshake.
            for _ in range(8):
                rtt_run(t, ns, ip, port, 100, args)
            cpus = [prof_cpu(t, ns, ip, port, pids, srv_rtt.pid, args) for _ in range(args.prof_rounds)]
            r = {"cpu": {side: {"cpu_us_per_rtt": statistics.median(c[side]["cpu_us_per_rtt"] for c in cpus),
                                "user_share": statistics.median(c[side]["user_share"] or 0 for c in cpus),
                                "ctx_switches_per_rtt": statistics.median(c[side]["ctx_switches_per_rtt"]
                                                                          for c in cpus),
                                "involuntary_per_rtt": statistics.median(c[side]["involuntary_per_rtt"]
                                                                         for c in cpus),
                                "rounds_cpu_us_per_rtt": [c[side]["cpu_us_per_rtt"] for c in cpus]}
                         for side in ("client", "server")}}
            r["cpu"]["rtt_p50_us_in_runs"] = [c["rtt_p50_us_in_run"] for c in cpus]
            r["cpu"]["path_cpu_us_per_rtt"] = statistics.median(c["path_cpu_us_per_rtt"] for c in cpus)
            r["cpu"]["best_rtt_p50_us"] = min(c["rtt_p50_us_in_run"] for c in cpus)
            r["cpu"]["best_path_cpu_us_per_rtt"] = min((c["path_cpu_us_per_rtt"] for c in cpus
                                                        if c["path_cpu_us_per_rtt"] > 0), default=None)
            r["cpu"]["rounds_path_cpu_us_per_rtt"] = [c["path_cpu_us_per_rtt"] for c in cpus]
            log(f"  {s}: on-CPU us per round trip {r['cpu']}")
            r["syscalls"] = prof_syscalls(t, procs, ns, ip, port, pids, args, outdir, s)
            log(f"  {s}: syscalls per round trip client {r['syscalls']['client']['total_per_rtt']}, "
                f"server {r['syscalls']['server']['total_per_rtt']}")
            r["pinned"] = prof_pinned(t, ns, ip, port, pids, srv_rtt.pid, args)
            log(f"  {s}: pinned to one CPU, RTT p50 {r['pinned']['rounds_p50_us']}")
            if not args.no_bulk:
                bport = {"zmesh": APP_IPERF, "haproxy": HAP_OUT_IPERF, "floor": FLOOR_OUT_IPERF}[s]
                r["bulk"] = prof_bulk(t, ns, ip, bport, pids, args, outdir, s)
                r["queues"] = prof_queues(t, ns, ip, bport, args, s)
            if not args.no_perf:
                r["perf"] = prof_perf(t, procs, ns, ip, port, pids, srv_rtt.pid, args, outdir, s)
                log(f"  {s}: netfilter share of the path's samples {r['perf']['netfilter_share_of_path']}")
            summary[s] = r
        finally:
            stop()
    for s in ("floor", "haproxy", "zmesh"):
        if s in args.only and not args.no_callgrind:
            log(f"profile {s} under callgrind (slow)")
            summary[f"{s}_callgrind"] = prof_callgrind(t, procs, args, outdir, s)
    if "direct" in args.only:
        summary["direct_pinned"] = prof_pinned(t, t.ns_a, t.ip_b, APP_RTT, [], srv_rtt.pid, args)
        log(f"  direct: pinned to one CPU, RTT p50 {summary['direct_pinned']['rounds_p50_us']}")
    for s in ("direct", "floor"):
        if s in args.only and not args.no_capture:
            log(f"capture rules on the {s} path")
            summary[f"capture_{s}"] = prof_capture(t, procs, args, srv_rtt.pid, s)
    return summary


def print_profile(summary):
    print()
    for s in ("floor", "haproxy", "zmesh"):
        r = summary.get(s)
        if not r:
            continue
        print(f"== {s}")
        c = r["cpu"]
        for side in ("client", "server"):
            print(f"  {side}: on-CPU {c[side]['cpu_us_per_rtt']} us per round trip (median; rounds "
                  f"{c[side]['rounds_cpu_us_per_rtt']}), user share {c[side]['user_share']}, context switches "
                  f"{c[side]['ctx_switches_per_rtt']:g} (+{c[side]['involuntary_per_rtt']:g} involuntary)")
        print(f"  whole path (client, echo server, both proxies): on-CPU {c['path_cpu_us_per_rtt']} us per round trip "
              f"(median; rounds {c['rounds_path_cpu_us_per_rtt']})")
        print(f"  RTT p50 in those runs (wall-clock, noisy): {c['rtt_p50_us_in_runs']}; best round: RTT p50 "
              f"{c['best_rtt_p50_us']} us, path on-CPU {c['best_path_cpu_us_per_rtt']} us")
        for side in ("client", "server"):
            sc = r["syscalls"][side]
            top = ", ".join(f"{k} {v['calls']:g}" + (f" ({v['errors']:g} err)" if v["errors"] else "")
                            for k, v in list(sc["per_rtt"].items())[:8])
            print(f"  {side} syscalls per round trip: {sc['total_per_rtt']:g}: {top}")
        pn = r.get("pinned")
        if pn:
            print(f"  everything pinned to CPU {pn['cpu']}: RTT p50 {pn['p50_us']} us (median; best {pn['best_p50_us']}, "
                  f"rounds {pn['rounds_p50_us']})")
        if "bulk" in r:
            for side in ("client", "server"):
                b = r["bulk"][side]
                print(f"  bulk (iperf3 under strace): {side} {b['syscalls_per_mb']:g} syscalls per MB, ~"
                      f"{b['bytes_per_data_call']} bytes per data syscall: " +
                      ", ".join(f"{k} {v:g}" for k, v in list(b["per_mb"].items())[:6]))
        q = r.get("queues")
        if q:
            print(f"  bulk queues (iperf3 {fmt(q['gbit_s'], '.2f')} Gbit/s; median Recv-Q/Send-Q KB of busy sockets): " +
                  "; ".join(f"{k} {v['recv_q_kb']}/{v['send_q_kb']}" for k, v in q["sockets"].items()))
        if "perf" in r:
            p = r["perf"]
            print(f"  perf (cpu-clock shares): netfilter {100 * (p['netfilter_share_of_path'] or 0):.1f}% of the path's "
                  "samples (both proxies, echo server, client)")
            for side in ("client", "server"):
                print(f"    {side}: netfilter {100 * (p[side]['netfilter_share'] or 0):.1f}%; " +
                      ", ".join(f"{k} {pct:.1f}%" for pct, k in p[side]["by_dso"][:6]))
    for s in ("floor", "haproxy", "zmesh"):
        cg = summary.get(f"{s}_callgrind")
        if not cg:
            continue
        print(f"== {s} under callgrind (user-space instructions per round trip, one thread per proxy)")
        for side in ("client", "server"):
            x = cg[side]
            objs = ", ".join(f"{k} {v}" for k, v in list(x["by_object"].items())[:6])
            print(f"  {side}: {x['ir_per_rtt']} Ir: {objs}")
            print(f"    TLS record handling (inclusive): {x['tls_ir_per_rtt']} {x['tls_inclusive']}")
            print("    calls per round trip: " + ", ".join(f"{k} {v:g}" for k, v in list(x["calls_per_rtt"].items())[:16]))
            for k, v in x["top_self"][:10]:
                print(f"    {v:8d}  {k}")
            b = x.get("bulk")
            if b:
                print(f"    bulk: {b['ir_per_mb']} Ir per MB: " +
                      ", ".join(f"{k} {v}" for k, v in b["split_per_mb"].items()))
                for k, v in b["top_self_per_mb"][:10]:
                    print(f"      {v:10d}  {k}")
    pn = summary.get("direct_pinned")
    if pn:
        print(f"== direct, client and echo server pinned to CPU {pn['cpu']}: RTT p50 {pn['p50_us']} us (median; best "
              f"{pn['best_p50_us']}, rounds {pn['rounds_p50_us']})")
    pinned = {s: summary[s]["pinned"]["p50_us"] for s in ("floor", "haproxy", "zmesh")
              if s in summary and "pinned" in summary[s]}
    if "floor" in pinned:
        print("== pinned RTT p50 against the floor's: " +
              ", ".join(f"{s} {v / pinned['floor']:.2f}x" for s, v in pinned.items() if s != "floor"))
    for s in ("direct", "floor"):
        cap = summary.get(f"capture_{s}")
        if cap:
            print(f"== in-pod rules on the {s} path (not redirected): RTT p50 {cap['p50_us_plain']} -> "
                  f"{cap['p50_us_with_rules']} us, on-CPU per round trip of the whole path "
                  f"{cap['cpu_us_per_rtt_plain']} -> {cap['cpu_us_per_rtt_with_rules']} us (medians); best rounds "
                  f"{cap['best_p50_us_plain']} -> {cap['best_p50_us_with_rules']} us RTT, "
                  f"{cap['best_cpu_us_per_rtt_plain']} -> {cap['best_cpu_us_per_rtt_with_rules']} us CPU")


# ----------------------------------------------------------------------------------------------------------
# Report.

def fmt(v, spec):
    """format(v, spec), or a dash of the same width for a missing value."""
    if v is None:
        w = re.match(r"\d*", spec).group(0)
        return format("-", f">{w}") if w else "-"
    return format(v, spec)


def ratio(a, b):
    return a / b if a is not None and b else None


def report(results, args):
    rows = []
    for s in SCENARIOS:
        r = results.get(s)
        if not r:
            continue
        if "error" in r:
            rows.append((s, None, None, None, None, None, r["error"]))
            continue
        ip, rt = r["iperf"], r["rtt"]
        rows.append((s, ip["gbit_s"], rt["p50_us"], rt["p99_us"], rt["mean_us"], ip.get("proxy_cpu_s_per_gb"),
                     ""))
    print()
    print(f"{'scenario':<10} {'Gbit/s':>8} {'RTT p50 us':>11} {'p99 us':>8} {'mean us':>8} "
          f"{'proxy CPU-s/GB':>15}")
    print("-" * 65)
    for s, g, p50, p99, mean, cpu, err in rows:
        if err:
            print(f"{s:<10} FAILED: {err}")
            continue
        print(f"{s:<10} {fmt(g, '8.2f')} {fmt(p50, '11.1f')} {fmt(p99, '8.1f')} {fmt(mean, '8.1f')} "
              f"{fmt(cpu, '15.3f')}")
    ok = lambda s: s in results and "error" not in results[s]  # noqa: E731
    ratios, checks = {}, {}
    if ok("floor"):
        print(f"\nfloor: HAProxy plaintext relay pair, nbthread {results['floor']['nbthread']} per side, mode tcp, "
              "no TLS, no capture")
    if ok("haproxy"):
        h = results["haproxy"]
        print(f"haproxy: nbthread {h['nbthread']} per side, mode tcp, {h.get('tls_checked')}")
    if ok("zmesh"):
        z = results["zmesh"]
        print(f"zmesh: one dedicated ztunnel per pod, threads per process {z.get('ztunnel_threads')} "
              f"(ZTUNNEL_WORKER_THREADS={z.get('ztunnel_worker_env')})")
    if ok("shared"):
        z = results["shared"]
        print(f"shared: one shared ztunnel per node (PROXY_MODE=shared, the pod handed over ZDS), threads per "
              f"process {z.get('ztunnel_threads')}")
    print()

    def fig(s):
        r = results[s]
        return {"tput": r["iperf"]["gbit_s"], "p50": r["rtt"]["p50_us"], "p99": r["rtt"]["p99_us"],
                "cpu": r["iperf"].get("proxy_cpu_s_per_gb")}

    # Every figure of each proxied scenario as a ratio to direct and to the floor (CPU per GB: direct has no
    # proxy, so against the floor as a ratio and as a difference).
    names = {"tput": "throughput", "p50": "RTT p50", "p99": "RTT p99", "cpu": "CPU-s/GB"}
    if ok("shared") and ok("zmesh"):
        # Shared mode must not be slower than dedicated within noise: the same data path, with sockets on the
        # pod's side made in its namespace.
        a, b = fig("shared"), fig("zmesh")
        for k in ("tput", "p50", "p99", "cpu"):
            v = ratio(a[k], b[k])
            if v is not None:
                ratios[f"shared_vs_dedicated_{k}"] = v
        print("shared / dedicated: " + ", ".join(f"{names[k]} {fmt(ratios.get(f'shared_vs_dedicated_{k}'), '.2f')}"
                                                 for k in ("tput", "p50", "p99", "cpu")))
        print()
    base = {b: fig(b) for b in ("direct", "floor") if ok(b)}
    if base and any(ok(s) for s in ("floor", "haproxy", "zmesh", "shared")):
        print(f"{'ratio':<22} {'value':>9} {'x direct':>9} {'x floor':>9} {'- floor':>9}")
        for s in ("floor", "haproxy", "zmesh", "shared"):
            if not ok(s):
                continue
            f = fig(s)
            for k in ("tput", "p50", "p99", "cpu"):
                vd = ratio(f[k], base["direct"][k]) if "direct" in base and k != "cpu" else None
                vf = ratio(f[k], base["floor"][k]) if "floor" in base and s != "floor" else None
                df = (f[k] - base["floor"][k]) if "floor" in base and s != "floor" and k == "cpu" and \
                    f[k] is not None and base["floor"][k] is not None else None
                for tag, v in (("direct", vd), ("floor", vf)):
                    if v is not None:
                        ratios[f"{s}_vs_{tag}_{k}"] = v
                if df is not None:
                    ratios[f"{s}_minus_floor_cpu"] = df
                print(f"{s + ' ' + names[k]:<22} {fmt(f[k], '9.2f')} {fmt(vd, '9.2f')} {fmt(vf, '9.2f')} "
                      f"{fmt(df, '9.2f')}")
        # With several rounds, the best round's RTT p50 too: a round on this VM is either fast or slow as a whole
        # (see bench/README.md, "Latency floor"), so the ratio of best rounds compares like with like.
        if args.repeat > 1 and "floor" in base:
            best = {s: min(x["p50_us"] for x in results[s]["rounds"]["rtt"])
                    for s in ("direct", "floor", "haproxy", "zmesh", "shared") if ok(s) and "rounds" in results[s]}
            for s in ("haproxy", "zmesh", "shared"):
                if s in best and "floor" in best:
                    ratios[f"{s}_vs_floor_p50_best_round"] = best[s] / best["floor"]
                    print(f"{s + ' RTT p50 best':<22} {best[s]:9.2f} "
                          f"{fmt(ratio(best[s], best.get('direct')), '9.2f')} {best[s] / best['floor']:9.2f}")
        print()
    # Older names kept for readers of results.json.
    for new, old in (("haproxy_vs_direct_p50", "haproxy_vs_direct_rtt_p50"),
                     ("zmesh_vs_direct_p50", "zmesh_vs_direct_rtt_p50")):
        if new in ratios:
            ratios[old] = ratios[new]
    if ok("zmesh"):
        z = fig("zmesh")
        if ok("haproxy"):
            v = z["tput"] / results["haproxy"]["iperf"]["gbit_s"]
            ratios["zmesh_vs_haproxy_tput"] = v
            checks["throughput"] = {"value": v, "target": f">= {TARGET_TPUT_VS_HAPROXY}x HAProxy",
                                    "pass": v >= TARGET_TPUT_VS_HAPROXY}
        if ok("direct"):
            v = z["p50"] / base["direct"]["p50"]
            checks["rtt_p50"] = {"value": v, "target": f"<= {TARGET_RTT_VS_DIRECT}x direct",
                                 "pass": v <= TARGET_RTT_VS_DIRECT}
        if z["cpu"] is not None:
            checks["proxy_cpu"] = {"value": z["cpu"], "target": f"<= {TARGET_CPU_S_PER_GB} CPU-s/GB",
                                   "pass": z["cpu"] <= TARGET_CPU_S_PER_GB}
        if ok("floor"):
            fl = base["floor"]
            v = z["p50"] / fl["p50"]
            checks["floor_rtt_p50"] = {"value": v, "target": f"<= {TARGET_RTT_VS_FLOOR}x floor",
                                       "pass": v <= TARGET_RTT_VS_FLOOR}
            v = z["tput"] / fl["tput"]
            checks["floor_tput"] = {"value": v, "target": f">= {TARGET_TPUT_VS_FLOOR}x floor",
                                    "pass": v >= TARGET_TPUT_VS_FLOOR}
            if z["cpu"] is not None and fl["cpu"] is not None:
                lim = fl["cpu"] + TARGET_CPU_OVER_FLOOR
                checks["floor_cpu"] = {"value": z["cpu"], "target": f"<= floor+{TARGET_CPU_OVER_FLOOR} = {lim:.2f}",
                                       "pass": z["cpu"] <= lim}
        if ok("haproxy") and results["haproxy"]["iperf"].get("proxy_cpu_s_per_gb") and z["cpu"] is not None:
            ratios["zmesh_vs_haproxy_cpu_per_gb"] = z["cpu"] / results["haproxy"]["iperf"]["proxy_cpu_s_per_gb"]
        labels = {"throughput": "zmesh/HAProxy throughput", "rtt_p50": "zmesh/direct RTT p50",
                  "proxy_cpu": "zmesh proxy CPU-s/GB", "floor_rtt_p50": "zmesh/floor RTT p50",
                  "floor_tput": "zmesh/floor throughput", "floor_cpu": "zmesh CPU-s/GB vs floor"}
        for k, c in checks.items():
            verdict = "PASS" if c["pass"] else "FAIL"
            print(f"{labels[k]:<26} {c['value']:7.2f}   target {c['target']:<24} {verdict}")
        if "zmesh_vs_haproxy_cpu_per_gb" in ratios:
            print(f"{'zmesh/HAProxy CPU-s/GB':<26} {ratios['zmesh_vs_haproxy_cpu_per_gb']:7.2f}")
    elif "zmesh" not in args.only:
        print("zmesh skipped (--only): no pass/fail")
    return ratios, checks


def host_info():
    def first_line(argv):
        try:
            return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=5).stdout.splitlines()[0].strip()
        except Exception:
            return None
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "haproxy": first_line(["haproxy", "-v"]), "iperf3": first_line(["iperf3", "--version"]),
            "openssl": first_line(["openssl", "version"])}


# ----------------------------------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description="zmesh vs HAProxy vs direct TCP, pod to pod across two nodes")
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help="comma-separated scenarios to run, of: direct,floor,haproxy,zmesh,shared (default: all; "
                         "zmesh is dedicated mode, shared one ztunnel per node)")
    ap.add_argument("--time", type=int, default=5, help="iperf3 seconds per scenario (default 5)")
    ap.add_argument("--rtt-count", type=int, default=20000, help="timed 1-byte round trips (default 20000)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds per scenario; figures are medians, CPU/GB is over all rounds (default 1)")
    ap.add_argument("--haproxy-threads", type=int, default=2, choices=(1, 2),
                    help="HAProxy nbthread per side (default 2, as many as ztunnel's default workers)")
    ap.add_argument("--ztunnel-workers", type=int, default=0,
                    help="set ZTUNNEL_WORKER_THREADS for each ztunnel (default: ztunnel's own default)")
    ap.add_argument("--bin-dir", default=os.environ.get("ZMESH_BIN", os.path.join(ROOT, "build", "bin")))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "results.json"))
    ap.add_argument("--profile", action="store_true",
                    help="perf record both proxies during iperf3 (build/bench/profile/); skews the figures")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--profile-rtt", action="store_true",
                    help="profile 1-byte round trips instead of benchmarking (bench/profile_rtt.sh)")
    ap.add_argument("--prof-count", type=int, default=5000,
                    help="--profile-rtt: round trips per measured run (default 5000)")
    ap.add_argument("--cg-count", type=int, default=1000,
                    help="--profile-rtt: round trips measured under callgrind (default 1000)")
    ap.add_argument("--prof-rounds", type=int, default=5,
                    help="--profile-rtt: rounds of the on-CPU and capture-rules measurements, medians (default 5)")
    ap.add_argument("--cg-bulk-mb", type=int, default=32,
                    help="--profile-rtt: MB (10^6 bytes) of iperf3 measured per proxy under callgrind for the "
                         "instructions per MB (default 32; 0: skip)")
    ap.add_argument("--no-perf", action="store_true", help="--profile-rtt: skip perf record")
    ap.add_argument("--no-callgrind", action="store_true", help="--profile-rtt: skip callgrind")
    ap.add_argument("--no-capture", action="store_true", help="--profile-rtt: skip the capture-rules comparison")
    ap.add_argument("--no-bulk", action="store_true", help="--profile-rtt: skip the syscalls-per-MB run (iperf3)")
    a = ap.parse_args(argv)
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in a.only if s not in SCENARIOS]
    if bad or not a.only:
        ap.error(f"--only: unknown scenario(s) {bad}; choose from {','.join(SCENARIOS)}")
    if not 1 <= a.repeat <= 10:
        ap.error("--repeat must be 1..10")
    if not 1 <= a.time <= 120:
        ap.error("--time must be 1..120")
    a.rtt_bin = os.path.join(a.bin_dir, "zm-rtt")
    return a


def main(argv):
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("iperf3", "ip", "ss") + (("haproxy",) if "haproxy" in args.only else ()):
        if not shutil.which(tool):
            print(f"bench: {tool} not found (make deps)", file=sys.stderr)
            return 2
    if args.profile_rtt:
        need = ["strace"] + ([] if args.no_perf else ["perf"]) + \
            ([] if args.no_callgrind else ["valgrind", "callgrind_control", "callgrind_annotate"])
        for tool in need:
            if not shutil.which(tool):
                print(f"bench: --profile-rtt needs {tool} (apt-get install strace linux-perf valgrind)",
                      file=sys.stderr)
                return 2
    if not os.access(args.rtt_bin, os.X_OK):
        print(f"bench: {args.rtt_bin} missing (make all)", file=sys.stderr)
        return 2
    if "zmesh" in args.only and not os.access(os.path.join(args.bin_dir, "ztunnel"), os.X_OK):
        print(f"bench: {args.bin_dir}/ztunnel missing (make all, or --only direct,haproxy)", file=sys.stderr)
        return 2

    # SIGTERM (and SIGHUP) end the run the same way Ctrl-C does: through the finally blocks below.
    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    load0 = os.getloadavg()[0]
    if load0 > 0.5:
        log(f"warning: load average {load0:.2f} before the run; other work here makes the figures noisy")
    procs = Procs()
    results = {}
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        with make_topology(args, procs) as t:
            # The apps in pod B, shared by all scenarios.
            srv_iperf = procs.start(nsexec(t.ns_b, ["iperf3", "-s", "-p", str(APP_IPERF)]), "iperf3-server")
            srv_rtt = procs.start(nsexec(t.ns_b, [args.rtt_bin, "server", str(APP_RTT)]), "zm-rtt-server")
            wait_listen(t.ns_b, APP_IPERF, srv_iperf)
            wait_listen(t.ns_b, APP_RTT, srv_rtt)
            if args.profile_rtt:
                summary = profile_rtt(t, procs, args, srv_rtt)
                summary.update({"date": started.isoformat(timespec="seconds"), "host": host_info(),
                                "loadavg_1m_before": load0, "loadavg_1m_after": os.getloadavg()[0],
                                "prof_count": args.prof_count, "cg_count": args.cg_count})
                path = os.path.join(summary["outdir"], "summary.json")
                with open(path, "w") as f:
                    json.dump(summary, f, indent=2)
                print_profile(summary)
                print(f"\nload average (1 min) before: {load0:.2f}; summary: {os.path.relpath(path, os.getcwd())}")
                return 0
            for s in SCENARIOS:
                if s not in args.only:
                    continue
                log(f"scenario {s}")
                args.scenario = s
                fn = {"direct": scenario_direct, "floor": scenario_floor, "haproxy": scenario_haproxy,
                      "zmesh": scenario_zmesh,
                      "shared": lambda t, procs, args: scenario_zmesh(t, procs, args, shared=True)}[s]
                try:
                    results[s] = fn(t, procs, args)
                except BenchError as e:
                    log(f"scenario {s} failed: {e}")
                    results[s] = {"error": str(e)}
                    if getattr(e, "partial", None):
                        results[s]["partial"] = e.partial
                r = results[s]
                if "error" not in r:
                    log(f"{s}: {r['iperf']['gbit_s']:.2f} Gbit/s, RTT p50 {r['rtt']['p50_us']:.1f} us, "
                        f"proxy CPU-s/GB {fmt(r['iperf'].get('proxy_cpu_s_per_gb'), '.3f')} "
                        f"(per proxy, client side first: {r['iperf'].get('proxy_cpu_s_each', '-')} CPU-s)")
    except KeyboardInterrupt:
        log("interrupted: tearing down")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        procs.stop_all()

    ratios, checks = report(results, args)
    host = host_info()
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    host["git_head"] = head.stdout.strip() or None
    zt = os.path.join(args.bin_dir, "ztunnel")
    if "zmesh" in args.only and os.path.exists(zt):
        # The binary may be older than HEAD (build/ is shared): say exactly which one was measured.
        with open(zt, "rb") as f:
            host["ztunnel_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]
        mtime = datetime.datetime.fromtimestamp(os.path.getmtime(zt), datetime.timezone.utc)
        host["ztunnel_mtime"] = mtime.isoformat(timespec="seconds")
    host["loadavg_1m_before"] = load0
    host["loadavg_1m_after"] = os.getloadavg()[0]
    doc = {"date": started.isoformat(timespec="seconds"), "host": host,
           "params": {"iperf_seconds": args.time, "repeat": args.repeat, "rtt_count": args.rtt_count,
                      "rtt_warmup": 1000,
                      "haproxy_nbthread": args.haproxy_threads, "scenarios": args.only, "gb": "1e9 bytes"},
           "results": results, "ratios": ratios,
           "targets": {"zmesh_vs_haproxy_tput_min": TARGET_TPUT_VS_HAPROXY,
                       "zmesh_vs_direct_rtt_p50_max": TARGET_RTT_VS_DIRECT,
                       "proxy_cpu_s_per_gb_max": TARGET_CPU_S_PER_GB,
                       "zmesh_vs_floor_rtt_p50_max": TARGET_RTT_VS_FLOOR,
                       "zmesh_vs_floor_tput_min": TARGET_TPUT_VS_FLOOR,
                       "zmesh_cpu_s_per_gb_over_floor_max": TARGET_CPU_OVER_FLOOR},
           "checks": checks}
    return finish(args.out, doc, load0, results, checks, args.strict)


def finish(out, doc, load0, results, checks, strict):
    """Writes doc as JSON to out, prints the load note and the path; returns the exit code (1 when a scenario
    failed, or with strict when a target was missed). Shared with conns.py."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)
    # Only the figure from before the run says something about other work: the run itself loads both cores.
    print(f"\nload average (1 min) before the run: {load0:.2f}"
          f"{'  -- other work was running, figures are noisy' if load0 > 0.5 else ''}")
    print(f"results: {os.path.relpath(out, os.getcwd())}")
    if any("error" in r for r in results.values()):
        return 1
    if strict and not all(c["pass"] for c in checks.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
