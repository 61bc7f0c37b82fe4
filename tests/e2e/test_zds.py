"""ZDS conformance with code zmesh did not write: Python plays the node agent (istio-cni's side of
istio/istio cni/pkg/nodeagent/ztunnelserver.go) with the standard library's SOCK_SEQPACKET sockets and
socket.sendmsg/SCM_RIGHTS, and messages from Python protobuf stubs generated at test time from proto/zds.proto by
grpc_tools' protoc. Against it runs build/tests/zds_peer (tests/e2e/zds_peer.c): zmesh's ZDS client
(src/ztunnel/zds.c) with an owner that prints each callback. Checked: ZdsHello V1 first; snapshot acks in order;
the netns inode the owner is given is that of the fd sent; Add idempotent by inode, replaced by a new netns
(`ip netns add`); Del; NACK "failure to start proxy : ..." and the retry; asynchronous answers still in order;
protocol errors answered, the connection closed and re-made; nothing sent unsolicited."""
import array
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(REPO, "proto")


@pytest.fixture(scope="module")
def zds():
    """The zds_pb2 module, generated from proto/zds.proto."""
    out = tempfile.mkdtemp(prefix="zmesh-zds-stubs-")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + PROTO_DIR, "--python_out=" + out,
                    os.path.join(PROTO_DIR, "zds.proto")], check=True)
    sys.path.insert(0, out)
    try:
        import zds_pb2
    finally:
        sys.path.remove(out)
    return zds_pb2


@pytest.fixture(scope="module")
def peer_bin():
    """build/tests/zds_peer beside $ZMESH_BIN; the test fails, not skips, without it."""
    bindir = os.environ.get("ZMESH_BIN") or os.path.join(REPO, "build", "bin")
    path = os.path.join(os.path.dirname(os.path.abspath(bindir)), "tests", "zds_peer")
    assert os.access(path, os.X_OK), "no %s: run make all" % path
    return path


class Agent:
    """The node agent's end: a SOCK_SEQPACKET listener, one accepted connection at a time, and the peer process
    whose stdout lines are collected by a thread."""

    def __init__(self, pb, peer_bin, args=()):
        self.pb = pb
        self.dir = tempfile.mkdtemp(prefix="zmesh-zds-")
        self.path = os.path.join(self.dir, "ztunnel.sock")
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.lsock.bind(self.path)
        self.lsock.listen(4)
        self.conn = None
        self.lines = []
        self.cv = threading.Condition()
        self.proc = subprocess.Popen([peer_bin, self.path] + list(args), stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(self.dir, "peer.log"), "w"), text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                self.cv.notify_all()

    def close(self):
        self.proc.kill()
        self.proc.wait()
        if self.conn:
            self.conn.close()
        self.lsock.close()

    def log(self):
        with open(os.path.join(self.dir, "peer.log")) as f:
            return f.read()

    def accept(self, timeout=2.0):
        if self.conn:
            self.conn.close()
        self.lsock.settimeout(timeout)
        self.conn, _ = self.lsock.accept()
        self.conn.settimeout(None)
        return self.conn

    def recv(self, timeout=2.0):
        """One packet (b"" at EOF), or None when nothing arrives within timeout."""
        r, _, _ = select.select([self.conn], [], [], timeout)
        if not r:
            return None
        data, _, flags, _ = self.conn.recvmsg(1024)
        assert not flags & socket.MSG_TRUNC, "ztunnel sent more than 1024 bytes"
        return data

    def hello(self):
        data = self.recv()
        assert data, "no ZdsHello"
        h = self.pb.ZdsHello()
        h.ParseFromString(data)
        assert h.version == self.pb.V1

    def send(self, req, fds=()):
        data = req.SerializeToString() if not isinstance(req, bytes) else req
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        self.conn.sendmsg([data], anc)

    def ack(self, timeout=2.0):
        """The next answer's error text ("" for an ACK)."""
        data = self.recv(timeout)
        assert data is not None, "no answer within %ss" % timeout
        assert data != b"", "EOF instead of an answer"
        r = self.pb.WorkloadResponse()
        r.ParseFromString(data)
        assert r.WhichOneof("payload") == "ack"
        return r.ack.error

    def nothing(self, timeout=0.3):
        """The node agent's liveness read: ztunnel sends nothing it was not asked."""
        assert self.recv(timeout) is None, "unsolicited message from ztunnel"

    def wait_line(self, pred, timeout=3.0):
        deadline = time.time() + timeout
        with self.cv:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError("no matching line; peer printed %r" % self.lines)
                self.cv.wait(left)

    def adds(self):
        with self.cv:
            return [line for line in self.lines if line.startswith("add ")]

    # requests
    def add(self, uid, fd, name="pod", ns="default", sa="sa"):
        r = self.pb.WorkloadRequest()
        r.add.uid = uid
        r.add.workload_info.name = name
        r.add.workload_info.namespace = ns
        r.add.workload_info.service_account = sa
        self.send(r, [fd])

    def keep(self, uid):
        r = self.pb.WorkloadRequest()
        r.keep.uid = uid
        self.send(r)

    def snapshot_sent(self):
        r = self.pb.WorkloadRequest()
        r.snapshot_sent.SetInParent()
        self.send(r)


