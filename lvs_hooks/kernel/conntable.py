"""Reader for the IPVS connection table: /proc/net/ip_vs_conn and /proc/net/ip_vs_conn_sync.

The kernel prints one line per entry (ip_vs_conn.c, ip_vs_conn_seq_show):

    Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
    UDP 0A00000A 0000 0A000064 1388 0A01000C 1388 ASSURED         359
    "%-3s %08X %04X %08X %04X %s %04X %-11s %7u%s\\n"

IPv6 entries print their addresses with %pI6: eight groups of four lower-case hex digits. The
DestIP column follows the real server's family, which may differ from the entry's. The optional
tail is " <pe name> <pe data>". ip_vs_conn_sync has an Origin column (LOCAL or SYNC, "%-6s")
before Expires and no PE columns. Persistence templates have client port 0000; templates of
fwmark services have protocol "IP" and the mark in the ToIP column.

Parsing is the hot path of a snapshot (a million entries is a real table), so lines are matched by
compiled bytes regexes over the whole buffer, in C, and only the entries asked for are turned into
Python objects. A malformed line is counted and reported, never fatal.
"""

import binascii
import contextlib
import gc
import logging
import os
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import repeat
from operator import itemgetter
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from lvs_hooks import safeio
from lvs_hooks.errors import KernelError, ReadAbandoned
from lvs_hooks.kernel.model import ConnEntry, ipv6_text

log = logging.getLogger(__name__)

CONN_HEADER = b"Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData"
SYNC_HEADER = b"Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Origin Expires"

# Each read() of these files makes the kernel walk its hash table from the start up to the
# current position (ip_vs_conn_array), so the file is read with large reads. The seq_file layer
# still hands out about a page per read() (measured on 6.1: 646 reads for 2.6 MB), so the buffer
# is allocated once and reused: a fresh 16 MiB bytes object per 4 KiB read costs an mmap each.
READ_CHUNK = 1 << 20

MAX_EXAMPLES = 5
_CHUNK = 20000  # lines converted at a time

_A4 = rb"[0-9A-F]{8}"
_A6 = rb"[0-9a-f]{4}(?::[0-9a-f]{4}){7}"
_ADDR = rb"(" + _A4 + rb"|" + _A6 + rb")"
_PORT = rb"([0-9A-F]{4})"
# Seconds left: the kernel's longest timeout is a u32 of jiffies, under 5 * 10^7 s at HZ=100;
# more than nine digits is no line of the kernel's (one with 99999999999 was once snapshotted,
# then crashed the reseed). The same bound in every pattern: such a line is malformed.
_EXPIRES = rb"\d{1,9}(?!\d)"
_LINE_HEAD = rb"(\w+) +" + b" ".join([_ADDR, _PORT, _ADDR, _PORT, _ADDR, _PORT]) + rb" (\S+) +"
# One line, for lines with PE data and for naming what is wrong with a line. Groups:
# proto caddr cport vaddr vport daddr dport state expires pe_name pe_data
_CONN_LINE = _LINE_HEAD + rb"(" + _EXPIRES + rb")(?: (\S+) ([^\n]*))?"
# Groups: proto caddr cport vaddr vport daddr dport state origin expires
_SYNC_LINE = _LINE_HEAD + rb"(LOCAL|SYNC) +(" + _EXPIRES + rb")"

# The lines of a buffer that starts with "\n": every line is matched from the newline before
# it; "(?![^\n])" ends it at a newline or at the end of the buffer.
_CONN_ALL = re.compile(rb"\n" + _CONN_LINE + rb"(?![^\n])")
_CONN_ONE = re.compile(_CONN_LINE)
_SYNC_ONE = re.compile(_SYNC_LINE)

# Template lines are found by position rather than by content: SRE runs "[^\n]{n}" as a tight
# loop, several times faster than character classes, so the guard costs little more than a scan
# for newlines. The client port follows "%-3s " (or "SCTP ") and the client address: " 0000 " at
# offset 12 or 13 in an IPv4 line, and in an IPv6 line (its first ':' at offset 8 or 9) 35 later.
# Templates have the protocol of a service: IP (fwmark), TCP, UDP or SCTP; the wider names of
# ip_vs_proto_name ("ICMPv6", "IP_%u") are only ever connections.
_GUARD = rb"(?=[^\n]{8}(?:[^\n]{4,5} 0000 |[^\n]?:[^\n]{34} 0000 ))"


