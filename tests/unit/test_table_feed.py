"""table/feed: sync datagrams into rows, as a receiving kernel applies them (docs/design.md 3.3).

Datagrams are the golden captures and what kernel/syncproto's encoder makes; the expected rows
are computed here from the decoded fields with `ipaddress`, not with the code under test.
"""

import ipaddress
import random
import struct

import pytest
from test_syncproto import GOLDEN_FILES, load_golden

from lvs_hooks.kernel import syncproto as sp
from lvs_hooks.kernel.syncproto import IpVsSeq, SeqOptions, SyncConn, encode_datagrams
from lvs_hooks.table import feed
from lvs_hooks.table.feed import PeRow, decode


def _int(addr: str) -> int:
    return int(ipaddress.ip_address(addr))


def expected_row(c: dict):
    """The row of one entry of a golden file's expected decoding (or of SyncConn.to_dict())."""
    row = (
        1 if c["af"] == 6 else 0, c["protocol"], c["flags"], c["state"], c["cport"], c["vport"],
        c["dport"], c["fwmark"], c["timeout"], _int(c["caddr"]), _int(c["vaddr"]), _int(c["daddr"]),
    )
    pe = bytes.fromhex(c["pe_data"]).decode("latin-1")
    return (row, c["pe_name"], pe) if pe else row


def comparable(row):
    """A decoded row without its ver_size (a wire detail the table does not use)."""
    if isinstance(row, PeRow):
        return (comparable(row.row), row.pe_name, row.pe_data)
    return row[:2] + row[3:]


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_datagrams_give_the_rows_of_their_expected_decoding(path):
    data, expected = load_golden(path)
    dec = decode(data)
    assert (dec.version, dec.syncid, dec.error, dec.skipped) == (
        expected["version"], expected["syncid"], None, 0)
    assert [comparable(r) for r in dec.rows] == [expected_row(c) for c in expected["conns"]]


def test_the_kernel_masters_capture_takes_the_fast_path():
    # 22 plain IPv4 entries: one iter_unpack, the struct's own fields, addresses as integers.
    data = load_golden(GOLDEN_FILES[[p.stem for p in GOLDEN_FILES].index(
        "v1_kernel_master_capture_6.1")])[0]
    rows = decode(data).rows
    assert len(rows) == 22 and all(type(r) is tuple and r[0] == 0 and r[2] == 36 for r in rows)
    assert rows == list(feed.V4_ROW.iter_unpack(data[8:]))


def _v4(rnd, i, **kw):
    f = dict(af=4, protocol=rnd.choice((6, 17, 132)), flags=sp.IP_VS_CONN_F_TEMPLATE | rnd.randrange(4),
             state=rnd.randrange(2), cport=0, vport=rnd.choice((80, 443, 5000)), dport=5000, fwmark=0,
             timeout=rnd.randrange(0, 4000), caddr=str(ipaddress.IPv4Address(0x0B000000 + i)),
             vaddr=f"10.0.0.{100 + rnd.randrange(4)}", daddr=f"10.1.0.{rnd.randrange(1, 40)}")
    if rnd.random() < 0.3:  # a connection
        f.update(flags=rnd.choice((0, 0x100)), cport=rnd.randrange(1024, 65536), state=rnd.randrange(11))
    return SyncConn(**{**f, **kw})


def _v6(rnd, i, **kw):
    c = _v4(rnd, i)
    return SyncConn(**{**c.__dict__, "af": 6, "caddr": f"fd00::b:{i:x}", "vaddr": "fd00::100",
                       "daddr": f"fd00:1::{rnd.randrange(1, 40):x}", **kw})


def _odd(rnd, i):
    """Entries that leave the fast path: IPv6, options, fwmark templates, PE data."""
    kind = rnd.randrange(5)
    if kind == 0:
        return _v6(rnd, i)
    if kind == 1:
        seq = SeqOptions(IpVsSeq(rnd.getrandbits(32), 5, 0), IpVsSeq(rnd.getrandbits(32), 2, 1))
        return _v4(rnd, i, flags=0x0603, cport=40000, state=1, seq=seq)
    if kind == 2:
        mark = rnd.randrange(1, 300)
        return sp.template_conn(protocol="IP", caddr=f"11.1.{i // 256 % 256}.{i % 256}", vaddr=None,
                                vport=0, daddr="10.1.0.5", dport=rnd.choice((0, 8080)),
                                fwd_method="droute", timeout=300, fwmark=mark)
    if kind == 3:
        return sp.template_conn(protocol="UDP", caddr=f"fd00::c:{i:x}", vaddr="fd00::100", vport=5060,
                                daddr="fd00::b", dport=5060, fwd_method="masq", timeout=60,
                                pe_name="sip", pe_data=f"call-{i}@\xe9x")
    # an unknown optional option (0x40 bit): a receiver skips the option, keeps the entry
    return _v4(rnd, i, options=((sp.IPVS_OPT_F_PARAM | 9, b"\x01\x02\x03"),))


