"""pytest setup for the end-to-end tests: root check, the ztunnel binary, and log tails on failure."""
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import topo  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="end-to-end tests need root (network namespaces)")
        for it in items:
            it.add_marker(skip)


@pytest.fixture(scope="session")
def ztunnel_bin():
    """Path of the ztunnel binary under test ($ZMESH_BIN/ztunnel or build/bin/ztunnel); skips without it."""
    path = os.path.join(topo.Topology.bin_dir(), "ztunnel")
    if not os.access(path, os.X_OK):
        pytest.skip("no ztunnel binary at %s (run make all)" % path)
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tail of every live ztunnel log to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for t in list(topo._live):
            for p in t.pods:
                path = os.path.join(t.workdir, "ztunnel-%s.log" % p.name)
                if os.path.exists(path):
                    rep.sections.append(("ztunnel %s log (%s)" % (p.name, path), topo.tail(path, 30)))


def pytest_sessionfinish(session, exitstatus):
    """Keeps the topologies' workdirs (configs, certificates, ztunnel logs) only when something failed."""
    if exitstatus == 0 and not os.environ.get("ZMESH_KEEP_WORKDIR"):
        for d in topo.temp_workdirs:
            shutil.rmtree(d, ignore_errors=True)
