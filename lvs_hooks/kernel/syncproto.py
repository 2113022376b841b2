"""The IPVS connection sync protocol (net/netfilter/ipvs/ip_vs_sync.c), versions 0 and 1.

A sync datagram is the only way to put a connection entry, templates included, into the
kernel's table: a backup sync daemon receiving it creates or updates the entry. Wire structs
are declared below as tables named after the kernel's structs and fields; everything is
big-endian except the v0 sequence options (see SEQ_OPTIONS_V0).

Version 1 (what kernels send by default, and what this module encodes):

    struct ip_vs_sync_mesg    8 bytes: reserved=0 syncid size nr_conns version=1 spare=0
    struct ip_vs_sync_v4     36 bytes, or struct ip_vs_sync_v6, 72 bytes, per entry, then
    options                   type, len, data: 1 sequence data, 2 PE data, 3 PE name

ver_size holds the entry's length including its options in the low 12 bits (version 0 in the
top 4). The sender pads with zeros to 4-byte alignment before each next entry, not after the
last one; `size` in the header is the whole datagram. Version 0 is older: a 4-byte header
(nr_conns first) and 24-byte IPv4 entries without timeout or fwmark.
"""

import ipaddress
import socket
import struct
from collections import namedtuple
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from lvs_hooks.kernel.model import FWD_METHODS, PROTO_NUMBERS, ipv6_text

# --- include/uapi/linux/ip_vs.h: connection flags. Only flags 0..15 are sent to a backup.
IP_VS_CONN_F_FWD_MASK = 0x0007
IP_VS_CONN_F_MASQ = 0x0000
IP_VS_CONN_F_LOCALNODE = 0x0001
IP_VS_CONN_F_TUNNEL = 0x0002
IP_VS_CONN_F_DROUTE = 0x0003
IP_VS_CONN_F_BYPASS = 0x0004
IP_VS_CONN_F_SYNC = 0x0020
IP_VS_CONN_F_HASHED = 0x0040
IP_VS_CONN_F_NOOUTPUT = 0x0080
IP_VS_CONN_F_INACTIVE = 0x0100
IP_VS_CONN_F_OUT_SEQ = 0x0200
IP_VS_CONN_F_IN_SEQ = 0x0400
IP_VS_CONN_F_SEQ_MASK = 0x0600
IP_VS_CONN_F_NO_CPORT = 0x0800
IP_VS_CONN_F_TEMPLATE = 0x1000
IP_VS_CONN_F_ONE_PACKET = 0x2000
# What a backup keeps of a new entry's flags (it adds IP_VS_CONN_F_SYNC) ...
IP_VS_CONN_F_BACKUP_MASK = (
    IP_VS_CONN_F_FWD_MASK
    | IP_VS_CONN_F_NOOUTPUT
    | IP_VS_CONN_F_INACTIVE
    | IP_VS_CONN_F_SEQ_MASK
    | IP_VS_CONN_F_NO_CPORT
    | IP_VS_CONN_F_TEMPLATE
)
# ... and the only ones it updates on an entry it has already.
IP_VS_CONN_F_BACKUP_UPD_MASK = IP_VS_CONN_F_INACTIVE | IP_VS_CONN_F_SEQ_MASK

IP_VS_PENAME_MAXLEN = 16
IP_VS_PEDATA_MAXLEN = 255

# --- include/net/ip_vs.h: template states. A backup drops a template still in NONE as soon
# as its last connection ends; an ASSURED one lives out its timeout.
IP_VS_CTPL_S_NONE = 0
IP_VS_CTPL_S_ASSURED = 1

# --- net/netfilter/ipvs/ip_vs_sync.c
IP_VS_SYNC_GROUP = "224.0.0.81"
IP_VS_SYNC_PORT = 8848
SYNC_PROTO_VER = 1
STYPE_INET6 = 0
STYPE_F_INET6 = 1 << STYPE_INET6
SVER_SHIFT = 12
SVER_MASK = 0x0FFF
IPVS_OPT_SEQ_DATA = 1
IPVS_OPT_PE_DATA = 2
IPVS_OPT_PE_NAME = 3
IPVS_OPT_PARAM = 7
# An option type with this bit may be skipped by a receiver that does not know it; without it
# the receiver drops the entry.
IPVS_OPT_F_PARAM = 1 << (IPVS_OPT_PARAM - 1)