def del_request(pb, uid):
    """WorkloadRequest{del: {uid}}: `del` is a Python keyword, so the field is reached by name."""
    r = pb.WorkloadRequest()
    getattr(r, "del").uid = uid
    return r


@pytest.fixture
def netns():
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    yield fd
    os.close(fd)


@pytest.fixture
def agent_factory(zds, peer_bin):
    made = []

    def make(*args):
        a = Agent(zds, peer_bin, args)
        made.append(a)
        a.accept()
        a.hello()
        return a
    yield make
    for a in made:
        a.close()


def test_snapshot_acked_in_order(agent_factory, netns, zds):
    a = agent_factory()
    a.add("uid-a", netns, name="web", ns="shop", sa="web-sa")
    a.keep("uid-b")
    a.snapshot_sent()
    assert [a.ack(), a.ack(), a.ack()] == ["", "", ""]
    ino = os.fstat(netns).st_ino
    a.wait_line(lambda l: l == "add uid-a ns=shop name=web sa=web-sa ino=%d replace=0 retry=0" % ino)
    a.wait_line(lambda l: l == "keep uid-b")
    a.wait_line(lambda l: l == "snapshot")
    a.wait_line(lambda l: l == "ready 1")
    a.nothing()


def test_add_idempotent_replace_and_del(agent_factory, netns, zds):
    name = "zmzds%d" % (os.getpid() % 100000)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        other = os.open("/run/netns/" + name, os.O_RDONLY)
        try:
            a = agent_factory()
            a.add("uid-a", netns)
            assert a.ack() == ""
            again = os.open("/proc/self/ns/net", os.O_RDONLY)
            a.add("uid-a", again)
            os.close(again)
            assert a.ack() == ""
            a.nothing(0.1)
            assert len(a.adds()) == 1, "an Add for the same netns inode asked the owner again"
            a.add("uid-a", other)
            assert a.ack() == ""
            ino = os.fstat(other).st_ino
            a.wait_line(lambda l: l.startswith("add uid-a ") and l.endswith("ino=%d replace=1 retry=0" % ino))
            a.send(del_request(zds, "uid-a"))
            assert a.ack() == ""
            a.wait_line(lambda l: l == "del uid-a")
            a.nothing()
        finally:
            os.close(other)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_nack_then_retry(agent_factory, netns, zds):
    a = agent_factory("--retry-ms", "150", "--fail", "uid-a:2:address already in use")
    a.snapshot_sent()
    assert a.ack() == ""
    a.add("uid-a", netns)
    assert a.ack() == "failure to start proxy : address already in use"
    a.wait_line(lambda l: l == "ready 0")
    t0 = time.time()
    a.wait_line(lambda l: l == "ready 1", timeout=3)
    assert time.time() - t0 >= 0.25  # two retries, 150 ms apart
    assert [l.split()[-1] for l in a.adds()] == ["retry=0", "retry=1", "retry=1"]
    a.nothing()  # retries answer no one


