"""The /proc/net/ip_vs_conn(_sync) parser, against lines in the kernel's own format."""

import gc
import ipaddress
import pathlib
import random

import pytest

from lvs_hooks.errors import KernelError
from lvs_hooks.kernel import conntable
from lvs_hooks.kernel.conntable import (
    CONN_HEADER,
    SYNC_HEADER,
    count_connections_by_client,
    parse_conn_table,
    read_conn_table,
)
from lvs_hooks.kernel.model import ConnEntry, ipv6_text

H = CONN_HEADER + b"\n"
HS = SYNC_HEADER + b"\n"


def _kaddr(addr: str) -> str:
    """An address as the kernel prints it: %08X for IPv4, %pI6 (fully expanded) for IPv6."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return f"{int(ip):08X}"
    return ":".join(f"{(int(ip) >> (16 * (7 - i))) & 0xFFFF:04x}" for i in range(8))


def kline(proto, caddr, cport, vaddr, vport, daddr, dport, state, expires, pe="", origin=None):
    """A line printed with ip_vs_conn_seq_show's (or ip_vs_conn_sync_seq_show's) format."""
    # The kernel's printf formats, verbatim, so that spacing and widths are the kernel's.
    head = "%-3s %s %04X %s %04X %s %04X %-11s" % (  # noqa: UP031
        proto, _kaddr(caddr), cport, _kaddr(vaddr), vport, _kaddr(daddr), dport, state,
    )
    if origin is not None:
        return ("%s %-6s %7u\n" % (head, origin, expires)).encode()  # noqa: UP031
    return ("%s %7u%s\n" % (head, expires, pe)).encode()  # noqa: UP031


# Verbatim: the template the lab's 6.1 kernel showed (lab-reference/README.md), in its real spacing.
LAB_TEMPLATE = b"UDP 0A00000A 0000 0A000064 1388 0A01000C 1388 ASSURED         359\n"


def test_kline_matches_the_kernel_spacing():
    assert kline("UDP", "10.0.0.10", 0, "10.0.0.100", 5000, "10.1.0.12", 5000, "ASSURED", 359) == LAB_TEMPLATE


def test_ipv4_template_and_connection():
    conn = b"UDP 0A00000A 9C40 0A000064 1388 0A01000C 1388 UDP             299\n"
    t = parse_conn_table(H + LAB_TEMPLATE + conn)
    assert t.malformed == 0 and t.total_lines == 2 and not t.sync
    tpl, c = t.entries
    assert tpl == ConnEntry("UDP", "10.0.0.10", 0, "10.0.0.100", 5000, "10.1.0.12", 5000, "ASSURED", 359)
    assert tpl.is_template and tpl.service_key() == ("UDP", "10.0.0.100", 5000)
    assert c.cport == 40000 and c.state == "UDP" and not c.is_template
    assert t.templates == [tpl]


def test_ipv6_addresses_fully_expanded_become_canonical():
    line = (
        b"TCP fd00:0000:0000:0000:0000:0000:0000:0010 0000 fd00:0000:0000:0000:0000:0000:0000:0100"
        b" 01BB fd00:0000:0000:0000:0000:0000:0001:000c 01BB ASSURED         100\n"
    )
    (e,) = parse_conn_table(H + line).entries
    assert (e.caddr, e.vaddr, e.daddr) == ("fd00::10", "fd00::100", "fd00::1:c")
    assert (e.vport, e.dport, e.af) == (443, 443, 6)


@pytest.mark.parametrize(
    "addr", ["::ffff:10.0.0.1", "::10.0.0.1", "::1", "::", "fd00:0:0:1::", "1:0:0:2:0:0:0:3", "fd00::1:0:0:0:1"]
)
def test_ipv6_text_is_what_ipaddress_writes(addr):
    # The kernel prints every group; the model compares ipaddress's text (which for the dotted
    # IPv4-mapped form differs between Python versions).
    line = kline("TCP", addr, 0, "fd00::100", 80, "fd00::b", 80, "ASSURED", 5)
    (e,) = parse_conn_table(H + line).entries
    assert e.caddr == str(ipaddress.IPv6Address(addr))
    assert ipv6_text(ipaddress.IPv6Address(addr).packed) == e.caddr


def test_fwmark_templates_ipv4_and_ipv6():
    v4 = b"IP  0A00000A 0000 00000001 0000 0A01000B 0000 ASSURED         250\n"
    v6 = kline("IP", "fd00::10", 0, "0:7::", 0, "fd00::b", 0, "NONE", 9)
    assert b" 0000:0007:0000:0000:0000:0000:0000:0000 " in v6  # htonl(mark) in the first word
    a, b = parse_conn_table(H + v4 + v6).entries
    assert (a.protocol, a.vaddr, a.fwmark, a.service_key()) == ("IP", "0.0.0.1", 1, ("fwmark", 4, 1))
    assert (b.fwmark, b.service_key()) == (7, ("fwmark", 6, 7))


def test_pe_columns():
    line = kline("UDP", "10.0.0.10", 0, "10.0.0.100", 5060, "10.1.0.11", 5060, "ASSURED", 60,
                 pe=" sip a84b4c76e66710@pc33.atlanta.com")
    (e,) = parse_conn_table(H + line).entries
    assert (e.pe_name, e.pe_data) == ("sip", "a84b4c76e66710@pc33.atlanta.com")
    (e2,) = parse_conn_table(H + line, templates_only=True).entries
    assert e2 == e


def test_conn_sync_file_has_origin():
    data = HS + kline("TCP", "10.0.0.10", 0, "10.0.0.100", 80, "10.1.0.11", 80, "ASSURED", 300, origin="SYNC")
    data += kline("TCP", "10.0.0.10", 51000, "10.0.0.100", 80, "10.1.0.11", 80, "ESTABLISHED", 800, origin="LOCAL")
    assert b"ASSURED     SYNC       300\n" in data
    t = parse_conn_table(data)
    assert t.sync and t.malformed == 0
    assert [e.origin for e in t.entries] == ["SYNC", "LOCAL"]
    assert t.entries[0].expires == 300 and t.entries[0].is_template
    assert parse_conn_table(data, templates_only=True).entries == (t.entries[0],)


def test_real_server_of_the_other_family():
    v4_entry = kline("TCP", "10.0.0.10", 0, "10.0.0.100", 80, "fd00::b", 80, "ASSURED", 5)
    v6_entry = kline("TCP", "fd00::10", 0, "fd00::100", 80, "10.1.0.11", 80, "ASSURED", 5)
    for mode in (False, True):
        t = parse_conn_table(H + v4_entry + v6_entry, templates_only=mode)
        assert t.malformed == 0
        assert sorted((e.caddr, e.daddr) for e in t.entries) == [
            ("10.0.0.10", "fd00::b"),
            ("fd00::10", "10.1.0.11"),
        ]


def test_sctp_wider_protocol_column_and_wide_expires():
    line = kline("SCTP", "10.0.0.10", 0, "10.0.0.100", 80, "10.1.0.11", 80, "ASSURED", 123456789)
    v6 = kline("SCTP", "fd00::10", 0, "fd00::100", 80, "fd00::b", 80, "ASSURED", 7)
    for mode in (False, True):
        t = parse_conn_table(H + line + v6, templates_only=mode)
        assert [(e.protocol, e.expires) for e in t.entries] == [("SCTP", 123456789), ("SCTP", 7)]


def test_malformed_lines_are_counted_with_line_numbers_and_never_fatal():
    good = kline("TCP", "10.0.0.10", 0, "10.0.0.100", 80, "10.1.0.11", 80, "ASSURED", 5)
    data = (
        H
        + good  # line 2
        + b"TCP 0A00000A 0000 0A00006\n"  # 3: cut short
        + b"\n"  # 4: empty
        + good.replace(b"0A01000B", b"0a01000b")  # 5: lower-case IPv4 hex is not the kernel's
        + b"TCP 0A00000A 0000 fd00:0000:0000:0000:0000:0000:0000:0100 0050 0A01000B 0050 NONE 1\n"  # 6
        + good  # 7
    )
    t = parse_conn_table(data)
    assert t.malformed == 4 and t.total_lines == 6 and len(t.entries) == 2
    got = [(m.line, m.reason) for m in t.malformed_examples]
    assert got == [
        (3, "bad ToIP '0A00006'"),
        (4, "empty line"),
        (5, "bad DestIP '0a01000b'"),
        (6, "FromIP and ToIP of different families"),
    ]
    assert t.malformed_examples[0].text == "TCP 0A00000A 0000 0A00006"


def test_examples_are_capped_but_the_count_is_not():
    t = parse_conn_table(H + b"junk\n" * 50)
    assert t.malformed == 50 and len(t.malformed_examples) == conntable.MAX_EXAMPLES
    assert t.malformed_examples[0].reason == "1 fields, expected 9"
    assert [m.line for m in t.malformed_examples] == [2, 3, 4, 5, 6]


def test_templates_only_checks_template_lines_strictly():
    good = kline("TCP", "10.0.0.10", 0, "10.0.0.100", 80, "10.1.0.11", 80, "ASSURED", 5)
    bad_tpl = b"TCP 0A00000B 0000 0A000064 0050 0A01000B 0050 ASSURED   x\n"
    bad_conn = b"TCP 0A00000B 1234 0A000064 0050 garbage\n"
    t = parse_conn_table(H + good + bad_conn + bad_tpl + good, templates_only=True)
    assert len(t.entries) == 2 and t.total_lines is None  # not counted in this mode
    # Only the template line is checked in this mode; the full parse names both.
    assert [(m.line, m.reason) for m in t.malformed_examples] == [(4, "bad Expires 'x'")]
    full = parse_conn_table(H + good + bad_conn + bad_tpl + good)
    assert [m.line for m in full.malformed_examples] == [3, 4]


def test_truncated_last_line():
    good = kline("TCP", "10.0.0.10", 0, "10.0.0.100", 80, "10.1.0.11", 80, "ASSURED", 5)
    for mode in (False, True):
        t = parse_conn_table(H + good + good[:-1], templates_only=mode)
        assert (t.total_lines, len(t.entries), t.malformed) == (None if mode else 2, 1, 1)
        assert t.malformed_examples[0].line == 3
        assert "truncated" in t.malformed_examples[0].reason


@pytest.mark.parametrize("data", [b"", H, CONN_HEADER, HS])
def test_empty_and_header_only_are_valid_empty_tables(data):
    for mode in (False, True):
        t = parse_conn_table(data, templates_only=mode)
        assert (t.entries, t.total_lines, t.malformed) == ((), None if mode else 0, 0)
    assert parse_conn_table(HS).sync


def test_unknown_header_is_reported_and_lines_still_read():
    t = parse_conn_table(b"Pro FromIP FPrt ToIP TPrt NewColumn\n" + LAB_TEMPLATE)
    assert t.malformed == 1 and t.malformed_examples[0].line == 1
    assert t.malformed_examples[0].reason == "unknown header"
    assert len(t.entries) == 1


def test_missing_header_takes_the_first_line_as_data():
    t = parse_conn_table(LAB_TEMPLATE + LAB_TEMPLATE)
    assert (t.total_lines, len(t.entries), t.malformed) == (2, 2, 0)
    t = parse_conn_table(b"nonsense\n" + LAB_TEMPLATE)
    assert t.malformed_examples[0].line == 1


def test_parsed_entries_equal_the_constructor():
    line = kline("UDP", "10.0.0.10", 0, "10.0.0.100", 5060, "10.1.0.11", 5060, "ASSURED", 60, pe=" sip x")
    built = ConnEntry("UDP", "10.0.0.10", 0, "10.0.0.100", 5060, "10.1.0.11", 5060, "ASSURED", 60, "sip", "x")
    for data in (H + line, H + line.replace(b" sip x", b"")):
        for mode in (False, True):
            (e,) = parse_conn_table(data, templates_only=mode).entries
            want = built if b"sip" in data else built._replace(pe_name="", pe_data="")
            assert type(e) is ConnEntry
            assert e == want and hash(e) == hash(want) and repr(e) == repr(want)
            with pytest.raises(AttributeError):
                e.caddr = "1.2.3.4"


_MEMORY_PROBE = """
import socket, sys, tracemalloc
from lvs_hooks.kernel.conntable import parse_conn_table, CONN_HEADER
from lvs_hooks.kernel.model import ConnEntry, ipv6_text
n = 2000
addrs = [(f"11.0.{i // 256}.{i % 256}", "%08X" % (0x0B000000 + i)) for i in range(n)]
data = CONN_HEADER + b"\\n" + b"".join(
    b"TCP %s 0000 0A000064 0050 0A01000B 0050 ASSURED           5\\n" % h.encode() for _, h in addrs)