# The kernel master's payload limit on a 1500-byte MTU (sync_maxlen: MTU - IPv4 - UDP
# headers): 40 IPv4 entries. A backup silently drops a datagram longer than its own limit.
SYNC_MAXLEN_DEFAULT = 1500 - 20 - 8
SYNC_MAXLEN_DEFAULT_V6 = 1500 - 40 - 8  # the same over an IPv6 sync group
MAX_NR_CONNS = 255  # nr_conns is a u8

IPPROTO_IP = 0


class KStruct:
    """A kernel struct: its name, its fields in order, and the struct.Struct of its layout."""

    def __init__(self, name: str, fmt: str, fields: str):
        self.name = name
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size
        # A record type made at run time, one per kernel struct: its fields are the kernel's.
        self.tuple: Any = namedtuple(name, fields)  # type: ignore[misc]

    def unpack_from(self, buf: bytes, offset: int = 0):
        return self.tuple._make(self.struct.unpack_from(buf, offset))

    def pack(self, *values) -> bytes:
        return self.struct.pack(*values)


ip_vs_sync_mesg = KStruct(
    "ip_vs_sync_mesg", "!BBHBbH", "reserved syncid size nr_conns version spare"
)
ip_vs_sync_mesg_v0 = KStruct("ip_vs_sync_mesg_v0", "!BBH", "nr_conns syncid size")
ip_vs_sync_v4 = KStruct(
    "ip_vs_sync_v4",
    "!BBHIHHHHII4s4s4s",
    "type protocol ver_size flags state cport vport dport fwmark timeout caddr vaddr daddr",
)
ip_vs_sync_v6 = KStruct(
    "ip_vs_sync_v6",
    "!BBHIHHHHII16s16s16s",
    "type protocol ver_size flags state cport vport dport fwmark timeout caddr vaddr daddr",
)
ip_vs_sync_conn_v0 = KStruct(
    "ip_vs_sync_conn_v0",
    "!BBHHH4s4s4sHH",
    "reserved protocol cport vport dport caddr vaddr daddr flags state",
)
# struct ip_vs_sync_conn_options: in_seq and out_seq, each struct ip_vs_seq
# {init_seq, delta, previous_delta}. Version 1 sends them in network order (hton_seq) ...
SEQ_OPTIONS_V1 = struct.Struct("!6I")
# ... version 0 memcpy()s them from the connection: the sender's host order, little-endian on
# every director this tool targets (x86-64, arm64).
SEQ_OPTIONS_V0 = struct.Struct("<6I")
_OPT_HEADER = struct.Struct("!BB")

assert ip_vs_sync_mesg.size == 8 and ip_vs_sync_mesg_v0.size == 4
assert ip_vs_sync_v4.size == 36 and ip_vs_sync_v6.size == 72
assert ip_vs_sync_conn_v0.size == 24 and SEQ_OPTIONS_V1.size == 24


class SyncDecodeError(ValueError):
    """A datagram the kernel would drop, or not read the way its sender meant; one line."""


class IpVsSeq(NamedTuple):
    """struct ip_vs_seq: TCP sequence number adjustment of one direction."""

    init_seq: int
    delta: int
    previous_delta: int


class SeqOptions(NamedTuple):
    """struct ip_vs_sync_conn_options."""

    in_seq: IpVsSeq
    out_seq: IpVsSeq


