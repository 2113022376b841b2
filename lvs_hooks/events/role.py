"""This director's role as its last finished transition left it: `<run_dir>/role.json`.

Written by the sequencer after a transition ran (done or failed; a skipped event changes
nothing), read by the long-running agent and by `handover`. The run directory is on tmpfs, so
after a reboot there is no role until keepalived's first event: not knowing is the truth then,
and the journal in the state directory would say what the director was before it went down.
"""

import json
import os
import time
from typing import Optional

from lvs_hooks import safeio
from lvs_hooks.atomicfile import write_atomic

ROLE_FILE = "role.json"
ROLES = ("MASTER", "BACKUP", "FAULT", "STOP")


def write_role(run_dir: str, state: str, name: str, now: Optional[float] = None) -> None:
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    data = {"state": state, "name": name, "at": time.time() if now is None else now}
    write_atomic(os.path.join(run_dir, ROLE_FILE), json.dumps(data).encode(), 0o644)


def read_role(run_dir: str) -> Optional[str]:
    """MASTER, BACKUP, FAULT or STOP; None when no transition has run since boot (or the file
    is unreadable: the callers then act as for an unknown role)."""
    try:
        data = json.loads(safeio.read_file(os.path.join(run_dir, ROLE_FILE), 4096))
    except (OSError, ValueError):
        return None
    state = data.get("state") if isinstance(data, dict) else None
    return state if state in ROLES else None
