"""Settings are read the way Istio's ztunnel reads them (istio/ztunnel src/config.rs), none is silently ignored,
and logs have Istio's layout (src/telemetry.rs).

Start-up checks run the binary with a bad environment inside a pod netns and read its stderr. The mesh:
n1p1 (RUST_LOG=info,access=off, JSON), n1p2 (JSON, the source of the waypoint checks), n1p3 (plain text logs,
CONNECTION_TERMINATION_DEADLINE=1m30s; drained last), n2p1 (echo server), n2p2 (a workload with a waypoint,
no ztunnel), n2p3 (no ztunnel at first; later one whose PROXY_WORKLOAD_INFO names a workload not in the
config). A service with a waypoint has n2p1 as its endpoint."""
import os
import re
import signal
import subprocess
import time

import pytest

from helpers import Mesh, closed_without_data, connect, echo_ok, http_request, recv_exact, wait_for

ECHO = 8080
WP = {"destination": "default/wp.default.svc.cluster.local"}
WP_SVC = {"name": "wpsvc", "namespace": "default", "hostname": "wpsvc.default.svc.cluster.local",
          "vips": ["/10.96.0.30"], "ports": {80: ECHO}, "waypoint": WP}
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=3, meshed=["n1p1", "n1p2", "n1p3", "n2p1"], services=[WP_SVC],
             workload_extra={"n2p1": {"services": {"default/wpsvc.default.svc.cluster.local": {80: ECHO}}},
                             "n2p2": {"waypoint": WP}},
             pod_env={"n1p1": {"RUST_LOG": "info,access=off"},
                      "n1p3": {"LOG_FORMAT": "plain", "CONNECTION_TERMINATION_DEADLINE": "1m30s"}})
    try:
        m.up()
        m.app(m.pod("n2p1"), "echo", ECHO)
        yield m
    finally:
        m.down()


