"""One transition at a time, and the latest event wins.

Every entry point (notify, master/backup/fault/stop, the FIFO reader) hands its events to
`Sequencer.handle`. Two files in the run directory make the rules hold across processes:

- `transition.lock` (filelock): held for a whole transition, from its first step to its journal
  record, so no two transitions interleave and no step is left half done by another event.
- `seen.json`: for each instance or group, the newest event seen so far (by `Event.order`).
  An event notes itself there as soon as it arrives, before it waits for the lock. When its turn
  comes, and again before each of its steps, it checks for a newer event of the same instance
  or group: if there is one, it stops (`stale` when nothing ran yet, `superseded` after some
  steps) and leaves the work to the newer event, which is waiting for the lock or already in the
  FIFO reader's queue. So MASTER, BACKUP, MASTER within a second ends in MASTER with every step
  that ran complete, however the three processes race for the lock.

`seen.json` records the boot it belongs to: the order keys are boot-clock times, which start
again at a reboot (the run directory is on tmpfs and normally goes away anyway).
"""

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import filelock

from lvs_hooks import safeio
from lvs_hooks.atomicfile import write_atomic
from lvs_hooks.director.lock import LOCK_NAME, transition_lock
from lvs_hooks.errors import LockTimeout, LvsHooksError, UntrustedPath
from lvs_hooks.events.clock import now_ns
from lvs_hooks.events.journal import Journal
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.role import write_role
from lvs_hooks.lockfile import FileLock

# seen.json holds a line per instance or group.
MAX_SEEN = 1 << 20

log = logging.getLogger(__name__)

SEEN_NAME = "seen.json"
SEEN_LOCK_NAME = "seen.lock"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
# seen.json is updated in well under a millisecond; a holder for this long is wedged.
_SEEN_LOCK_TIMEOUT = 5.0

# What a step returns: a one-line summary with figures, and the figures for the journal.
StepResult = Tuple[str, Dict[str, Any]]


@dataclass(frozen=True)
class Step:
    """One idempotent step of a transition. `run` returns a StepResult or raises."""

    name: str
    run: Callable[[], StepResult]


