"""The node agent (`zmesh-cni agent`) end to end, with this test as the container runtime and as ztunnel: a real
network namespace, Debian's loopback and bridge (host-local IPAM) plugins from /usr/lib/cni, then the real
zmesh-cni plugin chained after them, which reports the sandbox to the agent. ztunnel is played by a Python ZDS
peer that shares no code with zmesh (standard library SOCK_SEQPACKET sockets, SCM_RIGHTS, and protobuf stubs
generated at test time from proto/zds.proto). The enrolment source is the agent's --enrolment-file.

Checked (iptables and nftables backends): an ambient pod's ADD puts Istio's rules in its namespace
(iptables-save, nft list ruleset, ip rule) and hands ztunnel an Add whose netns fd is that namespace (same
inode), and the app's outbound TCP is then captured by a listener on 15001 with SO_ORIGINAL_DST the address it
dialled; un-enrolling (rewriting the file) sends Del and removes the rules (nothing captured
any more); CNI DEL forgets the pod; a restarted agent replays its state (ztunnel gets the Add again in the snapshot); with two
ztunnel connections an Add goes to the newest only and a Del to both; malformed plugin JSON is refused with
the reason; unknown flags are usage errors. Every namespace, bridge, process and file is removed, also on
failure."""
import array
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import topo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(REPO, "proto")
CNI_DIR = "/usr/lib/cni"
NET_NAME = "zmesh-agent-test"
POD_UID = "7d2c0f3e-0000-4000-8000-0000000000a1"


@pytest.fixture(scope="module")
def zds():
    """The zds_pb2 module, generated from proto/zds.proto."""
    out = tempfile.mkdtemp(prefix="zmesh-agent-stubs-")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + PROTO_DIR, "--python_out=" + out,
                    os.path.join(PROTO_DIR, "zds.proto")], check=True)
    sys.path.insert(0, out)
    try:
        import zds_pb2
    finally:
        sys.path.remove(out)
    yield zds_pb2
    shutil.rmtree(out, ignore_errors=True)


class Ztunnel:
    """A ZDS client: says ZdsHello V1, then records and acks every request (kind, uid, name, netns inode)."""

    def __init__(self, pb, path):
        self.pb = pb
        self.reqs = []
        self.cv = threading.Condition()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.sock.send(pb.ZdsHello(version=pb.V1).SerializeToString())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                data, anc, flags, _ = self.sock.recvmsg(1024, socket.CMSG_SPACE(4 * 4))
            except OSError:
                return
            if not data:
                with self.cv:
                    self.reqs.append(("eof", None, None, None))
                    self.cv.notify_all()
                return
            assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
            fds = array.array("i")
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds.frombytes(cdata[:len(cdata) - (len(cdata) % fds.itemsize)])
            ino = None
            for fd in fds:
                ino = os.fstat(fd).st_ino
                os.close(fd)
            req = self.pb.WorkloadRequest()
            req.ParseFromString(data)
            kind = req.WhichOneof("payload")
            if kind == "add":
                assert len(fds) == 1, "an Add carries exactly one fd"
                rec = ("add", req.add.uid, "%s/%s/%s" % (req.add.workload_info.namespace, req.add.workload_info.name,
                                                         req.add.workload_info.service_account), ino)
            else:
                assert len(fds) == 0, "%s carries no fd" % kind
                rec = (kind, getattr(req, kind).uid if kind in ("del", "keep") else None, None, None)
            with self.cv:
                self.reqs.append(rec)
                self.cv.notify_all()
            self.sock.send(self.pb.WorkloadResponse(ack=self.pb.Ack(error="")).SerializeToString())

    def wait(self, n, timeout=10):
        """Waits until n requests arrived; returns them."""
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.reqs) >= n, timeout), "ztunnel got %r, wanted %d" % (self.reqs, n)
            return list(self.reqs)

    def close(self):
        self.sock.close()
        self.thread.join(5)


