"""This director's health, for `lvs-hooks status`, `status --check` and the metrics file.

`gather` reads what the director's processes leave behind, never IPVS' connection table: the
role (`<run_dir>/role.json`), the last transition (the journal), the warm-up gate
(`warmup.json`), the last pushes (`push.json`, written by the agent: `record_push`), the
periodic duties' failures (`duties.json`) and the newest snapshot; IPVS only through netlink
(services and per-real-server counters, sync daemons), and only if `ipvs` is given. Whatever it
cannot read it names in `unreadable` and reports the rest.

`judge` is the pure rule of `status --check` (monitoring.md, in the source tree's docs): OK,
WARNING, CRITICAL or UNKNOWN, with the reasons, as monitoring plugins report them.
"""

import glob
import json
import logging
import os
import time
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Tuple

from lvs_hooks import safeio
from lvs_hooks.atomicfile import write_atomic
from lvs_hooks.config import Config
from lvs_hooks.errors import LvsHooksError, SnapshotError
from lvs_hooks.snapshot import SnapshotStore

log = logging.getLogger(__name__)

PUSH_FILE = "push.json"
WIRE_FILE = "wire.json"  # the agent writes it: record_wire
# Sync datagrams from a source other than the pusher's seen within this many seconds make
# `status --check` a WARNING (the kernel's backup daemon took them in: section 6.1).
FOREIGN_RECENT = 600.0
ROLE_FILE = "role.json"  # events.role writes it
DUTIES_FILE = "duties.json"  # director.duties writes it
WARMUP_FILE = "warmup.json"  # warmup writes it
JOURNAL_FILE = "events.jsonl"  # events.journal writes it
# Where `systemctl enable lvs-hooks-agent` leaves its link.
SYSTEMD_WANTS = "/etc/systemd/system/*.wants/lvs-hooks-agent.service"

# Plugin states (Nagios plugin guidelines): the exit code of `status --check`.
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}

MAX_LINE = 1000  # characters of `status --check`'s line after its state

# A backup with a control channel hears a push every push.interval: missing this many in a row
# means pushes no longer arrive (master gone quiet, key changed, port closed).
PUSHES_MISSED = 3

# What a reader of IPVS over netlink gives: services, per-real-server counters, sync daemons.
IpvsRead = Callable[[], Tuple[list, list, list]]


def _read_json(path: str, limit: int = 1 << 20) -> Any:
    """Parsed JSON; FileNotFoundError when absent; OSError/ValueError when unreadable."""
    return json.loads(safeio.read_file(path, limit))


def _read_state(
    path: str, what: str, unreadable: List[str], limit: int = 1 << 16
) -> Optional[Dict[str, Any]]:
    """A state file's JSON object; None when absent or not an object, and also when it cannot
    be read, which is then said in `unreadable` ("WHAT PATH: why")."""
    try:
        data = _read_json(path, limit)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        unreadable.append(f"{what} {path}: {_why(e)}")
        return None
    return data if isinstance(data, dict) else None


def _why(e: BaseException) -> str:
    if isinstance(e, LvsHooksError):
        return e.format_message()
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return " ".join(str(e).split())


def _epoch_of(iso: Any) -> Optional[float]:
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (ValueError, OverflowError):
        return None


def _pid_alive(pid: Any) -> bool:
    if type(pid) is not int or pid <= 0:
        return False
    return os.path.exists(f"/proc/{pid}")


# --------------------------------------------------------------------------------------------
# What the agent leaves: the last pushes


def record_push(run_dir: str, direction: str, figures: Dict[str, Any], ok: bool,
                now: Optional[float] = None) -> None:
    """Note a push this director sent ("sent") or received ("received") in
    `<run_dir>/push.json`, with counts since boot by outcome. Only the agent writes it (one
    writer: no lock). A failure to write is logged and changes nothing else."""
    now = time.time() if now is None else now
    path = os.path.join(run_dir, PUSH_FILE)
    try:
        data = _read_json(path)
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    counts = data.get("counts")
    if not isinstance(counts, dict):
        counts = {}
    key = f"{direction}_{'ok' if ok else 'failed'}"
    before = counts.get(key, 0)
    counts[key] = (before if type(before) is int else 0) + 1
    data["counts"] = counts
    data[direction] = {**figures, "ok": ok, "at": now}
    try:
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        write_atomic(path, json.dumps(data, default=str).encode(), 0o644)
    except OSError as e:
        log.warning("cannot record the last push in %s: %s", path, e.strerror or e)