def _line_scan(guard: bytes, cport: bytes, tail: bytes, pe_tail: bytes) -> "re.Pattern[bytes]":
    """Every line that passes `guard`, as one of four groups: a valid IPv4 line without PE data,
    the same for IPv6, a valid line with PE data, or a line that is none of these (malformed).

    Lines without PE data have the same number of fields, so they can be split all at once and
    converted a column at a time, in C; the families apart let IPv4 addresses go that way too.
    """
    p, any_addr = rb"[0-9A-F]{4}", rb"(?:" + _A4 + rb"|" + _A6 + rb")"
    v4 = rb"\w+ +" + b" ".join([_A4, cport, _A4, p, any_addr, p]) + tail
    v6 = rb"\w+ +" + b" ".join([_A6, cport, _A6, p, any_addr, p]) + tail
    with_pe = rb"(?:" + v4 + b"|" + v6 + b")" + pe_tail
    groups = rb")(?![^\n])|(".join([v4, v6, with_pe, rb"[^\n]*"])
    return re.compile(rb"\n" + guard + rb"(?:(" + groups + rb"))")


_CONN_TAIL, _CONN_PE = rb" \S+ +" + _EXPIRES, rb" \S+ [^\n]*"
_SYNC_TAIL, _NO_PE = rb" \S+ +(?:LOCAL|SYNC) +" + _EXPIRES, rb"(?!)"
_CONN_TEMPLATES = _line_scan(_GUARD, b"0000", _CONN_TAIL, _CONN_PE)
_SYNC_TEMPLATES = _line_scan(_GUARD, b"0000", _SYNC_TAIL, _NO_PE)
_CONN_LINES = _line_scan(b"", rb"[0-9A-F]{4}", _CONN_TAIL, _CONN_PE)
_SYNC_LINES = _line_scan(b"", rb"[0-9A-F]{4}", _SYNC_TAIL, _NO_PE)
_CANDIDATES = re.compile(rb"\n" + _GUARD)

# Non-template connections keyed by client and service (what a keeper needs), prefix only.
_CLIENT_KEYS = re.compile(
    rb"\n(\w+) +" + _ADDR + rb" (?!0000)[0-9A-F]{4} " + _ADDR + rb" " + _PORT + rb" "
)

_FIELDS = ("Pro", "FromIP", "FPrt", "ToIP", "TPrt", "DestIP", "DPrt", "State")
_FIELD_RES = {
    "Pro": re.compile(rb"\w+"),
    "FromIP": re.compile(_ADDR),
    "FPrt": re.compile(_PORT),
    "ToIP": re.compile(_ADDR),
    "TPrt": re.compile(_PORT),
    "DestIP": re.compile(_ADDR),
    "DPrt": re.compile(_PORT),
    "State": re.compile(rb"\S+"),
    "Origin": re.compile(rb"LOCAL|SYNC"),
    "Expires": re.compile(_EXPIRES),
}

ClientKey = Tuple[str, Tuple]


@dataclass(frozen=True)
class MalformedLine:
    """A line the parser skipped: its number in the file (header = 1), why, and its start."""

    line: int
    reason: str
    text: str


@dataclass
class ConnTable:
    """What one read of the connection table gave.

    `total_lines` counts the data lines (header excluded; None with `templates_only`, which does
    not count them). With `templates_only`, `entries` holds
    only the templates, and only template lines, the header and the last line were checked
    strictly: the other lines were only looked at far enough to tell they are no templates.
    """

    entries: Tuple[ConnEntry, ...] = ()
    total_lines: Optional[int] = 0
    malformed: int = 0
    malformed_examples: Tuple[MalformedLine, ...] = ()
    sync: bool = False
    templates_only: bool = False
    # (client address, service key as ConnEntry.service_key) -> non-template entries, if asked
    client_counts: Optional[Dict[ClientKey, int]] = None

    @property
    def templates(self) -> List[ConnEntry]:
        if self.templates_only:
            return list(self.entries)
        return [e for e in self.entries if e.is_template]


def read_conn_table(
    proc_root: str = "/proc",
    sync: bool = False,
    templates_only: bool = False,
    client_counts: bool = False,
    reason: str = "",
    max_lines: Optional[int] = None,
) -> ConnTable:
    """Read and parse <proc_root>/net/ip_vs_conn (ip_vs_conn_sync with `sync`).

    `reason` names the read in the log line that gives its cost (see read_proc_file).
    Raises KernelError when the file is missing (IPVS not loaded) or unreadable, and
    ReadAbandoned past `max_lines` lines (the header counts).
    """
    name = "ip_vs_conn_sync" if sync else "ip_vs_conn"
    data = read_proc_file(os.path.join(proc_root, "net", name), reason, max_lines=max_lines)
    return parse_conn_table(data, templates_only=templates_only, client_counts=client_counts)


