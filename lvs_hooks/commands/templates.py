"""`snapshot`, `reseed`, `status`: the core commands on persistence templates."""

import logging
import os
import time
from typing import Optional

import click

from lvs_hooks.cli import AppContext, command, emit, json_option, pass_app
from lvs_hooks.errors import ReseedIncomplete, UsageError
from lvs_hooks.explain import record_injections
from lvs_hooks.kernel.conntable import parse_conn_table, read_conn_table, read_proc_file
from lvs_hooks.kernel.netlink import IPVS
from lvs_hooks.reseed.planner import plan_reseed
from lvs_hooks.reseed.runner import run_reseed_configured
from lvs_hooks.snapshot import Snapshot, SnapshotStore
from lvs_hooks.status import build_status, render_status

log = logging.getLogger(__name__)


def _store(app: AppContext) -> SnapshotStore:
    cfg = app.config
    return SnapshotStore(cfg.paths.state_dir, keep=cfg.snapshot.keep)


def take_snapshot(app: AppContext) -> dict:
    """Read templates and services from the kernel and store them as a new generation."""
    cfg = app.config
    t0 = time.monotonic()
    with IPVS() as ipvs:
        services = ipvs.services()
    t1 = time.monotonic()
    # Read and parse timed apart: reading is the kernel's walk of its table (compare with cat).
    data = read_proc_file(os.path.join(cfg.paths.proc_root, "net", "ip_vs_conn"))
    t_read = time.monotonic()
    table = parse_conn_table(data, templates_only=True)
    t2 = time.monotonic()
    snap = Snapshot.capture(services=services, templates=list(table.templates))
    path = _store(app).save(snap)
    t3 = time.monotonic()
    report = {
        "path": str(path),
        "templates": len(snap.templates),
        "services": len(services),
        "malformed_lines": table.malformed,
        "ms_netlink": round((t1 - t0) * 1000, 1),
        "ms_read_table": round((t_read - t1) * 1000, 1),
        "ms_parse": round((t2 - t_read) * 1000, 1),
        "ms_write": round((t3 - t2) * 1000, 1),
        "ms": round((t3 - t0) * 1000, 1),
    }
    log.info(
        "snapshot: %d templates of %d services, table read in %.0f ms and parsed in %.0f ms, "
        "written to %s in %.0f ms%s",
        report["templates"],
        report["services"],
        report["ms_read_table"],
        report["ms_parse"],
        path,
        report["ms_write"],
        f" ({table.malformed} malformed lines skipped)" if table.malformed else "",
    )
    return report


@command("snapshot")
@click.option("--list", "list_", is_flag=True, help="List the stored generations instead.")
@json_option
@pass_app
def snapshot_cmd(app: AppContext, list_: bool, as_json: bool) -> None:
    """Store every persistence template (and the services they use) on disk."""
    if list_:
        gens = [g.to_dict() for g in _store(app).generations()]
        emit(gens, as_json, _render_generations)
        return
    emit(take_snapshot(app), as_json, _render_snapshot)


def _render_snapshot(r: dict) -> str:
    return (
        f"snapshot {r['path']}: {r['templates']} templates, {r['services']} services "
        f"(table read {r['ms_read_table']:.0f} ms, total {r['ms']:.0f} ms)"
    )


def _render_generations(gens: list) -> str:
    if not gens:
        return "no snapshots"
    lines = [f"{'AGE':>8}  {'TEMPLATES':>9}  {'SERVICES':>8}  FILE"]
    for g in gens:
        state = "" if g.get("ok", True) else f"  REFUSED: {g.get('error')}"
        age = g.get("age")
        age_s = "?" if age is None else _age(age)
        lines.append(
            f"{age_s:>8}  {g.get('templates', '?'):>9}  {g.get('services', '?'):>8}  "
            f"{g['path']}{state}"
        )
    return "\n".join(lines)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@command("reseed")