@dataclass(frozen=True)
class SyncConn:
    """One connection entry of a sync message, templates included.

    Addresses are canonical strings of family `af` (4 or 6); ports host integers; `timeout` in
    seconds (0: none carried, v0; the receiver then picks 3 minutes for a template). `options`
    keeps option TLVs this module does not interpret, as (type, data).
    """

    af: int
    protocol: int
    flags: int
    state: int
    cport: int
    vport: int
    dport: int
    fwmark: int
    timeout: int
    caddr: str
    vaddr: str
    daddr: str
    pe_name: str = ""
    pe_data: bytes = b""
    seq: Optional[SeqOptions] = None
    options: Tuple[Tuple[int, bytes], ...] = ()

    @property
    def is_template(self) -> bool:
        return bool(self.flags & IP_VS_CONN_F_TEMPLATE)

    def to_dict(self) -> dict:
        """A JSON-ready form (bytes as hex)."""
        return {
            "af": self.af,
            "protocol": self.protocol,
            "flags": self.flags,
            "state": self.state,
            "cport": self.cport,
            "vport": self.vport,
            "dport": self.dport,
            "fwmark": self.fwmark,
            "timeout": self.timeout,
            "caddr": self.caddr,
            "vaddr": self.vaddr,
            "daddr": self.daddr,
            "pe_name": self.pe_name,
            "pe_data": self.pe_data.hex(),
            "seq": None if self.seq is None else [list(self.seq.in_seq), list(self.seq.out_seq)],
            "options": [[t, d.hex()] for t, d in self.options],
        }


@dataclass(frozen=True)
class SyncMessage:
    """A decoded datagram."""

    version: int
    syncid: int
    conns: Tuple[SyncConn, ...]

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "syncid": self.syncid,
            "conns": [c.to_dict() for c in self.conns],
        }


_FLAG_NAMES = (
    ("TEMPLATE", IP_VS_CONN_F_TEMPLATE),
    ("INACTIVE", IP_VS_CONN_F_INACTIVE),
    ("NOOUTPUT", IP_VS_CONN_F_NOOUTPUT),
    ("NO_CPORT", IP_VS_CONN_F_NO_CPORT),
    ("IN_SEQ", IP_VS_CONN_F_IN_SEQ),
    ("OUT_SEQ", IP_VS_CONN_F_OUT_SEQ),
    ("SYNC", IP_VS_CONN_F_SYNC),
    ("HASHED", IP_VS_CONN_F_HASHED),
    ("ONE_PACKET", IP_VS_CONN_F_ONE_PACKET),
)
_FWD_NAMES = ("MASQ", "LOCALNODE", "TUNNEL", "DROUTE", "BYPASS", "5", "6", "7")


def flag_names(flags: int) -> str:
    """Flags as the kernel names them, e.g. "TEMPLATE|INACTIVE|MASQ", for logs."""
    names = [name for name, bit in _FLAG_NAMES if flags & bit]
    names.append(_FWD_NAMES[flags & IP_VS_CONN_F_FWD_MASK])
    rest = flags & ~IP_VS_CONN_F_FWD_MASK
    for _, bit in _FLAG_NAMES:
        rest &= ~bit
    if rest:
        names.append(hex(rest))
    return "|".join(names)


def fwmark_vaddr(af: int, fwmark: int) -> str:
    """The address the kernel keys a fwmark template by: htonl(mark) in the first 32 bits."""
    if af == 4:
        return str(ipaddress.IPv4Address(fwmark))
    return str(ipaddress.IPv6Address(fwmark << 96))


