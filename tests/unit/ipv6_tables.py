"""Tables of one shape in either address family, for the IPv6 property tests (issue 17).

A `World` is a table described without addresses: services (UDP, TCP, port-zero UDP, fwmark;
persistent or not, with a persistence netmask, gone or live), their templates and their
connections, by index. `render(world, fam)` turns it into what the planners get from the
kernel, each service in the family `fam` gives it: the services as the kernel sends them over
netlink, decoded by kernel/netlink.py, and the table as the kernel prints it in
/proc/net/ip_vs_conn(_sync), parsed by lvs-hooks' own reader (so the persistence netmask, the
IPv6 lines and the per-client counts go through the code the director runs).

The IPv4 rendering is the reference; an IPv6 one maps every address a.b.c.d to fd00::a.b.c.d
(the IPv4 address in the low 32 bits) and a persistence mask of /n to the prefix length 96+n,
so that masking commutes with the mapping; a fwmark template's virtual address is the mark in
the first 32 bits, as the kernel keys it. `Rendering.map4` carries any IPv4 decision (a planned
template, a key, a sync entry) into the rendering's families: a planner is right for IPv6 and
for mixed tables when its decisions over a rendering are the IPv4 decisions mapped.

Families are chosen per service, with one exception: the fwmark services, the services gone
from the kernel and those with a connection to a real server they do not have share one family.
A connection of a fwmark service shows the packet's protocol, address and port, not its mark,
so the planners take a connection that no live address service explains for one of a fwmark
service of its family (keeper.clients_in_use, push.planner._conn_target); split across
families, the IPv4 table's attribution would be a decision no mixed table can make (an IPv6
packet is never one of an IPv4 fwmark service).
"""

import dataclasses
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from hypothesis import strategies as st

from lvs_hooks.kernel import netlink
from lvs_hooks.kernel.conntable import ConnTable, parse_conn_table
from lvs_hooks.kernel.model import PROTO_NAMES, ConnEntry, Service, TemplateKey
from lvs_hooks.kernel.syncproto import SyncConn, fwmark_vaddr

KINDS = ("UDP", "TCP", "UDP0", "FWM")  # UDP0: a port-zero UDP service
VPORT = 5000
N_RS = 4
N_CLIENTS = 12
HEADER = b"Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
SYNC_HEADER = b"Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Origin Expires\n"


@dataclass(frozen=True)
class SvcSpec:
    kind: str
    persistent: bool
    timeout: int
    bits: int  # IPv4 prefix length of the persistence netmask (32: none)
    dests: Tuple[Tuple[int, int, str], ...]  # (real server index, port, forwarding method)
    live: bool  # False: gone from the kernel; its templates name no service


@dataclass(frozen=True)
class TplSpec:
    svc: int
    client: int
    rs: int  # may name no real server of the service (gone), N_RS: one never configured
    port: int
    expires: int
    state: str
    origin: str
    invalidated: bool


@dataclass(frozen=True)
class ConnSpec:
    svc: int
    client: int
    cport: int
    vport: int  # the packet's port: port-zero and fwmark services show it, not the service's
    rs: int
    port: int
    expires: int
    origin: str


@dataclass(frozen=True)
class World:
    services: Tuple[SvcSpec, ...]
    templates: Tuple[TplSpec, ...]
    connections: Tuple[ConnSpec, ...]
    other: Tuple[TplSpec, ...]  # a second set of templates: pushed keys, a snapshot, a later read


def client4(i: int) -> str:
    # four /24 networks of three clients: masks of /24 and /16 key several clients as one
    return f"10.2.{i % 4}.{20 + i}"


def rs4(i: int) -> str:
    return f"10.1.0.{11 + i}"


def vip4(svc: int, kind: str) -> str:
    # a fwmark service's connections go to an address no address service has
    return f"10.0.9.{100 + svc}" if kind == "FWM" else f"10.0.0.{100 + svc}"


def mask4(addr: str, bits: int) -> str:
    m = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address(addr)) & m))


def to_family(addr4: str, af: int) -> str:
    if af == 4:
        return addr4
    return str(ipaddress.IPv6Address((0xFD00 << 112) | int(ipaddress.IPv4Address(addr4))))


