"""Prometheus text metrics for node_exporter's textfile collector (`metrics.textfile`).

Written atomically (write_atomic: node_exporter never reads half a file) after each transition,
each push (sent or received) and, at most every MIN_PERIODIC seconds, after the periodic duties;
by whichever process did the work (the agent, or a FIFO reader or notify door without one). Each
write gathers the whole health report afresh (lvs_hooks.health: files of the run and state
directories, IPVS over netlink; never the connection table), so the last writer is always
right. Families are `lvs_hooks_*`, counters end in `_total`, and the per-real-server families
carry node_exporter's ipvs collector's labels (local_address, local_port, local_mark, proto,
remote_address, remote_port, with its values: an fwmark service is proto "FWM", local_mark the
mark as 8 hex digits, local_address "" and local_port "0"), so they join
node_ipvs_backend_connections_active. monitoring.md (the source tree's docs) lists the families.
"""

import logging
import os
import socket
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from lvs_hooks import __version__, health
from lvs_hooks.atomicfile import write_atomic
from lvs_hooks.config import Config
from lvs_hooks.errors import LvsHooksError

log = logging.getLogger(__name__)

# The periodic duties run every 0.5 s while backup (fwmark repair); the metrics need not.
MIN_PERIODIC = 5.0
AGENT_SOCKET = "agent.sock"
ROLES = ("MASTER", "BACKUP", "FAULT", "STOP")

Labels = Dict[str, str]


