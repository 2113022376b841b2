"""The sync protocol codec: golden datagrams, round trips, datagram filling, errors."""

import json
import pathlib
import random

import pytest

from lvs_hooks.kernel import syncproto as sp
from lvs_hooks.kernel.syncproto import (
    IpVsSeq,
    SeqOptions,
    SyncConn,
    SyncDecodeError,
    decode_datagram,
    encode_datagrams,
    encode_message,
    encode_v1_entry,
    template_conn,
)

GOLDEN = pathlib.Path(__file__).parent / "golden"


def load_golden(path: pathlib.Path):
    """(bytes, expected dict) of a fixture: see golden/README.md for the format."""
    text = path.read_text()
    head, rest = text.split("\nhex:\n", 1)
    assert head.startswith("# source:"), f"{path.name}: say where the bytes came from"
    hex_part, expected = rest.split("\nexpected:\n", 1)
    data = bytes.fromhex(" ".join(line.split("#", 1)[0] for line in hex_part.splitlines()))
    return data, json.loads(expected)


GOLDEN_FILES = sorted(GOLDEN.glob("*.txt"))


def test_golden_files_are_there():
    assert len(GOLDEN_FILES) >= 7


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden(path):
    data, expected = load_golden(path)
    msg = decode_datagram(data)
    assert msg.to_dict() == expected
    if msg.version == 1:
        assert encode_message(msg.conns, msg.syncid) == data


def _golden_bytes(name):
    return load_golden(GOLDEN / name)[0]


def test_template_conn_matches_the_injector():
    # The prototype injector's bytes, which the lab's 6.1 backup accepted.
    t = template_conn(
        protocol="UDP", caddr="10.0.0.87", vaddr="10.0.0.100", vport=5000,
        daddr="10.1.0.12", dport=5000, fwd_method="masq", timeout=3000,
    )
    assert (t.flags, t.state, t.cport, t.af, t.protocol) == (0x1000, 1, 0, 4, 17)
    assert encode_datagrams([t], syncid=51) == [_golden_bytes("v1_injector_6j_udp_template_assured.txt")]


def test_fwmark_template_conn():
    want = [_golden_bytes("v1_fwmark_template_handmade.txt")]
    common = dict(caddr="10.0.0.10", vport=0, daddr="10.1.0.11", dport=5000, fwd_method="droute",
                  timeout=300, fwmark=1)
    for protocol, vaddr in (("IP", "0.0.0.1"), ("IP", None), ("TCP", None)):
        t = template_conn(protocol=protocol, vaddr=vaddr, **common)
        assert (t.protocol, t.vaddr, t.fwmark, t.dport) == (0, "0.0.0.1", 1, 5000)
        assert encode_datagrams([t], syncid=42) == want
    with pytest.raises(ValueError, match="kernel keys 0.0.0.1"):
        template_conn(protocol="IP", vaddr="10.0.0.100", **common)
    with pytest.raises(ValueError, match="needs|fwmark"):
        template_conn(protocol="IP", vaddr="0.0.0.1", **{**common, "fwmark": 0})
    v6 = template_conn(protocol="IP", vaddr=None, **{**common, "caddr": "fd00::10", "daddr": "fd00::b", "fwmark": 7})
    assert v6.vaddr == "0:7::" and v6.af == 6


def test_template_conn_checks_what_the_receiver_would_mishandle():
    ok = dict(protocol="TCP", caddr="10.0.0.10", vaddr="10.0.0.100", vport=80, daddr="10.1.0.11",
              dport=80, fwd_method="tunnel", timeout=60)
    assert template_conn(**ok).flags == sp.IP_VS_CONN_F_TEMPLATE | sp.IP_VS_CONN_F_TUNNEL
    for bad, match in (
        ({"timeout": 0}, "at least 1"),
        ({"protocol": "ICMP"}, "unknown protocol"),
        ({"fwd_method": "bypass"}, "forwarding method"),
        ({"fwd_method": 4}, "forwarding method"),
    ):
        with pytest.raises(ValueError, match=match):
            template_conn(**{**ok, **bad})
    sip = template_conn(**{**ok, "protocol": "UDP", "pe_name": "sip", "pe_data": "call\xe9@x"})
    assert sip.pe_data == b"call\xe9@x"  # latin-1, as conntable reads PE data
    with pytest.raises(ValueError, match="go together"):
        encode_v1_entry(template_conn(**{**ok, "pe_data": "x"}))
    with pytest.raises(ValueError, match="go together"):
        encode_datagrams([template_conn(**{**ok, "pe_name": "sip"})], syncid=1)


