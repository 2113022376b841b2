"""The ledger of templates lvs-hooks put into the kernel itself: `<run_dir>/injected.json`.

The kernel cannot tell a template injected by lvs-hooks from one a peer's master daemon sent:
both arrive through the backup daemon (origin SYNC). The inject path (director.inject) records
every template it sends to live (not the ones sent with 1 s to make them expire), and `explain`
names a template's origin from it. Only the inject path writes it.
"""

import json
import os
import time
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

from lvs_hooks import safeio
from lvs_hooks.atomicfile import write_atomic
from lvs_hooks.kernel.model import TemplateKey, parse_template_key

# A line per template injected: well under this at a million templates.
MAX_LEDGER = 16 << 20

INJECTIONS_FILE = "injected.json"
# An entry is kept this long after its timeout would have ended (explain may still be asked
# about a template the kernel re-armed).
KEEP_AFTER_END = 3600


@dataclass(frozen=True)
class Injection:
    """lvs-hooks put this template into the kernel itself at `at` with `timeout` seconds, on
    behalf of `by` (reseed, keeper, fwmark-repair, push)."""

    at: float
    timeout: int
    by: str


def _key_text(k: TemplateKey) -> str:
    return "|".join(str(x) for x in k)


def record(
    run_dir: str,
    keys_timeouts: Iterable[Tuple[TemplateKey, int]],
    by: str,
    now: Optional[float] = None,
) -> None:
    """Add injected templates to the ledger; entries long ended are dropped."""
    now = time.time() if now is None else now
    path = os.path.join(run_dir, INJECTIONS_FILE)
    current = _read(path)
    kept = {
        k: v
        for k, v in current.items()
        if isinstance(v, dict) and v.get("at", 0) + v.get("timeout", 0) + KEEP_AFTER_END > now
    }
    for key, timeout in keys_timeouts:
        kept[_key_text(key)] = {"at": now, "timeout": int(timeout), "by": by}
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    write_atomic(path, json.dumps(kept, sort_keys=True).encode(), 0o600)


def load(run_dir: str) -> Dict[TemplateKey, Injection]:
    """The ledger by template key; empty when there is none or it is unreadable."""
    out: Dict[TemplateKey, Injection] = {}
    for text, v in _read(os.path.join(run_dir, INJECTIONS_FILE)).items():
        try:
            key = parse_template_key(text.split("|"))
            out[key] = Injection(float(v["at"]), int(v["timeout"]), str(v.get("by", "lvs-hooks")))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _read(path: str) -> dict:
    try:
        data = json.loads(safeio.read_file(path, MAX_LEDGER))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
