"""Test tiers: unit (default, no root), `netns` (root, host kernel), `lab` (real IPVS in a VM).

A tier whose prerequisites are missing is skipped on a developer machine, but fails under CI
(CI=true): CI installs everything, so a skip there would be a check counted as done without
running.
"""

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing_for(marker: str):
    if os.geteuid() != 0:
        return "needs root"
    if marker == "lab" and not shutil.which("qemu-system-x86_64"):
        return "needs qemu-system-x86_64"
    if marker == "netns" and not shutil.which("ip"):
        return "needs iproute2"
    return None


def pytest_runtest_setup(item):
    for marker in ("netns", "lab"):
        if item.get_closest_marker(marker):
            why = _missing_for(marker)
            if why:
                if IN_CI:
                    pytest.fail(f"{marker} test cannot run in CI: {why}")
                pytest.skip(f"{marker} tier: {why}")
