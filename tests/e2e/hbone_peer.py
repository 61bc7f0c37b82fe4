#!/usr/bin/python3
"""An independent HBONE peer (Python ssl + h2; shares no code with zmesh) for the end-to-end tests.

As a library (client side, used by the tests in-process)::

    c = HboneClient(sock, cert, key, ca)        # sock: connected TCP socket; TLS 1.3 + ALPN h2, no SNI
    sid = c.request([(b":method", b"CONNECT"), (b":authority", b"10.0.2.2:8080")])
    status, headers = c.response(sid)
    c.send(sid, b"hi"); c.recv(sid) ...

As a program (server side, run inside a pod netns)::

    hbone_peer.py server --port 15008 --cert C --key K --ca ROOT --record FILE

accepts mutual-TLS 1.3 HTTP/2 connections, answers every CONNECT with 200 and echoes the stream's bytes
(END_STREAM is echoed too), anything else with 400, and appends one JSON line per request to FILE:
{"method", "authority", "scheme", "path", "headers": {name: value}, "tls_version", "alpn", "peer_uris",
"peer_addr"}. Prints "ready <port>" once listening.
"""
import argparse
import json
import socket
import ssl
import sys
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


class HboneError(Exception):
    pass


def _h2_config(client_side):
    return h2.config.H2Configuration(client_side=client_side, validate_outbound_headers=False,
                                     validate_inbound_headers=False, header_encoding=None)


def client_context(cert=None, key=None, ca=None):
    """TLS 1.3-only client context, ALPN h2, verifying the server chain against ca when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    if ca:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def server_context(cert, key, ca):
    """TLS 1.3-only server context, ALPN h2, client certificate required and verified against ca."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    return ctx


def peer_uris(tls_sock):
    """URI SANs of the verified peer certificate (empty if none)."""
    cert = tls_sock.getpeercert() or {}
    return [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]


class _Stream:
    def __init__(self):
        self.status = None
        self.headers = None
        self.data = bytearray()
        self.ended = False
        self.reset = None