# A whole read costs the kernel a walk of its table per read() call (quadratic in its size,
# design.md section 2.4): every one is logged with its reason and cost, at INFO once it
# takes this long, at DEBUG below (the periodic duties of a small director read every second).
SLOW_READ_MS = 100.0


def read_proc_file(path: str, reason: str = "", max_lines: Optional[int] = None) -> bytes:
    """The whole file, read with few large read() calls (see READ_CHUNK); the read is logged
    with `reason`, its size and its time. `max_lines`: ReadAbandoned past that many lines (a
    caller that judged the read cheap by the kernel's counters, while the table grows)."""
    t0 = time.monotonic()
    try:
        # A FIFO or /dev/zero put where the table belongs must not hang or fill memory:
        # procfs files are regular, anything else is refused before the first read.
        fd = safeio.open_regular(path)
    except FileNotFoundError:
        raise KernelError(f"IPVS not loaded (no {path})") from None
    except OSError as e:
        raise KernelError(f"cannot open {path}: {e.strerror}") from None
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    data = bytearray()
    lines = 0
    try:
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            data += view[:n]
            if max_lines is not None:
                lines += buf.count(b"\n", 0, n)
                if lines > max_lines:
                    ms = (time.monotonic() - t0) * 1000
                    log.info("read of %s for %s abandoned after %d lines (more than %d), %d "
                             "bytes in %.0f ms", path, reason or "an unnamed caller", lines,
                             max_lines, len(data), ms)
                    raise ReadAbandoned(
                        f"{path}: more than {max_lines} lines, read abandoned after {ms:.0f} ms"
                    )
    except OSError as e:
        raise KernelError(f"cannot read {path}: {e.strerror}") from None
    finally:
        view.release()
        os.close(fd)
    ms = (time.monotonic() - t0) * 1000
    log.log(
        logging.INFO if ms >= SLOW_READ_MS else logging.DEBUG,
        "whole read of %s for %s: %d bytes in %.0f ms",
        path, reason or "an unnamed caller", len(data), ms,
    )
    return bytes(data)


def parse_conn_table(
    data: bytes, templates_only: bool = False, client_counts: bool = False
) -> ConnTable:
    """Parse the bytes of ip_vs_conn or ip_vs_conn_sync (told apart by the header).

    With `templates_only`, only template lines become entries (what a snapshot needs), several
    times faster on a big table. Entries come IPv4 first, then IPv6, then those with PE data,
    each group in file order (which is the kernel's hash order, nothing more). With `client_counts`,
    `client_counts` is filled in as count_connections_by_client() would from the same bytes:
    one read of the kernel's table serves both.
    """
    bad = _Malformed()
    body = _Body.of(data, bad)
    conv = _Converter(body.sync)
    with gc_paused():
        entries = _parse(body, conv, bad, templates_only)
        counts = _count_by_client(body) if client_counts else None
    return ConnTable(
        entries=tuple(entries),
        total_lines=None if templates_only else body.total,
        malformed=bad.count,
        malformed_examples=tuple(sorted(bad.examples, key=lambda m: m.line)),
        sync=body.sync,
        templates_only=templates_only,
        client_counts=counts,
    )


def count_connections_by_client(data: bytes) -> Dict[ClientKey, int]:
    """Non-template entries per (client address, service key), from the bytes of the table.

    The service key is ConnEntry.service_key(). A connection of a fwmark service shows the
    packet's protocol, address and port, not the mark: the caller maps those to its service.
    Clients are full addresses; templates of services with a persistence netmask hold the
    masked one. Only the fields used are checked.
    """
    with gc_paused():
        return _count_by_client(_Body.of(data, _Malformed()))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    # Building 10^5 to 10^6 small objects sets off the cyclic collector again and again, a
    # third of the run time; none of these objects can be part of a cycle.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Malformed:
    def __init__(self) -> None:
        self.count = 0
        self.examples: List[MalformedLine] = []

    def add(self, line_no: int, reason: str, text: bytes) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            shown = text[:120].decode("ascii", "backslashreplace")
            self.examples.append(MalformedLine(line_no, reason, shown))


