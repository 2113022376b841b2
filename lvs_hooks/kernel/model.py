"""Plain values for what IPVS holds: connection entries (templates among them), services,
real servers.

Pure data, no I/O. Addresses are kept as canonical strings (`ipaddress` compressed form) so that
entries read from /proc, from a snapshot and from netlink compare equal.
"""

import ipaddress
import socket
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

# Protocol names as /proc/net/ip_vs_conn prints them (ip_vs_proto_name) and their numbers.
PROTO_NUMBERS = {"IP": 0, "TCP": 6, "UDP": 17, "SCTP": 132}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}

# Forwarding methods (IP_VS_CONN_F_FWD_MASK values), by the names ipvsadm and keepalived use.
FWD_METHODS = {"masq": 0, "local": 1, "tunnel": 2, "droute": 3}
FWD_NAMES = {v: k for k, v in FWD_METHODS.items()}


def canonical_addr(text: str) -> str:
    """Canonical text form of an IPv4 or IPv6 address (raises ValueError if it is neither)."""
    return str(ipaddress.ip_address(text))


def addr_family(addr: str) -> int:
    """4 or 6."""
    return 6 if ":" in addr else 4


def host_port(addr: str, port: int) -> str:
    """`addr:port` as an operator reads it, an IPv6 address in brackets (RFC 3986, as ipvsadm
    prints it): `10.1.0.12:5000`, `[fd00:1::12]:5000`."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def ipv6_text(packed: bytes) -> str:
    """canonical_addr() of a packed IPv6 address, fast (the parsers convert many).

    inet_ntop writes the same RFC 5952 text ten times faster, except for the dotted forms it
    uses for IPv4-mapped and -compatible addresses; ipaddress decides those.
    """
    text = socket.inet_ntop(socket.AF_INET6, packed)
    return str(ipaddress.IPv6Address(packed)) if "." in text else text


_M32 = (1 << 32) - 1
_M128 = (1 << 128) - 1


@lru_cache(maxsize=256)
def _netmask_bits(netmask: str) -> Optional[Tuple[int, int]]:
    """(family, mask as an integer) of a Service.netmask, None for none or one that is neither
    a dotted IPv4 mask nor an IPv6 prefix length (kernel/netlink.py decodes both)."""
    try:
        if "." in netmask:
            return 4, int(ipaddress.IPv4Address(netmask))
        plen = int(netmask)
    except ValueError:
        return None
    if not 0 <= plen <= 128:
        return None
    return 6, _M128 ^ (_M128 >> plen)


def netmask_is_full(netmask: str) -> bool:
    """Whether template_client(addr, netmask) is `addr` for every address: no netmask, a full
    one, or one that is not a netmask at all."""
    bits = _netmask_bits(netmask) if netmask else None
    return bits is None or bits[1] == (_M32 if bits[0] == 4 else _M128)


def template_client(addr: str, netmask: str) -> str:
    """A client address as the templates of a service with persistence netmask `netmask` hold
    it (ip_vs_sched_persist: an IPv4 client ANDed with the mask, an IPv6 one cut to the prefix
    length). A full mask, none, or an address of the other family: the address as it is."""
    bits = _netmask_bits(netmask) if netmask else None
    if bits is None:
        return addr
    af, mask = bits
    if mask == (_M32 if af == 4 else _M128) or addr_family(addr) != af:
        return addr
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if af == 4:
        return str(ipaddress.IPv4Address(int(ip) & mask))
    return str(ipaddress.IPv6Address(int(ip) & mask))


# A template's identity in the kernel: protocol, client, virtual address and port (the kernel
# keeps one template per client and service, whatever its real server).
TemplateId = Tuple[str, str, str, int]
# How a template shows in /proc/net/ip_vs_conn: its identity and its real server.
TemplateKey = Tuple[str, str, str, int, str, int]


def template_id(t) -> TemplateId:
    """The identity of a template (a ConnEntry, a PlannedTemplate, anything with these
    fields): one per client and service in the kernel's table."""
    return (t.protocol, t.caddr, t.vaddr, t.vport)


def template_key(t) -> TemplateKey:
    """A template as the table shows it: its identity and the real server it names (what a
    verification looks for, what the ledger of injections records)."""
    return (t.protocol, t.caddr, t.vaddr, t.vport, t.daddr, t.dport)


def wire_template_key(conn) -> TemplateKey:
    """template_key of a template decoded from a sync message (kernel.syncproto.SyncConn),
    whose protocol is a number: named as /proc names it."""
    proto = PROTO_NAMES.get(conn.protocol, f"IP_{conn.protocol}")
    return (proto, conn.caddr, conn.vaddr, conn.vport, conn.daddr, conn.dport)


def parse_template_key(parts: Sequence[str]) -> TemplateKey:
    """The inverse of joining a TemplateKey's fields as text (ValueError if it is not one)."""
    if len(parts) != 6:
        raise ValueError(f"a template key has 6 fields, not {len(parts)}")
    return (parts[0], parts[1], parts[2], int(parts[3]), parts[4], int(parts[5]))


