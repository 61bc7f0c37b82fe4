"""zmesh's gRPC layer (src/h2/grpc.c) against peers it did not write: grpcio (Debian python3-grpcio) as client and
server, and a raw HTTP/2 client (python3-h2) for requests no gRPC library would send.

The service is tests/grpc/echo.proto. Python stubs are generated at test time with grpc_tools' own protoc
(python3-grpc-tools); the C side is build/tests/grpc_peer (tests/e2e/grpc_peer.c), which runs as a server
(printing "end PATH STATUS MESSAGE" per finished call) or makes one call as a client (printing "reply ..."
lines and "status NAME MESSAGE").

Facts checked: grpc/grpc doc/PROTOCOL-HTTP2.md (headers, framing, Trailers-Only, grpc-timeout, percent-encoded
grpc-message, -bin metadata) and doc/statuscodes.md (which status each failure gets)."""
import concurrent.futures
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO = os.path.join(REPO, "tests", "grpc", "echo.proto")

grpc = pytest.importorskip("grpc")


# ---- fixtures -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def peer_bin():
    bindir = os.environ.get("ZMESH_BIN") or os.path.join(REPO, "build", "bin")
    path = os.path.join(os.path.dirname(os.path.abspath(bindir)), "tests", "grpc_peer")
    assert os.access(path, os.X_OK), "no %s: run make all" % path
    return path


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """(echo_pb2, echo_pb2_grpc) generated from tests/grpc/echo.proto by grpc_tools' protoc."""
    out = str(tmp_path_factory.mktemp("stubs"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + os.path.dirname(PROTO),
                    "--python_out=" + out, "--grpc_python_out=" + out, PROTO], check=True)
    sys.path.insert(0, out)
    try:
        import echo_pb2
        import echo_pb2_grpc
    finally:
        sys.path.remove(out)
    return echo_pb2, echo_pb2_grpc


