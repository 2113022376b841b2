"""The push planner: the master's table x its live services -> the entries to push.

Pure: no I/O, no clock. Every template given ends up either planned or skipped with a reason
an operator can read, as in the reseed planner, whose PlannedTemplate and reasons it shares.

Differences from a reseed: the table is the sender's own live table, so the timeout is simply
what is left of the entry's life (ConnEntry.expires, at least 1 s), and nothing is compared
with the receiver's table: a receiving kernel never re-points a template it already holds (it
only updates timeout, state and a few flags), so a push adds what a peer lacks and refreshes
the rest, and cannot move a peer's newer template. Entries are never marked `replace`.

As in a reseed, a template of a fwmark service carries the real server's port as configured
in the live service (the kernel's own master sends 0, which never binds on the receiver when
the real server has a port).

Connection entries (optional) are planned as SyncConn entries, see plan_connections().
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from lvs_hooks.kernel import syncproto
from lvs_hooks.kernel.model import (
    FWD_METHODS,
    PROTO_NUMBERS,
    ConnEntry,
    Destination,
    Service,
    addr_family,
    host_port,
)
from lvs_hooks.kernel.syncproto import SyncConn
from lvs_hooks.reseed.planner import (
    SKIP_INVALIDATED,
    SKIP_NO_DEST,
    SKIP_NO_SERVICE,
    SKIP_NOT_PERSISTENT,
    PlannedTemplate,
    describe_template,
)

# Reasons of our own (stable strings: they appear in reports and JSON). The others are the
# reseed planner's: SKIP_INVALIDATED, SKIP_NO_SERVICE, SKIP_NOT_PERSISTENT, SKIP_NO_DEST.
SKIP_DUPLICATE = "duplicate key"
SKIP_OTHER_FAMILY = "real server of another address family"
SKIP_UNENCODABLE = "not expressible in a sync message"
SKIP_UNKNOWN_STATE = "unknown connection state"
SKIP_AMBIGUOUS = "several fwmark services fit"

__all__ = [
    "PushEntry",
    "PushPlan",
    "SKIP_AMBIGUOUS",
    "SKIP_DUPLICATE",
    "SKIP_INVALIDATED",
    "SKIP_NO_DEST",
    "SKIP_NO_SERVICE",
    "SKIP_NOT_PERSISTENT",
    "SKIP_OTHER_FAMILY",
    "SKIP_UNENCODABLE",
    "SKIP_UNKNOWN_STATE",
    "conn_state_number",
    "plan_connections",
    "plan_push",
]

# What a push sends: templates as PlannedTemplate, connections as ready SyncConn entries.
PushEntry = Union[PlannedTemplate, SyncConn]

MAX_EXAMPLES = 3

# --- include/net/ip_vs.h: connection states by the names /proc prints (ip_vs_proto_*.c
# *_state_name_table) and the number the sync message carries. The kernel marks a connection
# INACTIVE (IP_VS_CONN_F_INACTIVE, counted in the real server's inactconns) in every TCP and
# SCTP state but ESTABLISHED; UDP connections are always active.
_TCP_STATES = (
    "NONE",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "SYNACK",
)
_SCTP_STATES = (
    "NONE",
    "INIT1",
    "INIT",
    "C-SENT",
    "C-REPLIED",
    "C-WAIT",
    "COOKIE",
    "C-ECHOED",
    "ESTABLISHED",
    "S-SENT",
    "S-RECEIVED",
    "S-ACK-SENT",
    "REJECTED",
    "CLOSED",
)
_CONN_STATES: Dict[str, Dict[str, int]] = {
    "TCP": {name: i for i, name in enumerate(_TCP_STATES)},
    "UDP": {"UDP": 0},
    "SCTP": {name: i for i, name in enumerate(_SCTP_STATES)},
}
_ALWAYS_ACTIVE = {"UDP"}


def conn_state_number(protocol: str, state: str) -> Optional[int]:
    """The kernel's number of a connection state as /proc names it, or None if unknown."""
    return _CONN_STATES.get(protocol, {}).get(state)


@dataclass
class PushPlan:
    """What a push sends: `planned` templates first, then `connections` (if asked for)."""

    planned: List[PlannedTemplate] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    examples: Dict[str, List[str]] = field(default_factory=dict)  # a few per skip reason
    connections: List[SyncConn] = field(default_factory=list)
    skipped_connections: Counter = field(default_factory=Counter)
    connection_examples: Dict[str, List[str]] = field(default_factory=dict)

    def skip(self, reason: str, entry: ConnEntry) -> None:
        _count(self.skipped, self.examples, reason, describe_template(entry))

    def skip_connection(self, reason: str, entry: ConnEntry) -> None:
        _count(self.skipped_connections, self.connection_examples, reason, _describe_conn(entry))

    def entries(self) -> List[PushEntry]:
        """Everything to send, in order: the templates, then the connections."""
        return [*self.planned, *self.connections]

    def summary(self) -> dict:
        out = {
            "planned": len(self.planned),
            "skipped": dict(self.skipped),
            "skipped_examples": self.examples,
        }
        if self.connections or self.skipped_connections:
            out["connections"] = len(self.connections)
            out["skipped_connections"] = dict(self.skipped_connections)
            out["skipped_connection_examples"] = self.connection_examples
        return out