class _Body:
    """The data lines as buf[start:end]: each line preceded by b"\\n", no final newline.

    Offsets, not a slice: a copy of a 70 MB table costs more than a regex pass over it.
    """

    def __init__(self, buf: bytes, start: int, end: int, first_line_no: int, sync: bool):
        self.buf, self.start, self.end = buf, start, end
        self.first_line_no = first_line_no
        self.sync = sync
        self.unterminated = False  # a last line without its newline (counted in `total`)

    @cached_property
    def lines(self) -> int:
        """The lines in the body. Counted only when asked: a pass over the whole buffer that a
        templates-only parse does not need."""
        return self.buf.count(b"\n", self.start, self.end)

    @property
    def total(self) -> int:
        """The data lines of the file."""
        return self.lines + self.unterminated

    @classmethod
    def of(cls, data: bytes, bad: _Malformed) -> "_Body":
        nl = data.find(b"\n")
        first = data if nl < 0 else data[:nl]
        start, first_line_no, sync = nl, 2, False
        if first in (CONN_HEADER, SYNC_HEADER):
            sync = first == SYNC_HEADER
        elif not data:
            return cls(b"", 0, 0, 2, False)
        elif first.startswith(b"Pro "):
            # A header, but not one this parser knows: the columns may have moved. Counted,
            # so that a snapshot says so, and the lines are tried as the known format anyway.
            bad.add(1, "unknown header", first)
            sync = b" Origin " in first
        else:
            # No header: the first line is taken as data, and reported if it is not.
            data, start, first_line_no = b"\n" + data, 0, 1
        if start < 0:
            return cls(b"", 0, 0, first_line_no, sync)
        end = len(data)
        if data.endswith(b"\n"):
            end -= 1
            return cls(data, start, end, first_line_no, sync)
        # /proc ends every line with a newline: an unterminated last line is a cut-off read.
        last_nl = data.rfind(b"\n")
        body = cls(data, start, last_nl, first_line_no, sync)
        body.unterminated = True
        bad.add(
            first_line_no + body.lines, "no newline at the end: truncated?", data[last_nl + 1 :]
        )
        return body

    def findall(self, regex: "re.Pattern[bytes]") -> list:
        return regex.findall(self.buf, self.start, self.end)

    def split_lines(self) -> List[bytes]:
        return self.buf[self.start + 1 : self.end].split(b"\n") if self.lines else []


class _Memo(dict):
    """A cache whose misses are computed by `fn`; its __getitem__ maps in C over a column."""

    def __init__(self, fn: Callable[[bytes], Any]):
        super().__init__()
        self.fn = fn

    def __missing__(self, key: bytes) -> Any:
        value = self[key] = self.fn(key)
        return value


class _Converter:
    """Bytes fields to ConnEntry, with caches for the values that repeat (services, servers)."""

    def __init__(self, sync: bool) -> None:
        self.sync = sync
        self.addrs = _Memo(_addr)
        self.ports = _Memo(lambda h: int(h, 16))
        # latin-1 maps bytes to str one to one: PE data (a SIP Call-ID) survives a round trip
        # to the sync protocol unchanged.
        self.words = _Memo(lambda b: b.decode("latin-1"))

    def pe_rows(self, rows: Sequence[Tuple[bytes, ...]]) -> List[ConnEntry]:
        """Entries from the groups of _CONN_LINE: the few lines with PE data."""
        addrs, ports, words = self.addrs, self.ports, self.words
        return [
            ConnEntry(
                words[proto],
                _addr(c),
                int(cp, 16),
                addrs[v],
                ports[vp],
                addrs[d],
                ports[dp],
                words[state],
                int(expires),
                words[pe_name],
                pe_data.decode("latin-1"),
            )
            for proto, c, cp, v, vp, d, dp, state, expires, pe_name, pe_data in rows
        ]

    def lines(self, lines: List[bytes], ipv4: bool) -> List[ConnEntry]:
        """Entries from valid lines of one family without PE data, a column at a time."""
        out: List[ConnEntry] = []
        # In slices: the fields of a million lines at once are 9 million small objects, and
        # their allocation and cache misses cost more than the conversion.
        for i in range(0, len(lines), _CHUNK):
            out += self._lines(lines[i : i + _CHUNK], ipv4)
        return out

    def _lines(self, lines: List[bytes], ipv4: bool) -> List[ConnEntry]:
        width = 10 if self.sync else 9
        fields = b"\n".join(lines).split()
        assert len(fields) == width * len(lines), "lines not checked by _line_scan"
        col = [fields[i::width] for i in range(width)]
        if ipv4:
            caddrs: Iterable[str] = map(socket.inet_ntoa, map(binascii.unhexlify, col[1]))
        else:
            caddrs = map(_addr, col[1])
        words, addrs, ports = self.words.__getitem__, self.addrs.__getitem__, self.ports.__getitem__
        origins: Iterable[Optional[str]] = map(words, col[8]) if self.sync else repeat(None)
        rows = zip(
            map(words, col[0]),
            caddrs,
            map(ports, col[2]),
            map(addrs, col[3]),
            map(ports, col[4]),
            map(addrs, col[5]),
            map(ports, col[6]),
            map(words, col[7]),
            map(int, col[width - 1]),
            repeat(""),
            repeat(""),
            origins,
        )
        # tuple.__new__ over the rows: the whole construction runs in C.
        return list(map(partial(tuple.__new__, ConnEntry), rows))