def record_wire(run_dir: str, counts: Dict[str, Any], now: Optional[float] = None) -> None:
    """Note what the agent refused or did not count on the wire since it started (its
    WireCounts) in `<run_dir>/wire.json`. Only the agent writes it, when the counts change
    (at most once a second). A failure to write is logged and changes nothing else."""
    now = time.time() if now is None else now
    path = os.path.join(run_dir, WIRE_FILE)
    try:
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        write_atomic(path, json.dumps({**counts, "at": now}, default=str).encode(), 0o644)
    except OSError as e:
        log.warning("cannot record the wire counts in %s: %s", path, e.strerror or e)


def _wire(run_dir: str, now: float, unreadable: List[str]) -> Optional[Dict[str, Any]]:
    data = _read_state(os.path.join(run_dir, WIRE_FILE), "wire counts", unreadable)
    if data is None:
        return None

    def count(v: Any) -> int:
        return v if type(v) is int and v >= 0 else 0

    refused = data.get("control_refused")
    raw_at: Any = data.get("sync_foreign_at")
    at: Optional[float] = None
    if type(raw_at) in (int, float) and raw_at > 0:
        at = float(raw_at)
    return {
        "sync_foreign": count(data.get("sync_foreign")),
        "sync_other_port": count(data.get("sync_other_port")),
        "sync_foreign_last": str(data.get("sync_foreign_last") or "")[:80],
        "sync_foreign_age_s": None if at is None else round(now - at, 1),
        "control_refused": {str(k)[:40]: count(v) for k, v in refused.items()}
        if isinstance(refused, dict) else {},
    }


COUNTS_FILE = "transitions.json"
COUNTS_LOCK = "transitions.lock"


def count_transition(run_dir: str, state: str, outcome: str) -> None:
    """Count a transition that ran in `<run_dir>/transitions.json` ({"MASTER done": n, ...},
    since boot: the metrics' lvs_hooks_transitions_total; the journal is bounded, so counting
    its records would not be monotonic). Several processes may run transitions (the agent, a
    notify door without one): changed under a lock of its own. A failure is logged only."""
    import filelock

    from lvs_hooks.lockfile import FileLock

    path = os.path.join(run_dir, COUNTS_FILE)
    try:
        with FileLock(os.path.join(run_dir, COUNTS_LOCK), timeout=1.0).acquire():
            try:
                data = _read_json(path, 1 << 16)
            except FileNotFoundError:
                data = {}
            except ValueError:
                data = {}  # cut or damaged: start again (a counter reset, as after a reboot)
            if not isinstance(data, dict):
                data = {}
            key = f"{state} {outcome}"
            before = data.get(key, 0)
            data[key] = (before if type(before) is int else 0) + 1
            write_atomic(path, json.dumps(data, sort_keys=True).encode(), 0o644)
    except (OSError, filelock.Timeout, LvsHooksError) as e:
        log.warning("transition not counted in %s: %s", path, _why(e))


def read_transition_counts(run_dir: str) -> Dict[str, int]:
    try:
        data = _read_json(os.path.join(run_dir, COUNTS_FILE), 1 << 16)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if type(v) is int and " " in str(k)}


# --------------------------------------------------------------------------------------------
# Gathering


