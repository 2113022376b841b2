"""The journal of transitions: one JSON object per line in `<state_dir>/events.jsonl`, bounded.

Every event that reached the sequencer leaves one record: the transitions run (each step with
its outcome and figures) and the events skipped (stale, superseded, not watched).

Appending costs the same whatever the journal holds: one line written with O_APPEND (never
through a link: safeio.open_write), fsynced when the record is of a transition that did
something. Rewriting the whole file for each record, as the journal once did, cost 97 ms at
1,000 records and delayed a FAULT behind a burst of stale flaps by seconds. A kill at any moment
leaves whole lines (a write to a regular file completes or does not happen); a line cut by a
power failure is not JSON, is skipped and counted by readers, and the next append starts on a
line of its own.

The file is compacted to the newest `keep` records (and at most half of `compact_bytes`) once it
grows past `compact_bytes`: replaced atomically (write_atomic), by whoever holds the transition
lock after its transition is done (Sequencer.handle), so the cost is bounded and paid between
events, about once every `compact_bytes / 2` bytes of records. Readers read at most twice that
many bytes, from the end.
"""

import contextlib
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any, List, Optional, Tuple

from lvs_hooks import safeio
from lvs_hooks.atomicfile import fsync_dir, is_temp_name, write_atomic

log = logging.getLogger(__name__)

JOURNAL_NAME = "events.jsonl"
# A record of a transition with its steps is 1-2 KiB, a skipped event's about 400 bytes.
_BYTES_PER_RECORD = 2048
_MIN_COMPACT_BYTES = 256 << 10
# Records that did nothing (stale, ignored) are not worth an fsync each: a burst of flaps would
# wait on the disk once per line. A power cut may lose them; nothing depends on them.
_DURABLE_OUTCOMES = ("done", "failed", "superseded")


class Journal:
    def __init__(self, state_dir: str, keep: int, compact_bytes: Optional[int] = None):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.dir = Path(state_dir)
        self.path = self.dir / JOURNAL_NAME
        self.keep = keep
        self.compact_bytes = compact_bytes or max(keep * _BYTES_PER_RECORD, _MIN_COMPACT_BYTES)

    def read(self) -> Tuple[List[dict], int]:
        """The newest `keep` records, oldest first, and the number of lines that were not
        records (not JSON, not an object, cut short). A journal that cannot be read at all (a
        directory, a FIFO, no permission) raises OSError naming it."""
        records, bad = self._read_all()
        return records[-self.keep :], bad

    def _read_all(self) -> Tuple[List[dict], int]:
        try:
            data = self._read_tail(2 * self.compact_bytes)
        except FileNotFoundError:
            return [], 0
        records: List[dict] = []
        bad = 0
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
        return records, bad

    def _read_tail(self, limit: int) -> bytes:
        fd = safeio.open_regular(self.path)
        try:
            size = os.fstat(fd).st_size
            if size <= limit:
                return safeio.read_fd(fd, self.path, limit)
            # Grown past what compaction allows (appended to by hand, or compaction failing):
            # the newest records are at the end; the first partial line is dropped (and counted
            # as not a record).
            os.lseek(fd, size - limit, os.SEEK_SET)
            return safeio.read_fd(fd, self.path, limit)
        finally:
            os.close(fd)

    def append(self, record: dict) -> None:
        """Add a record at the end: O(1) whatever the journal holds. The caller holds the
        transition lock."""
        self._ensure_dir()
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode("utf-8")
        fd = safeio.open_write(self.path, 0o600, append=True, readable=True)
        try:
            size = os.fstat(fd).st_size
            # A line cut by a power failure must not swallow this record.
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            if record.get("outcome") in _DURABLE_OUTCOMES:
                os.fsync(fd)
        finally:
            os.close(fd)

    def needs_compaction(self) -> bool:
        try:
            return os.lstat(self.path).st_size > self.compact_bytes
        except OSError:
            return False

    def compact(self) -> None:
        """Keep the newest `keep` records (and at most half of `compact_bytes` of them),
        replacing the file atomically. The caller holds the transition lock."""
        self._ensure_dir()
        self._remove_stray_temps()
        records, bad = self._read_all()
        if bad:
            log.warning("journal %s: dropped %d lines that were not JSON records", self.path, bad)
        lines = [json.dumps(r, sort_keys=True, default=str) + "\n" for r in records[-self.keep :]]
        kept: List[str] = []
        size = 0
        for text in reversed(lines):
            size += len(text)
            if kept and size > self.compact_bytes // 2:
                break
            kept.append(text)
        kept.reverse()
        write_atomic(self.path, "".join(kept).encode("utf-8"), 0o600)
        log.info("journal %s: compacted to the newest %d records", self.path, len(kept))

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


def _is_number(x: Any) -> bool:
    return type(x) in (int, float)


def well_formed(r: dict) -> bool:
    """Whether a record has the shape render_history shows (a line written by hand, or by
    another version, may not)."""
    ev = r.get("event", {})
    if not isinstance(ev, dict) or not all(
        isinstance(ev.get(k, ""), str) or ev.get(k) is None for k in ("name", "state", "kind")
    ):
        return False
    for k in ("at", "outcome", "note"):
        if k in r and not isinstance(r[k], str):
            return False
    if "ms" in r and not _is_number(r["ms"]):
        return False
    if "newer" in r and not isinstance(r["newer"], dict):
        return False
    steps = r.get("steps", [])
    if not isinstance(steps, list):
        return False
    for step in steps:
        if not isinstance(step, dict) or not isinstance(step.get("step"), str):
            return False
        figures = step.get("figures") or {}
        if not isinstance(figures, dict):
            return False
        if figures.get("latency_ms") is not None and not _is_number(figures["latency_ms"]):
            return False
    return True


def render_history(records: List[dict]) -> str:
    """The journal as a table, a line per event and one more per failed step."""
    if not records:
        return "no transitions recorded"
    lines = [f"{'TIME':<19}  {'EVENT':<32} {'OUTCOME':<10} {'MS':>7}  STEPS"]
    for r in records:
        ev = r.get("event", {})
        name = ev.get("name") or "(unnamed)"
        what = f"{ev.get('state') or '?'} {(ev.get('kind') or '?').lower()} {name}"
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
    except (ValueError, OverflowError):
        return iso[:19]
