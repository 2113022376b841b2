"""The journal of transitions: one JSON object per line in `<state_dir>/events.jsonl`, bounded.

Every event that reached the sequencer leaves one record: the transitions run (each step with
its outcome and figures) and the events skipped (stale, superseded, not watched). Writers hold
the transition lock, so there is one writer at a time; each write replaces the whole file
atomically (write_atomic) keeping the newest `keep` records, so a reader or a crash sees the old
journal or the new one, never a torn line. At the default bound the file stays well under a
megabyte, and transitions are rare.
"""

import contextlib
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import List, Tuple

from lvs_hooks.atomicfile import fsync_dir, is_temp_name, write_atomic

log = logging.getLogger(__name__)

JOURNAL_NAME = "events.jsonl"


class Journal:
    def __init__(self, state_dir: str, keep: int):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.dir = Path(state_dir)
        self.path = self.dir / JOURNAL_NAME
        self.keep = keep

    def read(self) -> Tuple[List[dict], int]:
        """The records, oldest first, and the number of lines that were not records."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return [], 0
        records: List[dict] = []
        bad = 0
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
        return records, bad

    def append(self, record: dict) -> None:
        """Add a record, dropping the oldest beyond `keep`. The caller holds the transition lock."""
        self._ensure_dir()
        self._remove_stray_temps()
        records, bad = self.read()
        if bad:
            log.warning("journal %s: dropped %d lines that were not JSON records", self.path, bad)
        records.append(record)
        records = records[-self.keep :]
        data = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
        write_atomic(self.path, data.encode("utf-8"), 0o600)

    def _ensure_dir(self) -> None:
        if self.dir.is_dir():
            return
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.dir, 0o700)
            # The journal names clients' real servers only indirectly, but the snapshots kept
            # beside it name clients: the directory is root's whatever the umask.
            os.chmod(self.dir, 0o700)
            fsync_dir(self.dir.parent)

    def _remove_stray_temps(self) -> None:
        # Only our own temps: the snapshot store owns its own in the same directory.
        prefix = f".{JOURNAL_NAME}."
        for name in os.listdir(self.dir):
            if name.startswith(prefix) and is_temp_name(name):
                log.info("removing %s, left by a journal writer that did not finish", name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.dir / name)


def render_history(records: List[dict]) -> str:
    """The journal as a table, a line per event and one more per failed step."""
    if not records:
        return "no transitions recorded"
    lines = [f"{'TIME':<19}  {'EVENT':<32} {'OUTCOME':<10} {'MS':>7}  STEPS"]
    for r in records:
        ev = r.get("event", {})
        name = ev.get("name") or "(unnamed)"
        what = f"{ev.get('state', '?')} {ev.get('kind', '?').lower()} {name}"
        steps = r.get("steps", [])
        shown = ", ".join(_step(s) for s in steps)
        if r.get("outcome") in ("stale", "superseded") and r.get("newer"):
            shown = (shown + "; " if shown else "") + f"newer {r['newer'].get('state')} came first"
        elif not steps and r.get("note"):
            shown = r["note"]
        lines.append(
            f"{_local_time(r.get('at', '')):<19}  {what:<32} {r.get('outcome', '?'):<10} "
            f"{r.get('ms', 0):>7.0f}  {shown}"
        )
        for s in steps:
            if not s.get("ok"):
                lines.append(f"{'':<21}{s['step']}: {s.get('error', '')}")
    return "\n".join(lines)


def _step(s: dict) -> str:
    text = f"{s['step']} {'ok' if s.get('ok') else 'FAILED'}"
    latency = (s.get("figures") or {}).get("latency_ms")
    if latency is not None:
        text += f" ({latency:.0f} ms after MASTER)"
    return text


def _local_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso[:19]