def gather(
    cfg: Config,
    agent: Optional[Dict[str, Any]] = None,
    ipvs: Optional[IpvsRead] = None,
    now: Optional[float] = None,
    systemd_wants: str = SYSTEMD_WANTS,
) -> Dict[str, Any]:
    """The health report as plain data (JSON-ready). `agent`: what a probe of the agent's
    socket found ({"running": bool, "busy": bool, "detail": str}), None when not probed;
    `ipvs`: reads the services, counters and sync daemons (None: IPVS is not looked at)."""
    now = time.time() if now is None else now
    run_dir = cfg.paths.run_dir
    unreadable: List[str] = []
    h: Dict[str, Any] = {"at": now, "unreadable": unreadable}

    # role
    role = None
    data = _read_state(os.path.join(run_dir, ROLE_FILE), "role", unreadable, 4096)
    if data is not None and isinstance(data.get("state"), str):
        at = data.get("at") if type(data.get("at")) in (int, float) else None
        role = {"state": data["state"], "name": data.get("name") or "", "since": at,
                "age_s": None if at is None else round(now - at, 1)}
    h["role"] = role

    # last transition (the journal outlives a reboot; role.json does not)
    h["last_transition"] = None
    try:
        h["last_transition"] = _last_transition(cfg, now)
    except (OSError, ValueError) as e:
        unreadable.append(f"journal {os.path.join(cfg.paths.state_dir, JOURNAL_FILE)}: "
                          f"{_why(e)}")

    h["transitions_since_boot"] = read_transition_counts(run_dir)

    # agent: probed by the caller; expected when it ran since boot or its unit is enabled
    warm_path = os.path.join(run_dir, WARMUP_FILE)
    enabled = bool(glob.glob(systemd_wants))
    ran = os.path.lexists(warm_path)
    h["agent"] = {
        "running": None if agent is None else bool(agent.get("running")),
        "busy": False if agent is None else bool(agent.get("busy")),
        "detail": "" if agent is None else str(agent.get("detail", "")),
        "expected": enabled or ran,
        "unit_enabled": enabled,
        "ran_since_boot": ran,
    }

    # warm-up gate
    h["warmup"] = _warmup(cfg, now, unreadable)

    # pushes
    h["push"] = _pushes(run_dir, now, unreadable)
    h["control_channel"] = bool(cfg.control.key_file)
    # what the agent refused or did not count on the wire
    h["wire"] = _wire(run_dir, now, unreadable)

    # periodic duties
    h["duties"] = _duties(run_dir, now, unreadable)

    # snapshots
    h["newest_snapshot"] = None
    try:
        store = SnapshotStore(cfg.paths.state_dir, cfg.snapshot.keep)
        good = [g for g in store.generations(now) if g.ok]
        if good:
            g = good[0]
            h["newest_snapshot"] = {"path": str(g.path), "age_s": round(now - g.captured_at, 1),
                                    "templates": g.templates}
    except (OSError, SnapshotError) as e:
        unreadable.append(f"snapshots in {cfg.paths.state_dir}: {_why(e)}")

    # IPVS over netlink: cheap, no connection table
    h["ipvs"] = None
    if ipvs is not None:
        try:
            services, counts, daemons = ipvs()
        except LvsHooksError as e:
            unreadable.append(f"IPVS: {_why(e)}")
        else:
            h["ipvs"] = _ipvs_part(services, counts, daemons)
    return h


def _last_transition(cfg: Config, now: float) -> Optional[Dict[str, Any]]:
    from lvs_hooks.events.journal import Journal  # the events layer; health is read by it too

    records, _bad = Journal(cfg.paths.state_dir, cfg.transitions.journal_keep).read()
    for r in reversed(records):
        if r.get("outcome") not in ("done", "failed", "superseded"):
            continue
        ev = r.get("event")
        ev = ev if isinstance(ev, dict) else {}
        steps = r.get("steps")
        steps = steps if isinstance(steps, list) else []
        failed = [s.get("step") for s in steps if isinstance(s, dict) and not s.get("ok")]
        latency = None
        for s in steps:
            fig = s.get("figures") if isinstance(s, dict) else None
            if isinstance(fig, dict) and type(fig.get("latency_ms")) in (int, float):
                latency = fig["latency_ms"]
        at = _epoch_of(r.get("at"))
        return {
            "state": ev.get("state"),
            "name": ev.get("name"),
            "outcome": r.get("outcome"),
            "failed_steps": failed,
            "at": at,
            "age_s": None if at is None else round(now - at, 1),
            "ms": r.get("ms") if type(r.get("ms")) in (int, float) else None,
            "latency_ms": latency,
        }
    return None


