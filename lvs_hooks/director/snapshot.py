"""Taking a snapshot: every template of the table, and the services they use, to disk."""

import logging
import os
import time
from typing import Any, Dict, List, Optional

from lvs_hooks.config import Config
from lvs_hooks.director.live import LiveTable
from lvs_hooks.director.state import snapshot_store
from lvs_hooks.errors import ReadAbandoned
from lvs_hooks.kernel.conntable import parse_conn_table, read_proc_file
from lvs_hooks.kernel.model import Service
from lvs_hooks.kernel.netlink import IPVS
from lvs_hooks.snapshot import Snapshot
from lvs_hooks.table.dumpfile import encode_dump

log = logging.getLogger(__name__)


def take_snapshot(
    cfg: Config, reason: str = "snapshot", live: Optional[LiveTable] = None,
    within_budget_only: bool = False,
) -> Dict[str, Any]:
    """Read templates and services from the kernel and store them as a new generation; with
    the agent's table in memory (`live`, once it is the table) and a kernel table over
    table.read_budget, a dump of that instead of a whole read.

    `within_budget_only` (the periodic duty, with `live`): no read over table.read_budget. Over
    it, while the table in memory is not the table yet, the snapshot is skipped and the last
    one stands ({"skipped": why}); a read judged within it stops once the table has grown past
    twice the budget. Lab, under load: a periodic snapshot began its read as the backup's
    table was filling by the sync stream and took 564 s (10.6 MB)."""
    t0 = time.monotonic()
    with IPVS() as ipvs:
        services = ipvs.services()
    within, entries = live.within_budget() if live is not None else (True, 0)
    max_lines: Optional[int] = None
    if within_budget_only and live is not None:
        budget = cfg.table.read_budget
        if not within and not live.ready:
            why = (f"the kernel counts {entries} entries, over table.read_budget {budget}, and "
                   f"the table in memory is not the table yet")
            log.info("%s: skipped, %s; the last snapshot stands", reason, why)
            return {"skipped": why}
        max_lines = 2 * budget + 1  # and the header
    if live is not None and live.ready and not within:
        # a dump where a whole read would be expensive; the kernel's word where it is cheap.
        # One dump at a time: a second caller (the periodic duty, the command) gets the one
        # under way, not a second that would halve the speed of both.
        report, joined = live.dumps.run(lambda: _dump(cfg, live, services, t0, reason))
        if joined:
            log.info("%s: a dump of the table in memory was under way for the %s; its snapshot "
                     "%s is the answer", reason, report["reason"], report["path"])
            report = dict(report, joined=True)
        return report
    t1 = time.monotonic()
    # Read and parse timed apart: reading is the kernel's walk of its table (compare with cat).
    try:
        data = read_proc_file(os.path.join(cfg.paths.proc_root, "net", "ip_vs_conn"), reason,
                              max_lines=max_lines)
    except ReadAbandoned as e:
        log.info("%s: skipped, the table grew past twice table.read_budget during the read "
                 "(%s); the last snapshot stands", reason, e)
        return {"skipped": str(e)}
    t_read = time.monotonic()
    table = parse_conn_table(data, templates_only=True)
    t2 = time.monotonic()
    snap = Snapshot.capture(services=services, templates=list(table.templates))
    path = snapshot_store(cfg).save(snap)
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


def _dump(
    cfg: Config, live: LiveTable, services: List[Service], t0: float, reason: str
) -> Dict[str, Any]:
    t1 = time.monotonic()
    captured_at = time.time()
    with live.lock:
        now = live.clock()
        live.table.expire(now)  # so that the count is what the dump holds
        templates = len(live.table)
        entries = live.table.entries()
    # rendered without the lock: the feeds and `status` must not wait seconds for a dump
    data = encode_dump(live.table, services, now, captured_at=captured_at, entries=entries)
    del entries
    t2 = time.monotonic()
    path = snapshot_store(cfg).save_encoded(data, captured_at, templates, len(services))
    t3 = time.monotonic()
    report = {
        "path": str(path),
        "templates": templates,
        "services": len(services),
        "source": "table in memory",
        "reason": reason,
        "ms_netlink": round((t1 - t0) * 1000, 1),
        "ms_dump": round((t2 - t1) * 1000, 1),
        "ms_write": round((t3 - t2) * 1000, 1),
        "ms": round((t3 - t0) * 1000, 1),
    }
    log.info(
        "snapshot: %d templates of %d services from the table in memory, dumped in %.0f ms, "
        "written to %s in %.0f ms",
        templates, len(services), report["ms_dump"], path, report["ms_write"],
    )
    return report
