"""The warm-up gate: a director whose connection table is not warm yet does not preempt.

A director that rebooted comes back with an empty IPVS table; if it preempts at once, every
client is scheduled afresh. So until its table is warm (a full push received since it started,
or a verified reseed from its own snapshot), or until `warmup.max_wait` seconds have passed
since it started, it asks keepalived for a lower VRRP priority, through a track file holding
1 (0 once eligible) that keepalived multiplies by a negative weight. A lower priority, not a
FAULT: alone on the network it still takes over. A planned handover uses the same gate to give
up MASTER: while its flag is set the director is not eligible either.

The state is `<run_dir>/warmup.json` (run_dir is a tmpfs: a reboot forgets it, which is what
"since it started" means):

    {"started": 1700000000.0, "warm": false, "warm_since": null, "reason": "",
     "figures": {}, "handover": false}

`decide` is the pure rule; `WarmupStore` reads and writes the state, every change atomic
(write_atomic) under `<run_dir>/warmup.lock`; `refresh` is what the agent runs every period
and `lvs-hooks ready` runs once: load, decide, write the track file.
"""

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import filelock

from lvs_hooks import safeio
from lvs_hooks.atomicfile import PathLike, write_atomic
from lvs_hooks.config import Config
from lvs_hooks.errors import LvsHooksError
from lvs_hooks.lockfile import FileLock

# warmup.json is a few hundred bytes; anything near this is not ours.
MAX_STATE = 1 << 20

log = logging.getLogger(__name__)

STATE_NAME = "warmup.json"
LOCK_NAME = "warmup.lock"
TRACK_NAME = "warmup.track"

# Every holder of the lock does one read and one small atomic write: a wait longer than this
# means a stuck process, and keepalived's vrrp_script must not wait for it.
LOCK_TIMEOUT = 2.0

# --------------------------------------------------------------------------------------------
# The pure core