tracemalloc.start()
t0 = tracemalloc.get_traced_memory()[0]
built = [ConnEntry("TCP", socket.inet_ntoa(bytes.fromhex(h)), 0, "10.0.0.100", 80, "10.1.0.11", 80,
                   "ASSURED", 5) for _, h in addrs]
t1 = tracemalloc.get_traced_memory()[0]
parse_conn_table(data, templates_only=True)  # the row tuples go to CPython's free lists
t2 = tracemalloc.get_traced_memory()[0]
parsed = list(parse_conn_table(data, templates_only=True).entries)
t3 = tracemalloc.get_traced_memory()[0]
assert parsed == built
print((t1 - t0) / n, (t3 - t2) / n)
"""


def test_parsed_entries_take_no_more_memory_than_built_ones_by_much():
    # Filling __dict__ with update() would double the size of an entry on CPython 3.11+, and
    # of every ConnEntry built after it (see _Converter); a million entries is a real table.
    # In a fresh interpreter, because that harm lasts for the whole process.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True,
                         check=True, cwd=pathlib.Path(__file__).parents[2])
    per_built, per_parsed = map(float, out.stdout.split())
    assert per_parsed < 1.4 * per_built, (per_built, per_parsed)


def test_gc_state_is_restored():
    assert gc.isenabled()
    parse_conn_table(H + LAB_TEMPLATE)
    assert gc.isenabled()
    gc.disable()
    try:
        parse_conn_table(H + LAB_TEMPLATE)
        assert not gc.isenabled()
    finally:
        gc.enable()


def _generated_table(n: int, seed: int, sync: bool = False):
    """A table of `n` lines like a busy director's, and the entries it must parse to."""
    rnd = random.Random(seed)
    lines, want = [], []
    for i in range(n):
        v6 = rnd.random() < 0.2
        kind = rnd.choice(["TCP", "UDP", "SCTP", "IP"]) if i % 3 == 0 else rnd.choice(["TCP", "UDP"])
        if v6:
            caddr = str(ipaddress.IPv6Address((0xFD00 << 112) + rnd.randrange(1 << 32)))
            vaddr = "fd00::100" if kind != "IP" else str(ipaddress.IPv6Address(3 << 96))
            daddr = rnd.choice(["fd00::b", "fd00::c", "10.1.0.13"])
        else:
            caddr = str(ipaddress.IPv4Address(0x0B000000 + rnd.randrange(1 << 24)))
            vaddr = "10.0.0.100" if kind != "IP" else "0.0.0.3"
            daddr = rnd.choice(["10.1.0.11", "10.1.0.12", "fd00::d"])
        template = kind == "IP" or i % 3 == 0
        cport = 0 if template else rnd.randrange(1, 65536)
        proto = "TCP" if kind == "IP" and not template else kind
        vport = 0 if proto == "IP" else 80
        dport = 0 if proto == "IP" else rnd.choice([80, 8080])
        state = rnd.choice(["ASSURED", "NONE"]) if template else "ESTABLISHED"
        expires = rnd.randrange(0, 100000)
        pe = f" sip call-{i}@example" if (template and proto == "UDP" and rnd.random() < 0.1) else ""
        origin = rnd.choice(["LOCAL", "SYNC"]) if sync else None
        if sync:
            pe = ""
        lines.append(kline(proto, caddr, cport, vaddr, vport, daddr, dport, state, expires, pe, origin))
        want.append(ConnEntry(proto, caddr, cport, vaddr, vport, daddr, dport, state, expires,
                              pe[1:].split(" ")[0] if pe else "", pe.split(" ", 2)[2] if pe else "", origin))
    return (HS if sync else H) + b"".join(lines), want


