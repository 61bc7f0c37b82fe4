#!/usr/bin/python3
"""zmesh handshake-flood benchmark: round-trip latency of an established tunnel while pod B's 15008 is flooded
with TLS handshakes, beside the same tunnel without the flood (issue 6 item 6).

On the end-to-end tests' topology (tests/e2e/topo.py, through bench.py's Topology adapter) with zmesh on pods A
and B (in-pod rules, one ztunnel per pod):
  * one TCP connection from pod A to an echo server in pod B (bench/rtt.c's server) is opened first, so it
    rides an HBONE connection that is already established;
  * phase "quiet": 1-byte ping-pongs on it for --seconds (at most --rtt-count), each timed with
    time.monotonic_ns; p50/p99/max;
  * phase "flood": the same on the same connection while a flooder in node 2's namespace (outside the pod)
    keeps --flood TLS 1.3 handshakes in flight against B's 15008: each sends a canned ClientHello (ALPN h2,
    made once with Python's ssl), waits for the first bytes of the server's answer and closes, so the server
    pays the expensive half of every handshake (key share, CertificateVerify signature) and the attacker
    almost nothing; reports the server flights received per second ("hs/s") as well.
With --bin-dirs a,b the whole sequence runs once per ztunnel build (e.g. main's build, then this tree's), on
the same topology, so before/after figures come from one invocation. Prints a table and writes
build/bench/flood.json. The RTT probe is Python: its figures include the interpreter's cost (tens of µs), the
same in every row; compare rows, not with bench.py's zm-rtt figures.

Run as root: /usr/bin/python3 bench/flood.py [--flood 300] [--seconds 5] [--bin-dirs DIR[,DIR]]
"""
import argparse
import asyncio
import datetime
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (bench/bench.py: Procs, Topology adapter, helpers)
from bench import BenchError, log, nsexec, wait_listen  # noqa: E402

ROOT = bench.ROOT
APP_RTT = bench.APP_RTT
FLOOD_MAX = 5000            # concurrent handshakes the flooder may keep in flight
FLOOD_CONNECT_TIMEOUT = 10  # s; a handshake that takes longer counts as failed


# ----------------------------------------------------------------------------------------------------------
# The flooder (runs as `flood.py --flood-client ...` inside node 2's namespace).

