"""Whose files lvs-hooks believes: the config, the key, the state and run directories.

Everything runs as root, and what these paths hold decides what root does: the config names the
directories root writes in and the proc tree it writes sysctls through, the run directory holds
the locks and the agent's socket, the state directory the snapshots root reseeds the kernel from.
So, as keepalived does for its scripts (`enable_script_security`), each of them and every
directory above it must be owned by root and writable by nobody else; otherwise the command
refuses with one line naming the path and what is wrong (design.md section 6.3).

The rule, component by component from `/` down to the path (as sudo and OpenSSH check theirs):
- owned by root (or by the expected owner a test injects);
- not writable by group or others; a directory above the path that is world-writable with the
  sticky bit (/tmp, 1777) passes, because in it only an entry's owner can rename or remove the
  entry, and the next component is checked for its owner in turn. The path itself never passes
  that way (a 1777 state directory is refused), nor does a sticky directory in which a missing
  path would be created;
- a symbolic link on the way is followed and its target checked the same way.
A path that does not exist yet is judged by its nearest existing ancestor: lvs-hooks creates the
rest itself, with mode 0700.

Only as root: an unprivileged user runs nothing that root trusts. Stdlib only, so that the door
(lvs_hooks.door) can check the config it reads before it talks to any socket.
"""

import os
import stat
from typing import Iterable, List, Optional, Tuple

# A symlink chain longer than this is refused as the kernel refuses one (ELOOP at 40).
_MAX_LINKS = 40


class Untrusted(Exception):
    """A path lvs-hooks would trust is not root's alone (errors.UntrustedPath at the CLI)."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.message = message
        self.path = path


def expected_owner() -> Optional[int]:
    """The owner trusted paths must have: root when running as root; None (nothing is checked)
    otherwise. The one seam for tests, which point the check at a tmp tree with their own uid."""
    return 0 if os.geteuid() == 0 else None


def _owners(owner: int) -> Tuple[int, ...]:
    # Root's directories above a tree a test owns (/, /tmp) are as trusted as the test's own.
    return (0,) if owner == 0 else (0, owner)


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _components(path: str) -> List[str]:
    parts = [p for p in path.split("/") if p]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def check_path(path: str, what: str, owner: Optional[int] = None, _links: int = 0) -> None:
    """Untrusted when `path` (described as `what`, e.g. "run directory") or a directory above it
    may be changed by someone other than root; nothing to check when not running as root."""
    if owner is None:
        owner = expected_owner()
        if owner is None:
            return
    trusted = _owners(owner)
    path = os.path.abspath(path)
    comps = _components(path)
    existing: List[Tuple[str, os.stat_result]] = []
    for comp in comps:
        try:
            existing.append((comp, os.lstat(comp)))
        except FileNotFoundError:
            break
        except OSError as e:
            raise Untrusted(
                f"{what} {path}: cannot inspect {comp}: {e.strerror or e}", path
            ) from None
    missing = len(existing) < len(comps)
    for i, (comp, st) in enumerate(existing):
        last = i == len(existing) - 1
        if st.st_uid not in trusted:
            raise Untrusted(
                f"{what} {path}: {comp} is owned by uid {st.st_uid}, not root "
                f"(chown root {comp})",
                path,
            )
        if stat.S_ISLNK(st.st_mode):
            if _links >= _MAX_LINKS:
                raise Untrusted(f"{what} {path}: too many symbolic links", path)
            # The link is root's in a directory only root writes; where it leads must be too.
            check_path(os.path.realpath(comp), what, owner, _links + 1)
            continue
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            sticky_above = (
                stat.S_ISDIR(st.st_mode)
                and st.st_mode & stat.S_ISVTX
                and st.st_mode & stat.S_IWOTH
                and not last
            )
            if not sticky_above:
                where = " (a missing path would be created in it)" if last and missing else ""
                raise Untrusted(
                    f"{what} {path}: {comp} is writable by group or others (mode {_mode(st)})"
                    f"{where}; chmod go-w {comp}",
                    path,
                )


def problems(checks: Iterable[Tuple[str, str]], owner: Optional[int] = None) -> List[Untrusted]:
    """Every untrusted path of (path, what) pairs: for doctor, which lists them all."""
    found = []
    for path, what in checks:
        try:
            check_path(path, what, owner)
        except Untrusted as e:
            found.append(e)
    return found


def config_paths(config_path: Optional[str], cfg) -> List[Tuple[str, str]]:
    """What a loaded configuration makes lvs-hooks trust: (path, what) pairs. `config_path`
    None: no file, built-in defaults."""
    checks = []
    if config_path is not None:
        checks.append((config_path, "config file"))
    paths = cfg.paths
    checks.append((paths.state_dir, "state directory"))
    checks.append((paths.run_dir, "run directory"))
    checks.append((paths.proc_root, "proc root"))
    key_file = getattr(getattr(cfg, "control", None), "key_file", None)
    if key_file:
        checks.append((key_file, "control key file"))
    return checks