@pytest.mark.parametrize("sync", [False, True])
def test_templates_only_equals_the_full_parse_on_a_generated_table(sync):
    data, want = _generated_table(3000, seed=7, sync=sync)
    full = parse_conn_table(data)
    fast = parse_conn_table(data, templates_only=True)
    assert full.malformed == fast.malformed == 0
    assert full.total_lines == 3000 and fast.total_lines is None
    # The documented order: IPv4 entries, IPv6 ones, then those with PE data, each in file order.
    ordered = [e for e in want if e.af == 4 and not e.pe_name] + [e for e in want if e.af == 6 and not e.pe_name]
    ordered += [e for e in want if e.pe_name]
    assert list(full.entries) == ordered
    assert list(fast.entries) == full.templates == [e for e in ordered if e.cport == 0]
    assert len(fast.entries) == 1000 and (sync or any(e.pe_name for e in fast.entries))


def test_connection_counts_per_client_and_service():
    c1, c2 = "10.0.0.10", "fd00::10"
    data = H + b"".join(
        [
            kline("TCP", c1, 0, "10.0.0.100", 80, "10.1.0.11", 80, "ASSURED", 5),  # a template: not counted
            kline("TCP", c1, 40000, "10.0.0.100", 80, "10.1.0.11", 80, "ESTABLISHED", 5),
            kline("TCP", c1, 40001, "10.0.0.100", 80, "10.1.0.11", 80, "FIN_WAIT", 5),
            kline("UDP", c1, 40001, "10.0.0.100", 53, "10.1.0.11", 53, "UDP", 5),
            kline("TCP", c2, 40000, "fd00::100", 443, "fd00::b", 443, "ESTABLISHED", 5),
        ]
    )
    want = {
        (c1, ("TCP", "10.0.0.100", 80)): 2,
        (c1, ("UDP", "10.0.0.100", 53)): 1,
        (c2, ("TCP", "fd00::100", 443)): 1,
    }
    assert count_connections_by_client(data) == want
    assert parse_conn_table(data, templates_only=True, client_counts=True).client_counts == want
    assert parse_conn_table(data).client_counts is None
    # The same keys as the model's, from the full parse.
    full = parse_conn_table(data)
    from_entries = {}
    for e in full.entries:
        if not e.is_template:
            k = (e.caddr, e.service_key())
            from_entries[k] = from_entries.get(k, 0) + 1
    assert from_entries == want


