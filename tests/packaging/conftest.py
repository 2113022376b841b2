"""Packaging fixtures: the RPM built once per session by packaging/build-rpm and the .deb by
packaging/build-deb, their payloads unpacked (see rpmtest.py for how the packaged wrapper is run,
debroot.py for the Debian roots the .deb is installed in)."""

import os
import shutil
import subprocess

import pytest
from rpmtest import PACKAGING, missing, ns_run


@pytest.fixture(scope="session")
def built_rpm(tmp_path_factory) -> str:
    for tool in ("rpmbuild", "rpm2cpio", "cpio", "unshare"):
        if not shutil.which(tool):
            missing(f"needs {tool} (scripts/setup installs it)")
    out = tmp_path_factory.mktemp("rpm")
    r = subprocess.run([os.path.join(PACKAGING, "build-rpm"), "--out", str(out), "--no-check"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"build-rpm failed:\n{r.stderr}\n{r.stdout}"
    path = r.stdout.strip().splitlines()[-1]
    assert path.endswith(".noarch.rpm") and os.path.exists(path), r.stdout
    return path


@pytest.fixture(scope="session")
def rpm_root(built_rpm, tmp_path_factory) -> str:
    """The payload of the RPM, unpacked with rpm2cpio | cpio (as root: owners kept)."""
    from check_rpm import unpack

    root = tmp_path_factory.mktemp("rpmroot")
    unpack(built_rpm, str(root))
    return str(root)


@pytest.fixture(scope="session")
def can_unshare(tmp_path_factory) -> None:
    probe = tmp_path_factory.mktemp("probe")
    (probe / "usr").mkdir()
    r = ns_run({"/usr": [str(probe / "usr")]}, ["true"])
    if r.returncode != 0:
        missing(f"cannot overlay /usr in a mount namespace: {r.stderr.strip()}")


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory) -> str:
    """The .deb, built once per session by packaging/build-deb (lintian is its own test)."""
    for tool in ("dpkg-deb", "git"):
        if not shutil.which(tool):
            missing(f"needs {tool} (scripts/setup installs it)")
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run([os.path.join(PACKAGING, "build-deb"), "--out", str(out), "--no-lintian"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"build-deb failed:\n{r.stderr}\n{r.stdout}"
    path = r.stdout.strip().splitlines()[-1]
    assert path.endswith("_all.deb") and os.path.exists(path), r.stdout
    return path


@pytest.fixture(scope="session")
def deb_root(built_deb, tmp_path_factory) -> str:
    """The payload of the .deb, unpacked with dpkg-deb -x (its control files in DEBIAN/)."""
    root = tmp_path_factory.mktemp("debroot-payload")
    subprocess.run(["dpkg-deb", "-x", built_deb, str(root)], check=True)
    subprocess.run(["dpkg-deb", "-e", built_deb, str(root / "DEBIAN")], check=True)
    return str(root)