def _v4(i, **kw):
    base = dict(af=4, protocol=6, flags=0x1000, state=1, cport=0, vport=80, dport=80, fwmark=0,
                timeout=300, caddr=f"11.0.{i // 256 % 256}.{i % 256}", vaddr="10.0.0.100", daddr="10.1.0.11")
    return SyncConn(**{**base, **kw})


def _v6(i, **kw):
    base = dict(af=6, protocol=17, flags=0x1000, state=1, cport=0, vport=53, dport=53, fwmark=0,
                timeout=300, caddr=f"fd00::{i + 1:x}", vaddr="fd00::100", daddr="fd00::b")
    return SyncConn(**{**base, **kw})


def _decoded(datagrams):
    return [c for d in datagrams for c in decode_datagram(d).conns]


def test_40_ipv4_entries_fill_a_default_datagram():
    conns = [_v4(i) for i in range(100)]
    out = encode_datagrams(conns, syncid=9)
    assert [len(d) for d in out] == [8 + 40 * 36, 8 + 40 * 36, 8 + 20 * 36]
    assert 8 + 41 * 36 > sp.SYNC_MAXLEN_DEFAULT == 1472
    assert [decode_datagram(d).conns[0] for d in out] == [conns[0], conns[40], conns[80]]
    assert _decoded(out) == conns
    # Header fields as the kernel writes them.
    assert out[0][:8] == bytes([0, 9, 1448 >> 8, 1448 & 0xFF, 40, 1, 0, 0])


def test_ipv6_entries():
    conns = [_v6(i) for i in range(45)]
    out = encode_datagrams(conns, syncid=1)
    assert [len(d) for d in out] == [8 + 20 * 72, 8 + 20 * 72, 8 + 5 * 72]
    assert _decoded(out) == conns


def test_255_entries_at_most():
    conns = [_v4(i) for i in range(600)]
    out = encode_datagrams(conns, syncid=1, maxlen=65535)
    assert [decode_datagram(d).to_dict()["conns"].__len__() for d in out] == [255, 255, 90]
    assert [d[4] for d in out] == [255, 255, 90]
    assert _decoded(out) == conns


def _mixed(n, seed):
    rnd = random.Random(seed)
    conns = []
    for i in range(n):
        kw = {}
        if rnd.random() < 0.3:
            kw["pe_name"], kw["pe_data"] = "sip", bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 40)))
        if rnd.random() < 0.2:
            kw["seq"] = SeqOptions(IpVsSeq(rnd.getrandbits(32), 5, 0), IpVsSeq(1, 2**32 - 1, 7))
        if rnd.random() < 0.1:
            kw["options"] = ((0x45, b"\x01\x02\x03"),)  # optional (IPVS_OPT_F_PARAM) unknown option
        conns.append((_v6 if rnd.random() < 0.4 else _v4)(i, **kw))
    return conns


@pytest.mark.parametrize("maxlen", [44, 120, 200, 577, 1472, 9000])
def test_maxlen_is_honoured_and_datagrams_are_full(maxlen):
    conns = [c for c in _mixed(400, seed=maxlen) if len(encode_v1_entry(c)) + 8 <= maxlen]
    out = encode_datagrams(conns, syncid=3, maxlen=maxlen)
    assert all(len(d) <= maxlen for d in out)
    assert _decoded(out) == conns
    # Full: the first entry of each next datagram would not have fitted (or 255 were reached).
    for d, nxt in zip(out, out[1:]):
        first = decode_datagram(nxt).conns[0]
        pad = -len(d) % 4
        assert len(d) + pad + len(encode_v1_entry(first)) > maxlen or d[4] == 255
    # Pads are zero and every datagram stands alone: re-encoding it gives the same bytes.
    for d in out:
        assert encode_message(decode_datagram(d).conns, 3) == d


