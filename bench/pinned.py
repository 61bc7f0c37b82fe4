#!/usr/bin/python3
"""zmesh pinned-memory benchmark: how much memory peers can make the ztunnels hold by sending to apps that do
not read (issue 6 item 5).

On bench.py's topology (pod A on node 1, pod B on node 2, a dedicated ztunnel per pod with in-pod rules):

  * mesh: --tunnels (100) TCP connections from pod A to a "pinning" app in pod B, captured by ztunnel A and
    carried as HBONE to ztunnel B. Nobody reads: the client in pod A writes --bytes (8 MiB) on each and
    never reads; the app in pod B never reads and writes --bytes back on each. So ztunnel B holds what A's
    client sent and ztunnel A holds what B's app sent. Both ztunnels pool: the tunnels share a few HBONE
    connections.
  * peers: --tunnels HBONE connections straight to ztunnel B on 15008, one CONNECT each (Python h2 with a
    mesh certificate, from pod A's namespace, not captured), each sending --bytes to the app that does not
    read: a peer that opens many connections, as an attacker would.

For each: VmRSS of both ztunnels idle, then with everything sent (no more progress for --settle seconds),
and zmesh_hbone_buffered_bytes / zmesh_hbone_memory_reserved_bytes from /metrics where the ztunnel has
them. Writes build/bench/pinned.json. Compare two builds with --bin-dir.

Run as root: /usr/bin/python3 bench/pinned.py [--bin-dir DIR] [--tunnels N] [--bytes N] [--only mesh,peers]
"""
import argparse
import datetime
import errno
import json
import os
import select
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (Procs, the topology adapter, nsexec/run)
import conns  # noqa: E402  (proc_mem)
from bench import BenchError, log  # noqa: E402

ROOT = bench.ROOT
SCENARIOS = ("mesh", "peers")
APP_PORT = 7200          # the pinning app in pod B
CHUNK = 1 << 16


def metric(ns, ip, name):
    """The value of an unlabelled sample from the ztunnel's /metrics, or None (older builds lack it)."""
    from helpers import http_request  # tests/e2e/helpers.py
    try:
        status, _, body = http_request(ns, ip, 15020, "/metrics", timeout=5)
    except OSError:
        return None
    if status != 200:
        return None
    for ln in body.decode().splitlines():
        if ln.startswith(name + " "):
            return float(ln.split()[1])
    return None


class PinningApp:
    """Listens in pod B; accepts, never reads, and writes `reply` bytes on each connection (non-blocking).
    With reply None it closes each connection at once and only counts them (`accepted`)."""

    def __init__(self, ns, port, reply):
        from topo import netns_socket
        self.ls = netns_socket(ns)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("0.0.0.0", port))
        self.ls.listen(4096)
        self.ls.setblocking(False)
        self.reply = reply
        self.conns = []       # [sock, bytes still to write]
        self.accepted = 0
        self.stop = False
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        buf = b"\xa5" * CHUNK
        while not self.stop:
            r, w, _ = select.select([self.ls], [c[0] for c in self.conns if c[1] > 0], [], 0.05)
            if r:
                try:
                    while True:
                        s, _ = self.ls.accept()
                        self.accepted += 1
                        if self.reply is None:
                            s.close()
                            continue
                        s.setblocking(False)
                        self.conns.append([s, self.reply])
                except (BlockingIOError, InterruptedError):
                    pass
            for c in self.conns:
                if c[0] in w:
                    _send_some(c, buf)

    def close(self):
        self.stop = True
        self.th.join(timeout=5)
        for c in self.conns:
            c[0].close()
        self.ls.close()


def _send_some(c, buf):
    """Writes what the socket takes of c's remaining bytes; returns the bytes written."""
    n = 0
    while c[1] > 0:
        try:
            k = c[0].send(buf[:min(len(buf), c[1])])
        except (BlockingIOError, InterruptedError):
            break
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET):
                c[1] = 0
                break
            raise
        c[1] -= k
        n += k
    return n


def push(conns_, settle):
    """Writes on every non-blocking [sock, remaining] until all is sent or nothing moved for settle s."""
    buf = b"\x5a" * CHUNK
    last = time.monotonic()
    total = 0
    while any(c[1] > 0 for c in conns_) and time.monotonic() - last < settle:
        _, w, _ = select.select([], [c[0] for c in conns_ if c[1] > 0], [], 0.1)
        for c in conns_:
            if c[0] in w:
                k = _send_some(c, buf)
                if k:
                    total += k
                    last = time.monotonic()
    return total


def snapshot(t, zts, label):
    out = {"label": label}
    for side, pid, ns, ip in (("client", zts[0].pid, t.ns_a, t.ip_a), ("server", zts[1].pid, t.ns_b, t.ip_b)):
        m = conns.proc_mem(pid)
        out[side] = {"rss_kb": m.get("VmRSS"), "hwm_kb": m.get("VmHWM"),
                     "buffered_bytes": metric(ns, ip, "zmesh_hbone_buffered_bytes"),
                     "reserved_bytes": metric(ns, ip, "zmesh_hbone_memory_reserved_bytes")}
    log(f"{label}: client RSS {out['client']['rss_kb']} kB, server RSS {out['server']['rss_kb']} kB")
    return out