def test_async_answers_stay_in_order(agent_factory, netns, zds):
    a = agent_factory("--delay-ms", "150")
    t0 = time.time()
    a.add("uid-a", netns)
    a.send(del_request(zds, "uid-a"))
    a.snapshot_sent()
    assert a.ack() == ""
    assert time.time() - t0 >= 0.14
    assert a.ack() == ""
    assert a.ack() == ""
    assert time.time() - t0 >= 0.44  # each request waited for the previous answer
    a.nothing()


def bad_packets(pb, netns):
    """(name, send function, NACK text) for each protocol error."""
    def add_bytes():
        r = pb.WorkloadRequest()
        r.add.uid = "uid-x"
        r.add.workload_info.name = "x"
        return r.SerializeToString()
    snap = pb.WorkloadRequest()
    snap.snapshot_sent.SetInParent()
    return [
        ("oversized", lambda a: a.send(b"\x00" * 2000), "failure to read message : received truncated message"),
        ("no fd", lambda a: a.send(add_bytes()),
         "failure to read message : Add without a netns fd (no control message)"),
        ("two fds", lambda a: a.send(add_bytes(), [netns, netns]), "failure to read message : expected 1 fd, got 2"),
        ("twelve fds", lambda a: a.send(add_bytes(), [netns] * 12),
         "failure to read message : received truncated control message"),
        ("no payload", lambda a: a.send(b"\x48\x01"), "failure to read message : no payload"),
        ("fd on Del", lambda a: a.send(del_request(pb, "uid-x"), [netns]),
         "failure to read message : unexpected control message on Del"),
        ("fd on SnapshotSent", lambda a: a.send(snap, [netns]),
         "failure to read message : unexpected control message on SnapshotSent"),
        ("garbage", lambda a: a.send(b"\x0a\xff\xff"),
         "failure to read message : cannot decode WorkloadRequest (Bad message)"),
    ]


def test_protocol_errors_reset_the_connection(agent_factory, netns, zds):
    a = agent_factory("--backoff-max-ms", "40")
    a.add("uid-kept", netns)
    assert a.ack() == ""
    for name, send, nack in bad_packets(zds, netns):
        t0 = time.time()  # the reset comes after this
        send(a)
        assert a.ack() == nack, name
        assert a.recv() == b"", "%s: the connection stays open" % name
        a.accept()
        assert time.time() - t0 >= 0.019, "%s: reconnected without backoff (20 ms, then 40)" % name
        a.hello()
    # Keep after the snapshot and a second SnapshotSent end the connection too. (Each snapshot keeps uid-kept.)
    a.keep("uid-kept")
    a.snapshot_sent()
    assert [a.ack(), a.ack()] == ["", ""]
    a.keep("uid-kept")
    assert a.ack() == "failure to process message : pod keep received after snapshot"
    assert a.recv() == b""
    a.accept()
    a.hello()
    a.keep("uid-kept")
    a.snapshot_sent()
    assert [a.ack(), a.ack()] == ["", ""]
    a.snapshot_sent()
    assert a.ack() == "failure to process message : pod snapshot received already"
    assert a.recv() == b""
    # The pod served all along was never dropped: re-adding it needs no new proxy.
    a.accept()
    a.hello()
    a.add("uid-kept", netns)
    assert a.ack() == ""
    a.nothing(0.1)
    assert len(a.adds()) == 1
    with a.cv:
        assert [l for l in a.lines if l.startswith("snapshot")] == ["snapshot", "snapshot"]
    assert "protocol error from the node agent" in a.log()


def test_reconnects_after_agent_restart(agent_factory, netns, zds):
    a = agent_factory()
    a.add("uid-a", netns)
    a.add("uid-b", netns)
    a.snapshot_sent()
    assert [a.ack(), a.ack(), a.ack()] == ["", "", ""]
    a.conn.close()
    a.conn = None
    a.accept()
    a.hello()
    a.keep("uid-a")
    a.snapshot_sent()
    assert [a.ack(), a.ack()] == ["", ""]
    a.wait_line(lambda l: l == "snapshot uid-b")
    a.nothing()
