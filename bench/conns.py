#!/usr/bin/python3
"""zmesh connection benchmark: new-connection rate and memory per idle connection, side by side with direct TCP
and an HAProxy mTLS tunnel pair, on the end-to-end tests' topology (pod A on node 1 -> pod B on node 2).

  * connection rate: build/bench/conn_rate client (bench/conn_rate.c): N threads, each looping connect, send 1
    byte, receive it back, close (SO_LINGER 0), for T seconds; connections per second (median over rounds);
  * memory: VmRSS of each proxy right after start (idle), then with --conns (10 000) idle connections open
    end to end (each proven by a 1-byte echo through it); per-connection cost = sum over both proxies of
    (RSS_held - RSS_idle) / conns.
Prints a table, the ratios and PASS/FAIL against the targets, and writes build/bench/conns.json.

Run as root through `make bench` (bench/run.sh runs bench.py, then this) or `bench/run.sh conns [options]`.
Reuses bench.py's process handling, HAProxy certificates and topology adapter (tests/e2e/topo.py).
"""
import argparse
import datetime
import hashlib
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (bench/bench.py: Procs, Topology adapter, helpers)
from bench import BenchError, log, nsexec, run, wait_listen  # noqa: E402

ROOT = bench.ROOT
SCENARIOS = ("direct", "floor", "haproxy", "zmesh", "shared")
TARGET_RATE_VS_DIRECT = 0.3     # zmesh new connections/s >= 0.3x direct
TARGET_IDLE_RSS_KB = 4096       # one idle ztunnel <= 4 MB
TARGET_KB_PER_CONN = 4.0        # both ztunnels together <= 4 KB per open idle connection

APP_PORT = 7100                 # conn_rate echo server in pod B (direct and zmesh target it)
HAP_IN = 27100                  # server-side haproxy in pod B (mTLS), forwards to 127.0.0.1:APP_PORT
HAP_OUT = 17100                 # client-side haproxy in pod A on 127.0.0.1
FLOOR_IN, FLOOR_OUT = 28100, 18100  # the floor: the same pair in plaintext (mode tcp, no TLS), as in bench.py
NOFILE = 1048576                # fs.nr_open's default; every process we start inherits it


# ----------------------------------------------------------------------------------------------------------
# /proc readers.

