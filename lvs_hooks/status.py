"""`lvs-hooks status`: what this director holds now, in one report.

`summarize` is pure (tested with plain values); `build_status` gathers the values from the kernel
and the snapshot store, and the templates from the agent's table in memory when it is the table
and a whole read of /proc/net/ip_vs_conn would be over table.read_budget (design.md 2.4:
160,000 lines took minutes); connections are then the kernel's per-real-server counters, and
so are the templates while the agent's table is not the table yet.
"""

import os
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple

from lvs_hooks.config import Config
from lvs_hooks.errors import KernelError, SnapshotError
from lvs_hooks.health import render_health
from lvs_hooks.kernel.conntable import read_conn_table
from lvs_hooks.kernel.model import ConnEntry, Service, host_port
from lvs_hooks.kernel.netlink import IPVS, SyncDaemon, Timeouts
from lvs_hooks.snapshot import SnapshotStore

if TYPE_CHECKING:  # the agent's table; status without an agent never loads it
    from lvs_hooks.director.live import LiveTable


def summarize(
    services: Sequence[Service],
    entries: Iterable[ConnEntry],
    daemons: Sequence[SyncDaemon],
    timeouts: Optional[Timeouts],
    newest_snapshot: Optional[dict],
    malformed: int = 0,
    connections: Optional[Dict[Tuple, int]] = None,
    template_counts: Optional[Dict[Tuple[Tuple, str, int, str], int]] = None,
) -> dict:
    """The status report as plain data (JSON-ready). From the table in memory, which keeps no
    connections one by one and counts its templates without an entry each: `connections` per
    service key, and `template_counts` per (service key, real server, port, origin) beside
    (or instead of) `entries`."""
    per_dest: dict = defaultdict(Counter)  # service key -> Counter((daddr, dport, origin))
    conns: Counter = Counter()
    templates = 0
    origins: Counter = Counter()
    if connections is not None:
        conns.update(connections)
    for (skey, daddr, dport, origin), n in (template_counts or {}).items():
        templates += n
        origins[origin] += n
        per_dest[skey][(daddr, dport, origin)] += n
    for e in entries:
        if not e.is_template:
            conns[e.service_key()] += 1
            continue
        templates += 1
        origin = e.origin or "?"
        origins[origin] += 1
        per_dest[e.service_key()][(e.daddr, e.dport, origin)] += 1
    svc_reports = []
    known = set()
    for s in services:
        known.add(s.key())
        counts = per_dest.get(s.key(), Counter())
        dests = []
        for d in s.destinations:
            by_origin = {
                o: n for (a, p, o), n in counts.items() if a == d.addr and (p == d.port or s.fwmark)
            }
            dests.append(
                {
                    "addr": d.addr,
                    "port": d.port,
                    "fwd": d.fwd_method,
                    "weight": d.weight,
                    "templates": sum(by_origin.values()),
                    "by_origin": by_origin,
                }
            )
        svc_reports.append(
            {
                "service": s.describe(),
                "persistent": s.persistent,
                "persistence_timeout": s.timeout if s.persistent else None,
                "templates": sum(counts.values()),
                "connections": conns.get(s.key(), 0),
                "destinations": dests,
            }
        )
    orphans = sum(sum(c.values()) for k, c in per_dest.items() if k not in known)
    return {
        "templates": templates,
        "templates_by_origin": dict(origins),
        "templates_without_service": orphans,
        "connections": sum(conns.values()),
        "malformed_lines": malformed,
        "services": svc_reports,
        "sync_daemons": [d.__dict__ for d in daemons],
        "timeouts": timeouts.__dict__ if timeouts else None,
        "newest_snapshot": newest_snapshot,
    }


