"""Reseeding this director's kernel: a snapshot (and at a takeover the kernel's own synced
templates) planned against the live services, then sent and verified by the inject path."""

import logging
import time
from typing import Any, Dict, List, Optional

from lvs_hooks.director.fwmark_repair import take_pending
from lvs_hooks.director.inject import inject
from lvs_hooks.director.live import LiveTable
from lvs_hooks.director.state import Director
from lvs_hooks.kernel.model import ConnEntry
from lvs_hooks.kernel.netlink import IPVS
from lvs_hooks.reseed.planner import Plan, plan_reseed
from lvs_hooks.reseed.runner import ReseedResult
from lvs_hooks.snapshot import Snapshot

log = logging.getLogger(__name__)


def reseed(
    director: Director,
    from_file: Optional[str] = None,
    dry_run: bool = False,
    include_live: bool = False,
    by: str = "reseed",
) -> Dict[str, Any]:
    """Plan (and unless dry_run, send and verify) a reseed; the report as plain data.

    With `include_live` (a takeover), the templates the kernel holds already count as a source
    too, the freshest one: those the kernel's sync got wrong (fwmark templates with port 0) are
    replaced, and a director with no snapshot yet still does that much; so do the fwmark
    templates this process was repairing as backup.
    """
    cfg = director.cfg
    store = director.store()
    t0 = time.monotonic()
    snap: Optional[Snapshot] = None
    warnings: List[str] = []
    table = director.live
    if include_live and not from_file and table is not None and table.ready:
        within, entries = table.within_budget()
        if not within:
            return _reseed_from_table(director, table, entries, dry_run, by, t0)
    if from_file:
        snap = store.load(from_file)
    elif include_live and not store.generations():
        warnings = [f"no snapshot in {cfg.paths.state_dir} yet: the kernel's table is the source"]
    else:
        snap, warnings = store.load_latest()
    for w in warnings:
        log.warning("%s", w)
    elapsed = 0.0
    templates: List[ConnEntry] = []
    if snap is not None:
        elapsed = time.time() - snap.captured_at
        if elapsed < 0:
            log.warning("snapshot is %.0f s in the future (clock change?); taking it as new",
                        -elapsed)
            elapsed = 0.0
        # what each template had left at capture, minus the time since
        templates = [t._replace(expires=t.expires - int(elapsed)) for t in snap.templates]
    with IPVS() as ipvs:
        services = ipvs.services()
        live = director.table(f"{by}: sources")
        if include_live:
            # The first of a key wins: fwmark templates under repair (their port and true time
            # left; the table shows port 0 and the 1 s the repair gave them), then the table,
            # then the snapshot.
            repairing = take_pending(director.repair, time.monotonic())
            if repairing:
                log.info("%d fwmark templates were under repair: finishing them", len(repairing))
            templates = repairing + list(live.templates) + templates
        plan = plan_reseed(templates, 0, services, live.templates, cfg.reseed.min_timeout)
        report: Dict[str, Any] = {
            "snapshot": (snap.source or "") if snap else None,
            "snapshot_age_s": round(elapsed, 1),
            "seen": len(templates),
            # rows of the snapshot that were not valid templates, left out (snapshot.decode)
            "skipped_rows": snap.skipped if snap else 0,
            "live": len(live.templates),
            **plan.summary(),
            "warnings": warnings,
            "dry_run": dry_run,
        }
        if dry_run:
            report["would_send"] = [p.describe() for p in plan.planned[:50]]
            report.update(sent=0, verified=0, missing=0, ms=round((time.monotonic() - t0) * 1000))
            return report
        res = inject(cfg, plan.planned, by, ipvs=ipvs, live=director.live)
    return _finish(report, res, plan, by, t0)


def _reseed_from_table(
    director: Director, table: LiveTable, entries: int, dry_run: bool, by: str, t0: float
) -> Dict[str, Any]:
    """A takeover's reseed when the table in memory is the table and the kernel's is large.

    The table is fresher than any snapshot (each was dumped from it, and a template it has not
    heard of since its last loss has ended: TableUpkeep), and it holds what the kernel holds,
    so the only templates that need sending are those the kernel's own sync got wrong: the
    fwmark templates it delivered with port 0, and those this process was repairing as backup
    (design.md 3.7). That set is found without building the others: a takeover on a table
    of 200,000 costs what it costs on one of 1,000."""
    cfg = director.cfg
    with IPVS() as ipvs:
        services = ipvs.services()
        fwmark = table.templates_of("IP") if any(s.fwmark for s in services) else []
        repairing = take_pending(director.repair, time.monotonic())
        if repairing:
            log.info("%d fwmark templates were under repair: finishing them", len(repairing))
        plan = plan_reseed(repairing + fwmark, 0, services, fwmark, cfg.reseed.min_timeout)
        report: Dict[str, Any] = {
            "snapshot": None,
            "snapshot_age_s": 0.0,
            "source": "table in memory",
            "seen": len(table),
            "live": len(table),
            "kernel_entries": entries,
            **plan.summary(),
            "warnings": [],
            "dry_run": dry_run,
        }
        log.info(
            "%s: the table in memory is the table (%d templates; the kernel counts %d entries, "
            "over table.read_budget): no snapshot, no read; %d fwmark templates to look at",
            by, len(table), entries, len(fwmark) + len(repairing),
        )
        if dry_run:
            report["would_send"] = [p.describe() for p in plan.planned[:50]]
            report.update(sent=0, verified=0, missing=0, ms=round((time.monotonic() - t0) * 1000))
            return report
        res = inject(cfg, plan.planned, by, ipvs=ipvs, live=table)
    return _finish(report, res, plan, by, t0)


def _finish(
    report: Dict[str, Any], res: ReseedResult, plan: Plan, by: str, t0: float
) -> Dict[str, Any]:
    ms = (time.monotonic() - t0) * 1000
    report.update(
        sent=res.sent,
        verified=res.verified,
        missing=res.missing,
        missing_examples=res.missing_examples,
        rounds=res.rounds,
        datagrams=res.datagrams,
        bytes=res.bytes,
        pacing_waits=res.pacing_waits,
        receiver_drops=res.receiver_drops,
        daemon=res.daemon,
        daemon_started=res.daemon_started,
        replaced=res.replaced,
        ms_send_verify=round(res.ms, 1),
        ms=round(ms, 1),
        templates_per_s=round(res.verified / (res.ms / 1000), 0) if res.ms else None,
    )
    log.info(
        "%s: %d templates seen, %d planned, %d sent, %d verified, %d missing, "
        "skipped %s, %.0f ms (%s%s)",
        by,
        report["seen"],
        report["planned"],
        res.sent,
        res.verified,
        res.missing,
        dict(plan.skipped) or "none",
        ms,
        res.daemon,
        ", started for the reseed" if res.daemon_started else "",
    )
    return report
