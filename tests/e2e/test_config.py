"""Configuration errors are reported clearly: ztunnel exits non-zero and names the file and line."""
import os
import subprocess

import pytest

from topo import Topology


@pytest.fixture(scope="module")
def t(ztunnel_bin):
    topo = Topology(nodes=1, pods_per_node=1)
    try:
        topo.up()
        topo.ca()
        yield topo
    finally:
        topo.down()


def _run(t, config_text, name):
    pod = t.pods[0]
    path = t.write_config(config_text, name)
    env = dict(os.environ, PROXY_MODE="dedicated", PROXY_WORKLOAD_INFO="%s/%s/%s" % (pod.namespace, pod.name, pod.sa),
               LOCAL_XDS_PATH=path, LOCAL_CA_DIR=t.ca(), LOG_FORMAT="json", RUST_LOG="info")
    try:
        p = subprocess.run(["ip", "netns", "exec", pod.netns, os.path.join(t.bin_dir(), "ztunnel")], env=env,
                           capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired as e:
        pytest.fail("ztunnel kept running with an invalid config (%s); stderr:\n%s"
                    % (name, (e.stderr or b"").decode(errors="replace")[-2000:]))
    return path, p


@pytest.mark.parametrize("bad,what", [("10.0.1.999", "bad IP"), ("10.0.1.2.3", "bad IP")])
def test_bad_ip_exits_nonzero_naming_file_and_line(t, bad, what):
    text = t.config_yaml().replace('"%s"' % t.pods[0].ip, '"%s"' % bad)
    lines = text.splitlines()
    line = next(i for i, l in enumerate(lines, start=1) if bad in l)
    path, p = _run(t, text, "bad-ip.yaml")
    assert p.returncode != 0, "ztunnel accepted a config with a %s" % what
    assert "%s:%d" % (path, line) in p.stderr, "stderr does not name %s:%d:\n%s" % (path, line, p.stderr)


def test_bad_protocol_exits_nonzero_naming_file_and_line(t):
    text = t.config_yaml().replace("protocol: HBONE", "protocol: QUIC", 1)
    line = next(i for i, l in enumerate(text.splitlines(), start=1) if "QUIC" in l)
    path, p = _run(t, text, "bad-protocol.yaml")
    assert p.returncode != 0
    assert "%s:%d" % (path, line) in p.stderr, p.stderr


def test_unparsable_yaml_exits_nonzero_naming_file(t):
    path, p = _run(t, "workloads:\n- uid: [unclosed\n", "broken.yaml")
    assert p.returncode != 0
    assert path + ":" in p.stderr, p.stderr
