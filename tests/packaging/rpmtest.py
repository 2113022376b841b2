"""Helpers of the packaging tests: namespaces with the unpacked RPM over /usr, interpreters.

The packaged wrapper has absolute paths (/usr/lib/lvs-hooks, /usr/bin/python3.x), so it runs in
a private mount namespace (`unshare -m`; `unshare -rm`, a user namespace, when not root) where
the unpacked payload is an overlayfs layer over the host's /usr: the real wrapper file at its
real path, the host's own interpreters, and nothing of the payload visible outside.
"""

import glob
import os
import shlex
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

import pytest

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGING = os.path.join(PROJECT, "packaging")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

if PACKAGING not in sys.path:
    sys.path.insert(0, PACKAGING)


def missing(why: str):
    """Skip on a developer machine, fail under CI (CI installs everything it needs)."""
    if IN_CI:
        pytest.fail(f"packaging test cannot run in CI: {why}")
    pytest.skip(f"packaging: {why}")


def _ns_prefix() -> List[str]:
    return ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]


def ns_run(overlays: Dict[str, Sequence[str]], cmd: Sequence[str], *, tmpfs: Sequence[str] = (),
           upper: Optional[Dict[str, str]] = None, net: bool = False, cwd: str = "/",
           env: Optional[Dict[str, str]] = None, timeout: float = 60,
           setup: str = "") -> subprocess.CompletedProcess:
    """Runs cmd in a new mount namespace (and network and PID namespaces with net=True) where each
    overlays[TARGET] = [layer dirs, top first] is stacked over the host's TARGET (read-only, or
    writable into upper[TARGET]: an upper dir whose work dir is beside it), with tmpfs on each
    of `tmpfs`, after the shell commands of `setup`."""
    lines = ["set -e"]
    for target, layers in overlays.items():
        lower = ":".join([*layers, target])
        opts = f"lowerdir={lower}"
        if upper and target in upper:
            up = upper[target]
            work = up.rstrip("/") + ".work"
            os.makedirs(up, exist_ok=True)
            os.makedirs(work, exist_ok=True)
            opts += f",upperdir={up},workdir={work}"
        lines.append(f"mount -t overlay overlay -o {shlex.quote(opts)} {shlex.quote(target)}")
    for t in tmpfs:
        # mode 0755 as /run is at boot (tmpfs defaults to 1777, which lvs-hooks refuses to trust)
        lines.append(f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(t)}")
    if setup:
        lines.append(setup)
    lines.append(f"cd {shlex.quote(cwd)}")
    lines.append("exec " + " ".join(shlex.quote(c) for c in cmd))
    # with net: its own PID namespace too, so that nothing started in it outlives the run
    prefix = _ns_prefix() + (["-n", "-p", "-f", "--mount-proc"] if net else [])
    return subprocess.run([*prefix, "sh", "-c", "\n".join(lines)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def real_interpreter(version: str) -> Optional[str]:
    """A real executable (not a pyenv shim) of Python `version` on this machine, or None: on
    PATH, or an installed pyenv version."""
    name = f"python{version}"
    cands = []
    if shutil.which(name):
        cands.append(shutil.which(name))
    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    cands += sorted(glob.glob(os.path.join(pyenv, "versions", f"{version}.*", "bin", name)),
                    reverse=True)
    for exe in cands:
        try:
            with open(os.path.realpath(exe), "rb") as fh:
                if fh.read(4) != b"\x7fELF":
                    continue  # a shim script
            r = subprocess.run([exe, "-I", "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if r.returncode == 0 and r.stdout.strip() == str(tuple(map(int, version.split(".")))):
            return exe
    return None
