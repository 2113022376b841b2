"""Plain values for what IPVS holds: connection entries (templates among them), services,
real servers.

Pure data, no I/O. Addresses are kept as canonical strings (`ipaddress` compressed form) so that
entries read from /proc, from a snapshot and from netlink compare equal.
"""

import ipaddress
import socket
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Optional, Sequence, Tuple

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


def ipv6_text(packed: bytes) -> str:
    """canonical_addr() of a packed IPv6 address, fast (the parsers convert many).

    inet_ntop writes the same RFC 5952 text ten times faster, except for the dotted forms it
    uses for IPv4-mapped and -compatible addresses; ipaddress decides those.
    """
    text = socket.inet_ntop(socket.AF_INET6, packed)
    return str(ipaddress.IPv6Address(packed)) if "." in text else text


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
        host = f"[{self.addr}]" if self.af == 6 else self.addr
        return f"{self.protocol} {host}:{self.port}"

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