def _addr(h: bytes) -> str:
    if len(h) == 8:
        return socket.inet_ntoa(binascii.unhexlify(h))
    return ipv6_text(binascii.unhexlify(h.replace(b":", b"")))


def _parse(body: _Body, conv: _Converter, bad: _Malformed, templates_only: bool) -> List:
    if templates_only:
        scan = _SYNC_TEMPLATES if conv.sync else _CONN_TEMPLATES
    else:
        scan = _SYNC_LINES if conv.sync else _CONN_LINES
    rows = body.findall(scan)
    v4 = list(filter(None, map(itemgetter(0), rows)))
    v6 = list(filter(None, map(itemgetter(1), rows)))
    pe = list(filter(None, map(itemgetter(2), rows)))
    if len(v4) + len(v6) + len(pe) != len(rows):
        _find_malformed(body, bad, only_templates=templates_only)
    entries = conv.lines(v4, ipv4=True) + conv.lines(v6, ipv4=False)
    if pe:
        entries += conv.pe_rows(_CONN_ALL.findall(b"\n" + b"\n".join(pe)))
    return entries


def _find_malformed(body: _Body, bad: _Malformed, only_templates: bool = False) -> None:
    """The slow path, taken only when the counts say some line did not parse: name them."""
    one = _SYNC_ONE if body.sync else _CONN_ONE
    for i, line in enumerate(body.split_lines()):
        if only_templates and not _CANDIDATES.match(b"\n" + line):
            continue
        m = one.fullmatch(line)
        if m is None:
            bad.add(body.first_line_no + i, _why(line, body.sync), line)
        elif len(m.group(2)) != len(m.group(4)):
            bad.add(body.first_line_no + i, "FromIP and ToIP of different families", line)


def _why(line: bytes, sync: bool) -> str:
    """A short reason for a line that does not parse: the first field that is wrong."""
    if not line.strip():
        return "empty line"
    names = _FIELDS + (("Origin", "Expires") if sync else ("Expires",))
    fields = line.split(None, len(names))
    for name, value in zip(names, fields):
        if not _FIELD_RES[name].fullmatch(value):
            return f"bad {name} {value[:40].decode('ascii', 'backslashreplace')!r}"
    if len(fields) < len(names):
        return f"{len(fields)} fields, expected {len(names)}"
    if sync and len(fields) > len(names):
        return "extra fields after Expires"
    return "not in the kernel's format (spacing or extra fields)"


def _count_by_client(body: _Body) -> Dict[ClientKey, int]:
    counted = Counter(body.findall(_CLIENT_KEYS))
    conv = _Converter(sync=False)
    out: Dict[ClientKey, int] = {}
    for (proto, c, v, vp), n in counted.items():
        if len(c) != len(v):
            continue
        protocol = conv.words[proto]
        caddr = _addr(c)
        if protocol == "IP":
            # Not a real case (a connection has a transport protocol), but key it as the model
            # would rather than invent a key of its own.
            entry = ConnEntry(protocol, caddr, 1, conv.addrs[v], 0, caddr, 0, "", 0)
            key: Tuple = entry.service_key()
        else:
            key = (protocol, conv.addrs[v], conv.ports[vp])
        ck = (caddr, key)
        out[ck] = out.get(ck, 0) + n
    return out


__all__ = [
    "CONN_HEADER",
    "SYNC_HEADER",
    "ConnTable",
    "MalformedLine",
    "count_connections_by_client",
    "parse_conn_table",
    "read_conn_table",
    "read_proc_file",
]