def test_entries_are_aligned_and_the_last_is_not_padded():
    odd = _v4(1, pe_name="sip", pe_data=b"abc")  # 36 + 5 + 5 = 46 bytes
    out = encode_datagrams([odd, _v4(2), odd], syncid=1)
    assert len(out) == 1
    d = out[0]
    assert len(d) == 8 + 46 + 2 + 36 + 46
    assert d[8 + 46 : 8 + 48] == b"\0\0"
    assert decode_datagram(d).conns == (odd, _v4(2), odd)


def test_the_padding_counts_against_maxlen():
    odd = _v4(1, pe_name="sip", pe_data=b"abc")  # 46 bytes: 2 bytes of padding before the next
    assert [len(d) for d in encode_datagrams([odd, _v4(2)], syncid=1, maxlen=92)] == [92]
    assert [len(d) for d in encode_datagrams([odd, _v4(2)], syncid=1, maxlen=91)] == [54, 44]


def test_maxlen_and_entry_limits():
    with pytest.raises(ValueError, match="maxlen"):
        encode_datagrams([_v4(1)], syncid=1, maxlen=43)
    with pytest.raises(ValueError, match="does not fit maxlen 79"):
        encode_datagrams([_v6(1)], syncid=1, maxlen=79)
    with pytest.raises(ValueError, match="syncid"):
        encode_datagrams([_v4(1)], syncid=256)
    assert encode_datagrams([], syncid=1) == []
    with pytest.raises(ValueError, match="not all IPv4"):
        encode_datagrams([_v4(1, daddr="fd00::1")], syncid=1)
    with pytest.raises(ValueError, match="not all IPv6"):
        encode_datagrams([_v6(1, daddr="10.0.0.1")], syncid=1)
    with pytest.raises(ValueError, match="out of range"):
        encode_datagrams([_v4(1, vport=70000)], syncid=1)
    with pytest.raises(ValueError, match="too long"):
        encode_v1_entry(_v4(1, pe_name="sip", pe_data=b"x" * 256))
    with pytest.raises(ValueError, match="too long"):
        encode_v1_entry(_v4(1, pe_name="a" * 17, pe_data=b"x"))


def test_unknown_options_survive_a_round_trip():
    c = _v4(1, options=((0x45, b"\xaa\xbb"),))
    (d,) = encode_datagrams([c], syncid=5)
    assert decode_datagram(d).conns == (c,)
    assert encode_message(decode_datagram(d).conns, 5) == d


def test_v1_is_told_from_v0_as_the_kernel_does():
    # reserved 0 and spare 0 but version 2: the kernel reads it as v0 (nr_conns 0, syncid 7),
    # and this one has 4 bytes nobody reads.
    with pytest.raises(SyncDecodeError, match="4 bytes after the last of 0 entries"):
        decode_datagram(bytes([0, 7, 0, 8, 0, 2, 0, 0]))
    assert decode_datagram(bytes([0, 7, 0, 8, 0, 1, 0, 0])).version == 1
    assert decode_datagram(bytes([0, 7, 0, 4])).version == 0


def _template_dgram():
    return bytearray(_golden_bytes("v1_master_resend_reconstructed.txt"))


