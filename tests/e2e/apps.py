#!/usr/bin/python3
"""Tiny application servers that run inside pod network namespaces for the end-to-end tests.

Usage: apps.py <kind> <port>      (prints "ready <port>" on stdout once listening)

kinds:
  echo     echoes every byte; on EOF from the client, shuts down its write side and closes
  whoami   sends "<peer ip>:<peer port>\n" and closes (what address the app sees)
  sink     reads until EOF, then replies "<sha256 hex> <length>\n" and closes
  eof      half-close check: reads until EOF, then replies "<sha256 hex> <length>\n" followed by
           1 MiB of a fixed pattern (pattern_bytes(1 << 20)), then closes
  http     HTTP/1.1: GET /bytes/<n> returns n pattern bytes; POST returns the request body's sha256; every
           response carries X-Client-Addr (the peer "ip:port") and X-Body-Sha256 (sha256 of the body sent)
  httpinfo HTTP/1.1 (apps.py httpinfo <port> <tag> [<log file>]): any method (each appended to the log file as
           "METHOD path host" when one is given); answers JSON {"tag", "method", "path",
           "headers" (lower-case names), "body_len", "body_sha256", "client"} (request bodies by Content-Length
           or chunked); /status/<code> answers that status; /fail-on/<tag>/<code>[/...] answers <code> when the
           server's tag is <tag>, else 200; /bytes/<n> streams n pattern bytes chunked
  upgrade  HTTP/1.1 Upgrade (apps.py upgrade <port>): answers a request carrying "Upgrade: <proto>" with
           "101 Switching Protocols" (echoing the Upgrade header), then echoes every byte (a WebSocket stand-in);
           a request without Upgrade gets 426
  h2info   h2c with prior knowledge (apps.py h2info <port> <tag>, python3-h2): every request stream is answered
           with the same JSON as httpinfo (headers, body length and sha256), status 200, and trailers
           "x-trailer: <tag>" and "grpc-status: 0" after the body; /bytes/<n> answers n pattern bytes
  l7app    apps.py l7app <port> <tag> <grpc port> [<log file>]: httpinfo on <port> (with its request log), plus any path ending /sleep/<ms> (answers the same JSON
           after sleeping ms milliseconds), any path with /sleep-on/<tag>/<ms>/ in it (the same, only on the server of that tag), any path ending /headers (JSON {"tag", "headers": [[name, value], ...]}, every field
           line in order, repeated names kept); and a python3-grpcio server on <grpc port> with raw-bytes methods
           /l7test.Echo/Unary (answers "<tag>:<request>" with metadata x-served-by: <tag>),
           /l7test.Echo/Stream (server streaming: "<tag>:<i>" for i in 0..n-1, n the request as a decimal) and
           /l7test.Echo/Missing (aborts with NOT_FOUND, details "no such thing on <tag>") and /l7test.Echo/Meta
           (answers JSON {"tag", "metadata": [[key, value], ...]}, the call's text metadata) and
           /l7test.Echo/UnavailableOn (aborts with UNAVAILABLE when the request is the server's tag, else
           answers "<tag>:ok"); each gRPC call is
           appended to the log file as "GRPC <method> <:authority> <request length> <request sha256>"
"""
import hashlib
import http.server
import json
import socket
import socketserver
import sys