@click.option("--from", "from_file", metavar="FILE", help="Reseed from this snapshot file.")
@click.option("--latest", is_flag=True, help="Reseed from the newest good snapshot (default).")
@click.option("--dry-run", is_flag=True, help="Show the plan; send nothing.")
@json_option
@pass_app
def reseed_cmd(
    app: AppContext, from_file: Optional[str], latest: bool, dry_run: bool, as_json: bool
) -> None:
    """Put the templates of a snapshot back into this director's kernel and verify them."""
    if from_file and latest:
        raise UsageError("--from and --latest exclude each other")
    report = reseed_from_snapshot(app, from_file, dry_run)
    emit(report, as_json, _render_reseed)
    if not dry_run and report["missing"]:
        raise ReseedIncomplete(
            f"{report['missing']} of {report['planned']} planned templates not verified"
        )


def reseed_from_snapshot(
    app: AppContext, from_file: Optional[str], dry_run: bool, include_live: bool = False
) -> dict:
    """Plan (and unless dry_run, send and verify) a reseed; the report as plain data.

    With `include_live` (a takeover), the templates the kernel holds already count as a source
    too, the freshest one: those the kernel's sync got wrong (fwmark templates with port 0) are
    replaced, and a director with no snapshot yet still does that much.
    """
    cfg = app.config
    store = _store(app)
    t0 = time.monotonic()
    snap, warnings = None, []
    if from_file:
        snap = store.load(from_file)
    elif include_live and not store.generations():
        warnings = [f"no snapshot in {cfg.paths.state_dir} yet: the kernel's table is the source"]
    else:
        snap, warnings = store.load_latest()
    for w in warnings:
        log.warning("%s", w)
    elapsed = 0.0
    templates: list = []
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
        live = read_conn_table(cfg.paths.proc_root, templates_only=True)
        if include_live:
            # The first of a key wins: fwmark templates under repair (their port and true time
            # left; the table shows port 0 and the 1 s the repair gave them), then the table,
            # then the snapshot.
            from lvs_hooks.fwmark_repair import state_for, take_pending

            repairing = take_pending(state_for(app), time.monotonic())
            if repairing:
                log.info("%d fwmark templates were under repair: finishing them", len(repairing))
            templates = repairing + list(live.templates) + templates
        plan = plan_reseed(templates, 0, services, live.templates, cfg.reseed.min_timeout)
        report = {
            "snapshot": (snap.source or "") if snap else None,
            "snapshot_age_s": round(elapsed, 1),
            "seen": len(templates),
            "live": len(live.templates),
            **plan.summary(),
            "warnings": warnings,
            "dry_run": dry_run,
        }
        if dry_run:
            report["would_send"] = [p.describe() for p in plan.planned[:50]]
            report.update(sent=0, verified=0, missing=0, ms=round((time.monotonic() - t0) * 1000))
            return report
        res = run_reseed_configured(plan.planned, ipvs, cfg)
    # explain tells injected templates from synced ones by this ledger (the kernel cannot)
    record_injections(cfg.paths.run_dir, [(p.table_key(), p.timeout) for p in plan.planned],
                      "reseed")
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
        "reseed: %d templates seen, %d planned, %d sent, %d verified, %d missing, "
        "skipped %s, %.0f ms (%s%s)",
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


def _render_reseed(r: dict) -> str:
    lines = [
        f"snapshot: {r['snapshot'] or 'none'} (age {r['snapshot_age_s']:.0f} s), "
        f"{r['seen']} templates",
        f"planned {r['planned']}, sent {r['sent']}, verified {r['verified']}, "
        f"missing {r['missing']}  ({r['ms']:.0f} ms)",
    ]
    for reason, n in sorted(r["skipped"].items()):
        ex = "; ".join(r["skipped_examples"].get(reason, []))
        lines.append(f"skipped {n}: {reason}" + (f"  e.g. {ex}" if ex else ""))
    if r.get("dry_run"):
        lines.append("dry run: nothing sent. First templates that would be sent:")
        lines.extend(f"  {x}" for x in r.get("would_send", []))
    elif r.get("missing_examples"):
        lines.append("not verified, e.g.: " + "; ".join(r["missing_examples"]))
    for w in r.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


@command("status")
@json_option
@pass_app
def status_cmd(app: AppContext, as_json: bool) -> None:
    """Templates per service and real server, sync daemons, timeouts, newest snapshot."""
    emit(build_status(app.config, _store(app)), as_json, render_status)