def scenario_mesh(t, zts, args):
    app = PinningApp(t.ns_b, APP_PORT, args.bytes)
    from topo import netns_socket
    socks = []
    try:
        idle = snapshot(t, zts, "mesh idle")
        for _ in range(args.tunnels):
            s = netns_socket(t.ns_a)
            s.settimeout(10)
            s.connect((t.ip_b, APP_PORT))
            s.setblocking(False)
            socks.append([s, args.bytes])
        sent = push(socks, args.settle)
        time.sleep(args.settle)  # the app's replies reach what they can
        held = snapshot(t, zts, "mesh held")
        return {"idle": idle, "held": held, "client_sent_bytes": sent,
                "app_sent_bytes": args.tunnels * args.bytes - sum(c[1] for c in app.conns),
                "hbone_conns": conns.count_conns(t.ns_b, "( sport = :15008 )")}
    finally:
        for c in socks:
            c[0].close()
        app.close()


def scenario_peers(t, zts, args):
    from helpers import connect  # tests/e2e/helpers.py
    from hbone_peer import HboneClient
    app = PinningApp(t.ns_b, APP_PORT, 0)
    cert, key = t.t.mint(t.pod_a.spiffe, "pinned-peer")
    clients = []
    try:
        idle = snapshot(t, zts, "peers idle")
        for _ in range(args.tunnels):
            c = HboneClient(connect(t.ns_a, t.ip_b, 15008, mark=0x539), cert, key, t.root_pem)
            sid = c.connect(f"{t.ip_b}:{APP_PORT}")
            if c.response(sid)[0] != 200:
                raise BenchError("CONNECT to the pinning app was refused")
            clients.append([c, sid, args.bytes])
        # Send what each stream's window allows, round robin, until nothing moves for settle seconds.
        chunk = b"\x5a" * CHUNK
        last, sent = time.monotonic(), 0
        while any(x[2] > 0 for x in clients) and time.monotonic() - last < args.settle:
            for x in clients:
                c, sid, left = x
                if left <= 0:
                    continue
                try:
                    c._pump(time.time() + 0.001)   # WINDOW_UPDATEs
                except Exception:
                    x[2] = 0
                    continue
                c.tls.settimeout(c.timeout)  # _pump leaves its short read timeout on the socket
                n = min(left, c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size, CHUNK)
                if n > 0:
                    c.conn.send_data(sid, chunk[:n])
                    c._flush()
                    x[2] -= n
                    sent += n
                    last = time.monotonic()
        held = snapshot(t, zts, "peers held")
        return {"idle": idle, "held": held, "peer_sent_bytes": sent}
    finally:
        for x in clients:
            x[0].close()
        app.close()


def parse_args(argv):
    ap = argparse.ArgumentParser(description="memory peers can pin in the ztunnels with apps that do not read")
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: mesh,peers (default both)")
    ap.add_argument("--tunnels", type=int, default=100, help="tunnels (or peer connections) (default 100)")
    ap.add_argument("--bytes", type=int, default=8 << 20, help="bytes sent on each (default 8 MiB)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds without progress after which a push counts as stalled (default 3)")
    ap.add_argument("--ztunnel-workers", type=int, default=0)
    ap.add_argument("--bin-dir", default=os.environ.get("ZMESH_BIN", os.path.join(ROOT, "build", "bin")))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "pinned.json"))
    a = ap.parse_args(argv)
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    if not a.only or any(s not in SCENARIOS for s in a.only):
        ap.error(f"--only: choose from {','.join(SCENARIOS)}")
    if not 1 <= a.tunnels <= 1000:
        ap.error("--tunnels 1..1000")
    a.rtt_bin = os.path.join(a.bin_dir, "zm-rtt")
    return a


class PinnedTopology(bench.Topology):
    """bench.py's topology adapter; logs go to build/bench/logs-pinned/."""

    logs_dir = "logs-pinned"


def main(argv):
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("pinned: needs root (network namespaces)", file=sys.stderr)
        return 2
    if not os.access(os.path.join(args.bin_dir, "ztunnel"), os.X_OK):
        print(f"pinned: {args.bin_dir}/ztunnel missing (make all)", file=sys.stderr)
        return 2
    procs = bench.Procs()
    results = {}
    try:
        with PinnedTopology(args, procs) as t:
            for s in args.only:
                zts = t.start_zmesh(procs)
                try:
                    log(f"scenario {s}")
                    results[s] = {"mesh": scenario_mesh, "peers": scenario_peers}[s](t, zts, args)
                finally:
                    t.stop_zmesh(procs)
    finally:
        procs.stop_all()
    print(f"{'scenario':<8} {'side':<7} {'RSS idle MB':>12} {'RSS held MB':>12} {'added MB':>9} "
          f"{'buffered MB':>12} {'reserved MB':>12}")
    for s, r in results.items():
        for side in ("client", "server"):
            i, h = r["idle"][side], r["held"][side]
            mb = lambda v: f"{v / 1024:.1f}" if v is not None else "-"  # noqa: E731
            byt = lambda v: f"{v / 1048576:.1f}" if v is not None else "-"  # noqa: E731
            print(f"{s:<8} {side:<7} {mb(i['rss_kb']):>12} {mb(h['rss_kb']):>12} "
                  f"{mb(h['rss_kb'] - i['rss_kb']):>9} {byt(h['buffered_bytes']):>12} {byt(h['reserved_bytes']):>12}")
    doc = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(), "bin_dir": args.bin_dir,
           "tunnels": args.tunnels, "bytes_each": args.bytes, "results": results}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
