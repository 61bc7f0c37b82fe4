"""A hostile HBONE peer against a real ztunnel (issue 6 items 4 and 8): Python h2 (no code shared with zmesh),
speaking mutual TLS with a valid mesh certificate from pod n1p1's namespace (SO_MARK, so no capture), at
n2p1's ztunnel on 15008.

- Rapid reset: thousands of HEADERS + RST_STREAM pairs on one connection. The app behind the ztunnel sees at
  most a handful of connections, the connection ends with GOAWAY(ENHANCE_YOUR_CALM) once the early-reset
  budget is spent, the log stays a few lines, and a fresh connection works right after.
- PING flood: nghttp2's flood guard ends the connection; the GOAWAY reaches the peer and one line names the
  peer's address, identity and the reason; /metrics counts it (and stays valid for promtool)."""
import os
import socket
import subprocess
import threading

import h2.errors
import h2.events
import pytest

from helpers import Mesh, connect, http_request, parse_prometheus, wait_for
from hbone_peer import HboneClient

COUNT_PORT, ECHO_PORT = 8090, 8080
FLOOD = 15000  # streams: 3x the early-reset budget's burst (HBONE_EARLY_RESET_BURST)
BUDGET = 5000
ENHANCE_YOUR_CALM = 0xb


class CountingApp:
    """A listener inside the pod's netns that counts the connections it accepts and closes them."""

    def __init__(self, netns, port):
        from topo import netns_socket
        self.sock = netns_socket(netns)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", port))
        self.sock.listen(1024)
        self.accepts = 0
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepts += 1
            c.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=1, meshed=["n2p1"])
    app = None
    try:
        m.up()
        srv = m.pod("n2p1")
        m.app(srv, "echo", ECHO_PORT)
        app = CountingApp(srv.netns, COUNT_PORT)
        yield m, app
    finally:
        if app:
            app.close()
        m.down()


def _client(m, name):
    a, b = m.pod("n1p1"), m.pod("n2p1")
    cert, key = m.topo.mint(a.spiffe, name)
    ca = os.path.join(m.topo.ca(), "root-cert.pem")
    return HboneClient(connect(a.netns, b.ip, 15008, mark=0x539), cert, key, ca), a, b


def _read_until_goaway(c, timeout=10.0):
    """Reads until GOAWAY or EOF; returns the GOAWAY's error code (None if the conn ended without one)."""
    c.tls.settimeout(timeout)
    code = None
    while code is None:
        try:
            data = c.tls.recv(1 << 16)
        except (OSError, socket.timeout):
            break
        if not data:
            break
        try:
            events = c.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            break
        for ev in events:
            if isinstance(ev, h2.events.ConnectionTerminated):
                code = ev.error_code
    return code


def _metrics(pod):
    status, _, body = http_request(pod.netns, pod.ip, 15020, "/metrics")
    assert status == 200
    return body.decode()


