#!/usr/bin/python3
"""Tiny workloads and clients for the zmesh demo, run inside pod network namespaces.

Servers (run until killed):
  apps.py http PORT NAME      HTTP server that answers every GET with JSON saying who called it
  apps.py echo PORT           TCP echo server: sends back every byte, half-closes after the client does

Clients (print one JSON object on stdout, exit 0 on success):
  apps.py get HOST PORT PATH  one HTTP GET; prints status, body and the client's own address
  apps.py send HOST PORT BYTES [MARKER]
                              streams BYTES bytes to an echo server while reading them back; prints sha256
                              of what went out and what came back. With MARKER, the payload repeats MARKER.

Only the standard library is used so the script runs with any Python 3 in any namespace.
"""
import hashlib
import http.client
import http.server
import json
import os
import socket
import socketserver
import sys
import threading
import time


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "demo-http/1"
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (stdlib naming)
        local = self.connection.getsockname()
        body = json.dumps({
            "server": self.server.app_name,
            "server_addr": "%s:%d" % (local[0], local[1]),
            "client_addr": "%s:%d" % self.client_address[:2],
            "path": self.path,
        }).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        # One short line per request on stderr; the demo keeps these in its workdir.
        sys.stderr.write("http %s %s\n" % (self.client_address[0], fmt % args))


class _ThreadingHTTP(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        total = 0
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(data)
            total += len(data)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sys.stderr.write("echo %s:%d %d bytes\n" % (self.client_address[0], self.client_address[1], total))


class _ThreadingTCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve_http(port, name):
    srv = _ThreadingHTTP(("0.0.0.0", port), _Handler)
    srv.app_name = name
    srv.serve_forever()


def serve_echo(port):
    _ThreadingTCP(("0.0.0.0", port), _EchoHandler).serve_forever()


def _connect(host, port, deadline_s=5.0):
    # The server may still be starting in its own namespace: retry refused connections briefly.
    end = time.monotonic() + deadline_s
    while True:
        try:
            return socket.create_connection((host, port), timeout=10)
        except (ConnectionRefusedError, ConnectionResetError):
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def client_get(host, port, path):
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.sock = _connect(host, port)
    local = conn.sock.getsockname()
    conn.request("GET", path, headers={"User-Agent": "demo-client/1"})
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace")
    conn.close()
    print(json.dumps({"status": resp.status, "body": body, "local_addr": "%s:%d" % local[:2],
                      "ms": round((time.monotonic() - t0) * 1000, 1)}))
    return 0 if resp.status == 200 else 1


def _payload(nbytes, marker):
    if marker:
        unit = (marker + "\n").encode()
    else:
        # Deterministic but not trivially compressible bytes.
        unit = hashlib.sha256(b"zmesh-demo").digest() * 2048
    reps = nbytes // len(unit) + 1
    return (unit * reps)[:nbytes]


def client_send(host, port, nbytes, marker):
    data = _payload(nbytes, marker)
    t0 = time.monotonic()
    sock = _connect(host, port)
    local = sock.getsockname()
    err = []

    def writer():
        try:
            view = memoryview(data)
            for off in range(0, len(view), 65536):
                sock.sendall(view[off:off + 65536])
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            err.append(str(e))

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    h = hashlib.sha256()
    got = 0
    while True:
        chunk = sock.recv(262144)
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
    th.join(10)
    sock.close()
    secs = time.monotonic() - t0
    sent_sha = hashlib.sha256(data).hexdigest()
    out = {"sent": len(data), "recv": got, "sha_sent": sent_sha, "sha_recv": h.hexdigest(),
           "local_addr": "%s:%d" % local[:2], "ms": round(secs * 1000, 1), "error": err[0] if err else None}
    print(json.dumps(out))
    return 0 if (got == len(data) and out["sha_recv"] == sent_sha and not err) else 1


def main(argv):
    if len(argv) < 2:
        sys.stderr.write(__doc__)
        return 2
    cmd = argv[1]
    try:
        if cmd == "http":
            serve_http(int(argv[2]), argv[3])
        elif cmd == "echo":
            serve_echo(int(argv[2]))
        elif cmd == "get":
            return client_get(argv[2], int(argv[3]), argv[4] if len(argv) > 4 else "/")
        elif cmd == "send":
            return client_send(argv[2], int(argv[3]), int(argv[4]), argv[5] if len(argv) > 5 else None)
        else:
            sys.stderr.write("unknown command %r\n" % cmd)
            return 2
    except (OSError, http.client.HTTPException) as e:
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:
        os._exit(130)
