"""The template keeper: no template expires on the master while its client still has a connection.

The kernel keeps its own templates alive while they control connections: when the timer of a
template fires and connections still point at it, it is re-armed (60 s). Templates that came
from the old master by the sync protocol are never linked to the synced connections, so on the
new master they expire on their own timer while the client's flow goes on; the client's next
flow is then scheduled afresh, maybe to another real server (design.md section 1.2).

The keeper reads the table once per period and renews (through the local sync path, TTL 0) each
template that is about to expire while its client still has a connection entry to the same
service. It renews to the service's persistence_timeout: the kernel keeps an injected timeout
and re-arms the template with it, so the template then behaves as the kernel's own would.

`plan_renewals` is pure; `keep_once` does one period's I/O.
"""

import logging
import time
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from lvs_hooks.director.inject import inject
from lvs_hooks.director.lock import DUTY_LOCK_TIMEOUT
from lvs_hooks.kernel.conntable import ClientKey
from lvs_hooks.kernel.model import ConnEntry, Destination, Service, held_templates
from lvs_hooks.kernel.netlink import IPVS
from lvs_hooks.reseed.planner import PlannedTemplate

if TYPE_CHECKING:  # the director's state holds the fwmark repair, which uses this module
    from lvs_hooks.director.state import Director

log = logging.getLogger(__name__)



@dataclass
class KeepPlan:
    renew: List[PlannedTemplate] = field(default_factory=list)
    templates: int = 0
    expiring: int = 0  # below the threshold
    idle: int = 0  # expiring, but the client has no connection left: let the kernel drop it
    no_service: int = 0

    def figures(self) -> dict:
        return {
            "templates": self.templates,
            "expiring": self.expiring,
            "renewed": len(self.renew),
            "idle": self.idle,
            "no_service": self.no_service,
        }


def clients_in_use(
    conn_counts: Mapping[ClientKey, int], services: Sequence[Service]
) -> Set[Tuple[str, Tuple]]:
    """(template client address, service key) pairs that still have a connection entry
    (model.held_templates' rule)."""
    return set(held_templates(conn_counts, services))


def plan_renewals(
    templates: Iterable[ConnEntry],
    conn_counts: Dict[ClientKey, int],
    services: Sequence[Service],
    refresh_below: float,
) -> KeepPlan:
    """Which templates to renew now, and to what."""
    by_key = {s.key(): s for s in services}
    used = clients_in_use(conn_counts, services)
    plan = KeepPlan()
    for t in templates:
        if not t.is_template or t.is_invalidated:
            continue
        plan.templates += 1
        if t.expires >= refresh_below:
            continue
        plan.expiring += 1
        svc = by_key.get(t.service_key())
        if svc is None:
            plan.no_service += 1
            continue
        if (t.caddr, svc.key()) not in used:
            plan.idle += 1
            continue
        # the template as it is (a renewal is an update: its real server cannot change), and
        # never less than the threshold, or the next period would renew it again
        same = Destination(t.daddr, t.dport, _fwd_method(svc, t))
        plan.renew.append(
            PlannedTemplate.for_entry(t, same, max(svc.timeout, int(refresh_below) + 1))
        )
    return plan


def _fwd_method(svc: Service, t: ConnEntry) -> str:
    dest = svc.destination_for(t.daddr, t.dport)
    return dest.fwd_method if dest is not None else "masq"


def keep_once(director: "Director", proceed: Optional[Callable[[], bool]] = None) -> dict:
    """One period of the keeper on this director (while master): figures.

    The table is read without the transition lock (on a large table that read takes seconds,
    and a keepalived event must not wait for it); the renewals go through the inject path,
    which takes the lock and asks `proceed` whether the director is still what it was. Where
    no read is affordable (Director.duty_table), the period is skipped: a read of a large
    table would hold the duties for minutes, and the kernel itself re-arms a template while
    connections still point at it.
    """
    cfg = director.cfg
    t0 = time.monotonic()
    table = director.duty_table("keeper", client_counts=True, below=cfg.keeper.refresh_below)
    if table is None:
        return {"skipped": "no affordable read of the table (logged)"}
    with IPVS() as ipvs:
        services = ipvs.services()
        plan = plan_renewals(
            table.templates, table.client_counts or {}, services, cfg.keeper.refresh_below
        )
        figures: Dict[str, Any] = dict(plan.figures())
        if plan.renew:
            res = inject(cfg, plan.renew, "keeper", verify=False, resend_rounds=0, ipvs=ipvs,
                         lock_timeout=DUTY_LOCK_TIMEOUT, proceed=proceed, live=director.live)
            figures["sent"] = res.sent
            figures["abandoned"] = res.abandoned
    figures["ms"] = round((time.monotonic() - t0) * 1000, 1)
    if plan.renew or plan.expiring:
        log.info(
            "keeper: %(templates)d templates, %(expiring)d expiring, %(renewed)d renewed "
            "(client still connected), %(idle)d left to expire, %(ms).0f ms",
            figures,
        )
    return figures
