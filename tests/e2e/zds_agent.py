"""A node agent's ZDS server in Python (istio-cni's side of istio/istio cni/pkg/nodeagent/ztunnelserver.go),
written with the standard library's SOCK_SEQPACKET sockets and SCM_RIGHTS and Python protobuf stubs generated
from proto/zds.proto: code zmesh did not write, to drive a shared-mode ztunnel in tests (test_shared.py) and
benchmarks (bench/). One request at a time, each waiting for its answer, as the agent does."""
import array
import os
import select
import socket
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_stubs = []


def stubs():
    """The zds_pb2 module, generated once per process from proto/zds.proto by grpc_tools' protoc."""
    if not _stubs:
        out = tempfile.mkdtemp(prefix="zmesh-zds-stubs-")
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + os.path.join(REPO, "proto"),
                        "--python_out=" + out, os.path.join(REPO, "proto", "zds.proto")], check=True)
        sys.path.insert(0, out)
        try:
            import zds_pb2
        finally:
            sys.path.remove(out)
        _stubs.append(zds_pb2)
    return _stubs[0]


class Conn:
    """One ztunnel's connection to the agent."""

    def __init__(self, pb, sock):
        self.pb, self.sock = pb, sock

    def recv(self, timeout=5.0):
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return None
        data, _, flags, _ = self.sock.recvmsg(1024)
        assert not flags & socket.MSG_TRUNC
        return data

    def hello(self):
        data = self.recv()
        assert data, "no ZdsHello"
        h = self.pb.ZdsHello()
        h.ParseFromString(data)
        assert h.version == self.pb.V1

    def request(self, req, fds=()):
        """Sends one WorkloadRequest and returns the answer's error text ("" for an ACK)."""
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        self.sock.sendmsg([req.SerializeToString()], anc)
        data = self.recv(timeout=10.0)
        assert data, "no answer from ztunnel"
        r = self.pb.WorkloadResponse()
        r.ParseFromString(data)
        return r.ack.error

    def add(self, pod):
        req = self.pb.WorkloadRequest()
        req.add.uid = pod.uid
        req.add.workload_info.name = pod.name
        req.add.workload_info.namespace = pod.namespace
        req.add.workload_info.service_account = pod.sa
        fd = os.open("/run/netns/" + pod.netns, os.O_RDONLY)
        try:
            return self.request(req, [fd])
        finally:
            os.close(fd)

    def delete(self, pod):
        req = self.pb.WorkloadRequest()
        getattr(req, "del").uid = pod.uid  # "del" is a Python keyword
        return self.request(req)

    def snapshot_sent(self):
        req = self.pb.WorkloadRequest()
        req.snapshot_sent.SetInParent()
        return self.request(req)

    def close(self):
        self.sock.close()


class Agent:
    """The node agent's ZDS listener for one node."""

    def __init__(self, pb, path):
        self.pb, self.path = pb, path
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.lsock.bind(path)
        self.lsock.listen(4)

    def flush(self):
        """Drops connections still in the backlog: a stopped ztunnel may have reconnected before it exited."""
        self.lsock.setblocking(False)
        try:
            while True:
                self.lsock.accept()[0].close()
        except BlockingIOError:
            pass

    def accept(self, timeout=10.0):
        self.lsock.settimeout(timeout)
        s, _ = self.lsock.accept()
        s.settimeout(None)
        c = Conn(self.pb, s)
        c.hello()
        return c

    def serve(self, pods, timeout=10.0):
        """Accepts a ztunnel and sends it the snapshot (an Add per pod, then SnapshotSent)."""
        c = self.accept(timeout)
        for p in pods:
            assert c.add(p) == ""
        assert c.snapshot_sent() == ""
        return c