def _count(counter: Counter, examples: Dict[str, List[str]], reason: str, text: str) -> None:
    counter[reason] += 1
    ex = examples.setdefault(reason, [])
    if len(ex) < MAX_EXAMPLES:
        ex.append(text)


def _describe_conn(c: ConnEntry) -> str:
    return (
        f"{c.protocol} {host_port(c.caddr, c.cport)} -> {host_port(c.vaddr, c.vport)} -> "
        f"{host_port(c.daddr, c.dport)}"
    )


class _Services:
    """The live services, indexed; lookups memoised (a table has few services and servers)."""

    def __init__(self, services: Sequence[Service]):
        self.by_key = {s.key(): s for s in services}
        self.fwmark = [s for s in services if s.fwmark]
        self._svc: Dict[Tuple, Optional[Service]] = {}
        self._dest: Dict[Tuple, Optional[Destination]] = {}
        self.conn_targets: Dict[Tuple, Union[str, Tuple[int, Destination]]] = {}

    def for_template(self, t: ConnEntry) -> Optional[Service]:
        memo = (t.protocol, t.vaddr, t.vport, ":" in t.caddr)
        try:
            return self._svc[memo]
        except KeyError:
            svc = self._svc[memo] = self.by_key.get(t.service_key())
            return svc

    def destination(self, svc: Service, addr: str, port: int) -> Optional[Destination]:
        memo = (svc.key(), addr, port)
        try:
            return self._dest[memo]
        except KeyError:
            dest = self._dest[memo] = svc.destination_for(addr, port)
            return dest


def plan_push(
    templates: Iterable[ConnEntry],
    services: Sequence[Service],
    *,
    connections: Iterable[ConnEntry] = (),
) -> PushPlan:
    """Decide which templates (and connections) to push, with which real server and timeout.

    Entries of `templates` that are not templates are ignored, and so are templates among
    `connections`: the same full table may be passed as both. The first of several templates
    with the same key wins (a receiver would keep the first and only take the others'
    timeouts); the others are counted as duplicates.
    """
    idx = _Services(services)
    plan = PushPlan()
    seen = set()
    routes: Dict[Tuple, Union[str, Tuple[Destination, int]]] = {}
    planned = plan.planned
    for t in templates:
        if t.cport:  # not a template
            continue
        # Everything but the client, the timeout and PE data depends on these fields only,
        # and a table has few distinct combinations of them: decide once for each.
        rkey = (t.protocol, t.vaddr, t.vport, ":" in t.caddr, t.daddr, t.dport)
        route = routes.get(rkey)
        if route is None:
            route = routes[rkey] = _template_route(t, idx)
        if isinstance(route, str):
            plan.skip(route, t)
            continue
        if (t.pe_name or t.pe_data) and _pe_problem(t):
            plan.skip(SKIP_UNENCODABLE, t)
            continue
        # The kernel keys a template by client and virtual service (and PE data), not by real
        # server.
        key = (t.protocol, t.caddr, t.vaddr, t.vport, t.pe_name, t.pe_data)
        if key in seen:
            plan.skip(SKIP_DUPLICATE, t)
            continue
        seen.add(key)
        dest, fwmark = route
        # the real server's configured port: for fwmark services the only one a receiver binds
        planned.append(PlannedTemplate.for_entry(t, dest, max(int(t.expires), 1), fwmark))
    plan_connections(connections, idx, plan)
    return plan


def _template_route(t: ConnEntry, idx: _Services) -> Union[str, Tuple[Destination, int]]:
    """(real server, fwmark) a template is pushed with, or why it is skipped."""
    if t.is_invalidated:
        return SKIP_INVALIDATED
    svc = idx.for_template(t)
    if svc is None:
        return SKIP_NO_SERVICE
    if not svc.persistent:
        return SKIP_NOT_PERSISTENT
    dest = idx.destination(svc, t.daddr, t.dport)
    if dest is None:
        return SKIP_NO_DEST
    if addr_family(dest.addr) != t.af:
        # A v1 entry has one family for all three addresses.
        return SKIP_OTHER_FAMILY
    if t.protocol not in PROTO_NUMBERS or dest.fwd_method not in FWD_METHODS:
        return SKIP_UNENCODABLE
    if FWD_METHODS[dest.fwd_method] > syncproto.IP_VS_CONN_F_DROUTE:
        return SKIP_UNENCODABLE
    mark = t.fwmark
    if t.protocol == "IP" and (
        not mark or t.vport or syncproto.fwmark_vaddr(t.af, mark) != t.vaddr
    ):
        return SKIP_UNENCODABLE
    return dest, mark