def _value(text, name, **labels):
    return sum(v for n, ls, v in parse_prometheus(text)
               if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def _log_lines(m, pod, start):
    return m.log(pod).splitlines()[start:]


def test_rapid_reset_is_not_amplified(mesh):
    m, app = mesh
    b = m.pod("n2p1")
    log_start = len(m.log(b).splitlines())
    accepts0 = app.accepts
    before = _metrics(b)
    c, a, _ = _client(m, "attacker")
    hdrs = [(b":method", b"CONNECT"), (b":authority", ("%s:%d" % (b.ip, COUNT_PORT)).encode())]
    sent = 0
    try:
        for i in range(FLOOD):
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(sid, hdrs)
            c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            if i % 200 == 199:
                c.tls.sendall(c.conn.data_to_send())
            sent = i + 1
        c.tls.sendall(c.conn.data_to_send())
    except OSError:
        pass  # the server may close while we still write
    code = _read_until_goaway(c)
    c.tls.close()
    assert code == ENHANCE_YOUR_CALM, "GOAWAY code %r after %d streams" % (code, sent)


    after = wait_for(lambda: (lambda t: t if _value(t, "zmesh_hbone_protocol_errors_total",
                                                     reason="early_resets") > 0 else None)(_metrics(b)))
    assert after, "no early_resets protocol error counted"
    resets = _value(after, "zmesh_hbone_early_resets_total") - _value(before, "zmesh_hbone_early_resets_total")
    assert BUDGET <= resets < FLOOD
    assert _value(after, "zmesh_hbone_protocol_errors_total", reason="early_resets") == 1
    # Resets that came with their HEADERS never made ztunnel dial: the app saw a handful at most.
    assert app.accepts - accepts0 <= 20, "app accepted %d connections" % (app.accepts - accepts0)
    # The log stays small: one protocol-error line and at most a burst of aggregated reset lines.
    lines = _log_lines(m, b, log_start)
    assert len([l for l in lines if "HTTP/2 protocol error" in l]) == 1
    assert len([l for l in lines if "connection complete" in l]) <= 20
    assert len(lines) <= 30, "\n".join(lines[:40])
    perr = next(l for l in lines if "HTTP/2 protocol error" in l)
    assert "reason=early_resets" in perr and a.spiffe in perr

    # A fresh connection right after is served.
    c2, _, _ = _client(m, "legit")
    sid = c2.connect("%s:%d" % (b.ip, ECHO_PORT))
    assert c2.response(sid)[0] == 200
    c2.send(sid, b"hello")
    assert c2.recv(sid, 5) == b"hello"
    c2.close()


def test_ping_flood_goaway_is_flushed_logged_and_counted(mesh):
    m, _ = mesh
    b = m.pod("n2p1")
    log_start = len(m.log(b).splitlines())
    c, a, _ = _client(m, "pinger")
    for i in range(20000):
        c.conn.ping(i.to_bytes(8, "big"))
    try:
        c.tls.sendall(c.conn.data_to_send())
    except OSError:
        pass
    code = _read_until_goaway(c)
    c.tls.close()
    assert code == ENHANCE_YOUR_CALM
    text = wait_for(lambda: (lambda t: t if _value(t, "zmesh_hbone_protocol_errors_total",
                                                    reason="flood") > 0 else None)(_metrics(b)))
    assert text and _value(text, "zmesh_hbone_protocol_errors_total", reason="flood") == 1
    lines = [l for l in _log_lines(m, b, log_start) if "HTTP/2 protocol error" in l]
    assert len(lines) == 1 and "reason=flood" in lines[0] and a.spiffe in lines[0]
    assert "peer.addr=%s:" % a.ip in lines[0]
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr


class PausedSink:
    """A listener inside the pod's netns whose connections are not read until resume(); then each is read to
    EOF and its byte count recorded."""

    def __init__(self, netns, port):
        from topo import netns_socket
        self.sock = netns_socket(netns)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", port))
        self.sock.listen(1024)
        self.go = threading.Event()
        self.counts = []
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        self.go.wait()
        n = 0
        try:
            while True:
                b = c.recv(1 << 18)
                if not b:
                    break
                n += len(b)
        except OSError:
            pass
        c.close()
        self.counts.append(n)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _push(clients, deadline):
    """Sends what each stream's window allows of its remaining bytes, ending a stream (END_STREAM) once all of
    it is sent, reading WINDOW_UPDATEs as they come. Returns when everything is sent, or at deadline."""
    import select
    import time
    chunk = b"\x5a" * (1 << 20)
    while any(x[2] > 0 for x in clients) and time.time() < deadline:
        pending = [x for x in clients if x[2] > 0]
        r, _, _ = select.select([x[0].tls for x in pending if not x[0].tls.pending()], [], [], 0.02)
        for x in pending:
            c, sid, _ = x
            if c.tls.pending() or c.tls in r:
                c._pump(time.time() + 0.001)
                c.tls.settimeout(c.timeout)  # _pump leaves its short read timeout on the socket
            while x[2] > 0:
                n = min(x[2], c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size, len(chunk))
                if n <= 0:
                    break
                c.conn.send_data(sid, chunk[:n], end_stream=(n == x[2]))
                x[2] -= n
            c._flush()


def test_memory_pinned_by_non_reading_app_is_bounded(mesh):
    """Peers push far more than the memory budget at an app that does not read: ztunnel's buffered bytes stay
    within the budget (plus the protocol's 64 KiB connection window per connection), and once the app reads,
    every byte arrives."""
    import time
    m, _ = mesh
    b = m.pod("n2p1")
    peers, each = 16, 16 << 20  # 256 MiB against the 128 MiB budget (and what kernel buffers hold)
    sink = PausedSink(b.netns, 8091)
    clients = []
    try:
        for i in range(peers):
            c, _, _ = _client(m, "pinner%d" % i)
            sid = c.connect("%s:8091" % b.ip)
            assert c.response(sid)[0] == 200
            clients.append([c, sid, each])
        _push(clients, time.time() + 3)
        text = _metrics(b)
        budget = _value(text, "zmesh_hbone_memory_budget_bytes")
        buffered = _value(text, "zmesh_hbone_buffered_bytes")
        reserved = _value(text, "zmesh_hbone_memory_reserved_bytes")
        assert budget > 0 and 0 < buffered <= budget + peers * 65535, (buffered, budget)
        assert reserved <= budget
        assert any(x[2] > 0 for x in clients), "everything was accepted: the budget did not hold"
        sink.go.set()
        _push(clients, time.time() + 60)
        assert all(x[2] == 0 for x in clients)
        assert wait_for(lambda: len(sink.counts) == peers, timeout=30)
        assert sorted(sink.counts) == [each] * peers
        assert _value(_metrics(b), "zmesh_hbone_buffered_bytes") == 0
    finally:
        for x in clients:
            x[0].close()
        sink.close()


def _pump_handshake(tls, inc, out, sock):
    import ssl
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            data = out.read()
            if data:
                sock.sendall(data)
            chunk = sock.recv(65536)
            assert chunk, "server closed during the handshake"
            inc.write(chunk)
    data = out.read()
    if data:
        sock.sendall(data)


def test_bad_tls_record_gets_bad_record_mac_alert(mesh):
    """A record whose AEAD tag is wrong, after the handshake and a good record: ztunnel (which opens records
    itself, src/tls/record.c) answers with a bad_record_mac alert and closes; a new connection works."""
    import ssl
    import time
    from hbone_peer import client_context
    m, _ = mesh
    a, b = m.pod("n1p1"), m.pod("n2p1")
    cert, key = m.topo.mint(a.spiffe, "badrecord")
    ca = os.path.join(m.topo.ca(), "root-cert.pem")
    sock = connect(a.netns, b.ip, 15008, mark=0x539)
    sock.settimeout(10)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(cert, key, ca).wrap_bio(inc, out, server_side=False)
    try:
        _pump_handshake(tls, inc, out, sock)
        settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        tls.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings)
        good = out.read()
        tls.write(settings)
        bad = bytearray(out.read())
        bad[-1] ^= 1  # the last byte of the tag
        sock.sendall(good + bytes(bad))
        err, deadline = None, time.monotonic() + 10
        while err is None and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                inc.write(chunk)
            else:
                inc.write_eof()
            try:
                while True:
                    tls.read(65536)  # the server's SETTINGS and ACK come first
            except ssl.SSLWantReadError:
                assert chunk, "connection closed without an alert"
            except ssl.SSLError as e:
                err = e
        assert err is not None and "BAD_RECORD_MAC" in (err.reason or "").upper(), err
    finally:
        sock.close()
    c, _, _ = _client(m, "afterbad")
    try:
        sid = c.connect("%s:%d" % (b.ip, ECHO_PORT))
        assert c.response(sid)[0] == 200
        c.send(sid, b"still fine")
        assert c.recv(sid, 10) == b"still fine"
    finally:
        c.close()