def template_conn(
    *,
    protocol: Union[str, int],
    caddr: str,
    vaddr: Optional[str],
    vport: int,
    daddr: str,
    dport: int,
    fwd_method: Union[str, int],
    timeout: int,
    fwmark: int = 0,
    pe_name: str = "",
    pe_data: Union[str, bytes] = b"",
) -> SyncConn:
    """A persistence template to send, as the kernel keys it.

    State ASSURED (a NONE template dies with its last connection), flags TEMPLATE plus the real
    server's forwarding method. For a fwmark service: protocol IPPROTO_IP, vaddr the mark as an
    address (fwmark_vaddr; `vaddr` may be None), vport 0, and `dport` the real server's port
    as configured: the kernel binds a template to a real server by address and port, and the
    kernel's own master sends 0 there, which never binds when the real server has a port.
    `pe_data` as str is taken as latin-1, as conntable reads it.
    """
    af = 6 if ":" in caddr else 4
    if isinstance(protocol, str):
        if protocol not in PROTO_NUMBERS:
            raise ValueError(f"unknown protocol {protocol!r}")
        protocol = PROTO_NUMBERS[protocol]
    if fwmark:
        want = fwmark_vaddr(af, fwmark)
        if vaddr and vaddr != want:
            raise ValueError(f"fwmark {fwmark} template has vaddr {vaddr}, the kernel keys {want}")
        if vport:
            raise ValueError(f"fwmark {fwmark} template with a virtual port ({vport})")
        protocol, vaddr = IPPROTO_IP, want
    elif protocol == IPPROTO_IP:
        raise ValueError("a template with protocol IP (0) belongs to a fwmark service: give fwmark")
    if not vaddr:
        raise ValueError("vaddr missing")
    if isinstance(fwd_method, str):
        if fwd_method not in FWD_METHODS:
            raise ValueError(f"unknown forwarding method {fwd_method!r}")
        fwd_method = FWD_METHODS[fwd_method]
    if not 0 <= fwd_method <= IP_VS_CONN_F_DROUTE:
        raise ValueError(f"bad forwarding method {fwd_method}")
    if timeout < 1:
        # 0 would make the receiver use its own 3 minutes.
        raise ValueError(f"template timeout must be at least 1 s, not {timeout}")
    data = pe_data.encode("latin-1") if isinstance(pe_data, str) else pe_data
    return SyncConn(
        af=af,
        protocol=protocol,
        flags=IP_VS_CONN_F_TEMPLATE | fwd_method,
        state=IP_VS_CTPL_S_ASSURED,
        cport=0,
        vport=vport,
        dport=dport,
        fwmark=fwmark,
        timeout=timeout,
        caddr=caddr,
        vaddr=vaddr,
        daddr=daddr,
        pe_name=pe_name,
        pe_data=data,
    )


# ---------------------------------------------------------------------------- encoding


def encode_v1_entry(conn: SyncConn) -> bytes:
    """One entry (struct ip_vs_sync_v4 or _v6 and its options), without alignment padding."""
    if conn.af not in (4, 6):
        raise ValueError(f"address family {conn.af}: 4 or 6")
    opts = _encode_options(conn)
    kstruct = ip_vs_sync_v4 if conn.af == 4 else ip_vs_sync_v6
    size = kstruct.size + len(opts)
    if size > SVER_MASK:
        raise ValueError(f"entry of {size} bytes: more than ver_size can say ({SVER_MASK})")
    family = socket.AF_INET if conn.af == 4 else socket.AF_INET6
    try:
        addrs = [socket.inet_pton(family, a) for a in (conn.caddr, conn.vaddr, conn.daddr)]
    except OSError:
        raise ValueError(f"addresses of {conn} are not all IPv{conn.af}") from None
    try:
        fixed = kstruct.pack(
            STYPE_F_INET6 if conn.af == 6 else 0,
            conn.protocol,
            size,  # version 0 in the top 4 bits
            conn.flags,
            conn.state,
            conn.cport,
            conn.vport,
            conn.dport,
            conn.fwmark,
            conn.timeout,
            *addrs,
        )
    except struct.error as e:
        raise ValueError(f"{conn}: a field out of range ({e})") from None
    return fixed + opts


