"""Repairing, on a backup, the fwmark templates the kernel's own sync delivers unusable.

The kernel master keys a fwmark template `<IP, caddr, 0, mark, 0, rip, 0>`: port 0, whatever the
real server's port. The backup binds a synced template to a real server by address and port; in
NAT mode a real server with a port never matches port 0, so the template stays unbound, and at
the takeover the client's first packet finds a template without a real server: it is
invalidated and the client scheduled afresh (design.md section 3.7, checked in the lab). A
template that carries the real server's port binds and is honoured.

IPVS never re-points a template (a sync message for its key only updates timeout, state and a
few flags), so an unbound one must go before a good one can come: it is given a timeout of 1 s,
and once it has expired it is put back with the real server's port and what was left of its
life. The master's sync refreshes a template at every packet of its client (templates are
synced with their connections, design.md section 3.8), which re-arms the long timeout: a busy
client's template is repaired only when the master falls silent. A dead master falls silent at
once, and VRRP needs about three advertisement intervals to notice, so the repair, looking
every second, is done before the takeover. An unbound template is of no use to anyone, so
letting it expire costs nothing.

`plan_repairs` is pure (the state it keeps between periods is passed in); `repair_once` does one
period's I/O.
"""

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import filelock

from lvs_hooks.director.inject import inject
from lvs_hooks.director.lock import DUTY_LOCK_TIMEOUT, transition_lock
from lvs_hooks.kernel.model import ConnEntry, Service, template_id
from lvs_hooks.kernel.netlink import IPVS
from lvs_hooks.reseed.planner import PlannedTemplate, is_unbound_fwmark

if TYPE_CHECKING:  # the director's state holds a RepairState of this module
    from lvs_hooks.director.state import Director

log = logging.getLogger(__name__)

# /proc shows whole seconds left: a template we set to 1 s shows 1 or 0; one the master has
# refreshed since shows its persistence timeout.
COUNTING_DOWN = 2


@dataclass
class _Pending:
    target: PlannedTemplate  # the template to put back, with the real server's port
    ends_at: float  # when the unbound one would have expired (clock of plan_repairs' `now`)


@dataclass
class RepairState:
    """What one period leaves to the next: the templates being repaired, by key."""

    pending: Dict[Tuple, _Pending] = field(default_factory=dict)


@dataclass
class RepairPlan:
    expire: List[PlannedTemplate] = field(default_factory=list)  # timeout 1: let it go
    restore: List[PlannedTemplate] = field(default_factory=list)  # gone: put back, bound
    counting_down: int = 0  # set to expire earlier, not refreshed since: left to run out
    repaired: int = 0  # pending ones found bound since the last period
    lapsed: int = 0  # pending ones gone whose life had run out anyway

    def figures(self) -> dict:
        return {
            "unbound": len(self.expire),
            "restored": len(self.restore),
            "counting_down": self.counting_down,
            "repaired": self.repaired,
            "lapsed": self.lapsed,
        }


def plan_repairs(
    templates: Iterable[ConnEntry], services: Sequence[Service], state: RepairState, now: float
) -> RepairPlan:
    """What to send this period; updates `state`. `now` is a monotonic clock in seconds."""
    fwmark = {s.key(): s for s in services if s.fwmark and s.persistent}
    plan = RepairPlan()
    live: Dict[Tuple, ConnEntry] = {}
    for t in templates:
        if t.is_template and not t.is_invalidated:
            live[template_id(t)] = t
    for key, t in live.items():
        svc = fwmark.get(t.service_key())
        if svc is None or not is_unbound_fwmark(t, svc):
            if key in state.pending:  # bound now: ours arrived, or another one did
                del state.pending[key]
                plan.repaired += 1
            continue
        dest = svc.destination_for(t.daddr, t.dport)
        if dest is None:  # its real server is gone: nothing to bind it to
            continue
        target = PlannedTemplate.for_entry(t, dest, max(1, t.expires))
        if key in state.pending and t.expires <= COUNTING_DOWN:
            # Set to expire by an earlier period and not refreshed since: let it run out
            # (sending it again would re-arm the timer, and it would never go).
            plan.counting_down += 1
            continue
        state.pending[key] = _Pending(target, now + t.expires)
        # For a template that is there this only sets its timer; should it have expired
        # meanwhile, this creates the good one, for 1 s, and the next period puts it back.
        plan.expire.append(replace(target, timeout=1))
    for key in [k for k in state.pending if k not in live]:
        p = state.pending.pop(key)
        left = int(p.ends_at - now)
        if left < 1:
            plan.lapsed += 1
            continue
        plan.restore.append(replace(p.target, timeout=left))
    return plan


def take_pending(state: RepairState, now: float) -> List[ConnEntry]:
    """The templates under repair, as entries with their port and true time left, for the
    takeover's reseed (the table shows them with port 0 and the 1 s we gave them); clears
    the state."""
    out = []
    for p in state.pending.values():
        left = int(p.ends_at - now)
        if left >= 1:
            t = p.target
            out.append(
                ConnEntry(
                    t.protocol, t.caddr, 0, t.vaddr, t.vport, t.daddr, t.dport, "ASSURED", left,
                    t.pe_name, t.pe_data,
                )
            )
    state.pending.clear()
    return out


def has_fwmark_services(services: Sequence[Service]) -> bool:
    return any(s.fwmark and s.persistent for s in services)


def repair_once(director: "Director", proceed: Optional[Callable[[], bool]] = None) -> dict:
    """One period on a backup: figures. Reads the table only when fwmark services exist.

    The table is read without the transition lock (a keepalived event must not wait for the
    read); the plan is made and sent under it, where `proceed` says whether the director is
    still a backup: the MASTER reseed takes over `state` under the same lock.
    """
    cfg, state = director.cfg, director.repair
    t0 = time.monotonic()
    with IPVS() as ipvs:
        services = ipvs.services()
        if not has_fwmark_services(services):
            state.pending.clear()
            return {}
        table = director.duty_table("fwmark repair")
        if table is None:
            return {"skipped": "no affordable read of the table (logged)"}
        lock = transition_lock(cfg.paths.run_dir)
        try:
            lock.acquire(timeout=DUTY_LOCK_TIMEOUT)
        except filelock.Timeout:
            log.debug("fwmark repair: a transition holds the lock; next period")
            return {"skipped": "locked"}
        try:
            if proceed is not None and not proceed():
                return {"abandoned": True}
            before = len(state.pending)
            plan = plan_repairs(table.templates, services, state, time.monotonic())
            figures: Dict[str, Any] = dict(plan.figures())
            send = plan.expire + plan.restore
            if send:
                # re-entrant: this thread holds the lock already
                res = inject(cfg, send, "fwmark-repair", verify=False, resend_rounds=0,
                             ipvs=ipvs, live=director.live)
                figures["sent"] = res.sent
        finally:
            lock.release()
    figures["ms"] = round((time.monotonic() - t0) * 1000, 1)
    # Every period re-arms the 1 s timer of the unbound templates of busy clients (the master
    # keeps refreshing them): say so at INFO only when something changed.
    changed = plan.restore or plan.repaired or plan.lapsed or len(state.pending) != before
    if send or changed:
        log.log(
            logging.INFO if changed else logging.DEBUG,
            "fwmark repair: %(unbound)d unbound templates (port 0) set to expire, %(restored)d "
            "put back with the real server's port, %(repaired)d found bound, %(lapsed)d "
            "lapsed, %(ms).0f ms",
            figures,
        )
    return figures