def client_hello(cert, key, ca):
    """One TLS 1.3 ClientHello (ALPN h2, P-256/X25519 key shares) as a node's ztunnel would send it, as bytes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


async def _flood_worker(ip, port, hello, stats, stop):
    # The attacker's side of a handshake costs it nothing: a canned ClientHello, then the first bytes of the
    # server's flight (for which the server generated a key share and signed its CertificateVerify), then
    # close. The server pays the full cost of a handshake's first half each time.
    while not stop.is_set():
        w = None
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(ip, port), FLOOD_CONNECT_TIMEOUT)
            w.write(hello)
            got = await asyncio.wait_for(r.read(1), FLOOD_CONNECT_TIMEOUT)
            stats["handshakes" if got else "failures"] += 1
        except (OSError, asyncio.TimeoutError):
            stats["failures"] += 1
            await asyncio.sleep(0.01)
        finally:
            if w is not None:
                w.close()


async def _flood(ip, port, n, cert, key, ca):
    hello = client_hello(cert, key, ca)
    stats = {"handshakes": 0, "failures": 0}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    t0 = time.monotonic()
    tasks = [asyncio.create_task(_flood_worker(ip, port, hello, stats, stop)) for _ in range(n)]
    print("ready", flush=True)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stats["seconds"] = time.monotonic() - t0
    print(json.dumps(stats), flush=True)


def flood_client(argv):
    ip, port, n, cert, key, ca = argv
    asyncio.run(_flood(ip, int(port), int(n), cert, key, ca))
    return 0


# ----------------------------------------------------------------------------------------------------------
# Measurement.

def pingpong(sock, seconds, max_count):
    """1-byte round trips on sock for `seconds` (at most max_count); returns RTT stats in µs."""
    rtts = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(rtts) < max_count:
        t0 = time.monotonic_ns()
        sock.sendall(b"x")
        if sock.recv(1) != b"x":
            raise BenchError("echo connection closed")
        rtts.append((time.monotonic_ns() - t0) / 1000.0)
    if not rtts:
        raise BenchError("no round trip completed")
    rtts.sort()
    q = lambda p: rtts[min(len(rtts) - 1, int(p * len(rtts)))]  # noqa: E731 (nearest rank)
    return {"count": len(rtts), "p50_us": q(0.50), "p99_us": q(0.99), "max_us": rtts[-1],
            "mean_us": statistics.fmean(rtts)}


def start_flooder(procs, t, args):
    """The flooder in node 2's namespace (outside pod B), with a mesh client certificate; returns the Popen
    once its connections are in flight."""
    cert, key = t.t.mint(t.pod_a.spiffe, "flood-client")
    argv = nsexec(t.t.nodes[1], [sys.executable, os.path.abspath(__file__), "--flood-client", t.ip_b, "15008",
                                 str(args.flood), cert, key, t.root_pem])
    p = procs.start(argv, "flooder", stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("ready"):
        raise BenchError("flooder did not start")
    return p


def stop_flooder(procs, p):
    p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        procs.stop(p)
        raise BenchError("flooder did not stop")
    procs.stop(p)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise BenchError("flooder printed no result")
    return json.loads(lines[-1])


def run_one(t, procs, args, bin_dir):
    """quiet + flood phases on one ztunnel build; returns the result dict."""
    import topo  # tests/e2e/topo.py, importable once bench.Topology is up
    os.environ["ZMESH_BIN"] = bin_dir
    zts = t.start_zmesh(procs)
    res = {"bin_dir": bin_dir}
    try:
        before = bench.redirected_conns(t.ns_a, 15001)
        s = topo.netns_socket(t.ns_a)
        s.settimeout(FLOOD_CONNECT_TIMEOUT * 3)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((t.ip_b, APP_RTT))
        try:
            pingpong(s, 1, 1000)  # warm-up: the HBONE connection, buffers
            if bench.redirected_conns(t.ns_a, 15001) - before < 1:
                raise BenchError("the probe connection was not redirected to 15001: not measuring zmesh")
            res["quiet"] = pingpong(s, args.seconds, args.rtt_count)
            fl = start_flooder(procs, t, args)
            try:
                time.sleep(1)  # let the flood ramp up
                cpu0 = bench.cpu_seconds([zts[1].pid])
                t0 = time.monotonic()
                res["flood"] = pingpong(s, args.seconds, args.rtt_count)
                res["flood"]["server_ztunnel_cpu"] = (bench.cpu_seconds([zts[1].pid]) - cpu0) / \
                    (time.monotonic() - t0)
            finally:
                st = stop_flooder(procs, fl)
            res["flooder"] = dict(st, handshakes_per_s=st["handshakes"] / max(st["seconds"], 1e-9))
        finally:
            s.close()
    finally:
        t.stop_zmesh(procs)
    return res


def report(results, args):
    print()
    print(f"{'ztunnel build':<34} {'phase':<6} {'RTTs':>7} {'p50 us':>9} {'p99 us':>10} {'max us':>10} "
          f"{'hs/s':>7} {'hs fail':>8} {'B CPU':>6}")
    print("-" * 104)
    for label, r in results.items():
        if "error" in r:
            print(f"{label:<34} FAILED: {r['error']}")
            continue
        for ph in ("quiet", "flood"):
            x = r[ph]
            hs = f"{r['flooder']['handshakes_per_s']:7.0f}" if ph == "flood" else f"{'-':>7}"
            fail = f"{r['flooder']['failures']:8d}" if ph == "flood" else f"{'-':>8}"
            cpu = f"{x['server_ztunnel_cpu']:6.2f}" if ph == "flood" else f"{'-':>6}"
            print(f"{label:<34} {ph:<6} {x['count']:7d} {x['p50_us']:9.0f} {x['p99_us']:10.0f} "
                  f"{x['max_us']:10.0f} {hs} {fail} {cpu}")
        print(f"{'':<34} p99 flood/quiet: {r['flood']['p99_us'] / r['quiet']['p99_us']:.1f}x, "
              f"p50 flood/quiet: {r['flood']['p50_us'] / r['quiet']['p50_us']:.1f}x")
    print(f"\n{args.flood} handshakes kept in flight from node 2 against pod B's 15008; {args.seconds}s per phase "
          f"(at most {args.rtt_count} RTTs); B CPU = server ztunnel cores during the flood phase")


def parse_args(argv):
    ap = argparse.ArgumentParser(description="established-tunnel RTT during a TLS handshake flood on 15008")
    ap.add_argument("--flood", type=int, default=300, help="handshakes kept in flight (default 300)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per phase (default 5)")
    ap.add_argument("--rtt-count", type=int, default=20000, help="at most this many RTTs per phase")
    ap.add_argument("--bin-dirs", default=os.environ.get("ZMESH_BIN", os.path.join(ROOT, "build", "bin")),
                    help="comma-separated ztunnel build directories, measured in order (default build/bin)")
    ap.add_argument("--ztunnel-workers", type=int, default=0, help="ZTUNNEL_WORKER_THREADS for both ztunnels")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "flood.json"))
    a = ap.parse_args(argv)
    if not 1 <= a.flood <= FLOOD_MAX:
        ap.error(f"--flood must be 1..{FLOOD_MAX}")
    if not 1 <= a.seconds <= 120:
        ap.error("--seconds must be 1..120")
    a.bin_dirs = [os.path.abspath(d) for d in a.bin_dirs.split(",") if d]
    for d in a.bin_dirs:
        if not os.access(os.path.join(d, "ztunnel"), os.X_OK):
            ap.error(f"{d}/ztunnel missing")
    a.bin_dir = a.bin_dirs[0]
    a.rtt_bin = os.path.join(ROOT, "build", "bin", "zm-rtt")
    return a


def main(argv):
    if argv[:1] == ["--flood-client"]:
        return flood_client(argv[1:])
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("flood: needs root (network namespaces)", file=sys.stderr)
        return 2
    if not os.access(args.rtt_bin, os.X_OK):
        print(f"flood: {args.rtt_bin} missing (make all)", file=sys.stderr)
        return 2

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    load0 = os.getloadavg()[0]
    procs = bench.Procs()
    results = {}
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        with bench.make_topology(args, procs) as t:
            t.logs_dir = "flood-logs"  # build/bench/flood-logs/, beside bench.py's logs/
            srv = procs.start(nsexec(t.ns_b, [args.rtt_bin, "server", str(APP_RTT)]), "zm-rtt-server")
            wait_listen(t.ns_b, APP_RTT, srv)
            for i, d in enumerate(args.bin_dirs):
                label = f"{i + 1}: {os.path.relpath(d, ROOT) if d.startswith(ROOT) else d}"[:34]
                log(f"ztunnel build {label}")
                try:
                    results[label] = run_one(t, procs, args, d)
                except BenchError as e:
                    log(f"{label} failed: {e}")
                    results[label] = {"error": str(e)}
    except KeyboardInterrupt:
        log("interrupted: tearing down")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        procs.stop_all()
    report(results, args)
    doc = {"date": started.isoformat(timespec="seconds"), "host": bench.host_info(),
           "params": {"flood": args.flood, "seconds": args.seconds, "rtt_count": args.rtt_count,
                      "ztunnel_workers": args.ztunnel_workers or "default"},
           "results": results}
    return bench.finish(args.out, doc, load0, results, {}, False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
