"""The rules' bookkeeping, written only after the kernel accepted a batch.

- `<state_dir>/rules-peers.json`, the peer MACs last learned from the neighbour table: kept across
  reboots (the boot unit may find the neighbour table empty), written durably (atomicfile) and
  only when one changed.
- `<run_dir>/rules-applied.json`, what the last successful apply left in the kernel: role,
  backend, a digest of the rule set, and the text the kernel shows for any rule it prints
  otherwise than we render it (another iptables or nft version may; what it printed right after
  we wrote the rule counts as equal). Runtime state, like the kernel's rules: a reboot forgets
  it (the boot id guards a run_dir that is not on tmpfs). Replaced by rename on every apply,
  without fsync: a role swap should cost no disk flush, and after a crash it is void anyway.

A missing or damaged file is an empty record.
"""

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from lvs_hooks import safeio
from lvs_hooks.atomicfile import write_atomic

# The rules' state is a few KiB; anything near this is not ours.
MAX_STATE = 1 << 20

log = logging.getLogger(__name__)

PEERS_FILE = "rules-peers.json"
APPLIED_FILE = "rules-applied.json"
FORMAT = 1
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def read_boot_id(path: str = BOOT_ID) -> str:
    try:
        return safeio.read_proc(path).decode("utf-8", errors="replace").strip()
    except OSError:
        return "unknown"


@dataclass
class Applied:
    role: str
    backend: str
    at: float
    families: List[int] = field(default_factory=list)
    digest: str = ""  # of the rule set (model.RuleSet.digest)
    kernel_text: Dict[str, str] = field(default_factory=dict)


@dataclass
class RulesState:
    learned: Dict[str, str] = field(default_factory=dict)  # peer address -> MAC
    applied: Optional[Applied] = None  # None: nothing applied during this boot

    def recorded_text(self, backend: str) -> Dict[str, str]:
        if self.applied is None or self.applied.backend != backend:
            return {}
        return self.applied.kernel_text


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(safeio.read_file(path, MAX_STATE))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s unreadable (%s): ignored", path, e)
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        log.warning("%s: unknown format: ignored", path)
        return None
    return data


def _replace(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a part (no durability: runtime state)."""
    os.makedirs(path.parent, 0o700, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)  # the umask only took bits away; the mode is ours, whatever it was
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class StateFile:
    def __init__(self, state_dir: str, run_dir: str, boot_id: Optional[str] = None):
        self.peers_path = Path(state_dir) / PEERS_FILE
        self.applied_path = Path(run_dir) / APPLIED_FILE
        self.boot_id = boot_id if boot_id is not None else read_boot_id()
        self._learned_on_disk: Dict[str, str] = {}

    def load(self) -> RulesState:
        peers = _read_json(self.peers_path) or {}
        learned = {
            str(k): str(v.get("mac"))
            for k, v in (peers.get("learned") or {}).items()
            if isinstance(v, dict) and v.get("mac")
        }
        self._learned_on_disk = dict(learned)
        applied = None
        a = _read_json(self.applied_path)
        if a is not None and a.get("boot_id") == self.boot_id:
            applied = Applied(
                role=a.get("role", ""),
                backend=a.get("backend", ""),
                at=float(a.get("at", 0)),
                families=[int(x) for x in a.get("families", [])],
                digest=str(a.get("digest", "")),
                kernel_text={str(k): str(v) for k, v in (a.get("kernel_text") or {}).items()},
            )
        return RulesState(learned, applied)

    def save(self, state: RulesState) -> None:
        if state.learned != self._learned_on_disk:
            body = {
                "format": FORMAT,
                "learned": {addr: {"mac": mac} for addr, mac in sorted(state.learned.items())},
            }
            os.makedirs(self.peers_path.parent, 0o700, exist_ok=True)
            write_atomic(self.peers_path, json.dumps(body, indent=1).encode() + b"\n")
            self._learned_on_disk = dict(state.learned)
        if state.applied is None:
            self.applied_path.unlink(missing_ok=True)
            return
        a = state.applied
        body = {
            "format": FORMAT,
            "boot_id": self.boot_id,
            "role": a.role,
            "backend": a.backend,
            "at": a.at,
            "families": a.families,
            "digest": a.digest,
            "kernel_text": a.kernel_text,
        }
        _replace(self.applied_path, json.dumps(body, indent=1, sort_keys=True).encode() + b"\n")
