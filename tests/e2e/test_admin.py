"""Admin (127.0.0.1:15000) and readiness (:15021) servers (istio/ztunnel src/admin.rs and src/readiness/server.rs), reached from inside the pod netns.

n1p1 and n2p1 are meshed (n2p1 runs echo on 8080 and is the endpoint of one service; the config has one
policy). n1p2 and n2p2 have no ztunnel at first: n2p2 gets one whose config file does not exist yet
(readiness before and after load), n1p2 one that is told to quit."""
import datetime
import json
import os
import signal

import pytest

from helpers import Mesh, connect, http_request, wait_for

ECHO = 8080
SERVICE = {"name": "web", "namespace": "default", "hostname": "web.default.svc.cluster.local",
           "vips": ["/10.96.0.20"], "ports": {80: ECHO}}
POLICY = {"name": "allow-default", "namespace": "default", "scope": "Namespace", "action": "Allow",
          "rules": [[[{"namespaces": [{"Exact": "default"}]}]]]}


@pytest.fixture(scope="module")
def mesh(ztunnel_bin):
    m = Mesh(nodes=2, pods=2, meshed=["n1p1", "n2p1"], services=[SERVICE], policies=[POLICY],
             workload_extra={"n2p1": {"services": {"default/web.default.svc.cluster.local": {80: ECHO}}}})
    try:
        m.up()
        m.app(m.pod("n2p1"), "echo", ECHO)
        yield m
    finally:
        m.down()


def admin(pod, path, method="GET"):
    return http_request(pod.netns, "127.0.0.1", 15000, path, method=method)


def config_dump(pod):
    status, headers, body = admin(pod, "/config_dump")
    assert status == 200, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    return json.loads(body)


def _items(x):
    """Istio dumps these as lists; accept a map keyed by id too."""
    return list(x.values()) if isinstance(x, dict) else list(x)


def _ip(a):
    return a.rsplit("/", 1)[-1]  # "10.0.1.2" or "network/10.0.1.2"


