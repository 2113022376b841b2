"""netns tier fixtures: two network namespaces joined by a veth, and a director in each.

The host kernel has no IPVS: the lvs-hooks steps that need it fail, and the journal records
that. Everything started here is stopped in the fixtures' finalizers, failed test or not.
"""

import shutil
import subprocess
from typing import List

import pytest
from netnslib import IN_CI, Director, next_tag, sh


def _require_keepalived() -> None:
    if shutil.which("keepalived"):
        return
    if IN_CI:
        pytest.fail("netns test cannot run in CI: keepalived is not installed")
    pytest.skip("netns tier: needs keepalived")


@pytest.fixture
def netns_pair():
    """Two network namespaces joined by a veth: (name_a, name_b); va 10.77.0.1, vb 10.77.0.2."""
    _require_keepalived()
    tag = next_tag()
    a, b = f"{tag}a", f"{tag}b"
    made: List[str] = []
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        sh("ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        for ns, dev, addr in ((a, "va", "10.77.0.1/24"), (b, "vb", "10.77.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def directors(netns_pair, tmp_path):
    """Director a (priority 150, will be master) and b (100), not started yet."""
    a_ns, b_ns = netns_pair
    a = Director(tmp_path, a_ns, "a", "va", "10.77.0.1", "10.77.0.2", 150)
    b = Director(tmp_path, b_ns, "b", "vb", "10.77.0.2", "10.77.0.1", 100)
    try:
        yield a, b
    finally:
        for d in (a, b):
            d.cleanup()