def test_counts_agree_with_the_full_parse_on_a_generated_table():
    data, want = _generated_table(2000, seed=3)
    expected = {}
    for e in want:
        if e.cport != 0:
            k = (e.caddr, e.service_key())
            expected[k] = expected.get(k, 0) + 1
    assert count_connections_by_client(data) == expected


def test_read_conn_table_reads_the_file_under_proc_root(tmp_path, monkeypatch):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "ip_vs_conn").write_bytes(H + LAB_TEMPLATE * 3)
    (tmp_path / "net" / "ip_vs_conn_sync").write_bytes(
        HS + kline("UDP", "10.0.0.10", 0, "10.0.0.100", 5000, "10.1.0.12", 5000, "ASSURED", 1, origin="SYNC")
    )
    # Small reads, to prove the chunks are put together.
    monkeypatch.setattr(conntable, "READ_CHUNK", 7)
    t = read_conn_table(str(tmp_path), templates_only=True)
    assert len(t.templates) == 3
    assert read_conn_table(str(tmp_path)).total_lines == 3
    ts = read_conn_table(str(tmp_path), sync=True)
    assert ts.sync and ts.entries[0].origin == "SYNC"


def test_missing_file_means_ipvs_not_loaded(tmp_path):
    with pytest.raises(KernelError) as exc:
        read_conn_table(str(tmp_path))
    msg = exc.value.format_message()
    assert msg == f"IPVS not loaded (no {tmp_path}/net/ip_vs_conn)" and "\n" not in msg
