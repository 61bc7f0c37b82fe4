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
"""
import hashlib
import http.server
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


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256


def main():
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "http":
        srv = http.server.ThreadingHTTPServer(("0.0.0.0", port), HttpHandler)
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