class StepFailed(Exception):
    """Raised by a step that failed but has figures worth journaling (e.g. a partial reseed)."""

    def __init__(self, message: str, figures: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.figures = figures or {}


@dataclass
class Plan:
    """What a transition will do: its steps, a note for the log, or why the event is ignored."""

    steps: List[Step] = field(default_factory=list)
    note: Optional[str] = None
    ignore: bool = False


# Outcomes journaled for an event.
DONE = "done"  # every step ran and succeeded
FAILED = "failed"  # every step ran, some failed (or the journal could not be written)
STALE = "stale"  # a newer event of the same instance or group came first: nothing done
SUPERSEDED = "superseded"  # a newer event came while this one ran: stopped between steps
IGNORED = "ignored"  # not an instance or group this director follows


@dataclass
class Outcome:
    outcome: str
    record: dict

    @property
    def failed(self) -> bool:
        return self.outcome == FAILED


class Sequencer:
    def __init__(self, run_dir: str, journal: Journal, boot_id_path: str = BOOT_ID):
        self.run_dir = Path(run_dir)
        self.journal = journal
        self._boot_id = _read_boot_id(boot_id_path)
        # What each event noted ahead of its turn (the FIFO reader, the inbox) replaced in
        # seen.json: put back if the event then cannot run (forget).
        self._replaced: Dict[Tuple[str, Tuple[Any, ...]], Optional[dict]] = {}

    # -- the newest event seen per instance or group

    def _ensure_run_dir(self) -> None:
        if self.run_dir.is_dir():
            return
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.run_dir, 0o700)
            os.chmod(self.run_dir, 0o700)

    def _read_seen(self) -> Dict[str, dict]:
        try:
            data = json.loads(safeio.read_file(self.run_dir / SEEN_NAME, MAX_SEEN))
        except FileNotFoundError:
            return {}
        except OSError as e:
            log.warning("%s: %s; forgetting the events seen before", e.filename, e.strerror)
            return {}
        except ValueError:
            # Written atomically, so this is damage from outside: start afresh, say so.
            log.warning("%s is not JSON; forgetting the events seen before", SEEN_NAME)
            return {}
        if not isinstance(data, dict) or data.get("boot_id") != self._boot_id:
            return {}
        keys = data.get("keys")
        return keys if isinstance(keys, dict) else {}

    def note(self, event: Event) -> Optional[dict]:
        """Record `event` as the newest of its instance or group, unless a newer one (or this
        very one) is already recorded: then return that one."""
        return self._note(event)[0]

    def _note(self, event: Event) -> Tuple[Optional[dict], Optional[dict]]:
        """note(), and the entry it replaced (None: there was none, or nothing was noted)."""
        self._ensure_run_dir()
        lock = FileLock(self.run_dir / SEEN_LOCK_NAME, timeout=_SEEN_LOCK_TIMEOUT, mode=0o600)
        try:
            with lock:
                keys = self._read_seen()
                newest = keys.get(event.key)
                if newest is not None and _order(newest) >= event.order:
                    return newest, None
                keys[event.key] = {
                    "order": list(event.order),
                    "state": event.state,
                    "source": event.source,
                }
                self._write_seen(keys)
                if len(self._replaced) > 10000:
                    self._replaced.clear()  # events noted and never handled: a bug elsewhere
                self._replaced[(event.key, tuple(event.order))] = newest
                return None, newest
        except filelock.Timeout:
            # Not fatal: the event still runs in its turn, it just cannot make older waiting
            # events give way to it.
            log.error(
                "%s: %s held for %.0f s; event not noted as the newest",
                event.describe(),
                self.run_dir / SEEN_LOCK_NAME,
                _SEEN_LOCK_TIMEOUT,
            )
        return None, None

    def _write_seen(self, keys: Dict[str, dict]) -> None:
        data = json.dumps({"boot_id": self._boot_id, "keys": keys}, sort_keys=True)
        write_atomic(self.run_dir / SEEN_NAME, data.encode(), 0o600)

    def forget(self, event: Event, replaced: Optional[dict]) -> None:
        """Undo note(event) for an event that could not run: if it is still the newest of its
        instance or group, the entry it replaced comes back (or none), so that an older event
        still waiting is not skipped as stale in favour of one that never ran."""
        try:
            with FileLock(self.run_dir / SEEN_LOCK_NAME, timeout=_SEEN_LOCK_TIMEOUT, mode=0o600):
                keys = self._read_seen()
                current = keys.get(event.key)
                if current is None or _order(current) != event.order:
                    return  # a newer event came since: it is the newest, rightly
                if replaced is None:
                    del keys[event.key]
                else:
                    keys[event.key] = replaced
                self._write_seen(keys)
        except filelock.Timeout:
            log.error(
                "%s: %s held for %.0f s; the event that did not run stays noted as the newest",
                event.describe(),
                self.run_dir / SEEN_LOCK_NAME,
                _SEEN_LOCK_TIMEOUT,
            )

    def newer_than(self, event: Event) -> Optional[dict]:
        """The newest event seen of the same instance or group, if it is newer than `event`."""
        newest = self._read_seen().get(event.key)
        if newest is not None and _order(newest) > event.order:
            return newest
        return None

    # -- running a transition

    def handle(
        self, event: Event, planner: Callable[[Event], Plan], lock_timeout: float
    ) -> Outcome:
        """Run the transition for `event` in its turn, or skip it if a newer event came first.

        Every event handled leaves one journal record. LockTimeout if the transition before it
        holds the lock longer than `lock_timeout` seconds.
        """
        arrived = now_ns()
        self._preflight()
        self._note(event)
        replaced = self._replaced.pop((event.key, tuple(event.order)), None)
        lock = transition_lock(str(self.run_dir))
        try:
            lock.acquire(timeout=lock_timeout)
        except filelock.Timeout:
            # Nothing ran: leave no trace that could make a waiting older event give way to
            # this one (a STOP that timed out would otherwise leave the director MASTER with
            # the BACKUP before it skipped as stale and no snapshot).
            self.forget(event, replaced)
            raise LockTimeout(
                f"{event.describe()}: the transition before it held {self.run_dir / LOCK_NAME} "
                f"for more than {lock_timeout:g} s; this event was not acted on"
            ) from None
        try:
            return self._run(event, planner, arrived)
        finally:
            lock.release()
            self._compact_journal()

    def _preflight(self) -> None:
        """Refuse before anything is written when a file this event will write in place is not
        a regular file of ours (a link planted at a lock's name): one line, nothing changed,
        rather than a transition refused half way or run without its record."""
        for path, what in (
            (self.run_dir / LOCK_NAME, "lock"),
            (self.run_dir / SEEN_LOCK_NAME, "lock"),
            (self.journal.path, "journal"),
        ):
            try:
                safeio.check_writable(path)
            except safeio.Refused as e:
                raise UntrustedPath(f"{what} {path}: {e.strerror}; nothing was done") from None

    def _compact_journal(self) -> None:
        """Compact the journal when it has grown past its bound, between events: only if the
        transition lock is free this instant (an event waiting for it goes first; a later
        event compacts instead)."""
        if not self.journal.needs_compaction():
            return
        lock = transition_lock(str(self.run_dir))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return
        try:
            self.journal.compact()
        except OSError as e:
            log.error("journal %s not compacted: %s", self.journal.path, e.strerror or e)
        finally:
            lock.release()

    def _run(self, event: Event, planner: Callable[[Event], Plan], arrived: int) -> Outcome:
        what = event.describe()
        start = now_ns()
        record: Dict[str, Any] = {
            "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "event": event.to_dict(),
            "pid": os.getpid(),
            "start_ns": start,
            "waited_ms": round((start - arrived) / 1e6, 1),
            "steps": [],
        }
        outcome = DONE
        newer = self.newer_than(event)
        plan = Plan()
        if newer is not None:
            outcome = STALE
            record["newer"] = newer
            log.info(
                "%s: skipped as stale, a newer %s (%s) came first",
                what,
                newer["state"],
                newer["source"],
            )
        else:
            plan = planner(event)
            if plan.note:
                record["note"] = plan.note
                log.info("%s: %s", what, plan.note)
            if plan.ignore:
                outcome = IGNORED
        if outcome == DONE:
            outcome = self._steps(event, plan.steps, record)
        record["outcome"] = outcome
        record["end_ns"] = now_ns()
        record["ms"] = round((record["end_ns"] - start) / 1e6, 1)
        try:
            self.journal.append(record)
        except OSError as e:
            log.error("%s: journal %s not written: %s", what, self.journal.path, e.strerror or e)
            record["journal_error"] = str(e)
            outcome = record["outcome"] = FAILED
        if outcome in (DONE, FAILED):
            try:
                write_role(str(self.run_dir), event.state, event.name or "")
            except OSError as e:
                log.error("%s: role file not written: %s", what, e.strerror or e)
        if outcome in (DONE, FAILED) and plan.steps:
            failed = [s["step"] for s in record["steps"] if not s["ok"]]
            log.log(
                logging.ERROR if failed else logging.INFO,
                "%s: transition %s in %.0f ms (waited %.0f ms for the lock)%s",
                what,
                outcome,
                record["ms"],
                record["waited_ms"],
                f"; failed steps: {', '.join(failed)}" if failed else "",
                extra={"fields": {"instance": event.name, "state": event.state,
                                  "outcome": outcome, "ms": record["ms"],
                                  "waited_ms": record["waited_ms"],
                                  "failed_steps": ",".join(failed)}},
            )
        return Outcome(outcome, record)

    def _steps(self, event: Event, steps: List[Step], record: dict) -> str:
        what = event.describe()
        outcome = DONE
        for i, step in enumerate(steps):
            newer = self.newer_than(event)
            if newer is not None:
                left = [s.name for s in steps[i:]]
                record["newer"] = newer
                record["left"] = left
                log.info(
                    "%s: superseded by a newer %s; leaving %s to it",
                    what,
                    newer["state"],
                    ", ".join(left),
                )
                return SUPERSEDED
            t0 = time.monotonic()
            entry: Dict[str, Any] = {"step": step.name}
            try:
                summary, figures = step.run()
                entry.update(ok=True, summary=summary, figures=figures)
            except StepFailed as e:
                entry.update(ok=False, error=str(e), figures=e.figures)
            except (LvsHooksError, OSError) as e:
                msg = e.format_message() if isinstance(e, LvsHooksError) else _oserror(e)
                entry.update(ok=False, error=msg)
            except Exception as e:
                # A bug. The remaining steps still run (a director half switched is worse than
                # one missing a step), but the traceback goes to the log and the exit code
                # says the transition failed.
                log.exception("%s: step %s crashed", what, step.name)
                entry.update(ok=False, error=f"bug: {type(e).__name__}: {e}")
            entry["ms"] = round((time.monotonic() - t0) * 1000, 1)
            entry["end_ns"] = now_ns()
            record["steps"].append(entry)
            if entry["ok"]:
                log.info("%s: %s: %s (%.0f ms)", what, step.name, entry["summary"], entry["ms"])
            else:
                outcome = FAILED
                log.error(
                    "%s: %s FAILED: %s (%.0f ms)", what, step.name, entry["error"], entry["ms"]
                )
        return outcome


def _order(entry: Any) -> Tuple[Any, ...]:
    """The order key of a seen.json entry; a damaged entry sorts before every event."""
    order = entry.get("order") if isinstance(entry, dict) else None
    if isinstance(order, list) and all(type(x) is int for x in order):
        return tuple(order)
    return ()


def _oserror(e: OSError) -> str:
    where = f" ({e.filename})" if e.filename else ""
    return f"{e.strerror or e}{where}"


def _read_boot_id(path: str) -> str:
    try:
        return safeio.read_proc(path).decode("utf-8", errors="replace").strip()
    except OSError:
        return "unknown"