def _plugin(path, command, conf, netns, container_id, ifname="eth0", args=None):
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": CNI_DIR + ":" + os.path.dirname(path),
    }
    if args is not None:
        env["CNI_ARGS"] = args
    p = subprocess.run([path], input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=20)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class AgentProc:
    """A running `zmesh-cni agent` with its own sockets, state directory and enrolment file."""

    def __init__(self, binary, d):
        self.binary = binary
        self.extra = []
        self.dir = d
        self.zds = os.path.join(d, "zt", "ztunnel.sock")
        self.plugin = os.path.join(d, "cni", "pluginevent.sock")
        self.state = os.path.join(d, "state")
        self.file = os.path.join(d, "pods.json")
        self.log = os.path.join(d, "agent.log")
        self.proc = None

    def enrol(self, pods):
        """Rewrites the enrolment file atomically (as a config management tool would)."""
        tmp = self.file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(pods, f)
        os.rename(tmp, self.file)

    def start(self):
        if os.path.exists(self.plugin):
            os.unlink(self.plugin)
        self.proc = subprocess.Popen(
            [self.binary, "agent", "--zds-socket", self.zds, "--plugin-socket", self.plugin, "--state-dir",
             self.state, "--enrolment-file", self.file, "--node-name", "node-1"] + self.extra,
            stdout=subprocess.DEVNULL, stderr=open(self.log, "a"), env=dict(os.environ, RUST_LOG="debug"))
        deadline = time.monotonic() + 10
        while not os.path.exists(self.plugin):
            assert self.proc.poll() is None, "agent exited: %s" % self.read_log()
            assert time.monotonic() < deadline, "agent did not listen: %s" % self.read_log()
            time.sleep(0.02)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            rc = self.proc.wait(10)
            assert rc == 0, "agent exited %d: %s" % (rc, self.read_log())
        self.proc = None

    def read_log(self):
        with open(self.log) as f:
            return f.read()

    def state_sandboxes(self):
        with open(os.path.join(self.state, "agent-state.json")) as f:
            return json.load(f)["sandboxes"]


@pytest.fixture
def cni_bin():
    path = os.path.join(topo.Topology.bin_dir(), "zmesh-cni")
    assert os.access(path, os.X_OK), "no zmesh-cni binary at %s (run make all)" % path
    for p in ("bridge", "host-local", "loopback"):
        assert os.access(os.path.join(CNI_DIR, p), os.X_OK), "no %s/%s (containernetworking-plugins)" % (CNI_DIR, p)
    return path


@pytest.fixture
def env(cni_bin):
    """A pod sandbox (network namespace, bridge config) and an agent (not started). All removed afterwards."""
    tag = "%d" % (os.getpid() % 100000)
    d = tempfile.mkdtemp(prefix="zmesh-agent-e2e-")
    sb = {"ns": "zmagt-%s" % tag, "bridge": "zmagtbr%s" % tag, "id": "cafe%s" % tag, "dir": d}
    sb["netns"] = "/var/run/netns/" + sb["ns"]
    sb["bridge_conf"] = {
        "cniVersion": "1.0.0", "name": NET_NAME, "type": "bridge", "bridge": sb["bridge"], "isGateway": False,
        "ipMasq": False,
        "ipam": {"type": "host-local", "subnet": "10.252.%d.0/24" % (os.getpid() % 250),
                 "dataDir": os.path.join(d, "ipam")},
    }
    sb["args"] = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=%s;" \
                 "K8S_POD_UID=%s" % (sb["id"], POD_UID)
    agent = AgentProc(cni_bin, d)
    agent.enrol([])
    subprocess.run(["ip", "netns", "add", sb["ns"]], check=True)
    peers = []
    try:
        yield sb, agent, peers
    finally:
        for p in peers:
            p.close()
        if agent.proc:
            agent.proc.kill()
            agent.proc.wait()
        _plugin(os.path.join(CNI_DIR, "bridge"), "DEL", sb["bridge_conf"], sb["netns"], sb["id"])
        subprocess.run(["ip", "netns", "del", sb["ns"]], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "link", "del", sb["bridge"]], stderr=subprocess.DEVNULL)
        shutil.rmtree(d, ignore_errors=True)