def _encode_options(conn: SyncConn) -> bytes:
    # In the kernel master's order: sequence data, PE data, PE name (ip_vs_sync_conn).
    parts = []
    if conn.seq is not None:
        parts.append(_OPT_HEADER.pack(IPVS_OPT_SEQ_DATA, SEQ_OPTIONS_V1.size))
        parts.append(SEQ_OPTIONS_V1.pack(*conn.seq.in_seq, *conn.seq.out_seq))
    if conn.pe_data or conn.pe_name:
        # A receiver drops an entry with PE data but no PE name, and ignores a name alone.
        if not (conn.pe_data and conn.pe_name):
            raise ValueError("PE data and PE name go together")
        name = conn.pe_name.encode("ascii")
        if len(conn.pe_data) > IP_VS_PEDATA_MAXLEN or len(name) > IP_VS_PENAME_MAXLEN:
            # The receiver drops the whole rest of the datagram over these limits.
            raise ValueError(
                f"PE data of {len(conn.pe_data)} bytes or name {conn.pe_name!r} too long "
                f"(max {IP_VS_PEDATA_MAXLEN}, {IP_VS_PENAME_MAXLEN})"
            )
        parts.append(_OPT_HEADER.pack(IPVS_OPT_PE_DATA, len(conn.pe_data)) + conn.pe_data)
        parts.append(_OPT_HEADER.pack(IPVS_OPT_PE_NAME, len(name)) + name)
    for otype, data in conn.options:
        if not 0 < len(data) <= 255:
            raise ValueError(f"option {otype}: {len(data)} bytes (1 to 255)")
        parts.append(_OPT_HEADER.pack(otype, len(data)) + data)
    return b"".join(parts)


def encode_message(conns: Sequence[SyncConn], syncid: int) -> bytes:
    """One v1 datagram holding all of `conns` (at most 255), whatever its size."""
    out = encode_datagrams(conns, syncid, maxlen=0xFFFF)
    if len(out) != 1:
        raise ValueError(f"{len(conns)} entries do not fit one message")
    return out[0]


def encode_datagrams(
    conns: Iterable[SyncConn], syncid: int, maxlen: int = SYNC_MAXLEN_DEFAULT
) -> List[bytes]:
    """Version 1 datagrams holding `conns` in order, each as full as `maxlen` and 255 allow.

    Never longer than `maxlen` bytes of UDP payload: a backup drops a longer one silently.
    """
    if not 0 <= syncid <= 255:
        raise ValueError(f"syncid {syncid} out of range 0-255")
    if not ip_vs_sync_mesg.size + ip_vs_sync_v4.size <= maxlen <= 0xFFFF:
        raise ValueError(f"maxlen {maxlen} out of range 44-65535")
    out: List[bytes] = []
    buf = bytearray(maxlen)
    off, n = ip_vs_sync_mesg.size, 0
    pack_v4 = ip_vs_sync_v4.struct.pack_into
    pack_mesg = ip_vs_sync_mesg.struct.pack_into
    pton, af_inet = socket.inet_pton, socket.AF_INET
    # vaddr and daddr repeat (a few services and real servers); client addresses do not.
    known: Dict[str, bytes] = {}
    conn = None
    try:
        for conn in conns:
            simple = conn.af == 4 and conn.seq is None and not (conn.pe_data or conn.pe_name)
            simple = simple and not conn.options
            if simple:
                size = 36
            else:
                entry = encode_v1_entry(conn)
                size = len(entry)
            pad = -off & 3
            if n == MAX_NR_CONNS or off + pad + size > maxlen:
                if n == 0:
                    raise ValueError(f"an entry of {size} bytes does not fit maxlen {maxlen}")
                pack_mesg(buf, 0, 0, syncid, off, n, SYNC_PROTO_VER, 0)
                out.append(bytes(buf[:off]))
                off, n, pad = ip_vs_sync_mesg.size, 0, 0
            if pad:
                buf[off : off + pad] = bytes(pad)  # the buffer is reused: zero it
                off += pad
            if simple:
                v = known.get(conn.vaddr)
                if v is None:
                    v = known[conn.vaddr] = pton(af_inet, conn.vaddr)
                d = known.get(conn.daddr)
                if d is None:
                    d = known[conn.daddr] = pton(af_inet, conn.daddr)
                pack_v4(
                    buf,
                    off,
                    0,
                    conn.protocol,
                    36,
                    conn.flags,
                    conn.state,
                    conn.cport,
                    conn.vport,
                    conn.dport,
                    conn.fwmark,
                    conn.timeout,
                    pton(af_inet, conn.caddr),
                    v,
                    d,
                )
            else:
                buf[off : off + size] = entry
            off += size
            n += 1
    except OSError:
        raise ValueError(f"addresses of {conn} are not all IPv4") from None
    except struct.error as e:
        raise ValueError(f"{conn}: a field out of range ({e})") from None
    if n:
        pack_mesg(buf, 0, 0, syncid, off, n, SYNC_PROTO_VER, 0)
        out.append(bytes(buf[:off]))
    return out


