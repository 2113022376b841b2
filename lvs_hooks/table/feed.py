"""Sync datagrams as the in-memory table takes them: the entries a receiving kernel would apply.

`decode(datagram)` turns one datagram (version 1 or 0, design.md 3.2) into rows, in the
datagram's order, with the kernel's acceptance rules (design.md 3.3, `ip_vs_process_message`
and `ip_vs_proc_sync_conn`):

- a datagram shorter than a header, or whose length is not its `size` field, is dropped whole;
- a fault inside the entries (one that does not fit, an unknown entry version or type, a bad
  option) drops the rest of the datagram, but the entries before it have been applied: the
  kernel processes entries one by one, and so do we (`Decoded.error` says why, `rows` holds the
  ones before);
- an entry with an unknown option lacking the optional bit, or with PE data but no PE name, is
  skipped alone (`Decoded.skipped`); so are connections of a protocol or state the kernel does
  not know, but that is checked where the rows are applied (`store.TemplateTable`), because it
  concerns the fast path too;
- bytes after the last entry are ignored, as the kernel ignores them.

A row is the kernel's `struct ip_vs_sync_v4` with its addresses read as integers:
`(type, protocol, ver_size, flags, state, cport, vport, dport, fwmark, timeout, caddr, vaddr,
daddr)`, type 0 for IPv4 and 1 for IPv6 (then the addresses are 128-bit integers). An entry with
persistence-engine data comes as a `PeRow`, the row and its PE name and data (latin-1 text, as
conntable reads /proc's PE columns). Version 0 entries become the same rows, with fwmark and
timeout 0 (v0 carries neither).

The fast path: a kernel master fills datagrams with plain IPv4 entries, 36 bytes each, no
options (design.md 3.8). When the size says exactly that and the type and ver_size bytes of
every entry agree (checked with stepped slices, in C), the rows come from one `iter_unpack` over
the datagram. The same holds for datagrams of plain IPv6 entries (72 bytes). Anything else is
walked entry by entry with kernel/syncproto's own entry decoder.

Pure: bytes in, tuples out; no clock, no table.
"""

import socket
import struct
from typing import Any, List, NamedTuple, Optional, Tuple, Union

from lvs_hooks.kernel import syncproto
from lvs_hooks.kernel.syncproto import (
    IP_VS_CONN_F_SEQ_MASK,
    IPVS_OPT_F_PARAM,
    SEQ_OPTIONS_V0,
    STYPE_F_INET6,
    SVER_MASK,
    SVER_SHIFT,
    SYNC_PROTO_VER,
    SyncConn,
    SyncDecodeError,
    ip_vs_sync_conn_v0,
    ip_vs_sync_mesg,
    ip_vs_sync_mesg_v0,
    ip_vs_sync_v4,
    ip_vs_sync_v6,
)

# The kernel's structs with their IPv4 addresses read as one big-endian u32 each instead of 4
# bytes: the same layout (checked below), integers the table keys by without a conversion.
V4_ROW = struct.Struct(ip_vs_sync_v4.struct.format.replace("4s", "I"))
V0_ROW = struct.Struct(ip_vs_sync_conn_v0.struct.format.replace("4s", "I"))
assert V4_ROW.size == ip_vs_sync_v4.size and V0_ROW.size == ip_vs_sync_conn_v0.size

_V4_SIZE = ip_vs_sync_v4.size
_V6_SIZE = ip_vs_sync_v6.size
_HEAD = ip_vs_sync_mesg.size
_HEAD_V0 = ip_vs_sync_mesg_v0.size
_V0_SIZE = ip_vs_sync_conn_v0.size
_V0_SEQ_SIZE = _V0_SIZE + SEQ_OPTIONS_V0.size
_INET6 = socket.AF_INET6
# The type byte and the low byte of ver_size of a plain entry (the high byte is 0).
_V4_VER_SIZE = bytes((_V4_SIZE,))
_V6_TYPE = bytes((STYPE_F_INET6,))
_V6_VER_SIZE = bytes((_V6_SIZE,))

Row = Tuple[int, int, int, int, int, int, int, int, int, int, int, int, int]


class PeRow(NamedTuple):
    """An entry with persistence-engine data (a SIP template: the kernel keys it by its Call-ID
    too). A NamedTuple, so `type(row) is tuple` tells the plain rows apart cheaply."""

    row: Row
    pe_name: str
    pe_data: str


class Decoded(NamedTuple):
    """What one datagram holds for the table."""

    version: int  # 1 or 0; -1 when the header itself was refused
    syncid: int
    rows: List[Union[Row, PeRow]]
    skipped: int  # entries the kernel skips alone (unknown mandatory option, PE data, no name)
    error: Optional[str]  # why the (rest of the) datagram was dropped, else None


def decode(data: bytes) -> Decoded:
    """The rows of one sync datagram, as a receiving kernel would apply them. Never raises on
    bad bytes: what the kernel would drop is named in `error`."""
    if len(data) < _HEAD_V0:
        return Decoded(-1, 0, [], 0, f"message header too short: {len(data)} bytes")
    size = (data[2] << 8) | data[3]  # at the same place in both versions
    if size != len(data):
        why = f"size field says {size} bytes, the datagram has {len(data)}"
        return Decoded(-1, data[1], [], 0, why)
    # v1 when version is 1 and reserved and spare are 0, else v0 (ip_vs_process_message).
    if size >= _HEAD and data[5] == SYNC_PROTO_VER and data[0] == 0 and data[6] == data[7] == 0:
        return _decode_v1(data, data[4])
    return _decode_v0(data, data[0])