def _sh(args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A root CA and a server certificate for DNS:localhost and IP:127.0.0.1 (EC P-256, openssl CLI)."""
    d = str(tmp_path_factory.mktemp("certs"))
    p = lambda n: os.path.join(d, n)  # noqa: E731
    with open(p("ca.cnf"), "w") as f:
        f.write("[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nO=zmesh-grpc-test\n"
                "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
    _sh(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p("ca-key.pem")])
    _sh(["openssl", "req", "-x509", "-new", "-config", p("ca.cnf"), "-extensions", "v3_ca", "-key", p("ca-key.pem"),
         "-sha256", "-days", "30", "-out", p("ca.pem")])
    _sh(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p("key.pem")])
    _sh(["openssl", "req", "-new", "-key", p("key.pem"), "-subj", "/O=zmesh-grpc-test/CN=localhost",
         "-out", p("csr.pem")])
    with open(p("ext.cnf"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _sh(["openssl", "x509", "-req", "-in", p("csr.pem"), "-CA", p("ca.pem"), "-CAkey", p("ca-key.pem"),
         "-set_serial", "7", "-days", "30", "-sha256", "-extfile", p("ext.cnf"), "-out", p("cert.pem")])
    return {"ca": p("ca.pem"), "cert": p("cert.pem"), "key": p("key.pem")}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ZServer:
    """build/tests/grpc_peer as a server; .ends collects its "end PATH STATUS MESSAGE" lines."""

    def __init__(self, peer_bin, args=()):
        self.port = free_port()
        self.proc = subprocess.Popen([peer_bin, "server", str(self.port)] + list(args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "listening", "grpc_peer server did not start: %r %s" % (
            line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ends = []

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, prefix, timeout=5.0):
        """The next line starting with prefix (lines before it are kept in .ends)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
            self.ends.append(line)
        raise AssertionError("no %r line (seen %r)" % (prefix, self.ends))

    def wait_end(self, path, timeout=5.0):
        """The next "end" line for path, as (status, message)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            self.ends.append(line)
            parts = line.split(" ", 3)
            if parts[0] == "end" and parts[1] == path:
                return parts[2], parts[3] if len(parts) > 3 else ""
        raise AssertionError("no end line for %s (seen %r)" % (path, self.ends))

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def zserver(peer_bin):
    s = ZServer(peer_bin)
    yield s
    s.stop()


ECHO = "/zmesh.test.Echo/Echo"
CHAT = "/zmesh.test.Echo/Chat"


# ---- grpcio client -> zmesh server ----------------------------------------------------------------------------

def test_unary_metadata_trailers(zserver, pb):
    """A unary call: the reply, the request metadata as the handler saw it (authorization, clusterid, a -bin value
    decoded from base64, grpcio's user-agent), and trailing metadata (ASCII and -bin) as grpcio reads it."""
    echo_pb2, echo_grpc = pb
    with grpc.insecure_channel("127.0.0.1:%d" % zserver.port) as ch:
        stub = echo_grpc.EchoStub(ch)
        reply, call = stub.Echo.with_call(
            echo_pb2.EchoRequest(text="hello"), timeout=5,
            metadata=[("authorization", "Bearer tok.en"), ("clusterid", "Kubernetes"),
                      ("x-data-bin", b"\x00\x01\xfe\xff")])
    assert reply.text == "hello"
    md = list(reply.metadata)
    assert "authorization=Bearer tok.en" in md
    assert "clusterid=Kubernetes" in md
    assert "x-data-bin=0001feff" in md
    assert any(m.startswith("user-agent=grpc-python") for m in md), md
    assert any(m.startswith("timeout_ms=") for m in md), md
    # Nothing the layer consumes reaches the handler.
    assert not any(m.split("=")[0] in ("content-type", "te", "grpc-timeout") for m in md), md
    assert call.code() == grpc.StatusCode.OK
    tr = dict(call.trailing_metadata())
    assert tr["x-trailer"] == "done"
    assert tr["x-trailer-bin"] == b"\x00\x01\x02\xff"
    assert zserver.wait_end(ECHO) == ("OK", "")


def test_unary_tls(peer_bin, pb, certs):
    """The same call over TLS with a real certificate chain (ALPN h2), verified by grpcio."""
    echo_pb2, echo_grpc = pb
    s = ZServer(peer_bin, ["--tls", certs["cert"], certs["key"]])
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=open(certs["ca"], "rb").read())
        with grpc.secure_channel("localhost:%d" % s.port, creds) as ch:
            reply = echo_grpc.EchoStub(ch).Echo(echo_pb2.EchoRequest(text="over tls"), timeout=5)
        assert reply.text == "over tls"
        assert s.wait_end(ECHO) == ("OK", "")
    finally:
        s.stop()


def test_bidi_streaming_and_pushes(zserver, pb):
    """Bidirectional streaming: each request is answered in order, and a request for 50 pushes gets 50 messages
    sent later from the server's timers (asynchronously, as xDS pushes are)."""
    echo_pb2, echo_grpc = pb
    with grpc.insecure_channel("127.0.0.1:%d" % zserver.port) as ch:
        stub = echo_grpc.EchoStub(ch)
        reqs = [echo_pb2.EchoRequest(text="m%d" % i) for i in range(20)]
        replies = list(stub.Chat(iter(reqs), timeout=10))
        assert [r.text for r in replies] == ["m%d" % i for i in range(20)]
        assert [r.seq for r in replies] == list(range(20))
        assert zserver.wait_end(CHAT) == ("OK", "")

        # Interactive: one request, read its answer, then ask for pushes.
        q = queue.Queue()

        def gen():
            while True:
                item = q.get()
                if item is None:
                    return
                yield item
        it = stub.Chat(gen(), timeout=10)
        q.put(echo_pb2.EchoRequest(text="first"))
        assert next(it).text == "first"
        q.put(echo_pb2.EchoRequest(push=50))
        pushes = [next(it) for _ in range(50)]
        assert [p.text for p in pushes] == ["push %d" % i for i in range(1, 51)]
        q.put(None)
        # The handler finishes only when the client half-closes with no pushes left.
        assert list(it) == []
        assert zserver.wait_end(CHAT) == ("OK", "")


def test_unknown_method_unimplemented(zserver):
    """An unregistered method or service: UNIMPLEMENTED (Trailers-Only), with grpc-go's wording."""
    with grpc.insecure_channel("127.0.0.1:%d" % zserver.port) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            ch.unary_unary("/zmesh.test.Echo/Nope")(b"", timeout=5)
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert ei.value.details() == "unknown method Nope for service zmesh.test.Echo"
        with pytest.raises(grpc.RpcError) as ei:
            ch.unary_unary("/other.Service/Echo")(b"", timeout=5)
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert ei.value.details() == "unknown service other.Service"


def test_handler_status_and_message(zserver, pb):
    """A handler's status and message reach grpcio exactly, UTF-8 and '%' included (percent-encoding)."""
    echo_pb2, echo_grpc = pb
    msg = "no such workload: caf\u00e9 100% \u2713"
    with grpc.insecure_channel("127.0.0.1:%d" % zserver.port) as ch:
        stub = echo_grpc.EchoStub(ch)
        with pytest.raises(grpc.RpcError) as ei:
            stub.Echo(echo_pb2.EchoRequest(fail_code=5, fail_message=msg), timeout=5)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        assert ei.value.details() == msg
        # The same from inside a stream.
        with pytest.raises(grpc.RpcError) as ei:
            list(stub.Chat(iter([echo_pb2.EchoRequest(text="a"),
                                 echo_pb2.EchoRequest(fail_code=16, fail_message="bad token")]), timeout=5))
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert ei.value.details() == "bad token"


def test_max_message_resource_exhausted(peer_bin, pb):
    """A request over the server's limit: RESOURCE_EXHAUSTED with grpc's message; one at the limit passes."""
    echo_pb2, echo_grpc = pb
    s = ZServer(peer_bin, ["--max-recv", "1024"])
    try:
        with grpc.insecure_channel("127.0.0.1:%d" % s.port) as ch:
            stub = echo_grpc.EchoStub(ch)
            with pytest.raises(grpc.RpcError) as ei:
                stub.Echo(echo_pb2.EchoRequest(payload=b"x" * 2000), timeout=5)
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "received message larger than max (2003 vs. 1024)" in ei.value.details()
            ok = echo_pb2.EchoRequest(payload=b"y" * 1000)
            assert ok.ByteSize() <= 1024
            assert stub.Echo(ok, timeout=5).payload == b"y" * 1000
    finally:
        s.stop()


def test_deadline_exceeded(zserver, pb):
    """grpcio's deadline (grpc-timeout) passes before the handler answers: the client gets DEADLINE_EXCEEDED and
    the handler hears DEADLINE_EXCEEDED too (not a bare cancel)."""
    echo_pb2, echo_grpc = pb
    with grpc.insecure_channel("127.0.0.1:%d" % zserver.port) as ch:
        stub = echo_grpc.EchoStub(ch)
        t0 = time.time()
        with pytest.raises(grpc.RpcError) as ei:
            stub.Echo(echo_pb2.EchoRequest(text="slow", delay_ms=3000), timeout=0.3)
        assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.time() - t0 < 2
    assert zserver.wait_end(ECHO)[0] == "DEADLINE_EXCEEDED"


# ---- raw HTTP/2 -> zmesh server: requests grpcio would not send ---------------------------------------------

h2 = pytest.importorskip("h2")
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402


class RawH2:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        self.sock.sendall(self.conn.data_to_send())

    def request(self, headers, body=None, end=True):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    def events(self, sid, timeout=5.0):
        """Reads until sid ends; returns (response headers, trailers, reset code or None)."""
        resp, trailers, reset = None, None, None
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.time()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            for ev in self.conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    resp = dict((k.decode(), v.decode()) for k, v in ev.headers)
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                    trailers = dict((k.decode(), v.decode()) for k, v in ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    reset = ev.error_code
                    self.flush()
                    return resp, trailers, reset
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    self.flush()
                    return resp, trailers, reset
            self.flush()
        return resp, trailers, reset

    def close(self):
        self.sock.close()


def grpc_headers(path=ECHO, **over):
    h = {":method": "POST", ":scheme": "http", ":path": path, ":authority": "test",
         "content-type": "application/grpc", "te": "trailers"}
    h.update(over)
    return [(k, v) for k, v in h.items() if v is not None]


def frame(msg, flag=0):
    return bytes([flag]) + len(msg).to_bytes(4, "big") + msg


@pytest.mark.parametrize("over,http,status,msg", [
    ({":method": "GET"}, "405", "13", "should be POST"),
    ({"content-type": "text/plain"}, "415", "13", "content-type"),
    ({"content-type": None}, "415", "13", "content-type"),
    ({"content-type": "application/grpc+json"}, "200", "13", "content-subtype json"),
    ({"te": None}, "400", "13", "te: trailers"),
    ({"grpc-timeout": "1x"}, "400", "13", "malformed grpc-timeout"),
    ({"grpc-timeout": "123456789S"}, "400", "13", "malformed grpc-timeout"),
])
def test_bad_request_headers(zserver, over, http, status, msg):
    """Each malformed request gets a Trailers-Only answer (one HEADERS with END_STREAM) with the HTTP status
    PROTOCOL-HTTP2.md or grpc-go gives it and grpc-status INTERNAL; the handler never runs."""
    c = RawH2(zserver.port)
    try:
        sid = c.request(grpc_headers(**over), body=frame(b""))
        resp, trailers, reset = c.events(sid)
        assert resp is not None and trailers is None, (resp, trailers, reset)
        assert resp[":status"] == http
        assert resp["grpc-status"] == status
        assert msg in resp["grpc-message"].replace("%22", '"')
        assert resp["content-type"] == "application/grpc"
    finally:
        c.close()


def test_compressed_flag_without_encoding(zserver):
    """A message with the compressed flag and no grpc-encoding: INTERNAL with grpc-go's message."""
    c = RawH2(zserver.port)
    try:
        sid = c.request(grpc_headers(), body=frame(b"\x0a\x01x", flag=1))
        resp, trailers, reset = c.events(sid)
        st = trailers or resp
        assert st["grpc-status"] == "13"
        assert "compressed flag set with identity or empty encoding" in st["grpc-message"]
        # With grpc-encoding: gzip, the same message is a compression zmesh does not support: UNIMPLEMENTED.
        sid = c.request(grpc_headers(**{"grpc-encoding": "gzip"}), body=frame(b"\x0a\x01x", flag=1))
        resp, trailers, reset = c.events(sid)
        assert (trailers or resp)["grpc-status"] == "12"
    finally:
        c.close()


def test_unary_cardinality(zserver):
    """A unary method given two requests, or none: UNIMPLEMENTED (doc/statuscodes.md)."""
    c = RawH2(zserver.port)
    try:
        sid = c.request(grpc_headers(), body=frame(b"") + frame(b""))
        resp, trailers, reset = c.events(sid)
        assert (trailers or resp)["grpc-status"] == "12"
        sid = c.request(grpc_headers(), body=b"")
        resp, trailers, reset = c.events(sid)
        assert (trailers or resp)["grpc-status"] == "12"
        # A message cut short by END_STREAM: INTERNAL.
        sid = c.request(grpc_headers(), body=frame(b"abcdef")[:7])
        resp, trailers, reset = c.events(sid)
        assert (trailers or resp)["grpc-status"] == "13"
    finally:
        c.close()


def test_server_enforces_grpc_timeout(zserver):
    """A client that sends grpc-timeout but never cancels: the server resets the stream with CANCEL when the
    deadline passes (PROTOCOL-HTTP2.md "Client Cancellation") and the handler hears DEADLINE_EXCEEDED."""
    c = RawH2(zserver.port)
    try:
        t0 = time.time()
        sid = c.request(grpc_headers(path=CHAT, **{"grpc-timeout": "200m"}), body=frame(b""), end=False)
        resp, trailers, reset = c.events(sid, timeout=5)
        elapsed = time.time() - t0
        assert reset == 8, (resp, trailers, reset)
        assert 0.15 < elapsed < 2, elapsed
        assert zserver.wait_end(CHAT)[0] == "DEADLINE_EXCEEDED"
    finally:
        c.close()


def test_send_backpressure(zserver, pb):
    """A client that stops reading: the server's handler, pushing 256 messages of 16 000 bytes, is told "not
    now" (-EAGAIN) once about 1 MiB is queued, instead of queueing 4 MiB; when the client reads again the handler is
    told it may send (on_writable) and every message arrives, in order."""
    echo_pb2, _ = pb
    c = RawH2(zserver.port)
    try:
        req = echo_pb2.EchoRequest(push=256, payload=b"p" * 16000)
        sid = c.request(grpc_headers(path=CHAT), body=frame(req.SerializeToString()), end=False)
        blocked = zserver.wait_line("blocked ")
        queued = int(blocked.split()[1])
        assert 0 < queued <= (1 << 20) + 16000 + 64, blocked
        # Read everything now, crediting the window as the bytes arrive; half-close after the last message.
        buf, msgs, trailers, closed = b"", [], None, False
        deadline = time.time() + 10
        while trailers is None and time.time() < deadline:
            data = c.sock.recv(1 << 20)
            assert data, "connection closed"
            for ev in c.conn.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    c.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    buf += ev.data
                    while len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[1:5], "big"):
                        n = int.from_bytes(buf[1:5], "big")
                        msgs.append(echo_pb2.EchoReply.FromString(buf[5:5 + n]))
                        buf = buf[5 + n:]
                elif isinstance(ev, h2.events.TrailersReceived):
                    trailers = dict((k.decode(), v.decode()) for k, v in ev.headers)
            if len(msgs) == 256 and not closed:
                c.conn.end_stream(sid)
                closed = True
            c.flush()
        assert [m.text for m in msgs] == ["push %d" % i for i in range(256)]
        assert all(len(m.payload) == 16000 for m in msgs)
        assert trailers and trailers["grpc-status"] == "0", trailers
        assert zserver.wait_line("writable ")
        assert zserver.wait_end(CHAT) == ("OK", "")
    finally:
        c.close()


# ---- zmesh client -> grpcio server ----------------------------------------------------------------------------

class Servicer:
    def __init__(self, pb2):
        self.pb2 = pb2
        self.seen = queue.Queue()

    def Echo(self, request, context):
        md = dict(context.invocation_metadata())
        self.seen.put((md, context.time_remaining()))
        if request.text == "abort":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied: caf\u00e9 100%")
        if request.text == "sleep":
            time.sleep(2)
        if request.text == "trailers":
            context.set_trailing_metadata([("x-server", "yes"), ("x-server-bin", b"\x00\xff")])
        if request.text == "big":
            return self.pb2.EchoReply(text="big", payload=b"z" * 100000)
        return self.pb2.EchoReply(text=request.text, metadata=["%s=%s" % kv for kv in sorted(md.items())
                                                               if isinstance(kv[1], str)])

    def Chat(self, request_iterator, context):
        for i, r in enumerate(request_iterator):
            yield self.pb2.EchoReply(text=r.text.upper(), seq=i)


@pytest.fixture
def gserver(pb, certs):
    """A grpcio server for the Echo service on a plain and a TLS port: (servicer, plain port, tls port)."""
    echo_pb2, echo_grpc = pb
    srv = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    svc = Servicer(echo_pb2)
    echo_grpc.add_EchoServicer_to_server(svc, srv)
    plain = srv.add_insecure_port("127.0.0.1:0")
    creds = grpc.ssl_server_credentials([(open(certs["key"], "rb").read(), open(certs["cert"], "rb").read())])
    tls = srv.add_secure_port("127.0.0.1:0", creds)
    srv.start()
    yield svc, plain, tls
    srv.stop(0)


def zclient(peer_bin, port, kind, *args, timeout=15):
    r = subprocess.run([peer_bin, "client", "127.0.0.1:%d" % port, kind] + list(args), capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines and lines[-1].startswith("status "), r.stdout + r.stderr
    return lines[:-1], lines[-1].split(" ", 2)[1], lines[-1].split(" ", 2)[2] if lines[-1].count(" ") > 1 else ""


def test_client_unary_metadata(peer_bin, gserver):
    """zmesh's unary call: the reply, and the request headers grpcio saw (authorization, clusterid, zmesh's
    user-agent; grpcio exposes no grpc-timeout as metadata, but its time_remaining comes from it)."""
    svc, plain, _ = gserver
    lines, st, msg = zclient(peer_bin, plain, "unary", "--text", "hello", "--md", "authorization=Bearer abc",
                             "--md", "clusterid=Kubernetes", "--timeout-ms", "5000")
    assert st == "OK", (lines, msg)
    assert lines[0].startswith("reply 0 hello")
    md, remaining = svc.seen.get(timeout=1)
    assert md["authorization"] == "Bearer abc"
    assert md["clusterid"] == "Kubernetes"
    assert md["user-agent"].startswith("grpc-c-zmesh/")
    assert 3 < remaining <= 5
    # Trailing metadata grpcio sets reaches the zmesh client, -bin values decoded.
    lines, st, msg = zclient(peer_bin, plain, "unary", "--text", "trailers")
    assert st == "OK", (lines, msg)
    assert "trailer x-server=yes" in lines
    assert "trailer x-server-bin=00ff" in lines


def test_client_tls(peer_bin, gserver, certs):
    """The same over TLS: the zmesh client verifies grpcio's certificate chain and its DNS name."""
    svc, _, tls = gserver
    lines, st, msg = zclient(peer_bin, tls, "unary", "--tls", certs["ca"], "localhost", "--text", "secure")
    assert st == "OK", (lines, msg)
    assert lines[0].startswith("reply 0 secure")
    # A name the certificate does not carry: the handshake fails closed, UNAVAILABLE.
    lines, st, msg = zclient(peer_bin, tls, "unary", "--tls", certs["ca"], "other.example", "--text", "x")
    assert st == "UNAVAILABLE", (lines, msg)


def test_client_bidi_streaming(peer_bin, gserver):
    svc, plain, _ = gserver
    lines, st, msg = zclient(peer_bin, plain, "chat", "--text", "a", "--text", "b", "--text", "c")
    assert st == "OK", (lines, msg)
    assert [l.split(" ")[1:3] for l in lines] == [["0", "A"], ["1", "B"], ["2", "C"]]


def test_client_status_from_abort(peer_bin, gserver):
    """context.abort's status and message, UTF-8 included."""
    svc, plain, _ = gserver
    lines, st, msg = zclient(peer_bin, plain, "unary", "--text", "abort")
    assert st == "PERMISSION_DENIED"
    assert msg == "denied: caf\u00e9 100%"
    assert lines == []


def test_client_deadline(peer_bin, gserver):
    """The server sleeps past zmesh's deadline: DEADLINE_EXCEEDED, on time."""
    svc, plain, _ = gserver
    t0 = time.time()
    lines, st, msg = zclient(peer_bin, plain, "unary", "--text", "sleep", "--timeout-ms", "300")
    assert st == "DEADLINE_EXCEEDED", (lines, msg)
    assert time.time() - t0 < 1.8
    md, remaining = svc.seen.get(timeout=1)
    assert remaining <= 0.3


def test_client_max_recv(peer_bin, gserver):
    """A response over the client's limit: RESOURCE_EXHAUSTED."""
    svc, plain, _ = gserver
    lines, st, msg = zclient(peer_bin, plain, "unary", "--text", "big", "--max-recv", "1024")
    assert st == "RESOURCE_EXHAUSTED", (lines, msg)
    assert "received message larger than max" in msg


def test_client_unavailable(peer_bin):
    """Nobody listens: UNAVAILABLE."""
    lines, st, msg = zclient(peer_bin, free_port(), "unary", "--text", "x")
    assert st == "UNAVAILABLE", (lines, msg)


def test_client_request_headers_and_cancel(peer_bin):
    """What the zmesh client puts on the wire, read by a python3-h2 server: the request headers in the order
    PROTOCOL-HTTP2.md gives (pseudo-headers, grpc-timeout, content-type, te, user-agent, grpc-accept-encoding
    identity, then custom metadata,
    a -bin value in unpadded base64), one length-prefixed message, and at the deadline RST_STREAM CANCEL."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    port = ls.getsockname()[1]
    proc = subprocess.Popen([peer_bin, "client", "127.0.0.1:%d" % port, "unary", "--text", "hi", "--timeout-ms",
                             "300", "--md", "authorization=Bearer t", "--md", "x-b-bin=\x01"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ls.settimeout(5)
        s, _ = ls.accept()
        s.settimeout(5)
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        headers, body, reset, ended = None, b"", None, False
        deadline = time.time() + 5
        while reset is None and time.time() < deadline:
            data = s.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    headers = [(k.decode(), v.decode()) for k, v in ev.headers]
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended = True
                elif isinstance(ev, h2.events.StreamReset):
                    reset = ev.error_code
            s.sendall(conn.data_to_send())
        names = [k for k, _ in headers]
        assert names[:4] == [":method", ":scheme", ":path", ":authority"], names
        assert names[4:9] == ["grpc-timeout", "content-type", "te", "user-agent", "grpc-accept-encoding"], names
        h = dict(headers)
        assert h[":method"] == "POST" and h[":scheme"] == "http" and h[":path"] == ECHO
        assert h[":authority"] == "127.0.0.1:%d" % port
        assert h["grpc-timeout"] == "300000u", h   # 300 ms: the finest unit that fits 8 digits
        assert h["content-type"] == "application/grpc" and h["te"] == "trailers"
        assert h["grpc-accept-encoding"] == "identity"
        assert h["authorization"] == "Bearer t"
        assert h["x-b-bin"] == "AQ"                 # base64 of 0x01, unpadded
        assert ended, "the unary request was not ended with END_STREAM"
        assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
        assert reset == 8, reset                    # CANCEL at the deadline
        out, err = proc.communicate(timeout=5)
        assert out.strip().splitlines()[-1].startswith("status DEADLINE_EXCEEDED"), out + err
        s.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        ls.close()