# ---------------------------------------------------------------------------- decoding


def decode_datagram(data: bytes) -> SyncMessage:
    """Decode a v0 or v1 datagram, telling them apart as ip_vs_process_message does.

    Raises SyncDecodeError where the kernel would drop the datagram (or the rest of it), and
    on bytes after the last entry, which it would ignore.
    """
    if len(data) < ip_vs_sync_mesg_v0.size:
        raise SyncDecodeError(f"message header too short: {len(data)} bytes")
    size = int.from_bytes(data[2:4], "big")  # at the same place in both versions
    if size != len(data):
        raise SyncDecodeError(f"size field says {size} bytes, the datagram has {len(data)}")
    if len(data) >= ip_vs_sync_mesg.size:
        m = ip_vs_sync_mesg.unpack_from(data)
        if m.version == SYNC_PROTO_VER and m.reserved == 0 and m.spare == 0:
            return SyncMessage(1, m.syncid, _decode_v1_conns(data, m.nr_conns))
    m0 = ip_vs_sync_mesg_v0.unpack_from(data)
    return SyncMessage(0, m0.syncid, _decode_v0_conns(data, m0.nr_conns))


def _decode_v1_conns(data: bytes, nr_conns: int) -> Tuple[SyncConn, ...]:
    conns = []
    p = last_end = ip_vs_sync_mesg.size
    for i in range(nr_conns):
        if p + ip_vs_sync_v4.size > len(data):
            raise SyncDecodeError(f"entry {i + 1} of {nr_conns}: truncated at byte {p}")
        ver_size = int.from_bytes(data[p + 2 : p + 4], "big")
        size, version = ver_size & SVER_MASK, ver_size >> SVER_SHIFT
        last_end = p + size
        if last_end > len(data):
            raise SyncDecodeError(f"entry {i + 1}: its size {size} runs past the datagram")
        if version:
            raise SyncDecodeError(f"entry {i + 1}: unknown entry version {version}")
        conns.append(_decode_v1_entry(data, p, last_end, i + 1))
        p += (size + 3) & ~3  # the next entry starts 32-bit aligned
    _check_trailing(data, last_end, nr_conns, allow_pad=True)
    return tuple(conns)


def _decode_v1_entry(data: bytes, p: int, msg_end: int, no: int) -> SyncConn:
    etype = data[p]
    if etype & STYPE_F_INET6:
        kstruct, af = ip_vs_sync_v6, 6
    elif etype == 0:
        kstruct, af = ip_vs_sync_v4, 4
    else:
        raise SyncDecodeError(f"entry {no}: unknown type {etype}")
    if p + kstruct.size > msg_end:
        raise SyncDecodeError(
            f"entry {no}: size {msg_end - p} smaller than struct {kstruct.name} ({kstruct.size})"
        )
    s = kstruct.unpack_from(data, p)
    seq, pe_name, pe_data, others = _decode_options(data, p + kstruct.size, msg_end, no)
    return SyncConn(
        af=af,
        protocol=s.protocol,
        flags=s.flags,
        state=s.state,
        cport=s.cport,
        vport=s.vport,
        dport=s.dport,
        fwmark=s.fwmark,
        timeout=s.timeout,
        caddr=_ntop(af, s.caddr),
        vaddr=_ntop(af, s.vaddr),
        daddr=_ntop(af, s.daddr),
        pe_name=pe_name,
        pe_data=pe_data,
        seq=seq,
        options=others,
    )