def _time(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


def test_config_dump_matches_the_config(mesh):
    pod = mesh.pod("n1p1")
    d = config_dump(pod)
    for key in ("workloads", "services", "policies", "certificates"):
        assert key in d, "config_dump has no %r: %r" % (key, sorted(d))
    wls = {w["uid"]: w for w in _items(d["workloads"])}
    assert set(wls) == {p.uid for p in mesh.topo.pods}, sorted(wls)
    for p in mesh.topo.pods:
        w = wls[p.uid]
        assert [_ip(a) for a in w["workloadIps"]] == [p.ip], w
        assert w.get("name") == p.name and w.get("namespace") == "default", w
        assert w.get("serviceAccount") == p.sa, w
    svcs = _items(d["services"])
    assert [s["hostname"] for s in svcs] == [SERVICE["hostname"]], svcs
    assert [_ip(v) for v in svcs[0]["vips"]] == ["10.96.0.20"], svcs
    pols = _items(d["policies"])
    assert [(p["name"], p.get("namespace")) for p in pols] == [("allow-default", "default")], pols
    certs = _items(d["certificates"])
    mine = [c for c in certs if c.get("identity") == pod.spiffe]
    assert mine, "no certificate for %s: %r" % (pod.spiffe, certs)
    c = mine[0]
    if "state" in c:
        assert c["state"] == "Available", c
    chain = c.get("certChain") or []
    assert chain, c
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = chain[0]
    for k in ("serialNumber", "validFrom", "expirationTime"):
        assert leaf.get(k), "certificate without %s: %r" % (k, leaf)
    assert _time(leaf["validFrom"]) <= now + datetime.timedelta(minutes=5) <= \
        _time(leaf["expirationTime"]) + datetime.timedelta(minutes=10), leaf


def test_config_dump_follows_a_reload(mesh):
    added = dict(POLICY, name="added-later")
    mesh.reconfigure(policies=[POLICY, added])
    try:
        names = sorted(p["name"] for p in _items(config_dump(mesh.pod("n2p1"))["policies"]))
        assert names == ["added-later", "allow-default"], names
    finally:
        mesh.reconfigure(policies=[POLICY])
    names = [p["name"] for p in _items(config_dump(mesh.pod("n2p1"))["policies"])]
    assert names == ["allow-default"]


def test_admin_listens_on_localhost_only(mesh):
    pod = mesh.pod("n1p1")
    with pytest.raises(ConnectionRefusedError):
        connect(pod.netns, pod.ip, 15000, timeout=3).close()


def test_unknown_path_is_404(mesh):
    assert admin(mesh.pod("n1p1"), "/no/such/page")[0] == 404


def _debug_lines(mesh, pod):
    return [l for l in mesh.log_json(pod) if l.get("level") == "debug"]


def _poke_closed_port(mesh):
    """A connection from n1p1 to a closed port of n2p1 (gives a debug line on n2p1's ztunnel)."""
    s = connect(mesh.pod("n1p1").netns, mesh.pod("n2p1").ip, 9, timeout=5)
    try:
        s.sendall(b"x")
        s.recv(10)
    except OSError:
        pass
    finally:
        s.close()


def test_logging_level_change(mesh):
    pod = mesh.pod("n2p1")
    status, _, _ = admin(pod, "/logging?level=debug", method="GET")
    assert status == 405, "GET /logging must be refused with 405, got %d" % status
    n0 = len(_debug_lines(mesh, pod))
    status, _, body = admin(pod, "/logging?level=debug", method="POST")
    try:
        assert status == 200, (status, body)
        assert b"debug" in body.lower(), body
        _poke_closed_port(mesh)
        assert wait_for(lambda: len(_debug_lines(mesh, pod)) > n0, timeout=5), \
            "no debug line after POST /logging?level=debug"
        # At debug, Istio's "connection opened" access event appears too.
        assert wait_for(lambda: [l for l in mesh.log_json(pod)
                                 if l.get("message") == "connection opened" and l.get("direction") == "inbound"]), \
            "no 'connection opened' access event at debug level"
    finally:
        status, _, body = admin(pod, "/logging?level=info", method="POST")
    assert status == 200 and b"info" in body.lower(), (status, body)
    n1 = len(_debug_lines(mesh, pod))
    _poke_closed_port(mesh)
    # Nothing at debug level any more (give a possible line the time to appear).
    assert not wait_for(lambda: len(_debug_lines(mesh, pod)) > n1, timeout=1.0)
    status, _, body = admin(pod, "/logging", method="POST")
    assert status == 200 and b"info" in body.lower(), (status, body)


def ready(pod):
    return http_request(pod.netns, pod.ip, 15021, "/healthz/ready")


def test_ready_when_config_is_loaded(mesh):
    for name in ("n1p1", "n2p1"):
        status, _, body = ready(mesh.pod(name))
        assert (status, body) == (200, b"ready\n")


def test_readiness_before_and_after_the_config_exists(mesh):
    t, pod = mesh.topo, mesh.pod("n2p2")
    d = os.path.join(t.workdir, "late")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "config.yaml")
    proc = t.start_ztunnel(pod, path, wait_ports=(15021,))
    mesh.ztunnels[pod.name] = proc
    status, _, body = ready(pod)
    assert status == 500, (status, body)
    text = body.decode()
    assert text.startswith("not ready, pending:") and "state manager" in text, text
    assert proc.poll() is None
    with open(path + ".tmp", "w") as f:
        f.write(mesh.config_text())
    os.rename(path + ".tmp", path)
    def is_ready():
        status, _, body = ready(pod)
        return (status, body) == (200, b"ready\n")
    assert wait_for(is_ready, timeout=10, interval=0.1), ready(pod)
    assert t.wait_listen(pod.netns, (15001, 15006, 15008), timeout=10, proc=proc)
    d = config_dump(pod)
    assert pod.uid in {w["uid"] for w in _items(d["workloads"])}


def test_sigterm_while_waiting_for_the_config(mesh):
    """A ztunnel still waiting for its config file has no workers yet: SIGTERM still ends it cleanly (exit 0,
    the drain's last line) and logs no worker eventfd error. (The fix this guards kept start_drain from
    writing to the unopened eventfds, fd 0; with stdin on /dev/null, as here, that write did not fail.)"""
    t, pod = mesh.topo, mesh.pod("n1p2")
    d = os.path.join(t.workdir, "never")
    os.makedirs(d, exist_ok=True)
    start = os.path.getsize(os.path.join(t.workdir, "ztunnel-%s.log" % pod.name)) \
        if os.path.exists(os.path.join(t.workdir, "ztunnel-%s.log" % pod.name)) else 0
    proc = t.start_ztunnel(pod, os.path.join(d, "config.yaml"), wait_ports=(15021,))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    with open(proc.log_path, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    assert "drained, exiting" in text, text
    assert "eventfd" not in text, text


def test_quitquitquit_exits_gracefully(mesh):
    pod = mesh.pod("n1p2")
    proc = mesh.start(pod)
    status, _, _ = admin(pod, "/quitquitquit", method="POST")
    assert status == 200
    assert proc.wait(timeout=15) == 0
    # The listeners went away with the process.
    with pytest.raises(ConnectionRefusedError):
        connect(pod.netns, "127.0.0.1", 15000, timeout=3).close()