def build_status(
    cfg: Config, store: SnapshotStore, live: Optional["LiveTable"] = None,
    from_kernel: bool = False,
) -> dict:
    """`live`: the agent's table in memory (the agent answers `lvs-hooks status`); used when it
    is the table and the kernel counts more entries than table.read_budget, unless
    `from_kernel`; before it is the table, over the budget, the kernel's per-real-server
    counters instead of a whole read. The report says which in `source`."""
    proc_root = cfg.paths.proc_root
    newest = _newest_snapshot(store)
    try:
        with IPVS() as ipvs:
            services = ipvs.services()
            daemons = ipvs.daemons()
            timeouts = ipvs.timeouts()
            counts = ipvs.dest_counts() if live is not None and not from_kernel else []
    except KernelError as e:
        # No ip_vs module, or netlink refused: the rest of the report (role, agent, gate,
        # pushes, snapshots: lvs_hooks.health) still stands, and says what was not read.
        report = summarize([], [], [], None, newest)
        report["source"] = {"table": "none"}
        report["unreadable"] = [f"IPVS: {e.format_message()}"]
        return report
    entries = sum(c.active + c.inactive + c.persistent for c in counts)
    if live is not None and entries > cfg.table.read_budget:
        conns: Counter = Counter()
        for c in counts:
            conns[c.service_key] += c.active + c.inactive
        if live.ready:
            template_counts = live.template_counts()
        else:
            # The table in memory is still filling from the sync stream, and the kernel's
            # table is too large to read (lab, under load: status read it for 220 s). The
            # kernel's per-real-server counters give the templates, without their origin.
            template_counts = {(c.service_key, c.addr, c.port, "?"): c.persistent
                               for c in counts if c.persistent}
        report = summarize(services, (), daemons, timeouts, newest, connections=dict(conns),
                           template_counts=template_counts)
        report["source"] = {
            "table": "in memory" if live.ready else "counters",
            "kernel_entries": entries,
            "kernel_templates": sum(c.persistent for c in counts),
        }
        return report
    # ip_vs_conn_sync says LOCAL or SYNC for each entry; older kernels lack it.
    sync_path = os.path.join(proc_root, "net", "ip_vs_conn_sync")
    try:
        table = read_conn_table(proc_root, sync=os.path.exists(sync_path), reason="status")
    except KernelError as e:
        report = summarize(services, [], daemons, timeouts, newest)
        report["source"] = {"table": "none"}
        report["unreadable"] = [f"connection table: {e.format_message()}"]
        return report
    report = summarize(services, table.entries, daemons, timeouts, newest, table.malformed)
    report["source"] = {"table": "kernel"}
    return report


def _newest_snapshot(store: SnapshotStore) -> Optional[dict]:
    try:
        gens = store.generations()
    except (OSError, SnapshotError):
        # status must still report the kernel's side when the state dir is unreadable
        return None
    good = [g for g in gens if g.ok]
    if not good:
        return None
    g = good[0]
    return {
        "path": str(g.path),
        "age_s": round(time.time() - g.captured_at, 1),
        "templates": g.templates,
    }


def render_status(r: dict) -> str:
    lines: List[str] = []
    health = r.get("health")
    if health:
        lines.extend(render_health(health))
    for u in r.get("unreadable", []):
        lines.append(f"could not read {u}")
    src = r.get("source") or {}
    ipvs_read = src.get("table") != "none" or bool(r["services"])
    origin = ", ".join(f"{k} {v}" for k, v in sorted(r["templates_by_origin"].items()))
    if src.get("table") != "none":
        lines.append(
            f"templates: {r['templates']}" + (f" ({origin})" if origin else "")
            + f"   connections: {r['connections']}"
        )
    if r["templates_without_service"]:
        lines.append(f"templates of no current service: {r['templates_without_service']}")
    for s in r["services"]:
        pers = f"persistent {s['persistence_timeout']} s" if s["persistent"] else "not persistent"
        lines.append(f"{s['service']}  {pers}  templates {s['templates']}")
        for d in s["destinations"]:
            by = ", ".join(f"{k} {v}" for k, v in sorted(d["by_origin"].items()))
            lines.append(
                f"  -> {host_port(d['addr'], d['port'])} {d['fwd']} w{d['weight']}  "
                f"templates {d['templates']}" + (f" ({by})" if by else "")
            )
    if r["sync_daemons"]:
        for d in r["sync_daemons"]:
            lines.append(f"sync daemon: {d['state']} on {d['ifname']} syncid {d['syncid']}")
    elif ipvs_read:
        lines.append("sync daemon: none")
    t = r["timeouts"]
    if t:
        lines.append(f"timeouts (tcp tcpfin udp): {t['tcp']} {t['tcpfin']} {t['udp']}")
    snap = r["newest_snapshot"]
    if snap:
        lines.append(
            f"newest snapshot: {snap['path']} ({snap['templates']} templates, "
            f"{snap['age_s']:.0f} s old)"
        )
    else:
        lines.append("newest snapshot: none")
    if src.get("table") == "in memory":
        lines.append(
            f"templates from the agent's table in memory (the kernel counts "
            f"{src['kernel_templates']} templates, {src['kernel_entries']} entries; "
            f"--from-kernel reads its table)"
        )
    if src.get("table") == "counters":
        lines.append(
            f"templates by the kernel's per-real-server counters: the agent's table in memory "
            f"is not the table yet, and a whole read of {src['kernel_entries']} entries is "
            f"over table.read_budget (--from-kernel reads it)"
        )
    if r["malformed_lines"]:
        lines.append(f"warning: {r['malformed_lines']} malformed lines in the connection table")
    return "\n".join(lines)
