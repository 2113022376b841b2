"""Property tests (Hypothesis) for the two wire parsers of issue 15: a control message and a
sync datagram. Whatever arrives, each returns its result or its one kind of refusal
(BadMessage; SyncDecodeError; the table feed's `error`), never another exception; what we
send, we read back. A bounded budget, like tests/unit/test_parser_properties.py."""

import contextlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvs_hooks.control import message as M
from lvs_hooks.kernel.syncproto import (
    SyncDecodeError,
    decode_datagram,
    encode_datagrams,
    template_conn,
)
from lvs_hooks.table import feed

BUDGET = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = b"k" * 32

names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@BUDGET
@given(kind=st.sampled_from(["push-request", "push-begin", "push-end", "status"]), sender=names,
       to=st.one_of(st.just(M.EVERYONE), names), seq=st.integers(1, 10**9),
       body=st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=4))
def test_a_message_we_send_is_read_back(kind, sender, to, seq, body):
    try:
        msg = M.new_message(kind, sender, body, to=to, seq=seq)
    except ValueError:
        return  # refused before sending: the same rules as a receiver's
    try:
        data = M.encode(msg, KEY)
    except ValueError as e:
        # what new_message took is valid; only a body too big for one datagram is refused
        # (ensure_ascii makes a non-ASCII character six bytes)
        assert f"more than {M.MAX_SIZE}" in str(e)
        return
    assert len(data) <= M.MAX_SIZE and M.decode(data, KEY) == msg


@BUDGET
@given(st.binary(max_size=1600))
def test_any_bytes_are_a_message_or_refused(data):
    try:
        M.decode(data, KEY)
    except M.BadMessage as e:
        assert e.category in ("forged", "malformed", "version", "stale", "replayed", "own-name")
        assert "\n" not in e.reason


@BUDGET
@given(json_values)
def test_any_signed_json_is_a_message_or_refused(obj):
    """With the right key (a peer's bug, not an attacker): still only BadMessage."""
    payload = M.MAGIC + json.dumps(obj).encode()
    data = payload + M._tag(KEY, payload)
    try:
        M.decode(data, KEY)
    except M.BadMessage as e:
        assert e.category == "malformed"


@st.composite
def templates(draw):
    n = draw(st.integers(0, 60))
    return [template_conn(protocol=draw(st.sampled_from(["TCP", "UDP"])),
                          caddr=f"10.{i >> 8 & 255}.{i & 255}.{draw(st.integers(1, 254))}",
                          vaddr="10.0.0.100", vport=80, daddr="10.1.0.11", dport=80,
                          fwd_method="masq", timeout=draw(st.integers(1, 2**31)))
            for i in range(n)]


@BUDGET
@given(templates())
def test_sync_datagrams_we_send_are_read_back_by_both_decoders(conns):
    got = []
    fed = 0
    for d in encode_datagrams(conns, syncid=7):
        got.extend(decode_datagram(d).conns)
        dec = feed.decode(d)
        assert dec.error is None and dec.syncid == 7
        fed += len(dec.rows)
    assert [(c.caddr, c.timeout) for c in got] == [(c.caddr, c.timeout) for c in conns]
    assert fed == len(conns)


@BUDGET
@given(st.binary(max_size=2000))
def test_any_bytes_are_a_sync_datagram_or_refused(data):
    with contextlib.suppress(SyncDecodeError):
        decode_datagram(data)
    dec = feed.decode(data)  # never raises: what it cannot take is in `error`
    assert dec.error is None or "\n" not in dec.error
