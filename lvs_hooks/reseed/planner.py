"""The reseed planner: snapshot x live services x live table -> templates to send.

Pure: no I/O, no clock. Every template of the snapshot ends up either planned or skipped with
a reason an operator can read.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

from lvs_hooks.kernel.model import (
    ConnEntry,
    Destination,
    Service,
    TemplateKey,
    host_port,
    template_id,
    template_key,
)

# Why a template is not sent (stable strings: they appear in reports and JSON).
SKIP_EXPIRED = "expired"
SKIP_NO_SERVICE = "virtual service missing"
SKIP_NOT_PERSISTENT = "virtual service not persistent"
SKIP_NO_DEST = "real server missing"
SKIP_PRESENT = "already present"
SKIP_PRESENT_OTHER = "present with another real server"
SKIP_INVALIDATED = "invalidated by the kernel"


@dataclass(frozen=True)
class PlannedTemplate:
    """A template to put into the kernel, with everything the sync message needs."""

    protocol: str  # as /proc shows it: "TCP", "UDP", "SCTP", or "IP" for fwmark services
    caddr: str
    vaddr: str  # for fwmark services: the mark as an address, as the kernel keys it
    vport: int
    daddr: str
    dport: int
    fwmark: int
    fwd_method: str
    timeout: int
    pe_name: str = ""
    pe_data: str = ""
    # The kernel holds an unbound template under the same key (a fwmark template synced by the
    # kernel with port 0): it must be expired first, since IPVS never re-points a template.
    replace: bool = False

    @classmethod
    def for_entry(
        cls,
        t: ConnEntry,
        dest: Destination,
        timeout: int,
        fwmark: Optional[int] = None,
        replace: bool = False,
    ) -> "PlannedTemplate":
        """Entry `t`'s client and virtual service, sent to `dest`: its address, its configured
        port (for fwmark services the only port the receiver binds, its own sync sends 0) and
        its forwarding method. `fwmark`: the mark, if not the one `t` shows."""
        return cls(
            protocol=t.protocol,
            caddr=t.caddr,
            vaddr=t.vaddr,
            vport=t.vport,
            daddr=dest.addr,
            dport=dest.port,
            fwmark=t.fwmark if fwmark is None else fwmark,
            fwd_method=dest.fwd_method,
            timeout=timeout,
            pe_name=t.pe_name,
            pe_data=t.pe_data,
            replace=replace,
        )

    def describe(self) -> str:
        svc = (
            f"FWM {self.fwmark}" if self.fwmark
            else f"{self.protocol} {host_port(self.vaddr, self.vport)}"
        )
        return f"{self.caddr} -> {svc} -> {host_port(self.daddr, self.dport)} ({self.timeout} s)"

    def table_key(self) -> TemplateKey:
        """How the entry shows in /proc/net/ip_vs_conn (to verify it arrived)."""
        return template_key(self)


@dataclass
class Plan:
    planned: List[PlannedTemplate] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    examples: Dict[str, List[str]] = field(default_factory=dict)  # a few per skip reason

    def skip(self, reason: str, entry: ConnEntry, max_examples: int = 3) -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < max_examples:
            ex.append(describe_template(entry))

    def summary(self) -> dict:
        return {
            "planned": len(self.planned),
            "skipped": dict(self.skipped),
            "skipped_examples": self.examples,
        }


def describe_template(t: ConnEntry) -> str:
    rs = host_port(t.daddr, t.dport)
    if t.protocol == "IP":
        return f"{t.caddr} -> FWM {t.fwmark} -> {rs}"
    return f"{t.protocol} {t.caddr} -> {host_port(t.vaddr, t.vport)} -> {rs}"


# Identity of a template in the kernel: client and virtual service (not the real server).
entry_key = template_id


def plan_reseed(
    templates: Iterable[ConnEntry],
    elapsed: float,
    services: Sequence[Service],
    live_templates: Iterable[ConnEntry],
    min_timeout: int,
) -> Plan:
    """Decide which templates to send and with which timeout.

    elapsed: seconds between the capture of `templates` and now. A template keeps what
    remained of its life at capture minus that time, but at least min_timeout; one whose
    time ran out is dropped, as the kernel would have dropped it.
    """
    by_key = {s.key(): s for s in services}
    live = {
        entry_key(t): t for t in live_templates if t.is_template and not t.is_invalidated
    }
    plan = Plan()
    seen = set()
    for t in templates:
        if not t.is_template:
            continue
        if t.is_invalidated:
            plan.skip(SKIP_INVALIDATED, t)
            continue
        key = entry_key(t)
        if key in seen:
            continue
        seen.add(key)
        remaining = t.expires - elapsed
        if remaining <= 0:
            plan.skip(SKIP_EXPIRED, t)
            continue
        svc = by_key.get(t.service_key())
        if svc is None:
            plan.skip(SKIP_NO_SERVICE, t)
            continue
        if not svc.persistent:
            plan.skip(SKIP_NOT_PERSISTENT, t)
            continue
        dest = svc.destination_for(t.daddr, t.dport)
        if dest is None:
            plan.skip(SKIP_NO_DEST, t)
            continue
        # For fwmark services the kernel binds a template only when its dport is the real
        # server's configured port (its own sync sends 0): use the live definition.
        dport = dest.port
        present = live.get(key)
        replace = False
        if present is not None:
            if present.daddr == dest.addr and present.dport == dport:
                plan.skip(SKIP_PRESENT, t)
                continue
            if not is_unbound_fwmark(present, svc):
                plan.skip(SKIP_PRESENT_OTHER, t)
                continue
            # The kernel's own sync delivered it with port 0: it can never bind to a real server
            # (so no connection uses it) and the client would be rescheduled. Replace it.
            replace = True
        plan.planned.append(
            PlannedTemplate.for_entry(
                t, dest, max(int(remaining), min_timeout), replace=replace
            )
        )
    return plan


def is_unbound_fwmark(present: ConnEntry, svc: Service) -> bool:
    """A fwmark template whose port matches none of its real server's ports: never bound."""
    return bool(svc.fwmark) and not any(
        d.addr == present.daddr and d.port == present.dport for d in svc.destinations
    )
