"""The rules' bookkeeping, `<state_dir>/rules.json`, written only after the kernel accepted.

- `learned`: the peer MACs last learned from the neighbour table (kept across reboots: the boot
  unit may find the table empty).
- `applied`: what the last successful apply left in the kernel, for this boot only: role,
  backend, and the text the kernel shows for each rule id (another iptables or nft version may
  print a rule otherwise than we render it; what it printed right after we wrote the rule counts
  as equal).

Replaced atomically (atomicfile); a missing or damaged file is an empty record.
"""

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from lvs_hooks.atomicfile import write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "rules.json"
FORMAT = 1
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def read_boot_id(path: str = BOOT_ID) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


@dataclass
class Applied:
    role: str
    backend: str
    at: float
    families: List[int] = field(default_factory=list)
    kernel_text: Dict[str, str] = field(default_factory=dict)


@dataclass
class RulesState:
    learned: Dict[str, str] = field(default_factory=dict)  # peer address -> MAC
    applied: Optional[Applied] = None  # None: nothing applied during this boot

    def recorded_text(self, backend: str) -> Dict[str, str]:
        if self.applied is None or self.applied.backend != backend:
            return {}
        return self.applied.kernel_text


class StateFile:
    def __init__(self, state_dir: str, boot_id: Optional[str] = None):
        self.path = Path(state_dir) / FILE_NAME
        self.boot_id = boot_id if boot_id is not None else read_boot_id()

    def load(self) -> RulesState:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return RulesState()
        except (OSError, ValueError) as e:
            log.warning("%s unreadable (%s): starting from an empty record", self.path, e)
            return RulesState()
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            log.warning("%s: unknown format; starting from an empty record", self.path)
            return RulesState()
        learned = {
            str(k): str(v.get("mac"))
            for k, v in (data.get("learned") or {}).items()
            if isinstance(v, dict) and v.get("mac")
        }
        applied = None
        a = data.get("applied")
        if isinstance(a, dict) and a.get("boot_id") == self.boot_id:
            applied = Applied(
                role=a.get("role", ""),
                backend=a.get("backend", ""),
                at=float(a.get("at", 0)),
                families=[int(x) for x in a.get("families", [])],
                kernel_text={str(k): str(v) for k, v in (a.get("kernel_text") or {}).items()},
            )
        return RulesState(learned, applied)

    def save(self, state: RulesState) -> None:
        now = time.time()
        body: Dict[str, Any] = {
            "format": FORMAT,
            "learned": {addr: {"mac": mac, "at": now} for addr, mac in state.learned.items()},
        }
        if state.applied is not None:
            a = state.applied
            body["applied"] = {
                "boot_id": self.boot_id,
                "role": a.role,
                "backend": a.backend,
                "at": a.at,
                "families": a.families,
                "kernel_text": a.kernel_text,
            }
        os.makedirs(self.path.parent, 0o700, exist_ok=True)
        write_atomic(self.path, json.dumps(body, indent=1, sort_keys=True).encode() + b"\n")