def _warmup(cfg: Config, now: float, unreadable: List[str]) -> Optional[Dict[str, Any]]:
    from lvs_hooks.warmup import WarmupStore, decide, elapsed_since_start

    try:
        state = WarmupStore(cfg.paths.run_dir).load()
    except LvsHooksError as e:
        unreadable.append(_why(e))
        return {"state": "unreadable", "eligible": False, "reason": _why(e), "corrupt": True}
    decision = decide(state, now, cfg.warmup.max_wait)
    if state is None:
        kind = "not started"
    elif state.handover:
        kind = "handover"
    elif state.warm:
        kind = "warm"
    else:
        kind = "cold"
    return {
        "state": kind,
        "eligible": decision.eligible,
        "reason": decision.reason,
        "warm": bool(state and state.warm),
        "handover": bool(state and state.handover),
        "started": None if state is None else state.started,
        "elapsed_s": None if state is None else round(elapsed_since_start(state, now), 1),
        "max_wait": cfg.warmup.max_wait,
        "corrupt": False,
    }


def _pushes(run_dir: str, now: float, unreadable: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"sent": None, "received": None, "counts": {}}
    data = _read_state(os.path.join(run_dir, PUSH_FILE), "last push", unreadable, 1 << 20)
    if data is None:
        return out
    for direction in ("sent", "received"):
        p = data.get(direction)
        if isinstance(p, dict) and type(p.get("at")) in (int, float):
            out[direction] = {**p, "age_s": round(now - p["at"], 1)}
    if isinstance(data.get("counts"), dict):
        out["counts"] = {k: v for k, v in data["counts"].items() if type(v) is int}
    return out


def _duties(run_dir: str, now: float, unreadable: List[str]) -> Dict[str, Any]:
    data = _read_state(os.path.join(run_dir, DUTIES_FILE), "duties", unreadable) or {}
    tasks = data.get("tasks")
    if not isinstance(tasks, dict):
        return {"tasks": {}, "current": False}
    clean = {}
    for name, t in tasks.items():
        if isinstance(t, dict):
            clean[str(name)] = {
                "failures": t.get("failures") if type(t.get("failures")) is int else 0,
                "in_a_row": t.get("in_a_row") if type(t.get("in_a_row")) is int else 0,
                "last_error": str(t.get("last_error", "")),
            }
    # the streaks of a process that is gone are history, not a failing duty
    return {"tasks": clean, "pid": data.get("pid"), "current": _pid_alive(data.get("pid"))}


def _ipvs_part(services: list, counts: list, daemons: list) -> Dict[str, Any]:
    return {
        "services": len(services),
        "templates": sum(c.persistent for c in counts),
        "connections": sum(c.active + c.inactive for c in counts),
        "sync_daemons": [{"state": d.state, "ifname": d.ifname, "syncid": d.syncid}
                         for d in daemons],
    }


# --------------------------------------------------------------------------------------------
# The rule of `status --check`