def _run(mesh, env, args=(), timeout=10):
    """Runs ztunnel in n2p3's netns (no ztunnel there) with exactly env (plus PATH); returns CompletedProcess."""
    pod = mesh.pod("n2p3")
    e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    e.update(env)
    try:
        return subprocess.run(["ip", "netns", "exec", pod.netns, os.path.join(mesh.topo.bin_dir(), "ztunnel")]
                              + list(args), env=e, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as ex:
        pytest.fail("ztunnel kept running with env %s; stderr:\n%s" % (env, (ex.stderr or b"")[-2000:]))


def _valid_env(mesh):
    pod = mesh.pod("n2p3")
    return {"PROXY_MODE": "dedicated", "PROXY_WORKLOAD_INFO": "%s/%s/%s" % (pod.namespace, pod.name, pod.sa),
            "LOCAL_XDS_PATH": mesh.config, "LOCAL_CA_DIR": mesh.topo.ca()}


# ---- start-up ------------------------------------------------------------------------------------------------

def test_invalid_duration_refused_naming_the_variable(mesh):
    env = dict(_valid_env(mesh), CONNECTION_TERMINATION_DEADLINE="abc")
    p = _run(mesh, env)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "invalid env var CONNECTION_TERMINATION_DEADLINE=abc (expected a duration" in p.stderr, p.stderr
    # Refused before anything starts: no listener, no CA.
    assert "listeners ready" not in p.stderr


@pytest.mark.parametrize("name,value", [("POOL_UNUSED_RELEASE_TIMEOUT", "1.5s"), ("SECRET_TTL", "5 5"),
                                        ("ZTUNNEL_WORKER_THREADS", "two"), ("ADMIN_PORT", "99999"),
                                        ("RUST_LOG", "info,access=loud"), ("LOG_FORMAT", "jsn"),
                                        ("TERMINATION_GRACE_PERIOD_SECONDS", "30s")])
def test_other_invalid_values_refused(mesh, name, value):
    p = _run(mesh, dict(_valid_env(mesh), **{name: value}))
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "invalid env var %s=%s (" % (name, value) in p.stderr, p.stderr


def test_missing_required_reported_together(mesh):
    p = _run(mesh, {"PROXY_MODE": "dedicated", "CONNECTION_TERMINATION_DEADLINE": "x"})
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "PROXY_WORKLOAD_INFO must be set" in p.stderr, p.stderr
    assert "no config: set XDS_ADDRESS" in p.stderr and "or LOCAL_XDS_PATH" in p.stderr, p.stderr
    assert "no CA: set CA_ADDRESS" in p.stderr and "or LOCAL_CA_DIR" in p.stderr, p.stderr
    assert "invalid env var CONNECTION_TERMINATION_DEADLINE=x" in p.stderr
    assert "4 setting errors" in p.stderr, p.stderr


def test_proxy_mode_unknown_and_shared_settings(mesh):
    p = _run(mesh, dict(_valid_env(mesh), PROXY_MODE="dedicatd"))
    assert p.returncode == 2
    assert "invalid env var PROXY_MODE=dedicatd (unknown value; PROXY_MODE must be one of shared, dedicated)" \
        in p.stderr, p.stderr
    assert "not support" not in p.stderr
    # Shared mode is the default: PROXY_WORKLOAD_INFO is a dedicated-mode setting (a warning), and the node
    # agent's socket must be named (an empty INPOD_UDS is an error).
    env = _valid_env(mesh)
    del env["PROXY_MODE"]
    env["INPOD_UDS"] = ""
    p = _run(mesh, env)
    assert p.returncode == 2
    assert "PROXY_WORKLOAD_INFO is used in dedicated mode only" in p.stderr, p.stderr
    assert "INPOD_UDS is empty: shared mode needs the node agent's socket" in p.stderr, p.stderr
    assert "unknown value" not in p.stderr


def test_unimplemented_istio_settings_warn_once_each(mesh):
    # An invalid value keeps ztunnel from starting, so the warnings can be read from a process that exits.
    env = dict(_valid_env(mesh), FAKE_CA="true", LOCAL_XDS="{}", XDS_ON_DEMAND="true", ADMIN_PORT="x")
    p = _run(mesh, env)
    assert p.returncode == 2
    for name in ("FAKE_CA", "LOCAL_XDS", "XDS_ON_DEMAND"):
        lines = [l for l in p.stderr.splitlines() if "\twarn\t" in l and "\t%s=" % name in l]
        assert len(lines) == 1, (name, p.stderr)
        assert "an Istio setting zmesh does not implement yet" in lines[0]
    # The xDS client's settings without XDS_ADDRESS are said to have no effect.
    p = _run(mesh, dict(_valid_env(mesh), XDS_HEADER_X="1", ADMIN_PORT="x"))
    assert "XDS_HEADER_X: used by the xDS client only, and XDS_ADDRESS is not set; ignored" in p.stderr, p.stderr


def _table_names():
    with open(os.path.join(HERE, "..", "..", "src", "ztunnel", "settings.c")) as f:
        src = f.read()
    names = re.findall(r'\.name = "([A-Z0-9_]+)"', src) + re.findall(r'UNSUPPORTED\("([A-Z0-9_]+)"', src)
    assert len(names) > 40, names
    return names


def test_help_lists_every_setting(mesh):
    p = _run(mesh, {}, args=["--help"])
    assert p.returncode == 0, p.stderr
    for name in _table_names():
        assert "\n  %s (" % name in p.stdout, name
    for want in ("CONNECTION_TERMINATION_DEADLINE (duration, default 5s)",
                 "POOL_UNUSED_RELEASE_TIMEOUT (duration, default 5m)", "SECRET_TTL (duration, default 24h)",
                 "PROXY_MODE (enum, default shared)", "LOCAL_XDS_PATH (string)", "XDS_ADDRESS (string)",
                 "XDS_ROOT_CA (string, default /var/run/secrets/istio/root-cert.pem)", "FAKE_CA (not implemented)"):
        assert want in p.stdout, want
    assert _run(mesh, {}, args=["help"]).stdout == p.stdout
    bad = _run(mesh, {}, args=["--bogus"])
    assert bad.returncode == 1 and "unknown command: --bogus" in bad.stderr


def test_version(mesh):
    for arg in ("--version", "version"):
        p = _run(mesh, {}, args=[arg])
        assert p.returncode == 0
        assert re.fullmatch(r'version\.BuildInfo\{Version:"[^"]+", GitRevision:"[^"]*", BuildStatus:"[^"]*", '
                            r'CryptoProvider:"openssl"\}\n', p.stdout), p.stdout


# ---- logs --------------------------------------------------------------------------------------------------------

def _access_lines(mesh, pod):
    return [l for l in mesh.log_json(pod) if l.get("scope") == "access"]


def test_rust_log_access_off_silences_access_only(mesh):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    assert echo_ok(src, dst, ECHO)
    # The destination (default filter) logs the connection, the source (access=off) does not.
    assert wait_for(lambda: [l for l in _access_lines(mesh, dst) if l.get("direction") == "inbound"])
    assert _access_lines(mesh, src) == []
    assert any(l.get("message") == "listeners ready" and l.get("scope") == "ztunnel" for l in mesh.log_json(src))


def _admin(pod, path):
    return http_request(pod.netns, "127.0.0.1", 15000, path, method="POST")


def test_logging_endpoint_target_forms(mesh):
    src, dst = mesh.pod("n1p1"), mesh.pod("n2p1")
    try:
        # Envoy's ?<target>=<level>.
        status, _, body = _admin(src, "/logging?access=info")
        assert status == 200, body
        assert body == b"current log level is access=info,info\n", body
        n = len(_access_lines(mesh, src))
        assert echo_ok(src, dst, ECHO)
        assert wait_for(lambda: len(_access_lines(mesh, src)) > n), "no access line after ?access=info"
        # The help text's target:level form, inside level=.
        status, _, body = _admin(src, "/logging?level=access:off")
        assert status == 200 and body == b"current log level is access=off,info\n", body
        n = len(_access_lines(mesh, src))
        assert echo_ok(src, dst, ECHO)
        assert not wait_for(lambda: len(_access_lines(mesh, src)) > n, timeout=1.0)
        # At debug for access only, "connection opened" appears; other targets stay at info.
        status, _, body = _admin(src, "/logging?level=access:debug")
        assert status == 200 and b"access=debug" in body, body
        assert echo_ok(src, dst, ECHO)
        assert wait_for(lambda: [l for l in _access_lines(mesh, src) if l.get("message") == "connection opened"])
        assert not [l for l in mesh.log_json(src) if l.get("level") == "debug" and l.get("scope") != "access"]
        status, _, body = _admin(src, "/logging?level=access:loud")
        assert status == 400 and b"Invalid level provided: access:loud" in body, body
    finally:
        status, _, body = _admin(src, "/logging?reset")
    assert status == 200 and body == b"current log level is access=off,info\n", body


TEXT_TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


def test_text_layout_is_istios(mesh):
    src, dst = mesh.pod("n1p3"), mesh.pod("n2p1")
    s = connect(src.netns, dst.ip, ECHO)
    s.sendall(b"0123456789")
    assert recv_exact(s, 10) == b"0123456789"
    s.close()
    # <time>\t<level>\t<target>\t<message>\t<fields>: addresses bare, strings quoted, byte counts as numbers.
    pat = re.compile(TEXT_TS + r'\tinfo\taccess\tconnection complete\tsrc\.addr=%s:\d+ src\.workload="n1p3" '
                     r'src\.namespace="default" src\.identity="%s" .*dst\.addr=%s:15008 dst\.hbone_addr=%s:%d '
                     r'.*direction="outbound" bytes_sent=10 bytes_recv=10 duration="\d+ms"$'
                     % (re.escape(src.ip), re.escape(src.spiffe), re.escape(dst.ip), re.escape(dst.ip), ECHO))
    assert wait_for(lambda: [l for l in mesh.log(src).splitlines() if pat.match(l)]), mesh.log(src)[-1500:]
    ready = [l for l in mesh.log(src).splitlines() if "\tlisteners ready\t" in l]
    assert ready and re.match(TEXT_TS + r'\tinfo\tztunnel\tlisteners ready\tidentity="spiffe://[^"]+" workers=\d+ ',
                              ready[0]), ready


# ---- config: waypoints, PROXY_WORKLOAD_INFO -----------------------------------------------------------------

def _refused_with_log(mesh, src, ip, port, needle):
    n = len(_access_lines(mesh, src))
    s = connect(src.netns, ip, port)
    try:
        s.sendall(b"x")
        closed, got = closed_without_data(s, timeout=5)
    finally:
        s.close()
    assert closed and got == b"", "a connection to a waypoint-bound destination was not refused"

    def line():
        return [l for l in _access_lines(mesh, src)[n:] if needle in str(l.get("error", ""))]
    lines = wait_for(line)
    assert lines, "no access line saying why: %s" % _access_lines(mesh, src)[n:]
    return lines[-1]


def test_service_with_waypoint_is_refused(mesh):
    # The waypoint's hostname names no service of the config: no ready waypoint endpoint, so the connection is
    # refused rather than sent around the waypoint (Istio would send it directly).
    src = mesh.pod("n1p2")
    l = _refused_with_log(mesh, src, "10.96.0.30", 80, "waypoint")
    assert l["level"] == "error"
    assert ("service default/wpsvc has waypoint default/wp.default.svc.cluster.local with no ready endpoint: "
            "the connection is refused rather than sent around it") in l["error"]
    # The endpoint itself, addressed directly, still works: only the waypoint-bound path is refused.
    assert echo_ok(src, mesh.pod("n2p1"), ECHO)


def test_workload_with_waypoint_is_refused(mesh):
    src, dst = mesh.pod("n1p2"), mesh.pod("n2p2")
    l = _refused_with_log(mesh, src, dst.ip, ECHO, "waypoint")
    assert ("workload %s has waypoint default/wp.default.svc.cluster.local with no ready endpoint" % dst.uid
            in l["error"])


def _ready(pod):
    return http_request(pod.netns, pod.ip, 15021, "/healthz/ready")


def test_workload_info_not_in_config_warns_and_stays_not_ready(mesh):
    pod = mesh.pod("n2p3")
    mesh.start(pod, env={"PROXY_WORKLOAD_INFO": "default/ghost/ghost-sa"})
    assert wait_for(lambda: "PROXY_WORKLOAD_INFO names workload default/ghost" in mesh.log(pod)), mesh.log(pod)
    # Right after start the certificate may still be on its way ("pending: proxy, workload ..."); once it is
    # here, the workload alone keeps the pod from being ready.
    want = b"not ready, pending: workload default/ghost\n"
    assert wait_for(lambda: _ready(pod)[2] == want), _ready(pod)
    status, _, body = _ready(pod)
    assert status == 500 and body == want, (status, body)
    ghost = {"uid": "Kubernetes//Pod/default/ghost", "name": "ghost", "namespace": "default",
             "serviceAccount": "ghost-sa", "workloadIps": ["10.250.0.9"]}
    mesh.extra_workloads = [ghost]
    try:
        mesh.reconfigure()
        assert wait_for(lambda: _ready(pod)[0] == 200), _ready(pod)
        assert any(l.get("message") == "workload found in the config" for l in mesh.log_json(pod))
    finally:
        mesh.extra_workloads = []
        mesh.topo.stop(mesh.ztunnels.pop(pod.name))
        mesh.reconfigure()


# ---- drain (last: it stops n1p3's ztunnel) --------------------------------------------------------------

def test_drain_waits_for_a_minutes_and_seconds_deadline(mesh):
    src, dst = mesh.pod("n1p3"), mesh.pod("n2p1")
    proc = mesh.ztunnels[src.name]
    s = connect(src.netns, dst.ip, ECHO)
    try:
        s.sendall(b"before")
        assert recv_exact(s, 6) == b"before"
        proc.send_signal(signal.SIGTERM)
        # The deadline in effect is 1m30s, parsed at start-up.
        assert wait_for(lambda: "received SIGTERM: draining 1 connections (deadline 90000ms)" in mesh.log(src)), \
            mesh.log(src)[-1000:]
        # Well past the 5 s default, the open connection still flows and ztunnel still runs.
        time.sleep(6)
        assert proc.poll() is None, mesh.log(src)[-1000:]
        s.sendall(b"after")
        assert recv_exact(s, 5) == b"after"
    finally:
        s.close()
    # The last connection closed: ztunnel exits 0 long before the deadline.
    assert wait_for(lambda: proc.poll() is not None, timeout=15), "ztunnel did not exit once drained"
    assert proc.returncode == 0
    assert "\tdrained, exiting\t" in mesh.log(src)
