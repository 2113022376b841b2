"""Property tests (Hypothesis) for the parsers of issue 15: a conn-table line, a snapshot, a
config, a keepalived.conf, a FIFO line. Whatever the input, each parser returns its result or
one of the product's one-line errors, and what it writes it reads back. A bounded budget: about
two seconds for the whole module."""

import ipaddress
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvs_hooks.config import parse_config
from lvs_hooks.errors import LvsHooksError
from lvs_hooks.events.keepalived import MAX_LINE, Event, Ignored, LineSplitter, parse_fifo_line
from lvs_hooks.keepalived_conf import parse_text
from lvs_hooks.kernel.conntable import CONN_HEADER, SYNC_HEADER, parse_conn_table
from lvs_hooks.kernel.model import ConnEntry, Service
from lvs_hooks.snapshot import Snapshot, decode, encode

BUDGET = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_line_error(fn, *args):
    try:
        return fn(*args)
    except LvsHooksError as e:
        assert "\n" not in e.format_message()
        return e


# -- /proc/net/ip_vs_conn lines

ipv4 = st.integers(0, 2**32 - 1)
port = st.integers(0, 0xFFFF)
expires = st.integers(0, 10**9 - 1)
words = st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ_"), min_size=1, max_size=12)


@st.composite
def conn_lines(draw):
    proto = draw(st.sampled_from(["TCP", "UDP", "SCTP", "IP"]))
    c, v, d = draw(ipv4), draw(ipv4), draw(ipv4)
    cp, vp, dp = draw(st.sampled_from([0, draw(port)])), draw(port), draw(port)
    state, exp = draw(words), draw(expires)
    line = (f"{proto:<3} {c:08X} {cp:04X} {v:08X} {vp:04X} {d:08X} {dp:04X} {state:<11} "
            f"{exp:>7}").encode()  # fmt: skip
    return line, ConnEntry(proto, str(ipaddress.IPv4Address(c)), cp, str(ipaddress.IPv4Address(v)),
                           vp, str(ipaddress.IPv4Address(d)), dp, state, exp)


@BUDGET
@given(st.lists(conn_lines(), max_size=8))
def test_conn_lines_as_the_kernel_prints_them_read_back(lines):
    data = CONN_HEADER + b"\n" + b"".join(line + b"\n" for line, _ in lines)
    table = parse_conn_table(data)
    assert table.malformed == 0
    assert sorted(table.entries) == sorted(entry for _, entry in lines)


@BUDGET
@given(st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")), max_size=6),
       st.booleans(), st.booleans())
def test_any_conn_table_bytes_parse_without_raising(lines, sync, templates_only):
    data = (SYNC_HEADER if sync else CONN_HEADER) + b"\n" + b"".join(x + b"\n" for x in lines)
    table = parse_conn_table(data, templates_only=templates_only)
    assert len(table.entries) + table.malformed <= len(lines)
    assert all(0 <= e.expires < 10**9 for e in table.entries)


# -- snapshots

addr4 = ipv4.map(lambda n: str(ipaddress.IPv4Address(n)))
templates = st.builds(
    lambda proto, c, v, vp, d, dp, exp, pe: ConnEntry(proto, c, 0, v, vp, d, dp, "NONE", exp,
                                                      *pe),
    st.sampled_from(["TCP", "UDP", "SCTP"]), addr4, addr4, port, addr4, port,
    st.integers(0, 2**32 - 1), st.sampled_from([("", ""), ("sip", "call-1")]),
)  # fmt: skip


@BUDGET
@given(st.lists(templates, max_size=10), st.floats(1e9, 1.7e10))
def test_a_snapshot_reads_back_what_was_written(rows, at):
    snap = Snapshot("lb1", at, [Service(4, "TCP", "192.0.2.1", 80)], rows)
    back = decode(encode(snap), "x")
    assert back == snap and back.skipped == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=20,
)