def _decode_options(data: bytes, p: int, msg_end: int, no: int):
    """The option TLVs of an entry, checked as ip_vs_proc_sync_conn checks them."""
    seq = None
    pe_name, pe_data = "", b""
    seen = set()
    others = []
    while p < msg_end:
        if p + 2 > msg_end:
            raise SyncDecodeError(f"entry {no}: option header cut at byte {p}")
        ptype, plen = data[p], data[p + 1]
        p += 2
        if not plen or p + plen > msg_end:
            raise SyncDecodeError(f"entry {no}: option {ptype} of length {plen} does not fit")
        value = data[p : p + plen]
        kind = ptype & ~IPVS_OPT_F_PARAM
        if kind in (IPVS_OPT_SEQ_DATA, IPVS_OPT_PE_DATA, IPVS_OPT_PE_NAME):
            if kind in seen:
                raise SyncDecodeError(f"entry {no}: option {kind} found twice")
            seen.add(kind)
        if kind == IPVS_OPT_SEQ_DATA:
            if plen != SEQ_OPTIONS_V1.size:
                raise SyncDecodeError(f"entry {no}: sequence option of {plen} bytes, not 24")
            v = SEQ_OPTIONS_V1.unpack(value)
            seq = SeqOptions(IpVsSeq(*v[:3]), IpVsSeq(*v[3:]))
        elif kind == IPVS_OPT_PE_DATA:
            pe_data = value
        elif kind == IPVS_OPT_PE_NAME:
            if plen > IP_VS_PENAME_MAXLEN:
                raise SyncDecodeError(f"entry {no}: PE name of {plen} bytes")
            pe_name = value.decode("latin-1")
        else:
            # Kept as is; a receiver skips it if ptype has IPVS_OPT_F_PARAM, else drops the entry.
            others.append((ptype, value))
        p += plen
    return seq, pe_name, pe_data, tuple(others)


def _decode_v0_conns(data: bytes, nr_conns: int) -> Tuple[SyncConn, ...]:
    conns = []
    p = ip_vs_sync_mesg_v0.size
    for i in range(nr_conns):
        if p + ip_vs_sync_conn_v0.size > len(data):
            raise SyncDecodeError(f"v0 entry {i + 1} of {nr_conns}: truncated at byte {p}")
        s = ip_vs_sync_conn_v0.unpack_from(data, p)
        p += ip_vs_sync_conn_v0.size
        seq = None
        if s.flags & IP_VS_CONN_F_SEQ_MASK:
            if p + SEQ_OPTIONS_V0.size > len(data):
                raise SyncDecodeError(f"v0 entry {i + 1}: sequence options cut short")
            v = SEQ_OPTIONS_V0.unpack_from(data, p)
            seq = SeqOptions(IpVsSeq(*v[:3]), IpVsSeq(*v[3:]))
            p += SEQ_OPTIONS_V0.size
        conns.append(
            SyncConn(
                af=4,
                protocol=s.protocol,
                flags=s.flags,
                state=s.state,
                cport=s.cport,
                vport=s.vport,
                dport=s.dport,
                fwmark=0,
                timeout=0,
                caddr=_ntop(4, s.caddr),
                vaddr=_ntop(4, s.vaddr),
                daddr=_ntop(4, s.daddr),
                seq=seq,
            )
        )
    _check_trailing(data, p, nr_conns, allow_pad=False)
    return tuple(conns)


def _check_trailing(data: bytes, used: int, nr_conns: int, allow_pad: bool) -> None:
    extra = data[used:]
    if not extra or (allow_pad and len(extra) < 4 and not any(extra)):
        return
    raise SyncDecodeError(
        f"{len(extra)} bytes after the last of {nr_conns} entries (nr_conns too small?)"
    )


def _ntop(af: int, packed: bytes) -> str:
    return socket.inet_ntoa(packed) if af == 4 else ipv6_text(packed)


__all__ = [
    "SyncConn",
    "SyncDecodeError",
    "SyncMessage",
    "decode_datagram",
    "encode_datagrams",
    "encode_message",
    "encode_v1_entry",
    "template_conn",
]