def proc_mem(pid):
    """VmRSS, RssAnon, RssFile, VmHWM (kB) from /proc/<pid>/status and Pss from smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            k, _, v = ln.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for ln in f:
                if ln.startswith("Pss:"):
                    out["Pss"] = int(ln.split()[1])
    except OSError:
        pass
    return out


def nofile_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        for ln in f:
            if ln.startswith("Max open files"):
                return int(ln.split()[3])
    return None


def count_conns(ns, filt):
    r = run(nsexec(ns, ["ss", "-Htn", "state", "established", filt]), timeout=20, check=False)
    return len([ln for ln in r.stdout.splitlines() if ln.strip()])


# ----------------------------------------------------------------------------------------------------------
# Measurements.

def measure_rate(ns, ip, port, args, proxy_pids, label=None):
    """args.repeat rounds of conn_rate client; medians, plus proxy CPU per connection over all rounds. With
    --profile and proxies, perf records them during the rounds (build/bench/profile/perf-conns-<label>-*)."""
    recs = None
    if args.profile and proxy_pids and label:
        recs = bench.perf_start(proxy_pids, f"conns-{label}", os.path.join(os.path.dirname(args.out), "profile"))
    try:
        return _measure_rate(ns, ip, port, args, proxy_pids)
    finally:
        if recs:
            bench.perf_stop(recs)


def _measure_rate(ns, ip, port, args, proxy_pids):
    rounds = []
    for i in range(args.repeat):
        cpu0 = bench.cpu_seconds(proxy_pids) if proxy_pids else None
        argv = nsexec(ns, [args.cr_bin, "client", ip, str(port), str(args.threads), str(args.time)])
        r = run(argv, timeout=args.time + 60, check=False)
        m = re.search(r"conns ok=(\d+) errors=(\d+) seconds=([\d.]+) conns_per_s=([\d.]+) mean_us=([\d.]+) "
                      r"p50_us=([\d.]+) p99_us=([\d.]+) last_error=(.*)", r.stdout)
        if not m:
            raise BenchError(f"conn_rate client to {ip}:{port} failed: {(r.stdout + r.stderr).strip()[-300:]}")
        rd = {"ok": int(m.group(1)), "errors": int(m.group(2)), "seconds": float(m.group(3)),
              "conns_per_s": float(m.group(4)), "mean_us": float(m.group(5)), "p50_us": float(m.group(6)),
              "p99_us": float(m.group(7)), "last_error": m.group(8).strip()}
        if proxy_pids:
            rd["proxy_cpu_s"] = bench.cpu_seconds(proxy_pids) - cpu0
        log(f"  rate round {i + 1}: {rd['conns_per_s']:.0f} conn/s, errors {rd['errors']} "
            f"({rd['last_error']}), p50 {rd['p50_us']:.0f} us")
        if rd["ok"] == 0:
            raise BenchError(f"no connection succeeded to {ip}:{port}: {rd['last_error']}")
        rounds.append(rd)
        time.sleep(1)   # let closing connections drain between rounds
    med = statistics.median
    out = {k: med(r[k] for r in rounds) for k in ("conns_per_s", "mean_us", "p50_us", "p99_us")}
    out["ok_total"] = sum(r["ok"] for r in rounds)
    out["errors_total"] = sum(r["errors"] for r in rounds)
    out["rounds"] = rounds
    if proxy_pids:
        cpu = sum(r["proxy_cpu_s"] for r in rounds)
        out["proxy_cpu_ms_per_conn"] = 1000 * cpu / out["ok_total"]
    return out


def save_smaps(args, label, tag, pids, names):
    """With --smaps: copies /proc/<pid>/smaps to build/bench/smaps/<label>-<tag>-<name>.txt."""
    if not args.smaps:
        return
    dst = os.path.join(os.path.dirname(args.out), "smaps")
    os.makedirs(dst, exist_ok=True)
    for pid, name in zip(pids, names):
        try:
            with open(f"/proc/{pid}/smaps") as f, open(os.path.join(dst, f"{label}-{tag}-{name}.txt"), "w") as o:
                o.write(f.read())
        except OSError as e:
            log(f"smaps of {pid}: {e}")


def start_holder(procs, ns, ip, port, args, n):
    """Starts conn_rate hold with n connections and waits until they are all echoed end to end.
    Returns (proc, held, errors, seconds)."""
    holder = procs.start(nsexec(ns, [args.cr_bin, "hold", ip, str(port), str(n), str(args.parallel)]),
                         "conn_rate-hold", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = ""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = holder.stdout.readline().decode(errors="replace")
        if line.startswith("held") or not line:
            break
    m = re.match(r"held n=(\d+) errors=(\d+) seconds=([\d.]+)", line)
    if not m:
        err = holder.stderr.read().decode(errors="replace") if holder.poll() is not None else ""
        procs.stop(holder)
        raise BenchError(f"conn_rate hold: no result ({line.strip() or err.strip()[-300:]})")
    return holder, int(m.group(1)), int(m.group(2)), float(m.group(3))


def stop_holder(procs, holder):
    # Closing stdin tells the holder to reset every connection and exit.
    try:
        holder.stdin.close()
        holder.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass
    procs.stop(holder)


def measure_memory(procs, ns, ip, port, args, label, proxy_pids, proxy_names, conns, extra=None):
    """Idle RSS of each proxy, then RSS with a first batch of args.warm connections (code paths and pooled
    TLS connections warmed up), then with args.conns in all, held open end to end. Two per-connection figures
    over both proxies: from idle ((held - idle) / conns, which also counts the library code pages the data
    path faults in once) and marginal ((held - warm) / (conns - warm), the cost of one more connection).
    extra() (optional) is called while the connections are held and its dict kept."""
    time.sleep(1)   # "right after start", but past start-up work
    idle = [proc_mem(p) for p in proxy_pids]
    save_smaps(args, label, "idle", proxy_pids, proxy_names)
    log("  idle RSS: " + ", ".join(f"{n} {m['VmRSS']} kB" for n, m in zip(proxy_names, idle)))
    warm_n = min(args.warm, conns // 2)
    holders = []
    try:
        warm_mem = None
        held = errors = 0
        secs = 0.0
        if warm_n:
            h, n, e, t = start_holder(procs, ns, ip, port, args, warm_n)
            holders.append(h)
            held, errors, secs = n, e, t
            time.sleep(1)
            warm_mem = [proc_mem(p) for p in proxy_pids]
            log("  warm RSS with %d connections: " % n +
                ", ".join(f"{nm} {m['VmRSS']} kB" for nm, m in zip(proxy_names, warm_mem)))
        h, n, e, t = start_holder(procs, ns, ip, port, args, conns - warm_n)
        holders.append(h)
        held, errors, secs = held + n, errors + e, secs + t
        log(f"  held {held} connections end to end in {secs:.1f}s ({errors} failed)")
        time.sleep(1)   # let the proxies settle (deferred frees, pending flushes)
        held_mem = [proc_mem(p) for p in proxy_pids]
        save_smaps(args, label, "held", proxy_pids, proxy_names)
        ex = extra() if extra else {}
        res = {"conns_requested": conns, "conns_held": held, "errors": errors, "open_seconds": secs,
               "idle": dict(zip(proxy_names, idle)), "held": dict(zip(proxy_names, held_mem))}
        res.update(ex)
        deltas = [h["VmRSS"] - i["VmRSS"] for h, i in zip(held_mem, idle)]
        res["delta_kb"] = dict(zip(proxy_names, deltas))
        if held > 0:
            res["kb_per_conn"] = sum(deltas) / held
            res["kb_per_conn_each"] = {n: d / held for n, d in zip(proxy_names, deltas)}
        if warm_mem and held > warm_n:
            res["warm"] = dict(zip(proxy_names, warm_mem))
            res["warm_conns"] = warm_n
            marg = [h["VmRSS"] - w["VmRSS"] for h, w in zip(held_mem, warm_mem)]
            res["kb_per_conn_marginal"] = sum(marg) / (held - warm_n)
        if errors:
            raise BenchError(f"only {held} of {conns} connections were established end to end")
    finally:
        for h in holders:
            stop_holder(procs, h)
    time.sleep(2)
    after = [proc_mem(p) for p in proxy_pids if os.path.exists(f"/proc/{p}")]
    if len(after) == len(proxy_pids):
        res["after_close"] = dict(zip(proxy_names, after))
    return res


# ----------------------------------------------------------------------------------------------------------
# Scenarios.

def scenario_direct(t, procs, args):
    return {"rate": measure_rate(t.ns_a, t.ip_b, APP_PORT, args, None)}


HAPROXY_CFG = """global
    nbthread {threads}
    maxconn {maxconn}
    log stderr format short local0 warning
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode tcp
    log global
    maxconn {maxconn}
    timeout connect 5s
    timeout client 300s
    timeout server 300s