def _decode_v1(data: bytes, n: int) -> Decoded:
    size = len(data)
    syncid = data[1]
    # Fast paths: n plain entries of one family back to back (36 and 72 are multiples of 4: no
    # padding). Stepped slices read the type byte and both ver_size bytes of every entry.
    if (
        size == _HEAD + _V4_SIZE * n
        and not any(data[_HEAD::_V4_SIZE])
        and not any(data[_HEAD + 2 :: _V4_SIZE])
        and data[_HEAD + 3 :: _V4_SIZE] == _V4_VER_SIZE * n
    ):
        rows: List[Any] = list(V4_ROW.iter_unpack(memoryview(data)[_HEAD:]))
        return Decoded(1, syncid, rows, 0, None)
    if (
        size == _HEAD + _V6_SIZE * n
        and data[_HEAD::_V6_SIZE] == _V6_TYPE * n
        and not any(data[_HEAD + 2 :: _V6_SIZE])
        and data[_HEAD + 3 :: _V6_SIZE] == _V6_VER_SIZE * n
    ):
        big = int.from_bytes
        entries = ip_vs_sync_v6.struct.iter_unpack(memoryview(data)[_HEAD:])
        rows = [
            (1, pr, vs, fl, st, cp, vp, dp, fw, to, big(c, "big"), big(v, "big"), big(d, "big"))
            for (_, pr, vs, fl, st, cp, vp, dp, fw, to, c, v, d) in entries
        ]
        return Decoded(1, syncid, rows, 0, None)
    return _walk_v1(data, n)


def _walk_v1(data: bytes, n: int) -> Decoded:
    """Entry by entry, as ip_vs_process_message does; syncproto decodes each entry (struct by
    type, options checked as ip_vs_proc_sync_conn checks them)."""
    size = len(data)
    rows: List[Any] = []
    skipped = 0
    p = _HEAD
    for i in range(n):
        if p + _V4_SIZE > size:
            return Decoded(1, data[1], rows, skipped, f"entry {i + 1} of {n}: truncated")
        ver_size = (data[p + 2] << 8) | data[p + 3]
        end = p + (ver_size & SVER_MASK)
        if end > size:
            return Decoded(1, data[1], rows, skipped, f"entry {i + 1}: runs past the datagram")
        if ver_size >> SVER_SHIFT:
            return Decoded(1, data[1], rows, skipped, f"entry {i + 1}: unknown entry version")
        try:
            conn = syncproto._decode_v1_entry(data, p, end, i + 1)
        except SyncDecodeError as e:
            return Decoded(1, data[1], rows, skipped, str(e))
        if any(not t & IPVS_OPT_F_PARAM for t, _ in conn.options):
            skipped += 1  # an unknown mandatory option: the kernel skips this entry only
        elif conn.pe_data and not conn.pe_name:
            skipped += 1  # "Invalid PE parameters": this entry only
        else:
            rows.append(_row_of(conn))
        p += ((ver_size & SVER_MASK) + 3) & ~3  # the next entry starts 32-bit aligned
    return Decoded(1, data[1], rows, skipped, None)


def _row_of(conn: SyncConn) -> Union[Row, PeRow]:
    texts = (conn.caddr, conn.vaddr, conn.daddr)
    if conn.af == 6:
        addrs = [int.from_bytes(socket.inet_pton(_INET6, a), "big") for a in texts]
    else:
        addrs = [int.from_bytes(socket.inet_aton(a), "big") for a in texts]
    row: Row = (
        1 if conn.af == 6 else 0,
        conn.protocol,
        0,  # ver_size: not used past the wire
        conn.flags,
        conn.state,
        conn.cport,
        conn.vport,
        conn.dport,
        conn.fwmark,
        conn.timeout,
        addrs[0],
        addrs[1],
        addrs[2],
    )
    if conn.pe_data:
        # A PE name without data is ignored by the kernel (no PE): a plain row then.
        return PeRow(row, conn.pe_name, conn.pe_data.decode("latin-1"))
    return row


def _decode_v0(data: bytes, n: int) -> Decoded:
    """ip_vs_process_message_v0: 24-byte IPv4 entries, the sequence options after an entry whose
    flags have the SEQ bits; no timeout, no fwmark."""
    size = len(data)
    rows: List[Any] = []
    p = _HEAD_V0
    unpack = V0_ROW.unpack_from
    for i in range(n):
        if p + _V0_SIZE > size:
            return Decoded(0, data[1], rows, 0, f"v0 entry {i + 1} of {n}: truncated")
        _, proto, cport, vport, dport, caddr, vaddr, daddr, flags, state = unpack(data, p)
        p += _V0_SEQ_SIZE if flags & IP_VS_CONN_F_SEQ_MASK else _V0_SIZE
        if p > size:
            return Decoded(0, data[1], rows, 0, f"v0 entry {i + 1}: sequence options cut short")
        rows.append(
            (0, proto, _V0_SIZE, flags, state, cport, vport, dport, 0, 0, caddr, vaddr, daddr)
        )
    return Decoded(0, data[1], rows, 0, None)


__all__ = ["Decoded", "PeRow", "Row", "V4_ROW", "decode"]