def netmask(bits: int, af: int) -> str:
    if af == 4:
        return str(ipaddress.IPv4Address((0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF))
    return str(96 + bits)


# ---- strategies -------------------------------------------------------------------------------


@st.composite
def services(draw) -> SvcSpec:
    kind = draw(st.sampled_from(KINDS))
    dest_port = 0 if kind == "UDP0" else VPORT
    rs = draw(st.lists(st.integers(0, N_RS - 1), min_size=0, max_size=3, unique=True))
    fwd = draw(st.sampled_from(("masq", "droute", "tunnel")))
    return SvcSpec(
        kind=kind,
        persistent=draw(st.integers(0, 3)) > 0,  # mostly persistent
        timeout=draw(st.sampled_from((20, 60, 360))),
        bits=draw(st.sampled_from((32, 32, 24, 16))),
        dests=tuple((r, dest_port, fwd) for r in rs),
        live=draw(st.integers(0, 5)) > 0,
    )


@st.composite
def worlds(draw) -> World:
    svcs = tuple(draw(st.lists(services(), min_size=1, max_size=4)))
    n = len(svcs)

    def tpl():
        s = draw(st.integers(0, n - 1))
        spec = svcs[s]
        rs = draw(st.integers(0, N_RS))
        ports = (0,) if spec.kind == "UDP0" else ((VPORT, 0) if spec.kind == "FWM" else (VPORT,))
        return TplSpec(
            svc=s,
            client=draw(st.integers(0, N_CLIENTS - 1)),
            rs=rs,
            port=draw(st.sampled_from(ports)),
            expires=draw(st.integers(0, 400)),
            state=draw(st.sampled_from(("ASSURED", "ASSURED", "NONE"))),
            origin=draw(st.sampled_from(("LOCAL", "SYNC"))),
            invalidated=draw(st.integers(0, 9)) == 0,
        )

    def conn():
        s = draw(st.integers(0, n - 1))
        spec = svcs[s]
        vport = draw(st.sampled_from((5001, 5002))) if spec.kind == "UDP0" else VPORT
        return ConnSpec(
            svc=s,
            client=draw(st.integers(0, N_CLIENTS - 1)),
            cport=draw(st.integers(1024, 65535)),
            vport=vport,
            rs=draw(st.integers(0, N_RS - 1)),
            port=vport,
            expires=draw(st.integers(1, 300)),
            origin=draw(st.sampled_from(("LOCAL", "SYNC"))),
        )

    templates = tuple(tpl() for _ in range(draw(st.integers(0, 12))))
    conns = tuple(conn() for _ in range(draw(st.integers(0, 10))))
    other = tuple(tpl() for _ in range(draw(st.integers(0, 10))))
    return World(svcs, templates, conns, other)


@st.composite
def families(draw, world: World) -> Dict[int, int]:
    """Every service IPv6, or each one's own family (but one for all of those whose connections
    may be taken for a fwmark service's: see the module's docstring)."""
    if draw(st.booleans()):
        return {i: 6 for i in range(len(world.services))}
    shared = draw(st.sampled_from((4, 6)))
    return {
        i: shared if _falls_through(world, i) else draw(st.sampled_from((4, 6)))
        for i in range(len(world.services))
    }


def _falls_through(world: World, i: int) -> bool:
    s = world.services[i]
    if s.kind == "FWM" or not s.live:
        return True
    mine = {r for r, _, _ in s.dests}
    return any(c.svc == i and c.rs not in mine for c in world.connections)


def worlds_and_families():
    return worlds().flatmap(lambda w: st.tuples(st.just(w), families(w)))


# ---- rendering --------------------------------------------------------------------------------


@dataclass
class Rendering:
    world: World
    fam: Dict[int, int]
    services: List[Service]  # the live ones, as netlink decodes them
    table: ConnTable  # /proc/net/ip_vs_conn as parsed, with per-client counts
    sync_table: ConnTable  # /proc/net/ip_vs_conn_sync as parsed (origins)
    other: List[ConnEntry]  # world.other as template entries (parsed too)
    # IPv4 address of a service's entity -> this rendering's, per service
    _vips: Dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def templates(self) -> List[ConnEntry]:
        return self.table.templates

    @property
    def conn_counts(self):
        return self.table.client_counts or {}

    # -- mapping IPv4 decisions into this rendering

    def svc_of(self, protocol: str, vaddr4: str) -> int:
        """The index of the service an IPv4 entry belongs to: a fwmark template by its mark
        (0.0.0.<mark>), anything else by its virtual address (a fwmark connection's too)."""
        if protocol == "IP":
            return int(ipaddress.IPv4Address(vaddr4)) - 1
        return self._vips[vaddr4]

    def map4(self, x):
        """An IPv4 decision (TemplateKey, ConnEntry, PlannedTemplate, SyncConn) as this
        rendering has it."""
        if type(x) is tuple:  # a TemplateKey
            return self._key(x)
        protocol = x.protocol if isinstance(x.protocol, str) else PROTO_NAMES[x.protocol]
        s = self.svc_of(protocol, x.vaddr)
        af = self.fam[s]
        vaddr = fwmark_vaddr(af, s + 1) if protocol == "IP" else to_family(x.vaddr, af)
        changes = {"caddr": to_family(x.caddr, af), "vaddr": vaddr,
                   "daddr": to_family(x.daddr, af)}
        if isinstance(x, SyncConn):
            changes["af"] = af
        if isinstance(x, ConnEntry):
            return x._replace(**changes)
        return dataclasses.replace(x, **changes)

    def service_key(self, key: Tuple) -> Tuple:
        """An IPv4 Service.key() as this rendering has it."""
        if key[0] == "fwmark":
            return ("fwmark", self.fam[key[2] - 1], key[2])
        proto, vaddr, vport = key
        return (proto, to_family(vaddr, self.fam[self._vips[vaddr]]), vport)

    def client(self, key: Tuple, caddr4: str) -> str:
        """An IPv4 client address of the service of IPv4 key `key`, as this rendering has it."""
        s = key[2] - 1 if key[0] == "fwmark" else self._vips[key[1]]
        return to_family(caddr4, self.fam[s])

    def _key(self, k: TemplateKey) -> TemplateKey:
        proto, caddr, vaddr, vport, daddr, dport = k
        s = self.svc_of(proto, vaddr)
        af = self.fam[s]
        v = fwmark_vaddr(af, s + 1) if proto == "IP" else to_family(vaddr, af)
        return (proto, to_family(caddr, af), v, vport, to_family(daddr, af), dport)


def render(world: World, fam: Optional[Dict[int, int]] = None) -> Rendering:
    fam = fam if fam is not None else {i: 4 for i in range(len(world.services))}
    svcs: List[Service] = []
    vips: Dict[str, int] = {}
    for i, s in enumerate(world.services):
        af = fam[i]
        vips[vip4(i, s.kind)] = i
        if not s.live:
            continue
        svcs.append(_decoded_service(i, s, af))
    plain, sync = [HEADER], [SYNC_HEADER]
    for t in world.templates:
        p, s_ = _template_line(world, fam, t)
        plain.append(p)
        sync.append(s_)
    for c in world.connections:
        p, s_ = _conn_line(world, fam, c)
        plain.append(p)
        sync.append(s_)
    other = [_template_line(world, fam, t)[0] for t in world.other]
    return Rendering(
        world=world,
        fam=fam,
        services=svcs,
        table=parse_conn_table(b"".join(plain), client_counts=True),
        sync_table=parse_conn_table(b"".join(sync)),
        other=list(parse_conn_table(HEADER + b"".join(other)).entries),
        _vips=vips,
    )


# ---- the services as the kernel sends them (ip_vs_genl_fill_service, ip_vs_genl_fill_dest in
# net/netfilter/ipvs/ip_vs_ctl.c), decoded by kernel/netlink.py

_FWD = {"masq": 0, "local": 1, "tunnel": 2, "droute": 3}


def _attr(t: int, payload: bytes) -> bytes:
    ln = 4 + len(payload)
    return struct.pack("=HH", ln, t) + payload + bytes(-ln & 3)


def _genl(cmd: int, nest: int, attrs: bytes) -> netlink.ipvs_cmd_msg:
    body = struct.pack("=BBH", cmd, 1, 0) + _attr(nest | 0x8000, attrs)  # NLA_F_NESTED
    msg = netlink.ipvs_cmd_msg(struct.pack("=IHHII", 16 + len(body), 0x20, 2, 1, 0) + body)
    msg.decode()
    return msg


def _decoded_service(i: int, s: SvcSpec, af: int) -> Service:
    family = socket.AF_INET6 if af == 6 else socket.AF_INET
    # svc->netmask as it is: a mask in network order, or a prefix length in host order
    mask = (socket.inet_aton(netmask(s.bits, 4)) if af == 4
            else struct.pack("=I", int(netmask(s.bits, 6))))
    parts = [_attr(1, struct.pack("=H", family))]
    if s.kind == "FWM":
        parts.append(_attr(5, struct.pack("=I", i + 1)))
    else:
        addr = socket.inet_pton(family, to_family(vip4(i, s.kind), af)).ljust(16, b"\0")
        port = 0 if s.kind == "UDP0" else VPORT
        proto = {"UDP": 17, "TCP": 6}[s.kind[:3]]
        parts += [_attr(2, struct.pack("=H", proto)), _attr(3, addr),
                  _attr(4, struct.pack("!H", port))]
    parts += [_attr(6, b"wrr\0"), _attr(7, struct.pack("=II", int(s.persistent), 0xFFFFFFFF)),
              _attr(8, struct.pack("=I", s.timeout)), _attr(9, mask)]
    dests = []
    for r, port, fwd in s.dests:
        raw = socket.inet_pton(family, to_family(rs4(r), af)).ljust(16, b"\0")
        dests.append(_genl(5, 2, b"".join([
            _attr(1, raw), _attr(2, struct.pack("!H", port)),
            _attr(3, struct.pack("=I", _FWD[fwd])), _attr(4, struct.pack("=I", 1)),
            _attr(11, struct.pack("=H", family)),
        ])))
    return netlink.decode_service(_genl(1, 1, b"".join(parts)),
                                  tuple(netlink.decode_dest(d) for d in dests))


def _addr_col(a: str) -> str:
    ip = ipaddress.ip_address(a)
    if ip.version == 4:
        return f"{int(ip):08X}"
    return ip.exploded  # %pI6: eight groups of four lower-case hex digits


def _lines(proto: str, c: str, cport: int, v: str, vport: int, d: str, dport: int, state: str,
           origin: str, expires: int) -> Tuple[bytes, bytes]:
    head = (f"{proto:<3} {_addr_col(c)} {cport:04X} {_addr_col(v)} {vport:04X} {_addr_col(d)} "
            f"{dport:04X} {state:<11}")
    return (f"{head} {expires:7d}\n".encode(), f"{head} {origin:<6} {expires:7d}\n".encode())


def _template_line(world: World, fam: Dict[int, int], t: TplSpec) -> Tuple[bytes, bytes]:
    s = world.services[t.svc]
    af = fam[t.svc]
    caddr = to_family(mask4(client4(t.client), s.bits), af)
    daddr = to_family(rs4(t.rs), af)
    if s.kind == "FWM":
        proto, vaddr, vport = "IP", fwmark_vaddr(af, t.svc + 1), 0
    else:
        proto, vaddr = s.kind[:3], to_family(vip4(t.svc, s.kind), af)
        vport = 0 if s.kind == "UDP0" else VPORT
    dport = t.port
    if t.invalidated:  # ip_vs_check_template rehashes it with ports 0xffff
        vport = dport = 0xFFFF
    return _lines(proto, caddr, 0, vaddr, vport, daddr, dport, t.state, t.origin, t.expires)


def _conn_line(world: World, fam: Dict[int, int], c: ConnSpec) -> Tuple[bytes, bytes]:
    s = world.services[c.svc]
    af = fam[c.svc]
    proto = "TCP" if s.kind == "TCP" else "UDP"
    state = "ESTABLISHED" if proto == "TCP" else "UDP"
    return _lines(proto, to_family(client4(c.client), af), c.cport,
                  to_family(vip4(c.svc, s.kind), af), c.vport, to_family(rs4(c.rs), af), c.port,
                  state, c.origin, c.expires)


def keys(entries: Sequence[ConnEntry]) -> List[TemplateKey]:
    return [(t.protocol, t.caddr, t.vaddr, t.vport, t.daddr, t.dport) for t in entries]


def ordered(items) -> list:
    """Decisions as a sorted list: a mixed table's entries come in another order (the reader
    gives IPv4 lines first, then IPv6 ones), so decisions are compared as multisets."""
    return sorted(items, key=repr)
