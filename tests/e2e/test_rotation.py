"""Certificate rotation: each ztunnel renews its leaf at half-life (SECRET_TTL sets the lifetime), new
connections take the new certificate, open tunnels keep flowing past the old leaf's expiry, and /config_dump
shows the current certificate as Available (or Unavailable with the reason, readiness pending, when no
certificate can be had).

Pods n1p1 (client), n2p1 and n2p2 (echo servers) are meshed. n2p2 is first used after the original
certificates expired, so that connection needs fresh handshakes on both ztunnels with rotated certificates
(tunnels to n2p1 may reuse the pooled HBONE connection made at start).

Two clocks:
- real time with SECRET_TTL=10s (leaves valid from 1 minute before minting to 10 s after; renewed about
  5 s after they arrive);
- the default 24 h lifetime over a simulated 48 h with libfaketime. Not FAKETIME="+0 x3600": libfaketime
  starts that clock at each process's own start, so two ztunnels started 0.1 s apart disagree by 6 minutes
  (more than the 1-minute backdating), and with a speed factor it also divides every epoll_wait timeout by
  it, which turns each timer into a busy loop. Instead both ztunnels follow one file's modification time
  (FAKETIME="%" + FAKETIME_FOLLOW_FILE) that the test advances at SPEED x real time; their monotonic clocks
  stay real (FAKETIME_DONT_FAKE_MONOTONIC=1)."""
import datetime
import json
import os
import socket
import threading
import time

import pytest
from cryptography import x509

from helpers import Mesh, connect, echo_ok, http_request, recv_exact, wait_for
from hbone_peer import HboneClient

ECHO = 8080
TTL_S = 10
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
SPEED = 14400                 # simulated seconds per real second: 48 h in 12 s
SIMULATED_S = 48 * 3600
CERT_S = 24 * 3600            # the default SECRET_TTL


def _mesh(env):
    m = Mesh(nodes=2, pods=2, meshed=["n1p1", "n2p1", "n2p2"], env=env)
    return m


def _start_apps(m):
    m.app(m.pod("n2p1"), "echo", ECHO)
    m.app(m.pod("n2p2"), "echo", ECHO)


def _certs(pod):
    status, _, body = http_request(pod.netns, "127.0.0.1", 15000, "/config_dump")
    assert status == 200, body[:300]
    return [c for c in json.loads(body)["certificates"] if c["identity"] == pod.spiffe]


def _dump_leaf(pod):
    """(serial, validFrom, expirationTime) of pod's certificate in /config_dump; asserts it is Available."""
    certs = _certs(pod)
    assert len(certs) == 1, certs
    c = certs[0]
    assert c["state"] == "Available", c
    leaf = c["certChain"][0]
    return int(leaf["serialNumber"]), _t(leaf["validFrom"]), _t(leaf["expirationTime"])


def _t(s):
    t = datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


def _served_leaf(m, dst, verify=True):
    """The leaf dst's ztunnel presents on 15008 to a fresh TLS client (Python ssl, a client certificate of
    n1p1's identity), as an x509.Certificate. With verify, the handshake checks the chain against the root at
    the real current time."""
    src = m.pod("n1p1")
    if not hasattr(m, "rotation_client"):
        m.rotation_client = m.topo.mint(src.spiffe, "rotation-client", days=30)
    cert, key = m.rotation_client
    s = connect(src.netns, dst.ip, 15008, mark=0x539)
    c = HboneClient(s, cert, key, os.path.join(m.topo.ca(), "root-cert.pem") if verify else None, timeout=10)
    try:
        return x509.load_der_x509_certificate(c.tls.getpeercert(binary_form=True))
    finally:
        c.tls.close()


def _after(leaf):
    """not_valid_after as a Unix time (cryptography 38 gives naive UTC datetimes)."""
    return leaf.not_valid_after.replace(tzinfo=datetime.timezone.utc).timestamp()


def _before(leaf):
    return leaf.not_valid_before.replace(tzinfo=datetime.timezone.utc).timestamp()


def _echo_on(s, data):
    s.sendall(data)
    return recv_exact(s, len(data)) == data