class HboneClient:
    """A blocking HTTP/2-over-TLS client for CONNECT streams. Not thread-safe."""

    def __init__(self, sock, cert=None, key=None, ca=None, timeout=10.0):
        sock.settimeout(timeout)
        self.timeout = timeout
        self.tls = client_context(cert, key, ca).wrap_socket(sock, server_hostname=None)
        if self.tls.selected_alpn_protocol() != "h2":
            raise HboneError("ALPN: %r" % self.tls.selected_alpn_protocol())
        self.conn = h2.connection.H2Connection(config=_h2_config(True))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.increment_flow_control_window(16 << 20)
        self.streams = {}
        self.closed = None
        self._flush()

    def server_uris(self):
        return peer_uris(self.tls)

    def _flush(self):
        out = self.conn.data_to_send()
        if out:
            self.tls.sendall(out)

    def _pump(self, deadline):
        """Reads once from the socket and dispatches events; raises HboneError when the connection closed."""
        if self.closed:
            raise HboneError(self.closed)
        self.tls.settimeout(max(0.01, deadline - time.time()))
        try:
            b = self.tls.recv(1 << 16)
        except socket.timeout:
            return
        except (ssl.SSLError, OSError) as e:
            self.closed = "connection error: %s" % e
            raise HboneError(self.closed)
        if not b:
            self.closed = "connection closed by peer"
            raise HboneError(self.closed)
        for ev in self.conn.receive_data(b):
            st = self.streams.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived) and st:
                st.headers = [(bytes(k), bytes(v)) for k, v in ev.headers]
                st.status = int(dict(st.headers).get(b":status", b"0"))
            elif isinstance(ev, h2.events.DataReceived) and st:
                st.data += ev.data
                if ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and st:
                st.ended = True
            elif isinstance(ev, h2.events.StreamReset) and st:
                st.reset = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = "GOAWAY error %s" % ev.error_code
        self._flush()

    def request(self, headers, end_stream=False):
        """Sends a request with the given (name, value) header list; returns the stream id."""
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v)
                for k, v in headers]
        self.streams[sid] = _Stream()
        self.conn.send_headers(sid, hdrs, end_stream=end_stream)
        self._flush()
        return sid

    def connect(self, authority, headers=()):
        """Sends CONNECT authority (plus headers); returns the stream id."""
        return self.request([(b":method", b"CONNECT"), (b":authority", authority)] + list(headers))

    def response(self, sid, timeout=None):
        """Waits for the response headers; returns (status, headers). Raises HboneError if the stream was
        reset or the connection closed first."""
        deadline = time.time() + (timeout or self.timeout)
        st = self.streams[sid]
        while st.status is None:
            if st.reset is not None:
                raise HboneError("stream reset, error %s" % st.reset)
            if time.time() > deadline:
                raise HboneError("timeout waiting for response")
            self._pump(deadline)
        return st.status, st.headers

    def send(self, sid, data, end_stream=False):
        """Sends data on a stream, honouring flow control."""
        view = memoryview(data)
        deadline = time.time() + self.timeout
        while len(view):
            n = min(len(view), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if n <= 0:
                if time.time() > deadline:
                    raise HboneError("flow control stall")
                self._pump(deadline)
                continue
            self.conn.send_data(sid, view[:n].tobytes())
            view = view[n:]
            self._flush()
        if end_stream:
            self.conn.end_stream(sid)
            self._flush()

    def recv(self, sid, n=None, timeout=None):
        """Returns buffered stream data once at least n bytes (default: any) arrived or the stream ended; b""
        means the stream ended with nothing more."""
        deadline = time.time() + (timeout or self.timeout)
        st = self.streams[sid]
        want = n or 1
        while len(st.data) < want and not st.ended and st.reset is None:
            if time.time() > deadline:
                raise HboneError("timeout waiting for data")
            self._pump(deadline)
        out = bytes(st.data)
        st.data.clear()
        return out

    def close(self):
        try:
            self.conn.close_connection()
            self._flush()
        except Exception:
            pass
        try:
            self.tls.close()
        except OSError:
            pass


# ---- server ---------------------------------------------------------------------------------------------
class _ServerConn:
    def __init__(self, tls, addr, record):
        self.tls, self.addr, self.record = tls, addr, record
        self.conn = h2.connection.H2Connection(config=_h2_config(False))
        self.pending = {}       # stream id -> bytearray waiting for flow-control window
        self.end_after = set()  # streams to end once pending is flushed

    def flush(self):
        for sid in list(self.pending):
            buf = self.pending[sid]
            while buf:
                try:
                    n = min(len(buf), self.conn.local_flow_control_window(sid),
                            self.conn.max_outbound_frame_size)
                except h2.exceptions.StreamClosedError:
                    buf.clear()
                    break
                if n <= 0:
                    break
                self.conn.send_data(sid, bytes(buf[:n]))
                del buf[:n]
            if not buf:
                del self.pending[sid]
                if sid in self.end_after:
                    self.end_after.discard(sid)
                    try:
                        self.conn.end_stream(sid)
                    except h2.exceptions.StreamClosedError:
                        pass
        out = self.conn.data_to_send()
        if out:
            self.tls.sendall(out)

    def run(self):
        self.conn.initiate_connection()
        self.flush()
        while True:
            try:
                b = self.tls.recv(1 << 16)
            except (OSError, ssl.SSLError):
                return
            if not b:
                return
            try:
                events = self.conn.receive_data(b)
            except h2.exceptions.ProtocolError:
                self.flush()
                return
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    self.on_request(ev)
                elif isinstance(ev, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if ev.data:
                        self.pending.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                elif isinstance(ev, h2.events.StreamEnded):
                    self.end_after.add(ev.stream_id)
                    self.pending.setdefault(ev.stream_id, bytearray())
                elif isinstance(ev, h2.events.StreamReset):
                    self.pending.pop(ev.stream_id, None)
                    self.end_after.discard(ev.stream_id)
            self.flush()

    def on_request(self, ev):
        hdrs = [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in ev.headers]
        d = dict(hdrs)
        rec = {"method": d.get(":method"), "authority": d.get(":authority"), "scheme": d.get(":scheme"),
               "path": d.get(":path"), "headers": {k: v for k, v in hdrs if not k.startswith(":")},
               "pseudo": [k for k, _ in hdrs if k.startswith(":")],
               "tls_version": self.tls.version(), "alpn": self.tls.selected_alpn_protocol(),
               "peer_uris": peer_uris(self.tls), "peer_addr": "%s:%d" % self.addr[:2]}
        self.record(rec)
        status = b"200" if rec["method"] == "CONNECT" else b"400"
        self.conn.send_headers(ev.stream_id, [(b":status", status)], end_stream=(status != b"200"))


def serve(port, cert, key, ca, record_path):
    ctx = server_context(cert, key, ca)
    lock = threading.Lock()

    def record(rec):
        with lock, open(record_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(128)
    print("ready %d" % port, flush=True)

    def handle(s, addr):
        try:
            tls = ctx.wrap_socket(s, server_side=True)
        except (ssl.SSLError, OSError) as e:
            record({"handshake_error": str(e), "peer_addr": "%s:%d" % addr[:2]})
            s.close()
            return
        try:
            _ServerConn(tls, addr, record).run()
        finally:
            tls.close()

    while True:
        s, addr = ls.accept()
        threading.Thread(target=handle, args=(s, addr), daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["server"])
    ap.add_argument("--port", type=int, default=15008)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--record", required=True)
    a = ap.parse_args()
    try:
        serve(a.port, a.cert, a.key, a.ca, a.record)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
