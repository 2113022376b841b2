"""What a backup does with a complete push: compare it with its own table.

`check_push` is pure; `check_received_push` reads the table and sends what it plans through
the inject path. For each pushed template key:

- present: the table holds it, with the same real server;
- missing: the table has no template for that client and service (the kernel's socket dropped
  a datagram: a master cannot see a peer's receive queue). Put back locally (TTL 0).
- stale: the table names another real server (the backup kept a template the master has since
  replaced). IPVS never re-points a template, so it is expired (timeout 1) and sent anew, but
  only when none of this client's connections to the service is left in the table: a
  connection that still uses the old real server keeps it (design.md section 3.6).
"""

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterable, List, Sequence

from lvs_hooks.director.inject import inject
from lvs_hooks.director.keeper import clients_in_use
from lvs_hooks.director.state import Director
from lvs_hooks.kernel.conntable import ClientKey
from lvs_hooks.kernel.model import ConnEntry, Service, TemplateKey, template_id
from lvs_hooks.kernel.netlink import IPVS
from lvs_hooks.reseed.planner import PlannedTemplate

log = logging.getLogger(__name__)


@dataclass
class PushCheck:
    pushed: int = 0
    present: int = 0
    missing: List[PlannedTemplate] = field(default_factory=list)
    repoint: List[PlannedTemplate] = field(default_factory=list)  # replace=True
    stale_in_use: int = 0  # another real server, still used by a connection: left alone
    unknown: int = 0  # no local service or real server for it: cannot be put in

    def figures(self) -> dict:
        return {
            "pushed": self.pushed,
            "present": self.present,
            "missing": len(self.missing),
            "repoint": len(self.repoint),
            "stale_in_use": self.stale_in_use,
            "unknown": self.unknown,
        }


def check_push(
    keys: Iterable[TemplateKey],
    live_templates: Iterable[ConnEntry],
    conn_counts: Dict[ClientKey, int],
    services: Sequence[Service],
) -> PushCheck:
    by_key = {s.key(): s for s in services}
    live = {template_id(t): t for t in live_templates if t.is_template and not t.is_invalidated}
    used = clients_in_use(conn_counts, services)
    check = PushCheck()
    for proto, caddr, vaddr, vport, daddr, dport in keys:
        check.pushed += 1
        pushed = ConnEntry(proto, caddr, 0, vaddr, vport, daddr, dport, "ASSURED", 0)
        local = live.get(template_id(pushed))
        if local is not None and (local.daddr, local.dport) == (daddr, dport):
            check.present += 1
            continue
        svc = by_key.get(pushed.service_key())
        dest = svc.destination_for(daddr, dport) if svc is not None else None
        if svc is None or dest is None:
            check.unknown += 1
            continue
        # The push does not carry the master's time left; the service's whole timeout errs on
        # the long side, and the master's own sync updates it as its client comes.
        planned = PlannedTemplate.for_entry(pushed, dest, max(svc.timeout, 1))
        if local is None:
            check.missing.append(planned)
        elif (caddr, svc.key()) in used:
            check.stale_in_use += 1
        else:
            check.repoint.append(replace(planned, replace=True))
    return check


def check_received_push(director: Director, keys: List[TemplateKey]) -> Dict[str, Any]:
    """Compare the table with a complete push, put back and re-point: figures."""
    cfg = director.cfg
    t0 = time.monotonic()
    table = director.table("push check", client_counts=True)
    with IPVS() as ipvs:
        services = ipvs.services()
        check = check_push(keys, table.templates, table.client_counts or {}, services)
        send = check.missing + check.repoint
        res = inject(cfg, send, "push", ipvs=ipvs, live=director.live)
    fig: Dict[str, Any] = {
        **check.figures(),
        "verified": check.present + len(send) - res.missing,
        "put_back": len(check.missing),
        "repointed": len(check.repoint),
        "missing_after": res.missing + check.unknown,
        "ms": round((time.monotonic() - t0) * 1000, 1),
    }
    log.info(
        "push received: %(pushed)d templates, %(present)d already in the table, "
        "%(put_back)d put back (lost on the way), %(repointed)d re-pointed (stale, no "
        "connection), %(stale_in_use)d stale but in use (kept), %(unknown)d without a local "
        "service or real server, %(missing_after)d missing after; %(ms).0f ms",
        fig,
    )
    return fig