@dataclass
class WarmState:
    """What `<run_dir>/warmup.json` holds."""

    started: float
    warm: bool = False
    warm_since: Optional[float] = None
    reason: str = ""
    figures: Dict[str, Any] = field(default_factory=dict)
    handover: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return {
            "started": self.started,
            "warm": self.warm,
            "warm_since": self.warm_since,
            "reason": self.reason,
            "figures": dict(self.figures),
            "handover": self.handover,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "WarmState":
        """Build from parsed JSON; ValueError naming the first bad key. Keys other than the
        six are ignored; absent ones but `started` take their defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {_json_type(data)}")
        if "started" not in data:
            raise ValueError("'started' is missing")
        started = _epoch(data, "started")
        if started is None:
            raise ValueError("'started' must be epoch seconds (a number), got null")
        warm = _bool(data, "warm", False)
        warm_since = _epoch(data, "warm_since")
        reason = data.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError(f"'reason' must be a string, got {_json_type(reason)}")
        figures = data.get("figures", {})
        if not isinstance(figures, dict):
            raise ValueError(f"'figures' must be an object, got {_json_type(figures)}")
        handover = _bool(data, "handover", False)
        return cls(started, warm, warm_since, reason, dict(figures), handover)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 30 else value[:27] + "..."
        return f"the string {json.dumps(shown)}"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _epoch(data: Dict[str, Any], key: str) -> Optional[float]:
    value = data.get(key)
    if value is None:
        return None
    # bool is an int in Python: `true` must not pass for 1 s after the epoch.
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"'{key}' must be epoch seconds (a number >= 0), got {_json_type(value)}")
    return float(value)


def _bool(data: Dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if type(value) is not bool:
        raise ValueError(f"'{key}' must be true or false, got {_json_type(value)}")
    return value


@dataclass(frozen=True)
class Decision:
    """Whether this director may preempt now, and why (one line, for a person)."""

    eligible: bool
    reason: str


def _secs(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:.1f}"


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def elapsed_since_start(state: WarmState, now: float) -> float:
    """Seconds since `started`; a `started` in the future (the clock was set back) counts as
    just started."""
    return max(0.0, now - state.started)


def decide(state: Optional[WarmState], now: float, max_wait: float) -> Decision:
    """The gate's rule. Not eligible while there is no state (nothing has started the agent
    since boot), while a handover is under way, and while cold for less than `max_wait`
    seconds since start; eligible once warm or after that."""
    if state is None:
        return Decision(
            False,
            "not started: the lvs-hooks agent has not run since boot, so nothing warms the "
            "table and this director never preempts (safe: the gate only lowers its priority, "
            "so it still takes over when it is alone)",
        )
    if state.handover:
        return Decision(
            False, "handing over: a planned handover asked this director to give up MASTER"
        )
    if state.warm:
        if state.warm_since is None:
            when = "warm"
        else:
            after = max(0.0, state.warm_since - state.started)
            when = f"warm since {_when(state.warm_since)} ({after:.0f} s after start)"
        return Decision(True, f"{when}: {state.reason}" if state.reason else when)
    elapsed = elapsed_since_start(state, now)
    if elapsed >= max_wait:
        return Decision(
            True,
            f"not warm after {math.floor(elapsed)} s: eligible anyway "
            f"(warmup.max_wait {_secs(max_wait)} s)",
        )
    return Decision(
        False,
        f"cold for {math.floor(elapsed)} s: waiting for a push or a verified reseed, "
        f"at most {math.ceil(max_wait - elapsed)} s more",
    )


def track_value(decision: Decision) -> int:
    """What the track file holds: 0 when eligible, 1 when not (keepalived multiplies it by the
    track_file's negative weight)."""
    return 0 if decision.eligible else 1


# --------------------------------------------------------------------------------------------
# Files


class WarmupStore:
    """`<run_dir>/warmup.json`, read without a lock (it is only ever replaced by rename) and
    changed under `<run_dir>/warmup.lock`."""

    def __init__(self, run_dir: PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STATE_NAME
        self.lock_path = self.run_dir / LOCK_NAME

    # -- reading

    def load(self) -> Optional[WarmState]:
        """The state, or None if there is none (nothing has started since boot). A file that
        cannot be read or is not a valid state: LvsHooksError, one line naming the file."""
        try:
            raw = safeio.read_file(self.path, MAX_STATE)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise LvsHooksError(
                f"warm-up state {self.path}: cannot read: {e.strerror or e}"
            ) from None
        try:
            data = json.loads(raw)
        except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
            raise self._corrupt(f"not JSON ({_one_line(e)})") from None
        try:
            return WarmState.from_dict(data)
        except ValueError as e:
            raise self._corrupt(str(e)) from None

    def _corrupt(self, what: str) -> LvsHooksError:
        return LvsHooksError(
            f"warm-up state {self.path} is corrupt: {what}; remove it to start afresh "
            "(the director then counts as not started, i.e. cold)"
        )

    # -- changing

    def lock(self) -> FileLock:
        """The lock every change (and `refresh`) holds; creates run_dir if needed."""
        _ensure_dir(self.run_dir)
        return FileLock(str(self.lock_path), timeout=LOCK_TIMEOUT, mode=0o600)

    def _save(self, state: WarmState) -> None:
        data = json.dumps(state.to_dict(), sort_keys=True) + "\n"
        write_atomic(self.path, data.encode(), 0o600)

    def start(self, now: Optional[float] = None) -> WarmState:
        """Record that the agent started. An existing state is kept as it is, its `started`
        above all: a restart of the agent is not a reboot (the table it warmed is still in the
        kernel). A `started` in the future (the clock was set back) is moved to now. A corrupt
        file is replaced by a fresh state, with a warning: the director then waits for a push,
        a reseed or max_wait from now, the safe side."""
        now = time.time() if now is None else now
        with _locked(self):
            try:
                state = self.load()
            except LvsHooksError as e:
                log.warning("%s; starting afresh", e.format_message())
                state = None
            if state is None:
                state = WarmState(started=now)
                self._save(state)
                log.info("warm-up gate: started, cold (state in %s)", self.path)
            elif _rebase_future_start(state, now):
                self._save(state)
            return state

    def mark_warm(
        self, reason: str, figures: Optional[Dict[str, Any]] = None, now: Optional[float] = None
    ) -> WarmState:
        """Record that the table is warm: `reason` says what warmed it ("full push from
        10.0.0.2"), `figures` the numbers behind it (JSON-able). Already warm: nothing changes
        (warm_since is when it first became warm). No state yet: one is made, started now."""
        now = time.time() if now is None else now
        with _locked(self):
            state = self.load()
            if state is None:
                state = WarmState(started=now)
            if state.warm:
                return state
            state.warm = True
            state.warm_since = now
            state.reason = reason
            state.figures = dict(figures or {})
            self._save(state)
        log.info(
            "warm-up gate: warm %.0f s after start: %s%s",
            elapsed_since_start(state, now),
            reason,
            f" {state.figures}" if state.figures else "",
            extra={"fields": {"warm_after_s": round(elapsed_since_start(state, now), 1),
                              **{k: v for k, v in state.figures.items()
                                 if isinstance(v, (int, float))}}},
        )
        return state

    def set_handover(self, on: bool, now: Optional[float] = None) -> WarmState:
        """Set or clear the handover flag (not eligible while set). No state yet: one is made,
        started now."""
        now = time.time() if now is None else now
        with _locked(self):
            state = self.load()
            if state is None:
                state = WarmState(started=now)
            elif state.handover == on:
                return state
            state.handover = on
            self._save(state)
        log.info("warm-up gate: handover flag %s", "set" if on else "cleared")
        return state


@contextlib.contextmanager
def _locked(store: WarmupStore) -> Iterator[None]:
    """Hold the store's lock; waiting too long for it is an operator-actionable error."""
    lock = store.lock()
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LvsHooksError(
            f"warm-up state lock {store.lock_path} held for more than {LOCK_TIMEOUT:g} s "
            "by another process"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _rebase_future_start(state: WarmState, now: float) -> bool:
    if state.started <= now:
        return False
    log.warning(
        "warm-up gate: start time %s is %.0f s in the future (clock set back?); counting from now",
        _when(state.started),
        state.started - now,
    )
    state.started = now
    return True


def _ensure_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise LvsHooksError(f"cannot create {directory}: {e.strerror or e}") from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def track_file_path(cfg: Config) -> str:
    """The file keepalived's track_file reads: warmup.track_file, or <run_dir>/warmup.track."""
    return cfg.warmup.track_file or os.path.join(cfg.paths.run_dir, TRACK_NAME)


def write_track_file(path: PathLike, value: int) -> bool:
    """Write "0\\n" or "1\\n" (`value`) atomically, only if the file holds something else:
    keepalived rereads the file at each write or rename (inotify). True if it was written."""
    data = f"{int(value)}\n".encode()
    try:
        if safeio.read_file(path, 64) == data:
            return False
    except FileNotFoundError:
        pass
    except OSError as e:
        log.debug("track file %s unreadable (%s): rewriting it", path, e)
    try:
        # 0644: nothing secret, and anyone may look at what keepalived is told.
        write_atomic(path, data, 0o644)
    except OSError as e:
        raise LvsHooksError(f"track file {path}: cannot write: {e.strerror or e}") from None
    return True


# --------------------------------------------------------------------------------------------
# One look: what the agent runs each period, and `lvs-hooks ready`


@dataclass(frozen=True)
class Refreshed:
    """The outcome of `refresh_detail`: the decision and what it was made from and wrote."""

    decision: Decision
    state: Optional[WarmState]
    track_file: str
    track_value: int
    changed: bool


def refresh_detail(cfg: Config, now: Optional[float] = None, log_change: bool = True) -> Refreshed:
    """Load the state, decide, write the track file; all under the store's lock, so two
    refreshes (the agent's, keepalived's `lvs-hooks ready`) cannot write in the wrong order.
    A change of the track file is logged at INFO unless `log_change` is false (the caller
    logs every decision itself).

    A corrupt state file: the track file gets 1 (not eligible: the safe side) and the
    LvsHooksError naming the file is raised.
    """
    now = time.time() if now is None else now
    store = WarmupStore(cfg.paths.run_dir)
    path = track_file_path(cfg)
    with _locked(store):
        try:
            state = store.load()
        except LvsHooksError:
            try:
                write_track_file(path, 1)
            except LvsHooksError as e:
                log.error("%s", e.format_message())
            raise
        if state is not None and _rebase_future_start(state, now):
            store._save(state)
        decision = decide(state, now, cfg.warmup.max_wait)
        value = track_value(decision)
        changed = write_track_file(path, value)
    if changed and log_change:
        log.info(
            "warm-up gate: %s (track file %s now %d): %s",
            "eligible" if decision.eligible else "not eligible",
            path,
            value,
            decision.reason,
        )
    return Refreshed(decision, state, path, value, changed)


def refresh(cfg: Config, now: Optional[float] = None) -> Decision:
    """Load, decide, write the track file; the decision. See `refresh_detail`."""
    return refresh_detail(cfg, now).decision