class ConnEntry(NamedTuple):
    """One entry of the IPVS connection table, as /proc/net/ip_vs_conn(_sync) shows it.

    A persistence template has client port 0. Templates of fwmark services have protocol "IP"
    and carry the mark where the virtual address would be (see `fwmark`).

    A NamedTuple rather than a dataclass: a table has up to millions of entries, and a tuple is
    built in C (`tuple.__new__` over a column of rows) at a fraction of a dataclass's cost and
    memory, immutable and hashable all the same.
    """

    protocol: str
    caddr: str
    cport: int
    vaddr: str
    vport: int
    daddr: str
    dport: int
    state: str
    expires: int
    pe_name: str = ""
    pe_data: str = ""
    origin: Optional[str] = None  # "LOCAL" or "SYNC" when read from ip_vs_conn_sync

    @property
    def is_template(self) -> bool:
        return self.cport == 0

    @property
    def is_invalidated(self) -> bool:
        """A template the kernel found unusable (its real server gone or never bound): it
        rehashes it with ports 0xffff and lets it expire (ip_vs_check_template)."""
        return self.is_template and self.vport == 0xFFFF and self.dport == 0xFFFF

    @property
    def af(self) -> int:
        return addr_family(self.caddr)

    @property
    def fwmark(self) -> int:
        """The firewall mark of a fwmark-service template, else 0.

        The kernel builds the template's vaddr from htonl(mark) in the first 32 bits of the
        address union, so an IPv4 template shows 0.0.0.<mark> and an IPv6 one ::<mark> in the
        first word.
        """
        if self.protocol != "IP":
            return 0
        value = int(ipaddress.ip_address(self.vaddr))
        return value if self.af == 4 else value >> 96

    def service_key(self) -> Tuple:
        """The key of the virtual service this entry belongs to (see Service.key)."""
        if self.protocol == "IP":
            return ("fwmark", self.af, self.fwmark)
        return (self.protocol, self.vaddr, self.vport)


@dataclass(frozen=True)
class Destination:
    """A real server of a virtual service."""

    addr: str
    port: int
    fwd_method: str = "masq"  # key of FWD_METHODS
    weight: int = 1

    @property
    def af(self) -> int:
        return addr_family(self.addr)


@dataclass(frozen=True)
class Service:
    """A virtual service: by address, port and protocol, or by firewall mark (protocol None)."""

    af: int
    protocol: Optional[str]  # "TCP", "UDP", "SCTP"; None for a fwmark service
    addr: Optional[str]
    port: int
    fwmark: int = 0
    scheduler: str = ""
    persistent: bool = False
    timeout: int = 0  # persistence_timeout in seconds (meaningful when persistent)
    netmask: str = ""  # persistence netmask: dotted IPv4 mask, or IPv6 prefix length
    pe_name: str = ""
    destinations: Tuple[Destination, ...] = field(default_factory=tuple)

    def key(self) -> Tuple:
        if self.fwmark:
            return ("fwmark", self.af, self.fwmark)
        return (self.protocol, self.addr, self.port)

    def describe(self) -> str:
        if self.fwmark:
            return f"FWM {self.fwmark}" + (" IPv6" if self.af == 6 else "")
        return f"{self.protocol} {host_port(self.addr or '', self.port)}"

    def template_client(self, addr: str) -> str:
        """The client address as this service's templates hold it: masked by its persistence
        netmask (see template_client)."""
        return template_client(addr, self.netmask)

    def destination_for(self, addr: str, port: int) -> Optional[Destination]:
        """The real server a template names. Templates of fwmark services may carry port 0
        (what the kernel's own sync sends), so there the address alone decides when it is unique.
        """
        exact = [d for d in self.destinations if d.addr == addr and d.port == port]
        if exact:
            return exact[0]
        if self.fwmark:
            same_addr = [d for d in self.destinations if d.addr == addr]
            if len(same_addr) == 1:
                return same_addr[0]
        return None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Service":
        dests = tuple(Destination(**x) for x in d.get("destinations", ()))
        return cls(**{**d, "destinations": dests})


def held_templates(
    conn_ends: Mapping[Tuple[str, Tuple], float], services: Sequence[Service]
) -> Dict[Tuple[str, Tuple], float]:
    """Which templates the connections hold: the greatest of `conn_ends` (a figure per
    (client address, (protocol, vaddr, vport)) of connections, as conntable.ClientKey keys
    them: a count, or when the last connection ends; 0 or less is no connection) for each
    (template client address, service key) they may hold. The keeper's rule (clients_in_use)
    and explain's for the table in memory.

    A connection of a port-zero service shows the packet's port, and one of a fwmark service
    the packet's protocol, address and port, not the mark. A connection that belongs to no
    address/port service (nor to the port-zero service of its address) is taken to be one of
    a fwmark service of its family: its templates are kept (keeping one too many costs a
    template that expires a little later; dropping one costs a client its real server).
    """
    by_key = {s.key(): s for s in services if not s.fwmark}
    fwmark = [s for s in services if s.fwmark]
    out: Dict[Tuple[str, Tuple], float] = {}
    get = out.get
    for (caddr, key), end in conn_ends.items():
        if end <= 0:
            continue
        svc = by_key.get(key)
        if svc is None and key[0] != "fwmark" and key[2]:
            # a port-zero service forwards every port: its connections show the packet's
            svc = by_key.get((key[0], key[1], 0))
        if svc is not None:
            pair = (svc.template_client(caddr), svc.key())
            if end > get(pair, 0):
                out[pair] = end
            continue
        af = addr_family(caddr)
        for f in fwmark:
            if f.af == af:
                pair = (f.template_client(caddr), f.key())
                if end > get(pair, 0):
                    out[pair] = end
    return out


def canonical_addr_or_same(addr: str) -> str:
    """The address as the kernel's table shows it (fd00:0::29 is fd00::29); as given if it is
    none."""
    try:
        return canonical_addr(addr)
    except ValueError:
        return addr


def templates_of_client(
    templates: Iterable[ConnEntry], by_key: Mapping[Tuple, Service], client: str
) -> List[ConnEntry]:
    """The templates of `client` (canonical_addr_or_same): its own address, or as its
    template's service (`by_key`: Service.key() to Service) masks it (a persistence netmask)."""
    out = []
    for t in templates:
        if t.caddr == client:
            out.append(t)
            continue
        svc = by_key.get(t.service_key())
        if svc is not None and t.caddr == svc.template_client(client):
            out.append(t)
    return out