def _cni(cni_bin, sb, agent, command):
    """Runs loopback and bridge (ADD only), then zmesh-cni chained with the bridge's result, fail-closed so the
    agent's answer decides the exit status."""
    prev = None
    if command == "ADD":
        lo = {"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}
        rc, out, err = _plugin(os.path.join(CNI_DIR, "loopback"), "ADD", lo, sb["netns"], sb["id"], ifname="lo")
        assert rc == 0, "loopback ADD: %s %s" % (out, err)
        rc, out, err = _plugin(os.path.join(CNI_DIR, "bridge"), "ADD", sb["bridge_conf"], sb["netns"], sb["id"],
                               args=sb["args"])
        assert rc == 0, "bridge ADD: %s %s" % (out, err)
        prev = json.loads(out)
    conf = {"cniVersion": "1.0.0", "name": NET_NAME, "type": "zmesh-cni", "agent_socket": agent.plugin,
            "fail_open": False, "agent_timeout": "15s"}
    if prev is not None:
        conf["prevResult"] = prev
    return _plugin(cni_bin, command, conf, sb["netns"], sb["id"], args=sb["args"])


def _iptables_save(sb):
    return subprocess.run(["ip", "netns", "exec", sb["ns"], "iptables-save"], capture_output=True, text=True,
                          check=True).stdout


def _nft_ruleset(sb):
    return subprocess.run(["ip", "netns", "exec", sb["ns"], "nft", "list", "ruleset"], capture_output=True,
                          text=True, check=True).stdout


def _ip_rule(sb):
    return subprocess.run(["ip", "netns", "exec", sb["ns"], "ip", "-4", "rule", "show", "pref", "32764"],
                          capture_output=True, text=True, check=True).stdout


def _rules_in(sb, backend="iptables"):
    if "fwmark 0x111/0xfff lookup 100" not in _ip_rule(sb):
        return False
    if backend == "nftables":
        s = _nft_ruleset(sb)
        return "table inet istio-ambient-nat {" in s and "table inet istio-ambient-mangle {" in s and \
            "redirect to :15001" in s
    s = _iptables_save(sb)
    return s.count("-A PREROUTING -j ISTIO_PRERT") == 2 and \
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001" in s


def _no_rules(sb, backend="iptables"):
    if "lookup 100" in _ip_rule(sb):
        return False
    if backend == "nftables":
        return "istio-ambient" not in _nft_ruleset(sb)
    return "ISTIO" not in _iptables_save(sb)


# Run inside the pod's namespace: a listener on ztunnel's outbound port 15001, then a connection from the "app"
# to an address of the pod's subnet. With the rules, nat OUTPUT redirects it to the listener, whose
# SO_ORIGINAL_DST is the address the app dialled; without them it goes out of eth0 and nothing answers.
CAPTURE = r"""
import socket, struct, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 15001))
l.listen(1)
l.settimeout(2)
try:
    c = socket.create_connection((sys.argv[1], 80), timeout=2)
    a, _ = l.accept()
except OSError as e:
    print("not captured: %s" % e)
    sys.exit(0)
od = a.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
port, ip = struct.unpack("!2xH4s8x", od)
print("captured %s:%d" % (socket.inet_ntoa(ip), port))
"""


def _capture(sb, dst):
    p = subprocess.run(["ip", "netns", "exec", sb["ns"], "/usr/bin/python3", "-c", CAPTURE, dst],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def _eventually(cond, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


WEB = {"name": "web-0", "namespace": "shop", "service_account": "web", "ambient": True}


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_enrol_unenrol_and_del(cni_bin, zds, env, backend):
    sb, agent, peers = env
    if backend == "nftables":
        if not os.access("/usr/sbin/nft", os.X_OK):
            pytest.skip("no /usr/sbin/nft (Debian's nftables package is not installed)")
        agent.extra = ["--nftables"]
    agent.enrol([WEB])
    agent.start()
    zt = Ztunnel(zds, agent.zds)
    peers.append(zt)
    assert zt.wait(1) == [("snapshot_sent", None, None, None)]
    rc, out, err = _cni(cni_bin, sb, agent, "ADD")
    assert rc == 0, "zmesh-cni ADD: %s %s\n%s" % (out, err, agent.read_log())
    # The Add was acked before the plugin got its answer, and the rules were in before that.
    reqs = zt.wait(2)
    assert reqs[1] == ("add", POD_UID, "shop/web-0/web", os.stat(sb["netns"]).st_ino)
    assert _rules_in(sb, backend)
    # The rules capture the app's outbound TCP for ztunnel's port 15001.
    dst = sb["bridge_conf"]["ipam"]["subnet"].replace(".0/24", ".200")
    assert _capture(sb, dst) == "captured %s:80" % dst
    saved = agent.state_sandboxes()
    assert len(saved) == 1 and saved[0]["container_id"] == sb["id"] and saved[0]["state"] == "enrolled"
    assert saved[0]["ips"] and saved[0]["ips"][0].startswith("10.252.")
    # Un-enrol by rewriting the file: Del, rules removed, the sandbox still known.
    agent.enrol([dict(WEB, ambient=False)])
    reqs = zt.wait(3)
    assert reqs[2] == ("del", POD_UID, None, None)
    _eventually(lambda: _no_rules(sb, backend), "rules still in the namespace after un-enrolment")
    _eventually(lambda: agent.state_sandboxes()[0]["state"] == "pending", "state file not updated")
    assert _capture(sb, dst).startswith("not captured")
    # CNI DEL forgets the pod.
    rc, out, err = _cni(cni_bin, sb, agent, "DEL")
    assert rc == 0, "zmesh-cni DEL: %s %s" % (out, err)
    assert agent.state_sandboxes() == []
    assert len(zt.wait(3)) == 3  # not enrolled any more: no second Del
    agent.stop()


def test_restart_replays_state(cni_bin, zds, env):
    sb, agent, peers = env
    agent.enrol([WEB])
    agent.start()
    zt = Ztunnel(zds, agent.zds)
    peers.append(zt)
    zt.wait(1)
    rc, out, err = _cni(cni_bin, sb, agent, "ADD")
    assert rc == 0, "zmesh-cni ADD: %s %s" % (out, err)
    zt.wait(2)
    agent.stop()
    # The agent left the rules (ztunnel keeps serving the pod); its connection to ztunnel ended.
    assert _rules_in(sb)
    assert zt.wait(3)[2][0] == "eof"
    agent.start()
    zt2 = Ztunnel(zds, agent.zds)
    peers.append(zt2)
    reqs = zt2.wait(2)
    assert reqs[0] == ("add", POD_UID, "shop/web-0/web", os.stat(sb["netns"]).st_ino)
    assert reqs[1] == ("snapshot_sent", None, None, None)
    assert _rules_in(sb)
    agent.stop()


def test_two_ztunnels_add_to_newest_del_to_all(cni_bin, zds, env):
    sb, agent, peers = env
    agent.start()
    old = Ztunnel(zds, agent.zds)
    peers.append(old)
    old.wait(1)
    new = Ztunnel(zds, agent.zds)
    peers.append(new)
    new.wait(1)
    rc, out, err = _cni(cni_bin, sb, agent, "ADD")
    assert rc == 0, "zmesh-cni ADD: %s %s" % (out, err)
    assert _no_rules(sb)  # not enrolled yet
    agent.enrol([WEB])
    reqs = new.wait(2)
    assert reqs[1] == ("add", POD_UID, "shop/web-0/web", os.stat(sb["netns"]).st_ino)
    _eventually(lambda: _rules_in(sb), "rules not installed on enrolment")
    agent.enrol([])
    assert new.wait(3)[2] == ("del", POD_UID, None, None)
    assert old.wait(2)[1] == ("del", POD_UID, None, None)
    assert len(old.reqs) == 2  # the snapshot and the Del: never the Add
    _eventually(lambda: _no_rules(sb), "rules not removed on un-enrolment")
    agent.stop()


def test_malformed_plugin_message(cni_bin, env):
    sb, agent, peers = env
    agent.start()
    for msg, reason in [(b"{bad", "the message is not JSON"),
                        (b'{"version": 1, "event": "add"}', 'field \\"container_id\\": must be a string'),
                        (b'{"version": 7}', 'field \\"version\\": must be 1')]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(10)
        s.connect(agent.plugin)
        s.send(msg)
        ans = s.recv(65536)
        s.close()
        got = json.loads(ans)
        assert got["ok"] is False, ans
        assert reason.replace('\\"', '"') in got["error"], ans
    agent.stop()


def test_sighup_rereads_enrolment_file(cni_bin, zds, env):
    sb, agent, peers = env
    agent.start()
    zt = Ztunnel(zds, agent.zds)
    peers.append(zt)
    zt.wait(1)
    rc, out, err = _cni(cni_bin, sb, agent, "ADD")
    assert rc == 0, "zmesh-cni ADD: %s %s" % (out, err)
    loads = agent.read_log().count("enrolment file loaded")
    # The file is unchanged, so only the signal can cause this load.
    agent.proc.send_signal(signal.SIGHUP)
    _eventually(lambda: agent.read_log().count("enrolment file loaded") == loads + 1, "SIGHUP did not reload")
    assert agent.proc.poll() is None
    # A file that no longer parses keeps the previous enrolment, and says why.
    with open(agent.file, "w") as f:
        f.write("[{]")
    _eventually(lambda: "enrolment file not applied" in agent.read_log(), "bad file not reported")
    agent.enrol([WEB])
    assert zt.wait(2)[1] == ("add", POD_UID, "shop/web-0/web", os.stat(sb["netns"]).st_ino)
    agent.stop()


def test_bad_enrolment_file_and_flags(cni_bin, env):
    sb, agent, peers = env
    with open(agent.file, "w") as f:
        f.write('[{"name": "web-0", "namespace": "shop", "ambient": true}]')
    p = subprocess.run([cni_bin, "agent", "--zds-socket", agent.zds, "--plugin-socket", agent.plugin, "--state-dir",
                        agent.state, "--enrolment-file", agent.file], capture_output=True, text=True, timeout=20)
    assert p.returncode == 1
    assert 'entry 0: field "service_account": missing' in p.stderr
    p = subprocess.run([cni_bin, "agent", "--no-such-flag"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 2
    assert "unknown flag --no-such-flag" in p.stderr and "usage: zmesh-cni agent" in p.stderr