def judge(h: Dict[str, Any], cfg: Config) -> Tuple[int, List[str], List[str]]:
    """(state, reasons for that state, notes): OK 0, WARNING 1, CRITICAL 2, UNKNOWN 3.
    monitoring.md says what each reason means. Pure: only `h` and the settings."""
    crit: List[str] = []
    warn: List[str] = []
    unknown: List[str] = []
    notes: List[str] = []

    for what in h["unreadable"]:
        # a state file lvs-hooks wrote and cannot read back is its own defect
        (crit if "corrupt" in what else unknown).append(f"cannot read {what}")

    agent = h["agent"]
    if agent["running"] is False and agent["expected"]:
        why = "its unit is enabled" if agent["unit_enabled"] else "it ran since boot"
        crit.append(f"agent not running ({agent['detail'] or 'no answer'}; {why})")
    elif agent.get("busy"):
        # it holds the socket and did not say hello in time: busy, or hung (the doors take
        # the events back after 60 s of silence)
        warn.append(f"agent busy ({agent['detail']})")
    elif agent["running"] is True:
        notes.append("agent up")

    t = h["last_transition"]
    role = h["role"]
    if t is not None and t["outcome"] == "failed":
        crit.append(f"last transition {t['state']} failed ({', '.join(t['failed_steps'])}) "
                    f"{_ago(t['age_s'])}")
    if role is None:
        warn.append("no keepalived event since boot (keepalived not running, or its instance "
                    "not in transitions.instances?)")
    else:
        notes.append(f"{role['state']} {_ago(role['age_s'], 'for')}")
        if role["state"] == "FAULT":
            warn.append("keepalived reports FAULT")

    state = role["state"] if role else None
    w = h["warmup"]
    if w is not None and not w.get("corrupt") and agent["expected"]:
        if w["state"] == "handover" and state != "MASTER":
            warn.append("handover flag still set: this director will not preempt "
                        "(lvs-hooks handover --cancel)")
        elif w["state"] == "cold" and w["eligible"] and state != "MASTER":
            warn.append(f"not warm after {w['elapsed_s']:.0f} s (warmup.max_wait "
                        f"{w['max_wait']:g} s): no complete push or verified reseed")
        elif w["state"] == "warm":
            notes.append("warm")

    push = h["push"]
    rec = push.get("received")
    if state in ("BACKUP", "FAULT") and h["control_channel"] and agent["running"] is not False:
        if rec is not None and not (rec.get("complete") and not rec.get("missing")):
            warn.append(f"last push received {_ago(rec['age_s'])} incomplete: "
                        f"{rec.get('reason') or str(rec.get('missing', 0)) + ' missing'}")
        limit = PUSHES_MISSED * cfg.push.interval
        since = role["age_s"] if role else None
        if limit > 0 and (rec is None or rec["age_s"] > limit) and (
            since is not None and since > limit
        ):
            last = "none" if rec is None else _ago(rec["age_s"])
            warn.append(f"no push received for more than {limit:g} s as backup (last: {last})")
        elif rec is not None and rec.get("complete"):
            notes.append(f"last push {_ago(rec['age_s'])} complete")
    sent = push.get("sent")
    if state == "MASTER" and sent is not None and not sent.get("ok"):
        warn.append(f"last push sent {_ago(sent['age_s'])} failed: {sent.get('error', '')}")

    wire = h.get("wire")
    if wire and wire["sync_foreign"] and wire["sync_foreign_age_s"] is not None \
            and wire["sync_foreign_age_s"] <= FOREIGN_RECENT:
        warn.append(f"{wire['sync_foreign']} sync datagrams from sources other than the "
                    f"pusher during pushes since the agent started, the last "
                    f"{_ago(wire['sync_foreign_age_s'])} from {wire['sync_foreign_last']}: "
                    "someone else sends on the sync group (the kernel took them in)")

    duties = h["duties"]
    if duties.get("current"):
        for name, d in sorted(duties["tasks"].items()):
            if d["in_a_row"]:
                warn.append(f"periodic {name} failing ({d['in_a_row']} in a row): "
                            f"{d['last_error'][:120]}")

    snap = h["newest_snapshot"]
    max_age = cfg.metrics.snapshot_max_age
    if max_age > 0:
        if snap is None:
            if not any(u.startswith("snapshots") for u in h["unreadable"]):
                warn.append(f"no snapshot in {cfg.paths.state_dir}")
        elif snap["age_s"] > max_age:
            warn.append(f"newest snapshot {snap['age_s']:.0f} s old (metrics.snapshot_max_age "
                        f"{max_age:g} s)")

    ipvs = h["ipvs"]
    if ipvs is not None:
        daemons = {d["state"] for d in ipvs["sync_daemons"]}
        if state == "BACKUP" and "backup" not in daemons:
            warn.append("no backup sync daemon: the master's templates do not reach this "
                        "director")
        if state == "MASTER" and "master" not in daemons:
            warn.append("no master sync daemon: the backups get no template from this director")
        notes.append(f"{ipvs['templates']} templates")

    if crit:
        return CRITICAL, crit + warn, notes
    if unknown:
        return UNKNOWN, unknown + warn, notes
    if warn:
        return WARNING, warn, notes
    return OK, [], notes


def check_line(state: int, reasons: List[str], notes: List[str]) -> str:
    """The one line of `status --check`: `LVS-HOOKS <STATE> - <reasons or notes>`."""
    text = "; ".join(reasons) if reasons else ", ".join(notes) or "nothing to report"
    text = " ".join(text.split())
    if len(text) > MAX_LINE:  # monitoring systems keep the first few KB of a plugin's output
        text = text[: MAX_LINE - 4] + " ..."
    return f"LVS-HOOKS {STATE_NAMES[state]} - {text}"