@pytest.mark.parametrize("seed", range(6))
def test_random_datagrams_decode_to_their_entries_in_order(seed):
    rnd = random.Random(seed)
    conns = [(_odd(rnd, i) if rnd.random() < [0, 0.05, 0.5, 1, 0.2, 0][seed] else _v4(rnd, i))
             for i in range(300)]
    if seed == 5:  # all IPv6 and plain: the IPv6 fast path
        conns = [_v6(rnd, i) for i in range(300)]
    got = []
    for d in encode_datagrams(conns, syncid=seed):
        dec = decode(d)
        assert dec.error is None and dec.skipped == 0 and dec.syncid == seed
        got += dec.rows
    assert [comparable(r) for r in got] == [expected_row(c.to_dict()) for c in conns]
    if seed in (0, 5):  # plain entries of one family: the fast paths keep the wire's ver_size
        assert {r[2] for r in got} == {36 if seed == 0 else 72}


def test_a_bad_header_drops_the_whole_datagram():
    data = encode_datagrams([_v4(random.Random(1), i) for i in range(3)], syncid=1)[0]
    for bad, why in (
        (data[:3], "header too short"),
        (data + b"\0\0\0\0", "size field says"),
        (data[:-4], "size field says"),
    ):
        dec = decode(bad)
        assert dec.rows == [] and why in dec.error


def _set_size(data: bytes) -> bytes:
    return data[:2] + struct.pack("!H", len(data)) + data[4:]


def test_a_fault_inside_drops_the_rest_and_keeps_the_entries_before():
    rnd = random.Random(2)
    conns = [_v4(rnd, i) for i in range(5)]
    data = bytearray(encode_datagrams(conns, syncid=1)[0])
    ok = [expected_row(c.to_dict()) for c in conns]
    third = 8 + 2 * 36
    cases = {
        "unknown entry version": (third + 2, 0x10),  # top bits of ver_size
        "unknown type": (third, 2),  # neither IPv4 (0) nor IPv6 (bit 0)
    }
    for why, (offset, value) in cases.items():
        bad = bytearray(data)
        bad[offset] = value
        dec = decode(bytes(bad))
        assert [comparable(r) for r in dec.rows] == ok[:2], why
        assert dec.error, why
    # nr_conns says one entry more than there is
    more = bytearray(data)
    more[4] = 6
    dec = decode(bytes(more))
    assert [comparable(r) for r in dec.rows] == ok and "truncated" in dec.error


def test_bad_options_drop_the_rest_unknown_mandatory_ones_skip_the_entry():
    rnd = random.Random(3)
    first, last = _v4(rnd, 1), _v4(rnd, 3)

    def with_option(otype, value):
        entry = sp.encode_v1_entry(_v4(rnd, 2))
        opt = bytes((otype, len(value))) + value
        entry = entry[:2] + struct.pack("!H", len(entry) + len(opt)) + entry[4:] + opt
        pad = bytes(-len(entry) % 4)
        body = sp.encode_v1_entry(first) + entry + pad + sp.encode_v1_entry(last)
        return _set_size(bytes((0, 1, 0, 0, 3, 1, 0, 0)) + body)

    dec = decode(with_option(sp.IPVS_OPT_SEQ_DATA, bytes(23)))  # must be 24 bytes
    assert [comparable(r) for r in dec.rows] == [expected_row(first.to_dict())]
    assert "sequence option" in dec.error
    dec = decode(with_option(9, b"xyz"))  # unknown, no optional bit: this entry only
    assert [comparable(r) for r in dec.rows] == [expected_row(c.to_dict()) for c in (first, last)]
    assert (dec.error, dec.skipped) == (None, 1)
    dec = decode(with_option(sp.IPVS_OPT_PE_DATA, b"call-1"))  # PE data without a name
    assert (len(dec.rows), dec.error, dec.skipped) == (2, None, 1)
    dec = decode(with_option(sp.IPVS_OPT_PE_NAME, b"sip"))  # a name alone is no PE: kept plain
    assert (len(dec.rows), dec.error, dec.skipped) == (3, None, 0)
    assert all(type(r) is tuple for r in dec.rows)


def test_bytes_after_the_last_entry_are_ignored_as_the_kernel_ignores_them():
    conns = [_v4(random.Random(4), i) for i in range(2)]
    data = _set_size(encode_datagrams(conns, syncid=1)[0] + b"\x00\x00\x00\x00junk")
    dec = decode(data)
    assert dec.error is None and [comparable(r) for r in dec.rows] == [
        expected_row(c.to_dict()) for c in conns]


def test_v0_rows_and_their_faults():
    path = [p for p in GOLDEN_FILES if p.stem.startswith("v0_")][0]
    data, expected = load_golden(path)
    assert len(decode(data).rows) == 2
    cut = _set_size(data[:-8])  # the second entry's sequence options cut short
    dec = decode(cut)
    assert [comparable(r) for r in dec.rows] == [expected_row(expected["conns"][0])]
    assert "sequence options" in dec.error