def test_rotation_real_time(ztunnel_bin):
    m = _mesh({"SECRET_TTL": "%ds" % TTL_S})
    try:
        m.up()
        _start_apps(m)
        cli, srv, fresh = m.pod("n1p1"), m.pod("n2p1"), m.pod("n2p2")
        # A tunnel opened right away, before the first renewal (due TTL_S / 2 after start).
        t1 = connect(cli.netns, srv.ip, ECHO)
        assert _echo_on(t1, b"before renewal")
        first = _served_leaf(m, srv)
        s0, exp0 = first.serial_number, _after(first)
        assert exp0 - time.time() <= TTL_S + 1, "leaf ignores SECRET_TTL: %s" % first.not_valid_after
        dumped = _dump_leaf(srv)
        assert dumped[0] == s0 and dumped[2] == exp0, (dumped, s0, exp0)
        cli_s0, _, cli_exp0 = _dump_leaf(cli)

        # The served serial changes before the first leaf expires.
        changed = {}

        def rotated():
            leaf = _served_leaf(m, srv)
            if leaf.serial_number != s0:
                changed["at"], changed["leaf"] = time.time(), leaf
                return True
            return False
        assert wait_for(rotated, timeout=TTL_S + 5, interval=0.3), "served serial never changed"
        assert changed["at"] < exp0, "rotated only after the old leaf expired"
        assert _dump_leaf(srv)[0] != s0, "/config_dump still shows the first certificate"

        # Past the old leaves' expiry (both sides'): the early tunnel still flows.
        while time.time() < max(exp0, cli_exp0) + 1.5:
            time.sleep(0.2)
        assert _echo_on(t1, b"after expiry of the old leaf")
        # New tunnels work: through the pool, and over fresh handshakes with rotated certificates.
        assert echo_ok(cli, srv)
        assert echo_ok(cli, fresh), "a new HBONE connection after the old leaves expired failed"
        leaf = _served_leaf(m, srv)   # verified against the root at the current time
        assert leaf.serial_number != s0 and _after(leaf) > time.time()
        assert _dump_leaf(cli)[0] != cli_s0, "the client ztunnel did not rotate"
        t1.shutdown(socket.SHUT_WR)
        t1.close()
        for pod in (cli, srv):
            rotations = [l for l in m.log_json(pod) if l.get("message") == "certificate rotated"]
            assert rotations, "no 'certificate rotated' log line for %s" % pod.name
    finally:
        m.down()


def _faketime_env(binary, clock_path):
    """The environment that puts a ztunnel on the shared fake clock. An ASan build (make asan) wants its
    runtime first among the libraries, but preloading libasan together with libfaketime hangs the `ip netns
    exec` that starts ztunnel; ASan's link-order check is switched off instead (its interceptors still
    win: libfaketime defines no allocator)."""
    import subprocess
    env = {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": "%", "FAKETIME_FOLLOW_FILE": clock_path,
           "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_NO_CACHE": "1"}
    if "/libasan.so" in subprocess.run(["ldd", binary], capture_output=True, text=True).stdout:
        opts = [o for o in (os.environ.get("ASAN_OPTIONS"), "verify_asan_link_order=0") if o]
        env["ASAN_OPTIONS"] = ":".join(opts)
    return env


class FakeClock:
    """Drives FAKETIME_FOLLOW_FILE: the file's mtime is the fake wall clock of every process following it.
    It starts `lead` seconds ahead of the real clock and stands still until start(), so that the root CA and
    the test's client certificates, minted by the openssl CLI on the real clock while the ztunnels start,
    are already valid on the fake one."""

    def __init__(self, path, speed, lead=120):
        self.path, self.speed = path, speed
        self.t0, self.m0 = time.time() + lead, time.monotonic()
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)
        self._running, self.last = False, self.t0
        open(path, "w").close()
        self.tick()

    def now(self):
        """The fake time: t0 until start(), then advancing; after stop(), the last value written."""
        if self._running:
            return self.t0 + (time.monotonic() - self.m0) * self.speed
        return self.last

    def tick(self):
        t = self.now()
        os.utime(self.path, (t, t))
        self.last = t

    def _run(self):
        while not self._stop.wait(0.02):
            self.tick()

    def start(self):
        self.m0 = time.monotonic()
        self._running = True
        self._th.start()

    def set(self, t):
        """Moves a stopped clock to t (a step, as NTP makes when a machine booted with a wrong clock)."""
        assert not self._running
        self.t0 = self.last = t
        os.utime(self.path, (t, t))

    def stop(self):
        if self._running:
            self._stop.set()
            self._th.join()
            self.tick()  # the final value, now frozen
            self._running = False


