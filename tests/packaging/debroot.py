"""Clean Debian roots for installing the .deb: debootstrap once, then a throw-away overlay.

A root (minbase, with python3, keepalived, systemd) is built by debootstrap from Debian's
package registry the first time and kept in a cache ($LVS_HOOKS_DEBROOT_CACHE, default
~/.cache/lvs-hooks/debroot/SUITE), rebuilt when its package list changes or it is older than
MAX_AGE. Nothing ever writes to it: each test session mounts it as the lower layer of an
overlayfs in a private mount namespace (`unshare -m`, root only) with its own upper directory, and
chroots into the merged tree, where dpkg installs, removes and purges for real.
"""

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import time
from typing import Optional

SUITES = {"bookworm": "Debian 12", "trixie": "Debian 13"}
MIRROR = os.environ.get("LVS_HOOKS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# what a director has besides the .deb's own dependencies: systemd (systemctl in the
# maintainer scripts), init-system-helpers (deb-systemd-*)
INCLUDE = ("python3", "keepalived", "systemd", "init-system-helpers")
MAX_AGE = 14 * 86400


def cache_dir() -> str:
    base = os.environ.get("LVS_HOOKS_DEBROOT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lvs-hooks",
        "debroot")
    return base


def _key(suite: str) -> str:
    return hashlib.sha256(" ".join((suite, MIRROR, *INCLUDE)).encode()).hexdigest()[:12]


def ensure_root(suite: str, log=print) -> str:
    """The cached root of `suite`, built first if missing or stale (under a lock, so parallel
    sessions build it once). Returns its path."""
    base = os.path.join(cache_dir(), suite)
    os.makedirs(base, exist_ok=True)
    root = os.path.join(base, "root")
    stamp = os.path.join(base, "complete")
    with open(os.path.join(base, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(stamp) and os.path.isdir(root):
            with open(stamp, encoding="utf-8") as fh:
                key = fh.read().strip()
            if key == _key(suite) and time.time() - os.path.getmtime(stamp) < MAX_AGE:
                return root
        if os.path.exists(stamp):
            os.unlink(stamp)
        shutil.rmtree(root, ignore_errors=True)
        new = root + ".new"
        shutil.rmtree(new, ignore_errors=True)
        t0 = time.monotonic()
        r = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=" + ",".join(INCLUDE), suite, new,
             MIRROR], capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).splitlines()[-20:])
            shutil.rmtree(new, ignore_errors=True)
            raise RuntimeError(f"debootstrap {suite} failed:\n{tail}")
        # apt's lists are not needed: the tests install with dpkg only
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in os.listdir(os.path.join(new, d)):
                p = os.path.join(new, d, f)
                if os.path.isfile(p):
                    os.unlink(p)
        os.rename(new, root)
        with open(stamp, "w", encoding="utf-8") as fh:
            fh.write(_key(suite) + "\n")
        log(f"debootstrap {suite}: {time.monotonic() - t0:.0f} s into {root}")
        return root


class Chroot:
    """The cached root under an overlay whose writes go to `scratch`: run() executes a shell
    script chrooted there, with /proc mounted. Every run sees the writes of the ones before, /run
    included (the root's own, empty at first: what postinst creates there stays, as until the
    next boot on a director)."""

    def __init__(self, root: str, scratch: str):
        self.root = root
        self.upper = os.path.join(scratch, "upper")
        self.work = os.path.join(scratch, "work")
        self.merged = os.path.join(scratch, "merged")
        for d in (self.upper, self.work, self.merged):
            os.makedirs(d, exist_ok=True)

    def put(self, src: str, dest: str) -> None:
        """Copies a host file into the root's upper layer at dest (an absolute path there)."""
        target = os.path.join(self.upper, dest.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(src, target)

    def run(self, script: str, timeout: float = 120,
            env: Optional[dict] = None) -> subprocess.CompletedProcess:
        opts = f"lowerdir={self.root},upperdir={self.upper},workdir={self.work}"
        m = shlex.quote(self.merged)
        inner = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
                 "DEBIAN_FRONTEND": "noninteractive", **(env or {})}
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in inner.items())
        outer = (f"set -e\nmount -t overlay overlay -o {shlex.quote(opts)} {m}\n"
                 f"mount -t proc proc {m}/proc\n"

                 f"exec chroot {m} /usr/bin/env -i {exports} /bin/sh -c {shlex.quote(script)}")
        return subprocess.run(["unshare", "-m", "sh", "-c", outer], capture_output=True,
                              text=True, timeout=timeout)