def pattern_bytes(n):
    """n bytes of a fixed, non-repeating-at-small-scale pattern (shared with the tests)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"zmesh-%d" % i).digest() * 128
        i += 1
    return bytes(out[:n])


def read_to_eof(conn):
    h, n = hashlib.sha256(), 0
    while True:
        b = conn.recv(1 << 18)
        if not b:
            return h.hexdigest(), n
        h.update(b)
        n += len(b)


class Handler(socketserver.BaseRequestHandler):
    kind = None

    def handle(self):
        c = self.request
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.kind == "echo":
                while True:
                    b = c.recv(1 << 18)
                    if not b:
                        break
                    c.sendall(b)
                c.shutdown(socket.SHUT_WR)
            elif self.kind == "whoami":
                c.sendall(("%s:%d\n" % self.client_address[:2]).encode())
            elif self.kind == "sink":
                digest, n = read_to_eof(c)
                c.sendall(("%s %d\n" % (digest, n)).encode())
            elif self.kind == "eof":
                digest, n = read_to_eof(c)
                c.sendall(("%s %d\n" % (digest, n)).encode() + pattern_bytes(1 << 20))
        except OSError:
            pass


class HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Client-Addr", "%s:%d" % self.client_address[:2])
        self.send_header("X-Body-Sha256", hashlib.sha256(body).hexdigest())
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        n = int(parts[1]) if len(parts) == 2 and parts[0] == "bytes" else 0
        self._reply(pattern_bytes(n))

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self._reply((hashlib.sha256(body).hexdigest() + " %d\n" % len(body)).encode())


class InfoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    tag = ""
    log_file = None

    def log_message(self, *a):
        pass

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _any(self):
        body = self._body()
        if self.log_file:
            with open(self.log_file, "a") as f:
                f.write("%s %s %s\n" % (self.command, self.path, self.headers.get("Host", "")))
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 2 and parts[0] == "bytes":
            n = int(parts[1])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Served-By", self.tag)
            self.end_headers()
            data = pattern_bytes(n)
            for i in range(0, n, 65536):
                c = data[i:i + 65536]
                self.wfile.write(b"%x\r\n" % len(c) + c + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        status = int(parts[1]) if len(parts) == 2 and parts[0] == "status" else 200
        if len(parts) >= 3 and parts[0] == "fail-on" and parts[1] == self.tag:  # /fail-on/<tag>/<code>[/...]
            status = int(parts[2])
        info = {"tag": self.tag, "method": self.command, "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()}, "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(), "client": "%s:%d" % self.client_address[:2]}
        out = json.dumps(info).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Served-By", self.tag)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any


class SleepInfoHandler(InfoHandler):
    """httpinfo with /sleep/<ms>: answers after ms milliseconds (for route timeouts)."""

    def _any(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "sleep":
            import time
            time.sleep(int(parts[-1]) / 1000.0)
        elif "sleep-on" in parts[:-2] and parts[parts.index("sleep-on") + 1] == self.tag:  # .../sleep-on/<tag>/<ms>/...
            import time
            time.sleep(int(parts[parts.index("sleep-on") + 2]) / 1000.0)
        elif parts[-1] == "headers":
            self._body()
            out = json.dumps({"tag": self.tag, "headers": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.send_header("X-Served-By", self.tag)
            self.end_headers()
            self.wfile.write(out)
            return
        InfoHandler._any(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any


def grpc_log_calls(log_file):
    """Appends "GRPC <method> <:authority> <request length> <request sha256>" to log_file for each call, when its
    request message has arrived. grpcio's API gives a handler neither the call's :authority nor its host, so this
    wraps grpc._server._find_method_handler (python3-grpcio 1.51), which receives the core's call details
    (method and host, the :authority)."""
    import threading
    import grpc
    import grpc._server
    lock = threading.Lock()
    find = grpc._server._find_method_handler

    def logged(method, host, f):
        def call(req, ctx):
            with lock, open(log_file, "a") as out:
                out.write("GRPC %s %s %d %s\n" % (method, host or "-", len(req), hashlib.sha256(req).hexdigest()))
            return f(req, ctx)
        return call

    def find_logged(rpc_event, *rest):
        h = find(rpc_event, *rest)
        if h is None:
            return h
        d = rpc_event.call_details
        method, host = d.method.decode(errors="replace"), d.host.decode(errors="replace")
        if h.unary_unary:
            return h._replace(unary_unary=logged(method, host, h.unary_unary))
        if h.unary_stream:
            return h._replace(unary_stream=logged(method, host, h.unary_stream))
        return h
    grpc._server._find_method_handler = find_logged


def grpc_server(port, tag, log_file=None):
    """A python3-grpcio server with generic raw-bytes handlers (no generated code: the bytes are the message)."""
    from concurrent import futures
    import grpc
    if log_file:
        grpc_log_calls(log_file)

    def unary(req, ctx):
        ctx.send_initial_metadata((("x-served-by", tag),))
        return tag.encode() + b":" + req

    def stream(req, ctx):
        for i in range(int(req.decode())):
            yield ("%s:%d" % (tag, i)).encode()

    def missing(req, ctx):
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing on " + tag)

    def unavailable_on(req, ctx):
        if req.decode() == tag:
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "unavailable on " + tag)
        return tag.encode() + b":ok"

    def meta(req, ctx):
        return json.dumps({"tag": tag, "metadata": [[k, v] for k, v in ctx.invocation_metadata()
                                                     if isinstance(v, str)]}).encode()

    handler = grpc.method_handlers_generic_handler("l7test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "Meta": grpc.unary_unary_rpc_method_handler(meta),
        "UnavailableOn": grpc.unary_unary_rpc_method_handler(unavailable_on)})
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    srv.add_generic_rpc_handlers((handler,))
    srv.add_insecure_port("0.0.0.0:%d" % port)
    srv.start()
    return srv


class H2InfoHandler(socketserver.BaseRequestHandler):
    tag = ""

    def handle(self):
        import h2.config
        import h2.connection
        import h2.events
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False,
                                                                            header_encoding="utf-8"))
        conn.initiate_connection()
        sock = self.request
        sock.sendall(conn.data_to_send())
        reqs = {}
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    reqs[ev.stream_id] = {"headers": dict(ev.headers), "body": b""}
                elif isinstance(ev, h2.events.DataReceived):
                    reqs[ev.stream_id]["body"] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    r = reqs.pop(ev.stream_id)
                    path = r["headers"].get(":path", "")
                    parts = path.split("?")[0].strip("/").split("/")
                    if len(parts) == 2 and parts[0] == "bytes":
                        out = pattern_bytes(int(parts[1]))
                    else:
                        out = json.dumps({"tag": self.tag, "method": r["headers"].get(":method"), "path": path,
                                          "headers": {k: v for k, v in r["headers"].items()},
                                          "body_len": len(r["body"]),
                                          "body_sha256": hashlib.sha256(r["body"]).hexdigest(),
                                          "client": "%s:%d" % self.client_address[:2]}).encode()
                    conn.send_headers(ev.stream_id, [(":status", "200"), ("content-type", "application/json"),
                                                     ("x-served-by", self.tag)])
                    self._send(conn, sock, ev.stream_id, out)
                    conn.send_headers(ev.stream_id, [("x-trailer", self.tag), ("grpc-status", "0")],
                                      end_stream=True)
            sock.sendall(conn.data_to_send())

    def _send(self, conn, sock, sid, out):
        import h2.events
        view = memoryview(out)
        while len(view):
            n = min(len(view), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if n <= 0:
                sock.sendall(conn.data_to_send())
                for ev in conn.receive_data(sock.recv(65536)):
                    if isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                continue
            conn.send_data(sid, view[:n].tobytes())
            view = view[n:]
        sock.sendall(conn.data_to_send())


class UpgradeHandler(socketserver.BaseRequestHandler):
    def handle(self):
        c = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            b = c.recv(4096)
            if not b:
                return
            head += b
        head, _, rest = head.partition(b"\r\n\r\n")
        hdrs = {}
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            hdrs[k.strip().lower()] = v.strip()
        if b"upgrade" not in hdrs:
            c.sendall(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n")
            return
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: " + hdrs[b"upgrade"] +
                  b"\r\nconnection: upgrade\r\n\r\n" + rest)
        while True:
            b = c.recv(65536)
            if not b:
                break
            c.sendall(b)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256


def main():
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "http":
        srv = http.server.ThreadingHTTPServer(("0.0.0.0", port), HttpHandler)
    elif kind == "upgrade":
        srv = Server(("0.0.0.0", port), UpgradeHandler)
    elif kind == "h2info":
        H2InfoHandler.tag = sys.argv[3] if len(sys.argv) > 3 else ""
        srv = Server(("0.0.0.0", port), H2InfoHandler)
    elif kind == "l7app":
        SleepInfoHandler.tag = sys.argv[3]
        SleepInfoHandler.log_file = sys.argv[5] if len(sys.argv) > 5 else None
        SleepInfoHandler.grpc = grpc_server(int(sys.argv[4]), sys.argv[3], SleepInfoHandler.log_file)  # held for the process's life
        srv = http.server.ThreadingHTTPServer(("0.0.0.0", port), SleepInfoHandler)
    elif kind == "httpinfo":
        InfoHandler.tag = sys.argv[3] if len(sys.argv) > 3 else ""
        InfoHandler.log_file = sys.argv[4] if len(sys.argv) > 4 else None
        srv = http.server.ThreadingHTTPServer(("0.0.0.0", port), InfoHandler)
    elif kind in ("echo", "whoami", "sink", "eof"):
        Handler.kind = kind
        srv = Server(("0.0.0.0", port), Handler)
    else:
        sys.exit("unknown kind " + kind)
    print("ready %d" % port, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