@pytest.mark.skipif(not os.path.exists(FAKETIME_LIB), reason="libfaketime not installed (scripts/deps.sh)")
def test_rotation_over_48_simulated_hours(ztunnel_bin, tmp_path):
    clock = FakeClock(str(tmp_path / "faketime-clock"), SPEED)
    m = _mesh(_faketime_env(ztunnel_bin, clock.path))
    try:
        m.up()              # the clock stands still until every ztunnel is up
        _start_apps(m)
        cli, srv, fresh = m.pod("n1p1"), m.pod("n2p1"), m.pod("n2p2")
        t1 = connect(cli.netns, srv.ip, ECHO)
        assert _echo_on(t1, b"at simulated hour 0")
        first = {p.name: _dump_leaf(p) for p in (cli, srv)}
        for name, (_, vf, exp) in first.items():
            assert exp - vf == CERT_S + 60, (name, vf, exp)
        seen = {p.name: {first[p.name][0]} for p in (cli, srv)}
        clock.start()
        while clock.now() - clock.t0 < SIMULATED_S:
            time.sleep(0.5)
            now = clock.now()
            for p in (cli, srv):
                serial, vf, exp = _dump_leaf(p)
                seen[p.name].add(serial)
                # Tolerance: the dump and our clock reading are a moment apart (SPEED x that in fake time).
                assert exp > now - SPEED, "%s serves a certificate that expired %ds ago" % (p.name, now - exp)
            assert echo_ok(cli, srv), "tunnel failed at simulated hour %.1f" % ((now - clock.t0) / 3600)
        clock.stop()
        hours = (clock.now() - clock.t0) / 3600
        # 48 h of 24 h certificates renewed at half-life: about 4 renewals each.
        for name, serials in seen.items():
            assert len(serials) >= 4, "%s rotated %d times in %.0f h" % (name, len(serials) - 1, hours)
        # The tunnel from hour 0 still flows, 24 h after both of its certificates expired.
        assert _echo_on(t1, b"at simulated hour 48")
        t1.close()
        # A first connection to n2p2 now needs fresh handshakes with the rotated certificates.
        assert echo_ok(cli, fresh), "a new HBONE connection at simulated hour %.0f failed" % hours
        now = clock.now()
        leaf = _served_leaf(m, srv, verify=False)   # the fake clock is far ahead of ours: no time check here
        assert _before(leaf) <= now < _after(leaf)
        assert leaf.serial_number not in (first[srv.name][0],)
    finally:
        clock.stop()
        m.down()


@pytest.mark.skipif(not os.path.exists(FAKETIME_LIB), reason="libfaketime not installed (scripts/deps.sh)")
def test_unavailable_until_the_clock_is_right(ztunnel_bin, tmp_path):
    """A ztunnel whose wall clock is past the root's expiry cannot get a certificate: /config_dump says
    Unavailable with the reason, readiness stays pending ("proxy"), fetches are retried with backoff. When the
    clock is stepped back to the right time, the next retry (a monotonic delay, not stretched by the step)
    succeeds and the ztunnel becomes ready."""
    clock = FakeClock(str(tmp_path / "faketime-clock"), 1, lead=3651 * 86400)  # the root lasts 3650 days
    m = Mesh(nodes=2, pods=1, meshed=["n1p1"], env=_faketime_env(ztunnel_bin, clock.path))
    try:
        m.up()
        pod = m.pod("n1p1")

        def state():
            certs = _certs(pod)
            return certs[0]["state"] if certs else ""
        assert wait_for(lambda: state().startswith("Unavailable"), timeout=10), state()
        st = state()
        assert "root certificate (root-cert.pem) has expired" in st and pod.spiffe in st, st
        c = _certs(pod)[0]
        assert c["certChain"] == [] and c["rootCerts"] == [], c
        status, _, body = http_request(pod.netns, "127.0.0.1", 15021, "/healthz/ready")
        assert (status, body) == (500, b"not ready, pending: proxy\n"), (status, body)
        assert wait_for(lambda: sum(1 for l in m.log_json(pod) if l.get("message", "").startswith(
            "certificate fetch failed (")) >= 2, timeout=10), "no retry"
        clock.set(time.time() + 120)
        assert wait_for(lambda: state() == "Available", timeout=15), state()
        status, _, body = http_request(pod.netns, "127.0.0.1", 15021, "/healthz/ready")
        assert (status, body) == (200, b"ready\n"), (status, body)
        assert [l for l in m.log_json(pod) if l.get("message") == "certificate ready, accepting connections"]
    finally:
        m.down()


@pytest.mark.parametrize("value", ["500ms", "10", "ten seconds", "1x", "91d", "-5s"])
def test_invalid_secret_ttl_is_refused(ztunnel_bin, tmp_path, value):
    """SECRET_TTL is checked at start-up (Istio's duration syntax, 1s..90d); "10" is 10 s (a bare number is
    seconds), the others are refused naming the variable. The process exits before it binds anything."""
    import subprocess
    from topo import Topology
    t = Topology(workdir=str(tmp_path))
    env = dict(os.environ, PROXY_MODE="dedicated", PROXY_WORKLOAD_INFO="default/p/sa",
               LOCAL_XDS_PATH=str(tmp_path / "missing.yaml"), LOCAL_CA_DIR=t.ca(), SECRET_TTL=value,
               ADMIN_PORT="0", METRICS_PORT="0", READINESS_PORT="0")
    p = subprocess.Popen([ztunnel_bin], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        p.terminate()
        out, err = p.communicate(timeout=5)
        assert value == "10", "SECRET_TTL=%s was accepted" % value
        return
    assert value != "10", "SECRET_TTL=10 was refused: %s" % err
    assert p.returncode == 2, (p.returncode, err)
    assert "SECRET_TTL=%s" % value in err, err