@BUDGET
@given(st.lists(st.lists(json_values, min_size=11, max_size=11) | json_values, max_size=6))
def test_any_rows_with_a_valid_checksum_decode_or_refuse(rows):
    import hashlib

    body = json.dumps({"host": "h", "captured_at": 1.8e9, "services": [],
                       "columns": ["protocol", "caddr", "vaddr", "vport", "daddr", "dport",
                                   "state", "expires", "pe_name", "pe_data", "origin"],
                       "templates": rows}).encode() + b"\n"  # fmt: skip
    head = {"format": "lvs-hooks-snapshot", "version": 1, "host": "h", "captured_at": 1.8e9,
            "templates": len(rows), "services": 0, "body_bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest()}  # fmt: skip
    got = one_line_error(decode, json.dumps(head).encode() + b"\n" + body, "x")
    if isinstance(got, Snapshot):
        assert len(got.templates) + got.skipped == len(rows)
        assert all(0 <= t.expires <= 2**32 - 1 for t in got.templates)


@BUDGET
@given(st.binary(max_size=400))
def test_any_bytes_decode_or_refuse(data):
    one_line_error(decode, data, "x")


# -- the config

yaml_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
yaml_like = st.lists(
    st.sampled_from(["sync:", "  port: ", "  syncid: ", "paths:", "  run_dir: ", "- ", "&a ",
                     "*a", "[", "]", "{", "}", ": ", "!!int ", "9" * 50, "\n", "  ", "~",
                     "true", "0x1f", "1e9", "'", '"', "<<: ", "#"]),
    max_size=40,
).map("".join)  # fmt: skip


@BUDGET
@given(yaml_text | yaml_like)
def test_any_config_text_parses_or_is_one_line(text):
    one_line_error(parse_config, text, "p.yaml")


# -- keepalived.conf

conf_like = st.lists(
    st.sampled_from(["global_defs", "vrrp_instance VI_1", "{", "}", "\n", " ", "$A=", "$A",
                     "${A}", "$B=$A $A", "~SEQ(i, 1, 3) ", "@x ", "@^x ", "!", "#", '"',
                     "virtual_server 10.0.0.1 80", "persistence_timeout 300", "\\\n",
                     "real_server 10.0.0.2 80", "lvs_sync_daemon eth0 VI_1"]),
    max_size=60,
).map("".join)  # fmt: skip


@BUDGET
@given(conf_like | st.text(max_size=300))
def test_any_keepalived_text_parses_or_is_one_line(text):
    one_line_error(parse_text, text, "/nonexistent/keepalived.conf")


# -- FIFO lines

fifo_like = st.builds(
    lambda kind, name, state, prio: f'{kind} "{name}" {state} {prio}'.encode(),
    st.sampled_from(["INSTANCE", "GROUP", "VS", "instance"]),
    st.text(max_size=20).filter(lambda s: "\n" not in s),
    st.sampled_from(["MASTER", "BACKUP", "FAULT", "STOP", "DELETED", "MASTER_RX_LOWER_PRI", "X"]),
    st.integers(-(10**6), 10**6),
)


@BUDGET
@given(fifo_like | st.binary(max_size=300))
def test_any_fifo_line_is_an_event_or_ignored(line):
    got = parse_fifo_line(line, (1, 2, 3))
    assert isinstance(got, (Event, Ignored))
    if isinstance(got, Event):
        assert 0 <= got.priority <= 255 and got.name


@BUDGET
@given(st.lists(st.binary(max_size=MAX_LINE + 50).map(lambda b: b.replace(b"\n", b"")),
                max_size=5),
       st.lists(st.integers(1, 3000), min_size=1, max_size=8))
def test_splitting_does_not_depend_on_how_the_bytes_arrive(lines, cuts):
    stream = b"".join(x + b"\n" for x in lines)
    whole = LineSplitter().feed(stream)
    s, got, at, i = LineSplitter(), [], 0, 0
    while at < len(stream):
        step = cuts[i % len(cuts)]
        got += s.feed(stream[at : at + step])
        at, i = at + step, i + 1
    # a line too long to keep is dropped whole either way; the rest come through unchanged
    short = [x for x in lines if len(x) <= MAX_LINE]
    assert [x for x in got if len(x) <= MAX_LINE] == short
    assert [x for x in whole if len(x) <= MAX_LINE] == short