def _ago(age: Optional[float], word: str = "") -> str:
    if age is None:
        return ""
    if age < 120:
        span = f"{age:.0f} s"
    elif age < 7200:
        span = f"{age / 60:.0f} min"
    else:
        span = f"{age / 3600:.1f} h"
    return f"{word} {span}" if word else f"{span} ago"


# --------------------------------------------------------------------------------------------
# For people


def render_health(h: Dict[str, Any]) -> List[str]:
    """The health part of `lvs-hooks status`, a line each."""
    lines: List[str] = []
    role = h["role"]
    lines.append("role: " + (f"{role['state']} ({role['name']}) {_ago(role['age_s'], 'for')}"
                             if role else "unknown (no keepalived event since boot)"))
    t = h["last_transition"]
    if t:
        res = t["outcome"] + (f" ({', '.join(t['failed_steps'])})"
                              if t["failed_steps"] else "")
        lat = f", {t['latency_ms']:.0f} ms after MASTER" if t["latency_ms"] is not None else ""
        lines.append(f"last transition: {t['state']} {t['name']} {_ago(t['age_s'])}: {res}{lat}")
    else:
        lines.append("last transition: none recorded")
    a = h["agent"]
    if a["running"] is None:
        ag = "not asked"
    elif a["running"]:
        ag = "running" + (", busy" if a.get("busy") else "") + (
            f" ({a['detail']})" if a["detail"] else "")
    else:
        ag = f"NOT running ({a['detail']})" + (
            "; expected: " + ("its unit is enabled" if a["unit_enabled"] else "it ran since boot")
            if a["expected"] else "; not used")
    lines.append(f"agent: {ag}")
    w = h["warmup"]
    if w:
        lines.append(f"warm-up gate: {'eligible' if w['eligible'] else 'NOT eligible'}: "
                     f"{w['reason']}")
    for direction in ("received", "sent"):
        p = h["push"].get(direction)
        if not p:
            continue
        if direction == "received":
            res = ("complete" if p.get("complete") and not p.get("missing")
                   else f"INCOMPLETE: {p.get('reason') or str(p.get('missing')) + ' missing'}")
            lines.append(f"last push received: {_ago(p['age_s'])} from {p.get('source', '?')}, "
                         f"{p.get('templates', 0)} templates, {res}")
        else:
            res = (f"{p.get('planned', 0)} templates in {p.get('datagrams', 0)} datagrams"
                   if p.get("ok") else f"FAILED: {p.get('error', '')}")
            lines.append(f"last push sent: {_ago(p['age_s'])}, {res}")
    wire = h.get("wire")
    if wire and (wire["sync_foreign"] or wire["sync_other_port"]):
        last = (f", the last {_ago(wire['sync_foreign_age_s'])} from "
                f"{wire['sync_foreign_last']}" if wire["sync_foreign"] else "")
        lines.append(f"sync group during pushes: {wire['sync_foreign']} datagrams from other "
                     f"sources{last}; {wire['sync_other_port']} from the pusher's address, "
                     "another port (not counted in the push)")
    if wire and wire["control_refused"]:
        lines.append("control messages refused: " + ", ".join(
            f"{n} {k}" for k, n in sorted(wire["control_refused"].items())))
    d = h["duties"]
    failing = {k: v for k, v in d["tasks"].items() if v["failures"]}
    if failing:
        for name, t2 in sorted(failing.items()):
            now_failing = d.get("current") and t2["in_a_row"]
            lines.append(f"periodic {name}: {t2['failures']} failures"
                         + (f", {t2['in_a_row']} in a row now: {t2['last_error']}"
                            if now_failing else "; runs again"))
    else:
        lines.append("periodic duties: no failure")
    for u in h["unreadable"]:
        lines.append(f"could not read {u}")
    return lines


def read_ipvs() -> Tuple[list, list, list]:
    """IPVS over netlink: services, per-real-server counters, sync daemons (KernelError when
    IPVS is not there or refuses)."""
    from lvs_hooks.kernel.netlink import IPVS  # pyroute2: only when IPVS is looked at

    with IPVS() as ipvs:
        return ipvs.services(), ipvs.dest_counts(), ipvs.daemons()
