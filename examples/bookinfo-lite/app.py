#!/usr/bin/python3
"""bookinfo-lite: the sample application of `zmesh up` (docs/local-cluster.md), Python standard library only.

    app.py catalog|ratings|... PORT a backend: GET / answers JSON naming itself, its pod and $VERSION (and
                                    503 when the query has fail=$VERSION)
    app.py frontend PORT            GET / calls $CATALOG_URL and $RATINGS_URL and answers with both
    app.py client URL [SECONDS]     GETs URL every SECONDS (default 3) and prints one line per answer

With $ECHO_PORT set, a backend also runs a TCP echo server on that port (every byte comes back, a connection
lasts as long as its client keeps it): the long-lived connection of the demo's rollout step.

Every answer says which pod served it (HOSTNAME, set by zmesh up as by a kubelet) and which address called it,
so a log shows the path a request took."""
import json
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

POD = os.environ.get("HOSTNAME", socket.gethostname())
VERSION = os.environ.get("VERSION", "v1")   # the pod's version label, so that a route's split can be counted
BOOKS = [{"id": 1, "title": "The C Programming Language"}, {"id": 2, "title": "Unix Network Programming"}]
RATINGS = {"1": 5, "2": 4}


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return json.loads(r.read())
    except Exception as e:  # the page says what failed instead of failing whole
        return {"error": "%s: %s" % (url, e)}


class Handler(BaseHTTPRequestHandler):
    role = "?"
    # The status line and headers go out in one write, the body in another: TCP_NODELAY keeps Nagle's algorithm
    # from holding the body back until the peer's (possibly delayed) ACK, so per-request latency stays low.
    disable_nagle_algorithm = True

    def do_GET(self):
        body = {"service": self.role, "pod": POD, "version": VERSION, "caller": self.client_address[0],
                "path": self.path}
        # ?fail=<version>: the pods of that version answer 503 (the demo's failing endpoint for retries).
        if VERSION in urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("fail", []):
            data = (json.dumps({"error": "failing on purpose", "pod": POD}) + "\n").encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if self.role == "catalog":
            body["books"] = BOOKS
        elif self.role == "ratings":
            body["ratings"] = RATINGS
        elif self.role == "frontend":
            body["catalog"] = fetch(os.environ["CATALOG_URL"])
            body["ratings"] = fetch(os.environ["RATINGS_URL"])
        data = (json.dumps(body) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s %s\n" % (time.strftime("%H:%M:%S"), self.address_string(), fmt % args))
        sys.stdout.flush()


def client(url, every):
    while True:
        page = fetch(url)
        if "error" in page:
            print("%s error %s" % (time.strftime("%H:%M:%S"), page["error"]), flush=True)
        else:
            print("%s frontend=%s catalog=%s ratings=%s" % (
                time.strftime("%H:%M:%S"), page.get("pod"), page.get("catalog", {}).get("pod"),
                page.get("ratings", {}).get("pod")), flush=True)
        time.sleep(every)


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


def echo_server(port):
    srv = socketserver.ThreadingTCPServer(("0.0.0.0", port), Echo)
    srv.daemon_threads = True
    print("%s echo listening on :%d" % (POD, port), flush=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def main():
    role = sys.argv[1]
    if role == "client":
        client(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 3.0)
        return
    Handler.role = role
    if os.environ.get("ECHO_PORT"):
        echo_server(int(os.environ["ECHO_PORT"]))
    srv = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), Handler)
    print("%s %s listening on :%s" % (POD, role, sys.argv[2]), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