"""


def haproxy_configs(t, args, tls=True):
    """Like bench.py's pair (same certificates and TLS settings), for the echo app and with room for
    args.conns connections; tls=False: the plaintext floor pair on its own ports. Returns (client cfg path,
    server cfg path)."""
    maxconn = args.haproxy_conns + 200
    tls_srv = f" ssl crt {t.haproxy_pem_a} ca-file {t.root_pem} verify required ssl-min-ver TLSv1.3" if tls else ""
    tls_bind = f" ssl crt {t.haproxy_pem_b} ca-file {t.root_pem} verify required ssl-min-ver TLSv1.3" if tls else ""
    port_in, port_out = (HAP_IN, HAP_OUT) if tls else (FLOOR_IN, FLOOR_OUT)
    client = HAPROXY_CFG.format(threads=args.haproxy_threads, maxconn=maxconn) + f"""
listen out_conn
    bind 127.0.0.1:{port_out}
    server s {t.ip_b}:{port_in}{tls_srv} maxconn {maxconn}
"""
    server = HAPROXY_CFG.format(threads=args.haproxy_threads, maxconn=maxconn) + f"""
listen in_conn
    bind :{port_in}{tls_bind}
    server app 127.0.0.1:{APP_PORT} maxconn {maxconn}
"""
    paths = []
    for side, text in (("client", client), ("server", server)):
        p = os.path.join(t.workdir, f"haproxy-conns{'' if tls else '-floor'}-{side}.cfg")
        with open(p, "w") as f:
            f.write(text)
        run(["haproxy", "-c", "-q", "-f", p], timeout=10)
        paths.append(p)
    return paths


def start_haproxy(t, procs, args, tls=True):
    cfg_client, cfg_server = haproxy_configs(t, args, tls)
    port_in, port_out = (HAP_IN, HAP_OUT) if tls else (FLOOR_IN, FLOOR_OUT)
    logf = open(os.path.join(t.workdir, f"haproxy-conns{'' if tls else '-floor'}.log"), "w")
    try:
        hb = procs.start(nsexec(t.ns_b, ["haproxy", "-db", "-f", cfg_server]), "haproxy-server", stdout=logf,
                         stderr=logf)
        ha = procs.start(nsexec(t.ns_a, ["haproxy", "-db", "-f", cfg_client]), "haproxy-client", stdout=logf,
                         stderr=logf)
    finally:
        logf.close()
    try:
        wait_listen(t.ns_b, port_in, hb)
        wait_listen(t.ns_a, port_out, ha)
    except BaseException:
        procs.stop(ha)
        procs.stop(hb)
        raise
    return ha, hb


def scenario_haproxy(t, procs, args, tls=True):
    # The rate test and the memory test each get a freshly started pair (see scenario_zmesh).
    label = "haproxy" if tls else "floor"
    port_in, port_out = (HAP_IN, HAP_OUT) if tls else (FLOOR_IN, FLOOR_OUT)
    res = {"nbthread": args.haproxy_threads}
    ha, hb = start_haproxy(t, procs, args, tls)
    try:
        res["nofile"] = [nofile_limit(ha.pid), nofile_limit(hb.pid)]
        res["rate"] = measure_rate(t.ns_a, "127.0.0.1", port_out, args, [ha.pid, hb.pid], label)
        if tls:
            res["tls_checked"] = check_haproxy_tls(t)
    finally:
        procs.stop(ha)
        procs.stop(hb)
    if args.skip_memory:
        return res
    ha, hb = start_haproxy(t, procs, args, tls)
    try:
        res["memory"] = measure_memory(
            procs, t.ns_a, "127.0.0.1", port_out, args, label, [ha.pid, hb.pid], ["client", "server"],
            args.haproxy_conns, extra=lambda: {"tls_conns": count_conns(t.ns_a, f"( dport = :{port_in} )")})
    finally:
        procs.stop(ha)
        procs.stop(hb)
    return res


def scenario_floor(t, procs, args):
    """The floor: the HAProxy pair in plaintext (mode tcp, no TLS, no capture), as in bench.py."""
    return scenario_haproxy(t, procs, args, tls=False)


def check_haproxy_tls(t):
    """As bench.py's check, on this pair's port."""
    return t.check_haproxy_tls(HAP_IN)


def check_captured(t, before, expected):
    """A zmesh figure only counts if the client's connections were really captured by the in-pod rules
    (otherwise broken rules would report direct TCP as zmesh). Returns the count."""
    captured = bench.redirected_conns(t.ns_a, 15001) - before
    # The nat rule counts a connection's first packet only when conntrack sees it as new; a client port
    # reused while an earlier phase's conntrack entry lingers is redirected by that entry but not counted.
    if captured < 0.99 * expected:
        raise BenchError(f"only {captured} of {expected} connections from pod A were redirected to 15001: "
                         "not measuring zmesh")
    return captured


def scenario_zmesh(t, procs, args, shared=False):
    # Rate first, on fresh ztunnels; then the memory test on another fresh pair, so that its idle figure is
    # "right after start" and the rate rounds do not start with the hold test's 10 000 closing connections.
    res = {}
    zts = t.start_zmesh(procs, shared=shared)
    pids = [z.pid for z in zts]
    try:
        res["nofile"] = [nofile_limit(p) for p in pids]
        res["ztunnel_threads"] = t.zmesh_info.get("ztunnel_threads")
        before = bench.redirected_conns(t.ns_a, 15001)
        res["rate"] = measure_rate(t.ns_a, t.ip_b, APP_PORT, args, pids, "shared" if shared else "zmesh")
        res["captured_conns"] = check_captured(t, before, res["rate"]["ok_total"])
        res["time_wait_at_b"] = count_time_wait(t.ns_b)
    finally:
        t.stop_zmesh(procs)
    if args.skip_memory:
        return res
    zts = t.start_zmesh(procs, shared=shared)
    pids = [z.pid for z in zts]
    try:
        before = bench.redirected_conns(t.ns_a, 15001)

        def extra():
            return {"hbone_tls_conns_client": count_conns(t.ns_a, "( dport = :15008 )"),
                    "hbone_tls_conns_server": count_conns(t.ns_b, "( sport = :15008 )"),
                    "app_conns_at_b": count_conns(t.ns_b, f"( sport = :{APP_PORT} )")}
        res["memory"] = measure_memory(procs, t.ns_a, t.ip_b, APP_PORT, args, "shared" if shared else "zmesh", pids, ["client", "server"],
                                       args.conns, extra=extra)
        res["memory"]["captured_conns"] = check_captured(t, before, res["memory"]["conns_held"])
    finally:
        t.stop_zmesh(procs)
    return res


def count_time_wait(ns):
    """TIME_WAIT sockets in ns: whoever closes first keeps one per connection for 60 s."""
    r = run(nsexec(ns, ["ss", "-Htan", "state", "time-wait"]), timeout=20, check=False)
    return len([ln for ln in r.stdout.splitlines() if ln.strip()])


# ----------------------------------------------------------------------------------------------------------
# Report.

def fmt(v, spec):
    """format(v, spec), or a dash of the same width for a missing value."""
    if v is None:
        w = re.match(r"\d*", spec).group(0)
        return format("-", f">{w}") if w else "-"
    return format(v, spec)


def report(results, args):
    ok = lambda s: s in results and "error" not in results[s]  # noqa: E731
    print()
    print(f"{'scenario':<10} {'conn/s':>9} {'p50 us':>8} {'p99 us':>8} {'errors':>7} {'CPU ms/conn':>12} "
          f"{'idle RSS kB (c,s)':>18} {'held RSS kB (c,s)':>18} {'KB/conn':>8} {'TLS conns':>10}")
    print("-" * 118)
    for s in SCENARIOS:
        r = results.get(s)
        if r is None:
            continue
        if "error" in r:
            print(f"{s:<10} FAILED: {r['error']}")
            continue
        rt = r["rate"]
        mem = r.get("memory") or {}
        idle = mem.get("idle") or {}
        held = mem.get("held") or {}
        idle_s = ",".join(str(idle[k]["VmRSS"]) for k in ("client", "server") if k in idle) or "-"
        held_s = ",".join(str(held[k]["VmRSS"]) for k in ("client", "server") if k in held) or "-"
        tls = mem.get("hbone_tls_conns_client", mem.get("tls_conns"))
        print(f"{s:<10} {rt['conns_per_s']:9.0f} {rt['p50_us']:8.0f} {rt['p99_us']:8.0f} {rt['errors_total']:7d} "
              f"{fmt(rt.get('proxy_cpu_ms_per_conn'), '12.3f')} {idle_s:>18} {held_s:>18} "
              f"{fmt(mem.get('kb_per_conn'), '8.2f')} {fmt(tls, '10d')}")
    for s in SCENARIOS:
        if ok(s) and len(results[s]["rate"]["rounds"]) > 1:
            print(f"{s} conn/s per round: " + ", ".join(f"{r['conns_per_s']:.0f}" for r in results[s]["rate"]["rounds"]))
    if ok("zmesh") and results["zmesh"].get("time_wait_at_b") is not None:
        print(f"zmesh: {results['zmesh']['time_wait_at_b']} TIME_WAIT sockets in pod B after the rate rounds")
    print(f"\nrate: {args.threads} client threads, {args.time}s per round, {args.repeat} round(s), medians; "
          f"memory: {args.conns} idle connections, each proven by a 1-byte echo")
    ratios, checks = {}, {}
    if ok("shared") and ok("zmesh"):
        v = results["shared"]["rate"]["conns_per_s"] / results["zmesh"]["rate"]["conns_per_s"]
        ratios["shared_vs_dedicated_rate"] = v
        kb_s = (results["shared"].get("memory") or {}).get("kb_per_conn")
        kb_d = (results["zmesh"].get("memory") or {}).get("kb_per_conn")
        if kb_s and kb_d:
            ratios["shared_vs_dedicated_kb_per_conn"] = kb_s / kb_d
        print(f"shared / dedicated: connection rate {v:.2f}"
              + (f", KB per connection {kb_s / kb_d:.2f}" if kb_s and kb_d else ""))
    for s in ("floor", "haproxy"):
        if ok("direct") and ok(s):
            ratios[f"{s}_vs_direct_rate"] = results[s]["rate"]["conns_per_s"] / results["direct"]["rate"]["conns_per_s"]
    if ok("zmesh"):
        z = results["zmesh"]
        if ok("direct"):
            v = z["rate"]["conns_per_s"] / results["direct"]["rate"]["conns_per_s"]
            ratios["zmesh_vs_direct_rate"] = v
            checks["conn_rate"] = {"value": v, "target": f">= {TARGET_RATE_VS_DIRECT}x direct",
                                   "pass": v >= TARGET_RATE_VS_DIRECT}
        if ok("haproxy"):
            ratios["zmesh_vs_haproxy_rate"] = z["rate"]["conns_per_s"] / results["haproxy"]["rate"]["conns_per_s"]
        if ok("floor"):
            f = results["floor"]
            ratios["zmesh_vs_floor_rate"] = z["rate"]["conns_per_s"] / f["rate"]["conns_per_s"]
            zc, fc = z["rate"].get("proxy_cpu_ms_per_conn"), f["rate"].get("proxy_cpu_ms_per_conn")
            if zc is not None and fc:
                ratios["zmesh_vs_floor_cpu_ms_per_conn"] = zc / fc
            zm, fm = (z.get("memory") or {}).get("kb_per_conn"), (f.get("memory") or {}).get("kb_per_conn")
            if zm is not None and fm:
                ratios["zmesh_vs_floor_kb_per_conn"] = zm / fm
        mem = z.get("memory")
        if mem:
            v = max(m["VmRSS"] for m in mem["idle"].values())
            checks["idle_rss"] = {"value": v / 1024, "target": f"<= {TARGET_IDLE_RSS_KB / 1024:.0f} MB each",
                                  "pass": v <= TARGET_IDLE_RSS_KB}
            if mem.get("kb_per_conn") is not None:
                v = mem["kb_per_conn"]
                if mem.get("kb_per_conn_marginal") is not None:
                    vm = mem["kb_per_conn_marginal"]
                    checks["kb_per_conn_marginal"] = {"value": vm,
                                                      "target": f"<= {TARGET_KB_PER_CONN:.0f} KB (both)",
                                                      "pass": vm <= TARGET_KB_PER_CONN}
                checks["kb_per_conn"] = {"value": v, "target": f"<= {TARGET_KB_PER_CONN:.0f} KB (both)",
                                         "pass": v <= TARGET_KB_PER_CONN}
                hm = (results.get("haproxy") or {}).get("memory") or {}
                if ok("haproxy") and hm.get("kb_per_conn"):
                    ratios["zmesh_vs_haproxy_kb_per_conn"] = v / hm["kb_per_conn"]
    print()
    for k, v in ratios.items():
        print(f"{k:<30} {v:8.3f}")
    labels = {"conn_rate": "zmesh/direct conn/s", "idle_rss": "idle ztunnel RSS (MB, max)",
              "kb_per_conn": "zmesh KB per idle conn",
              "kb_per_conn_marginal": "zmesh KB per conn, marginal"}
    for k, c in checks.items():
        print(f"{labels[k]:<30} {c['value']:8.3f}   target {c['target']:<22} {'PASS' if c['pass'] else 'FAIL'}")
    if "zmesh" not in args.only:
        print("zmesh skipped (--only): no pass/fail")
    return ratios, checks


# ----------------------------------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description="new-connection rate and memory per idle connection: "
                                 "direct TCP vs HAProxy mTLS pair vs zmesh", allow_abbrev=False)
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated of: direct,floor,haproxy,zmesh,shared (zmesh: dedicated mode)")
    ap.add_argument("--rate-time", dest="time", type=int, default=5, help="seconds per rate round (default 5)")
    ap.add_argument("--threads", type=int, default=4, help="conn_rate client threads (default 4)")
    ap.add_argument("--repeat", type=int, default=1, help="rate rounds per scenario, medians (default 1)")
    ap.add_argument("--conns", type=int, default=10000, help="idle connections for the memory test (10000)")
    ap.add_argument("--warm", type=int, default=1000,
                    help="connections opened first, as the baseline of the marginal per-connection figure (1000)")
    ap.add_argument("--parallel", type=int, default=200, help="connections being opened at once (200)")
    ap.add_argument("--skip-memory", action="store_true", help="connection rate only")
    ap.add_argument("--haproxy-threads", type=int, default=2, choices=(1, 2))
    ap.add_argument("--ztunnel-workers", type=int, default=0)
    ap.add_argument("--smaps", action="store_true",
                    help="also save /proc/<pid>/smaps of both proxies, idle and held (build/bench/smaps/)")
    ap.add_argument("--profile", action="store_true",
                    help="perf record the proxies during the rate rounds (build/bench/profile/); skews the figures")
    ap.add_argument("--bin-dir", default=os.environ.get("ZMESH_BIN", os.path.join(ROOT, "build", "bin")))
    ap.add_argument("--conns-out", dest="out", default=os.path.join(ROOT, "build", "bench", "conns.json"))
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    # run.sh passes bench.py's options too (make bench runs both): ignore the ones that are not ours.
    a, unknown = ap.parse_known_args(argv)
    if unknown and not os.environ.get("ZMESH_BENCH_BOTH"):
        ap.error(f"unknown arguments: {' '.join(unknown)}")
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in a.only if s not in SCENARIOS]
    if bad or not a.only:
        ap.error(f"--only: unknown scenario(s) {bad}")
    if not 1 <= a.repeat <= 10 or not 1 <= a.time <= 120 or not 1 <= a.threads <= 64:
        ap.error("--repeat 1..10, --rate-time 1..120, --threads 1..64")
    if not 1 <= a.conns <= 200000:
        ap.error("--conns 1..200000")
    a.cr_bin = os.path.join(ROOT, "build", "bench", "conn_rate")
    # bench.Topology reads these.
    a.rtt_bin = os.path.join(a.bin_dir, "zm-rtt")
    return a


class ConnsTopology(bench.Topology):
    """bench.py's topology adapter; keeps the proxies' logs in build/bench/logs-conns/ so that bench.py's
    build/bench/logs/ from the same `make bench` survives."""

    logs_dir = "logs-conns"


def tune_pod(t, ns):
    """Same for every scenario: wide ephemeral port range and TIME_WAIT reuse for outgoing connections, so a
    rate test measures the path and not port exhaustion (proxies close with FIN and keep TIME_WAIT)."""
    run(nsexec(ns, ["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=10000 65000",
                    "net.ipv4.tcp_tw_reuse=1", "net.core.somaxconn=4096"]), timeout=10)


def main(argv):
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("conns: needs root (network namespaces)", file=sys.stderr)
        return 2
    if not os.access(args.cr_bin, os.X_OK):
        print(f"conns: {args.cr_bin} missing (make all)", file=sys.stderr)
        return 2
    if "zmesh" in args.only and not os.access(os.path.join(args.bin_dir, "ztunnel"), os.X_OK):
        print(f"conns: {args.bin_dir}/ztunnel missing (make all, or --only direct,haproxy)", file=sys.stderr)
        return 2
    # Every process we start (through ip netns exec) inherits this: ztunnel and the apps hold 10 000+ sockets
    # each. Without CAP_SYS_RESOURCE (containers) only the soft limit can go up, to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if args.nofile < args.conns + 1000:
        log(f"error: RLIMIT_NOFILE {args.nofile} is too low for --conns {args.conns}")
        return 2
    # An HAProxy side holds two sockets per connection (client and server side).
    args.haproxy_conns = min(args.conns, (args.nofile - 1000) // 2)
    if args.haproxy_conns < args.conns and "haproxy" in args.only:
        log(f"note: RLIMIT_NOFILE {args.nofile} allows HAProxy {args.haproxy_conns} connections (2 fds each)")

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    load0 = os.getloadavg()[0]
    if load0 > 0.5:
        log(f"warning: load average {load0:.2f} before the run; other work here makes the figures noisy")
    procs = bench.Procs()
    results = {}
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        with ConnsTopology(args, procs) as t:
            for ns in (t.ns_a, t.ns_b):
                tune_pod(t, ns)
            srv = procs.start(nsexec(t.ns_b, [args.cr_bin, "server", str(APP_PORT)]), "conn_rate-server")
            wait_listen(t.ns_b, APP_PORT, srv)
            results["app_nofile"] = nofile_limit(srv.pid)
            for s in SCENARIOS:
                if s not in args.only:
                    continue
                log(f"scenario {s}")
                fn = {"direct": scenario_direct, "floor": scenario_floor, "haproxy": scenario_haproxy,
                      "zmesh": scenario_zmesh,
                      "shared": lambda t, procs, args: scenario_zmesh(t, procs, args, shared=True)}[s]
                try:
                    results[s] = fn(t, procs, args)
                except BenchError as e:
                    log(f"scenario {s} failed: {e}")
                    results[s] = {"error": str(e)}
    except KeyboardInterrupt:
        log("interrupted: tearing down")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        procs.stop_all()

    app_nofile = results.pop("app_nofile", None)
    ratios, checks = report(results, args)
    host = bench.host_info()
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    host["git_head"] = head.stdout.strip() or None
    zt = os.path.join(args.bin_dir, "ztunnel")
    if "zmesh" in args.only and os.path.exists(zt):
        with open(zt, "rb") as f:
            host["ztunnel_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]
    host["loadavg_1m_before"] = load0
    host["loadavg_1m_after"] = os.getloadavg()[0]
    doc = {"date": started.isoformat(timespec="seconds"), "host": host,
           "params": {"rate_seconds": args.time, "threads": args.threads, "repeat": args.repeat,
                      "conns": args.conns, "parallel": args.parallel, "haproxy_nbthread": args.haproxy_threads,
                      "app_nofile": app_nofile, "rlimit_nofile": args.nofile,
                      "haproxy_conns": args.haproxy_conns, "scenarios": args.only,
                      "pod_sysctls": "ip_local_port_range=10000 65000, tcp_tw_reuse=1, somaxconn=4096"},
           "results": results, "ratios": ratios,
           "targets": {"zmesh_vs_direct_rate_min": TARGET_RATE_VS_DIRECT, "idle_rss_kb_max": TARGET_IDLE_RSS_KB,
                       "kb_per_conn_max": TARGET_KB_PER_CONN},
           "checks": checks}
    return bench.finish(args.out, doc, load0, results, checks, args.strict)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