def _pe_problem(e: ConnEntry) -> Optional[str]:
    if not (e.pe_name or e.pe_data):
        return None
    # A receiver drops an entry with PE data but no name, and the rest of the datagram past
    # the limits: never send such an entry.
    if not (e.pe_name and e.pe_data):
        return SKIP_UNENCODABLE
    try:
        name, data = e.pe_name.encode("ascii"), e.pe_data.encode("latin-1")
    except UnicodeEncodeError:
        return SKIP_UNENCODABLE
    if len(name) > syncproto.IP_VS_PENAME_MAXLEN or len(data) > syncproto.IP_VS_PEDATA_MAXLEN:
        return SKIP_UNENCODABLE
    return None


# ---------------------------------------------------------------------------- connections


def plan_connections(
    connections: Iterable[ConnEntry], services: Union[Sequence[Service], _Services], plan: PushPlan
) -> PushPlan:
    """Add the connection entries of a table to `plan` as SyncConn entries (templates ignored).

    /proc shows what a sync entry needs but two things: the forwarding method (taken from the
    live real server, as for templates) and, for a connection of a fwmark service, the mark
    (/proc shows the packet's protocol, address and port). A connection is matched to its
    service in this order: the service of its protocol, address and port with its real server;
    the port-zero service of its address; the one fwmark service of its family that has its
    real server (none: skipped; several: skipped as ambiguous). The INACTIVE flag is set as the
    kernel sets it (TCP and SCTP: every state but ESTABLISHED). Sequence adjustment data (NAT
    with an application helper such as FTP) is not in /proc and is not sent. The timeout is
    what is left of the connection's life; the new master re-arms it on the next packet.

    Unlike templates, a receiver does re-point a connection it holds with another real server
    when the message says it is active: the master's view wins, as with the kernel's own sync.
    """
    idx = services if isinstance(services, _Services) else _Services(services)
    seen = set()
    for c in connections:
        if c.is_template:
            continue
        states = _CONN_STATES.get(c.protocol)
        if states is None:
            plan.skip_connection(SKIP_UNENCODABLE, c)  # ICMP and the like: not synced
            continue
        state = states.get(c.state)
        if state is None:
            plan.skip_connection(SKIP_UNKNOWN_STATE, c)
            continue
        memo = (c.protocol, c.vaddr, c.vport, c.daddr, c.dport, c.af)
        found = idx.conn_targets.get(memo)
        if found is None:
            found = idx.conn_targets[memo] = _conn_target(c, idx)
        if isinstance(found, str):
            plan.skip_connection(found, c)
            continue
        fwmark, dest = found
        if addr_family(c.daddr) != c.af or addr_family(dest.addr) != c.af:
            plan.skip_connection(SKIP_OTHER_FAMILY, c)
            continue
        fwd = FWD_METHODS.get(dest.fwd_method)
        if fwd is None or fwd > syncproto.IP_VS_CONN_F_DROUTE or _pe_problem(c):
            plan.skip_connection(SKIP_UNENCODABLE, c)
            continue
        key = (c.protocol, c.caddr, c.cport, c.vaddr, c.vport)
        if key in seen:
            plan.skip_connection(SKIP_DUPLICATE, c)
            continue
        seen.add(key)
        flags = fwd
        if c.protocol not in _ALWAYS_ACTIVE and c.state != "ESTABLISHED":
            flags |= syncproto.IP_VS_CONN_F_INACTIVE
        plan.connections.append(
            SyncConn(
                af=c.af,
                protocol=PROTO_NUMBERS[c.protocol],
                flags=flags,
                state=state,
                cport=c.cport,
                vport=c.vport,
                dport=c.dport,
                fwmark=fwmark,
                timeout=max(int(c.expires), 1),
                caddr=c.caddr,
                vaddr=c.vaddr,
                daddr=c.daddr,
                pe_name=c.pe_name,
                pe_data=c.pe_data.encode("latin-1"),
            )
        )
    return plan


def _conn_target(c: ConnEntry, idx: _Services) -> Union[str, Tuple[int, Destination]]:
    """(fwmark or 0, real server) of a connection, or why there is none."""
    reason = SKIP_NO_SERVICE
    svc = idx.by_key.get((c.protocol, c.vaddr, c.vport))
    if svc is not None:
        dest = idx.destination(svc, c.daddr, c.dport)
        if dest is not None:
            return 0, dest
        reason = SKIP_NO_DEST
    svc = idx.by_key.get((c.protocol, c.vaddr, 0)) if c.vport else None
    if svc is not None:
        # A port-zero service forwards every port: its real servers have port 0.
        dest = idx.destination(svc, c.daddr, 0)
        if dest is not None:
            return 0, dest
        reason = SKIP_NO_DEST
    fits = []
    for fsvc in idx.fwmark:
        if fsvc.af != c.af:
            continue
        dests = [d for d in fsvc.destinations if d.addr == c.daddr and d.port in (c.dport, 0)]
        if dests:
            fits.append((fsvc.fwmark, dests[0]))
    if len(fits) == 1:
        return fits[0]
    if fits:
        return SKIP_AMBIGUOUS
    return reason