def _set_size(d):
    d = bytearray(d)
    d[2:4] = len(d).to_bytes(2, "big")
    return bytes(d)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: bytes(d[:3]), "header too short: 3 bytes"),
        (lambda d: bytes(d[:-1]), "size field says 44 bytes, the datagram has 43"),
        (lambda d: _set_size(d[:4] + bytes([2]) + d[5:]), "entry 2 of 2: truncated at byte 44"),
        (lambda d: _set_size(d[:10] + bytes([0, 40]) + d[12:]), "its size 40 runs past"),
        (lambda d: _set_size(d[:10] + bytes([0x10, 36]) + d[12:]), "unknown entry version 1"),
        (lambda d: _set_size(d[:8] + bytes([2]) + d[9:]), "unknown type 2"),
        (lambda d: _set_size(d[:10] + bytes([0, 30]) + d[12:]), "size 30 smaller than struct ip_vs_sync_v4"),
        (lambda d: _set_size(d[:10] + bytes([0, 37]) + d[12:] + b"\x01"), "option header cut"),
        (lambda d: _set_size(d[:10] + bytes([0, 38]) + d[12:] + b"\x01\x00"), "option 1 of length 0"),
        (lambda d: _set_size(d[:10] + bytes([0, 40]) + d[12:] + b"\x02\x05ab"), "option 2 of length 5 does not fit"),
        (lambda d: _set_size(d[:10] + bytes([0, 42]) + d[12:] + b"\x01\x04abcd"), "sequence option of 4 bytes"),
        (lambda d: _set_size(d[:10] + bytes([0, 42]) + d[12:] + b"\x02\x01a\x02\x01b"), "option 2 found twice"),
        (lambda d: _set_size(d[:10] + bytes([0, 55]) + d[12:] + b"\x03\x11" + b"n" * 17), "PE name of 17 bytes"),
        (lambda d: _set_size(d + b"\0\0\0\0"), "4 bytes after the last of 1 entries"),
        (lambda d: _set_size(d + b"\0\1"), "2 bytes after"),
    ],
)
def test_decode_errors(mutate, match):
    data = mutate(_template_dgram())
    with pytest.raises(SyncDecodeError, match=match) as exc:
        decode_datagram(data)
    assert "\n" not in str(exc.value) and isinstance(exc.value, ValueError)


def test_trailing_alignment_padding_is_accepted():
    d = _set_size(_template_dgram() + b"\0\0")
    assert len(decode_datagram(d).conns) == 1


def test_v0_errors():
    v0 = bytearray(_golden_bytes("v0_template_and_seq_connection_handmade.txt"))
    with pytest.raises(SyncDecodeError, match="sequence options cut short"):
        decode_datagram(_set_size(v0[:-4]))
    with pytest.raises(SyncDecodeError, match="v0 entry 2 of 2: truncated"):
        decode_datagram(_set_size(v0[:40]))
    with pytest.raises(SyncDecodeError, match="bytes after the last of 1 entries"):
        decode_datagram(_set_size(bytes([1]) + v0[1:]))


def test_kernel_constants():
    # include/uapi/linux/ip_vs.h
    assert (sp.IP_VS_CONN_F_NOOUTPUT, sp.IP_VS_CONN_F_INACTIVE, sp.IP_VS_CONN_F_NO_CPORT) == (0x80, 0x100, 0x800)
    assert (sp.IP_VS_CONN_F_SEQ_MASK, sp.IP_VS_CONN_F_TEMPLATE, sp.IP_VS_CONN_F_SYNC) == (0x600, 0x1000, 0x20)
    assert sp.IP_VS_CONN_F_BACKUP_MASK == 0x1F87 and sp.IP_VS_CONN_F_BACKUP_UPD_MASK == 0x700
    assert sp.IPVS_OPT_F_PARAM == 0x40


def test_flag_names():
    assert sp.flag_names(0x1100) == "TEMPLATE|INACTIVE|MASQ"
    assert sp.flag_names(0x0603) == "IN_SEQ|OUT_SEQ|DROUTE"
    assert sp.flag_names(0x10000 | 0x1002) == "TEMPLATE|TUNNEL|0x10000"


def test_random_round_trips():
    conns = _mixed(300, seed=11)
    out = encode_datagrams(conns, syncid=200)
    assert _decoded(out) == conns
    assert all(decode_datagram(d).syncid == 200 for d in out)