class _Families:
    """Families in the order they are declared, each with its HELP, TYPE and samples."""

    def __init__(self) -> None:
        self.order: List[str] = []
        self.meta: Dict[str, Tuple[str, str]] = {}
        self.samples: Dict[str, List[Tuple[Labels, float]]] = {}

    def add(self, name: str, kind: str, help_: str, value: Optional[float],
            labels: Optional[Labels] = None) -> None:
        if name not in self.meta:
            self.order.append(name)
            self.meta[name] = (kind, help_)
            self.samples[name] = []
        if value is not None:
            self.samples[name].append((dict(labels or {}), float(value)))

    def text(self) -> str:
        out: List[str] = []
        for name in self.order:
            kind, help_ = self.meta[name]
            out.append(f"# HELP {name} {_escape_help(help_)}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in self.samples[name]:
                lab = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                out.append(f"{name}{{{lab}}} {_number(value)}" if lab
                           else f"{name} {_number(value)}")
        return "\n".join(out) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def ipvs_labels(service: Any, addr: str, port: int) -> Labels:
    """node_exporter's ipvs collector's labels for one real server of one service."""
    if service.fwmark:
        local = {"local_address": "", "local_port": "0", "local_mark": f"{service.fwmark:08X}",
                 "proto": "FWM"}
    else:
        local = {"local_address": service.addr or "", "local_port": str(service.port),
                 "local_mark": "", "proto": service.protocol or ""}
    return {**local, "remote_address": addr, "remote_port": str(port)}


def render(h: Dict[str, Any], cfg: Config, services: Iterable[Any] = (),
           counts: Iterable[Any] = ()) -> str:
    """The metrics file's text for a health report (health.gather) and, when IPVS was read,
    its services and per-real-server counters."""
    f = _Families()
    f.add("lvs_hooks_info", "gauge", "lvs-hooks' version.", 1, {"version": __version__})
    f.add("lvs_hooks_metrics_timestamp_seconds", "gauge",
          "When this file was written (Unix time).", h["at"])
    state, _reasons, _notes = health.judge(h, cfg)
    f.add("lvs_hooks_check_status", "gauge",
          "What `lvs-hooks status --check` says: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.", state)
    f.add("lvs_hooks_unreadable", "gauge",
          "How many of the files and interfaces health reads could not be read.",
          len(h["unreadable"]))

    role = h["role"]
    now_role = role["state"] if role else "unknown"
    for r in (*ROLES, "unknown"):
        f.add("lvs_hooks_role", "gauge",
              "The role the last transition left (1 for the current one; unknown: none since "
              "boot).", 1 if r == now_role else 0, {"role": r})
    f.add("lvs_hooks_role_since_timestamp_seconds", "gauge",
          "When the last transition that set the role ended (Unix time).",
          role["since"] if role else None)

    t = h["last_transition"]
    f.add("lvs_hooks_last_transition_timestamp_seconds", "gauge",
          "When the last transition that ran began (Unix time).", t["at"] if t else None)
    f.add("lvs_hooks_last_transition_success", "gauge",
          "1 if every step of the last transition succeeded, 0 if one failed.",
          (0 if t["outcome"] == "failed" else 1) if t else None)
    f.add("lvs_hooks_last_transition_duration_seconds", "gauge",
          "How long the last transition took.",
          t["ms"] / 1000 if t and t["ms"] is not None else None)
    f.add("lvs_hooks_last_takeover_latency_seconds", "gauge",
          "Last MASTER transition: from keepalived announcing MASTER to the end of the reseed.",
          t["latency_ms"] / 1000 if t and t["latency_ms"] is not None else None)

    for key, n in sorted(h.get("transitions_since_boot", {}).items()):
        tstate, _, toutcome = key.partition(" ")
        f.add("lvs_hooks_transitions_total", "counter",
              "Transitions that ran since boot, by keepalived's state and outcome (done, "
              "failed, superseded).", n, {"state": tstate, "outcome": toutcome})

    a = h["agent"]
    f.add("lvs_hooks_agent_up", "gauge", "1 if the agent's socket takes connections.",
          None if a["running"] is None else int(a["running"]))
    w = h["warmup"] or {}
    f.add("lvs_hooks_warm", "gauge",
          "1 once the table is warm (a complete push checked, a verified reseed, or master).",
          int(bool(w.get("warm"))) if w else None)
    f.add("lvs_hooks_warmup_eligible", "gauge",
          "1 if the warm-up gate lets this director preempt (track file 0).",
          int(bool(w.get("eligible"))) if w else None)
    f.add("lvs_hooks_warmup_handover", "gauge", "1 while a handover flag is set.",
          int(bool(w.get("handover"))) if w else None)

    push = h["push"]
    for direction in ("received", "sent"):
        p = push.get(direction)
        if not p:
            continue
        labels = {"direction": direction}
        complete = (p.get("complete") and not p.get("missing")) if direction == "received" \
            else p.get("ok")
        f.add("lvs_hooks_last_push_timestamp_seconds", "gauge",
              "When the last push was sent or received (Unix time).", p["at"], labels)
        f.add("lvs_hooks_last_push_complete", "gauge",
              "1 if the last push was complete (received: digest right and nothing missing "
              "after the check; sent: sent without error).", int(bool(complete)), labels)
        n = p.get("templates") if direction == "received" else p.get("planned")
        f.add("lvs_hooks_last_push_templates", "gauge", "Templates in the last push.",
              n if type(n) is int else None, labels)
    for key, n in sorted(push.get("counts", {}).items()):
        direction, _, result = key.partition("_")
        f.add("lvs_hooks_pushes_total", "counter",
              "Pushes sent or received since boot, by result (ok: sent, or received complete "
              "and checked).", n, {"direction": direction, "result": result})

    wire = h.get("wire")
    if wire:
        f.add("lvs_hooks_sync_foreign_datagrams_total", "counter",
              "Sync datagrams from another address than the pusher's during pushes, since the "
              "agent started (the kernel's backup daemon took them in).",
              wire["sync_foreign"])
        f.add("lvs_hooks_sync_other_port_datagrams_total", "counter",
              "Sync datagrams from the pusher's address but not the port its push-begin "
              "announced, during pushes, since the agent started (not counted in the push).",
              wire["sync_other_port"])
        for cat, n in sorted(wire["control_refused"].items()):
            f.add("lvs_hooks_control_refused_total", "counter",
                  "Control messages refused since the agent started, by category.", n,
                  {"category": cat})

    for name, d in sorted(h["duties"]["tasks"].items()):
        f.add("lvs_hooks_duty_failures_total", "counter",
              "Failures of a periodic duty since the process that runs the duties started.",
              d["failures"], {"duty": name})
        f.add("lvs_hooks_duty_failures_in_a_row", "gauge",
              "Failures of a periodic duty in a row up to its last run (0: it last succeeded).",
              d["in_a_row"] if h["duties"].get("current") else 0, {"duty": name})

    snap = h["newest_snapshot"]
    f.add("lvs_hooks_snapshot_timestamp_seconds", "gauge",
          "Capture time of the newest good snapshot (Unix time).",
          h["at"] - snap["age_s"] if snap else None)
    f.add("lvs_hooks_snapshot_templates", "gauge", "Templates in the newest good snapshot.",
          snap["templates"] if snap and snap["templates"] is not None else None)

    ipvs = h["ipvs"]
    f.add("lvs_hooks_ipvs_up", "gauge", "1 if IPVS answered over netlink.", int(ipvs is not None))
    if ipvs is not None:
        running = {d["state"] for d in ipvs["sync_daemons"]}
        for st in ("master", "backup"):
            f.add("lvs_hooks_sync_daemon_up", "gauge", "1 if the kernel runs this sync daemon.",
                  int(st in running), {"state": st})
        by_key = {s.key(): s for s in services}
        for c in counts:
            svc = by_key.get(c.service_key)
            if svc is None:
                continue
            f.add("lvs_hooks_templates", "gauge",
                  "Persistence templates bound to a real server (the kernel's counter).",
                  c.persistent, ipvs_labels(svc, c.addr, c.port))
    return f.text()


def agent_listens(run_dir: str) -> bool:
    """Whether something accepts connections on `<run_dir>/agent.sock` (connect and close: the
    agent's inbox drops a connection that sends nothing, without a word)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(1.0)
    try:
        sock.connect(os.path.join(run_dir, AGENT_SOCKET))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _read_ipvs(into: Dict[str, Any]) -> Tuple[list, list, list]:
    from lvs_hooks.kernel.netlink import IPVS

    with IPVS() as ipvs:
        into["v"] = (ipvs.services(), ipvs.dest_counts(), ipvs.daemons())
    return into["v"]


_last_write = {"at": -1e18}
_write_lock = threading.Lock()


def write_metrics(cfg: Config, why: str, now: Optional[float] = None) -> bool:
    """Write `metrics.textfile` if configured; never raises (a monitoring file must not fail a
    transition or a push): a failure is logged. True if written."""
    path = cfg.metrics.textfile
    if not path:
        return False
    with _write_lock:
        try:
            raw: Dict[str, Any] = {}
            running = agent_listens(cfg.paths.run_dir)
            h = health.gather(cfg, agent={"running": running, "detail": ""},
                              ipvs=lambda: _read_ipvs(raw), now=now)
            services, counts, _daemons = raw.get("v", ([], [], []))
            write_atomic(path, render(h, cfg, services, counts).encode(), 0o644)
            _last_write["at"] = time.monotonic()
        except (OSError, LvsHooksError) as e:
            log.warning("metrics %s not written (after %s): %s", path, why,
                        e.format_message() if isinstance(e, LvsHooksError) else e.strerror or e)
            return False
        except Exception:  # a bug: the traceback, and the work it followed goes on
            log.exception("metrics %s not written (after %s)", path, why)
            return False
    return True


def write_periodic(cfg: Config) -> bool:
    """After a turn of the periodic duties: at most every MIN_PERIODIC seconds."""
    if not cfg.metrics.textfile or time.monotonic() - _last_write["at"] < MIN_PERIODIC:
        return False
    return write_metrics(cfg, "periodic duties")
