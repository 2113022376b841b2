"""Control messages: wire format, authentication, replay guard, key file (no network)."""

import hashlib
import hmac
import json
import os

import pytest

from lvs_hooks.config import parse_config
from lvs_hooks.control.channel import ControlChannel
from lvs_hooks.control.message import (
    KINDS,
    MAGIC,
    MAX_SIZE,
    BadMessage,
    Message,
    ReplayGuard,
    decode,
    encode,
    load_key,
    new_message,
)
from lvs_hooks.errors import ControlError

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NONCE = "0123456789abcdef0123456789abcdef"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def msg(ts: float = 1_700_000_000.0, nonce: str = NONCE, kind: str = "push-begin") -> Message:
    return Message(kind, "lb1", ts, nonce, {"templates": 42, "id": "p-1"})


def sign(payload: bytes, key: bytes = KEY) -> bytes:
    return payload + hmac.new(key, payload, hashlib.sha256).digest()


def refused(data: bytes, key: bytes = KEY) -> BadMessage:
    with pytest.raises(BadMessage) as info:
        decode(data, key)
    return info.value


# ------------------------------------------------------------------------------ format


def test_kinds():
    assert KINDS == ("push-begin", "push-end", "push-request", "status-request", "status-reply")


def test_encoding_is_magic_canonical_json_and_tag():
    data = encode(msg(), KEY)
    body = (
        b'{"body":{"id":"p-1","templates":42},"kind":"push-begin",'
        b'"nonce":"0123456789abcdef0123456789abcdef","sender":"lb1","ts":1700000000.0}'
    )
    assert data == MAGIC + body + hmac.new(KEY, MAGIC + body, hashlib.sha256).digest()
    assert len(data) == 6 + len(body) + 32


def test_round_trip_every_kind():
    clock = FakeClock(1_700_000_123.456789)
    for kind in KINDS:
        m = new_message(
            kind, "lb-east", {"n": 1, "list": [1, "a", None], "nested": {"x": 1.5}}, clock
        )
        assert m.ts == 1_700_000_123.456789
        assert len(m.nonce) == 32 and int(m.nonce, 16) >= 0
        assert decode(encode(m, KEY), KEY) == m


def test_new_messages_have_distinct_nonces():
    nonces = {new_message("push-end", "lb1", {}).nonce for _ in range(1000)}
    assert len(nonces) == 1000


def test_new_message_refuses_unknown_kind_and_empty_sender():
    with pytest.raises(ValueError, match="unknown kind 'push-everything'"):
        new_message("push-everything", "lb1", {})
    with pytest.raises(ValueError, match="sender must be a non-empty string"):
        new_message("push-end", "", {})
    with pytest.raises(ValueError, match="body must be a JSON object"):
        new_message("push-end", "lb1", [1, 2])  # type: ignore[arg-type]


def test_oversize_encoding_refused():
    big = Message("status-reply", "lb1", 1.0, NONCE, {"blob": "x" * MAX_SIZE})
    with pytest.raises(ValueError, match=r"more than 1400"):
        encode(big, KEY)
    # the limit is on the whole datagram: find the largest body that fits, it encodes to 1400
    base = len(encode(Message("status-reply", "lb1", 1.0, NONCE, {"blob": ""}), KEY))
    fits = Message("status-reply", "lb1", 1.0, NONCE, {"blob": "x" * (MAX_SIZE - base)})
    assert len(encode(fits, KEY)) == MAX_SIZE
    over = Message("status-reply", "lb1", 1.0, NONCE, {"blob": "x" * (MAX_SIZE - base + 1)})
    with pytest.raises(ValueError, match=r"1401 bytes encoded"):
        encode(over, KEY)


def test_body_not_json_able_refused():
    with pytest.raises(ValueError, match="not JSON-able"):
        encode(Message("push-end", "lb1", 1.0, NONCE, {"x": object()}), KEY)
    with pytest.raises(ValueError, match="not JSON-able"):
        encode(Message("push-end", "lb1", 1.0, NONCE, {"x": float("nan")}), KEY)


# ------------------------------------------------------------------------------ forged


def test_other_key_refused_as_forged():
    e = refused(encode(msg(), OTHER_KEY))
    assert (e.reason, e.category) == ("bad HMAC: wrong key or forged", "forged")


def test_every_flipped_byte_after_the_magic_is_refused_as_forged():
    data = encode(msg(), KEY)
    for i in range(len(MAGIC), len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        e = refused(bytes(bad))
        assert e.category == "forged", i
        assert e.reason == "bad HMAC: wrong key or forged"


def test_body_change_refused_even_with_a_plausible_value():
    data = encode(msg(), KEY)
    bad = data.replace(b'"templates":42', b'"templates":43')
    assert bad != data and len(bad) == len(data)
    assert refused(bad).category == "forged"


def test_flipped_tag_byte_refused():
    data = bytearray(encode(msg(), KEY))
    data[-1] ^= 0x80
    assert refused(bytes(data)).reason == "bad HMAC: wrong key or forged"


# ------------------------------------------------------------------------------ malformed


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"LVSH1 ",
        b"LVSH1 {}",  # shorter than magic + JSON + tag
        b"\x01\x02" * 100,  # e.g. an IPVS sync message
        b"LVSH2 " + b"{}" + b"t" * 32,
        encode(msg(), KEY)[1:],
    ],
)
def test_garbage_and_truncated_are_not_control_messages(data):
    e = refused(data)
    assert (e.reason, e.category) == ("not an lvs-hooks control message", "malformed")


def test_truncated_tag_is_forged():
    assert refused(encode(msg(), KEY)[:-1]).category == "forged"


def test_oversize_datagram_refused_before_hmac():
    e = refused(sign(MAGIC + b"{" + b" " * 2000 + b"}"))
    assert e.category == "malformed"
    assert e.reason == "malformed: 2040 bytes, more than 1400"


GOOD = {"kind": "push-end", "sender": "lb1", "ts": 1.5, "nonce": NONCE, "body": {}}


def fields(**change):
    obj = dict(GOOD, **change)
    return {k: v for k, v in obj.items() if v is not ...}


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"not json", "malformed: not JSON"),
        (b"\xff\xfe", "malformed: not JSON"),
        (b'{"kind":"push-end","kind":"push-end"}', "malformed: not JSON (duplicate key)"),
        (b"[1,2]", "malformed: not a JSON object"),
        (json.dumps(fields(kind=...)).encode(), "malformed: missing field kind"),
        (json.dumps({"body": {}}).encode(), "malformed: missing fields kind, nonce, sender, ts"),
        (json.dumps(fields(kind=3)).encode(), "malformed: kind must be a string"),
        (json.dumps(fields(kind="reboot")).encode(), "malformed: unknown kind 'reboot'"),
        (json.dumps(fields(sender="")).encode(), "malformed: sender must be a non-empty string"),
        (json.dumps(fields(sender=["a"])).encode(), "malformed: sender must be a non-empty string"),
        (json.dumps(fields(ts="1.5")).encode(), "malformed: ts must be a finite number"),
        (json.dumps(fields(ts=True)).encode(), "malformed: ts must be a finite number"),
        (json.dumps(fields(ts=float("inf"))).encode(), "malformed: not JSON"),
        (json.dumps(fields(nonce="abc")).encode(), "malformed: nonce must be 32 hex characters"),
        (json.dumps(fields(nonce="g" * 32)).encode(), "malformed: nonce must be 32 hex characters"),
        (
            json.dumps(fields(nonce=NONCE + "\n")).encode(),
            "malformed: nonce must be 32 hex characters",
        ),
        (json.dumps(fields(nonce=1)).encode(), "malformed: nonce must be 32 hex characters"),
        (json.dumps(fields(body=[1])).encode(), "malformed: body must be a JSON object"),
    ],
)
def test_authenticated_but_malformed_refused_with_its_reason(payload, reason):
    e = refused(sign(MAGIC + payload))
    assert e.category == "malformed"
    assert e.reason.startswith(reason), e.reason


def test_unknown_fields_are_ignored_and_integer_ts_accepted():
    obj = dict(GOOD, ts=2, future="x")
    m = decode(sign(MAGIC + json.dumps(obj).encode()), KEY)
    assert m == Message("push-end", "lb1", 2.0, NONCE, {})
    assert isinstance(m.ts, float)


# ------------------------------------------------------------------------------ replay guard


def test_guard_accepts_fresh_and_refuses_replay():
    clock = FakeClock()
    guard = ReplayGuard(30, clock)
    guard.check(msg(ts=clock.now))
    clock.now += 12.5
    with pytest.raises(BadMessage) as info:
        guard.check(msg(ts=clock.now - 12.5))
    assert info.value.category == "replayed"
    assert info.value.reason == "replayed (nonce seen 12.5 s ago)"
    # another nonce at the same time is fine
    guard.check(msg(ts=clock.now, nonce="f" * 32))
    assert len(guard) == 2


@pytest.mark.parametrize("offset,shown", [(-30.5, "-30.5"), (31.0, "+31.0"), (-3600, "-3600.0")])
def test_guard_refuses_stale_past_and_future(offset, shown):
    clock = FakeClock()
    guard = ReplayGuard(30, clock)
    with pytest.raises(BadMessage) as info:
        guard.check(msg(ts=clock.now + offset))
    assert info.value.category == "stale"
    assert info.value.reason == f"timestamp {shown} s off (max_skew 30)"
    assert len(guard) == 0  # a refused message is not remembered


@pytest.mark.parametrize("offset", [-30.0, 30.0, 0.0])
def test_guard_accepts_up_to_max_skew(offset):
    clock = FakeClock()
    ReplayGuard(30, clock).check(msg(ts=clock.now + offset))


def test_stale_wins_over_replayed():
    clock = FakeClock()
    guard = ReplayGuard(30, clock)
    guard.check(msg(ts=clock.now))
    clock.now += 31
    with pytest.raises(BadMessage) as info:
        guard.check(msg(ts=clock.now - 31))
    assert info.value.category == "stale"


def test_guard_forgets_nonces_after_twice_max_skew():
    clock = FakeClock()
    guard = ReplayGuard(10, clock)
    for i in range(5):
        guard.check(msg(ts=clock.now, nonce=f"{i:032x}"))
        clock.now += 1
    assert len(guard) == 5
    # now = t0 + 5; the first was seen at t0: kept until t0 + 20
    clock.now = 1_700_000_000.0 + 20
    guard.check(msg(ts=clock.now, nonce="a" * 32))
    assert len(guard) == 6
    clock.now = 1_700_000_000.0 + 22.5  # t0 and t0+1, t0+2 are more than 20 s old
    guard.check(msg(ts=clock.now, nonce="b" * 32))
    assert len(guard) == 4
    # a forgotten nonce can no longer be replayed: its timestamp is stale by then
    with pytest.raises(BadMessage) as info:
        guard.check(msg(ts=1_700_000_000.0, nonce=f"{0:032x}"))
    assert info.value.category == "stale"


def test_guard_memory_follows_the_rate_over_the_window():
    clock = FakeClock()
    guard = ReplayGuard(5, clock)
    for i in range(10_000):
        clock.now += 0.01  # 100 messages a second for 100 s
        guard.check(msg(ts=clock.now, nonce=f"{i:032x}"))
    # 2 * max_skew = 10 s of 100 per second
    assert 999 <= len(guard) <= 1001


def test_guard_hard_cap_drops_the_oldest():
    clock = FakeClock()
    guard = ReplayGuard(30, clock, max_entries=100)
    for i in range(250):
        guard.check(msg(ts=clock.now, nonce=f"{i:032x}"))
    assert len(guard) == 100
    with pytest.raises(BadMessage):  # the newest are still remembered
        guard.check(msg(ts=clock.now, nonce=f"{249:032x}"))
    guard.check(msg(ts=clock.now, nonce=f"{0:032x}"))  # the oldest were dropped
    assert len(guard) == 100


def test_default_cap_is_100000():
    assert ReplayGuard(30).max_entries == 100_000


# ------------------------------------------------------------------------------ key file


def write_key(path, content: bytes, mode: int = 0o600):
    path.write_bytes(content)
    os.chmod(path, mode)
    return str(path)


def test_load_key_strips_whitespace(tmp_path):
    key = b"Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE="
    assert load_key(write_key(tmp_path / "key", b"  " + key + b"\n")) == key
    assert load_key(write_key(tmp_path / "ro", key, 0o400)) == key


def test_load_key_missing(tmp_path):
    path = tmp_path / "nope"
    with pytest.raises(ControlError) as info:
        load_key(str(path))
    assert info.value.message == f"control key file {path}: no such file"
    assert info.value.exit_code == 2


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_load_key_readable_by_others_refused(tmp_path, mode):
    path = write_key(tmp_path / "key", b"x" * 44, mode)
    with pytest.raises(ControlError) as info:
        load_key(path)
    assert info.value.message == (
        f"control key file {path}: mode {mode:04o} lets group or others read it, must be mode 0600"
    )


def test_load_key_too_short(tmp_path):
    path = write_key(tmp_path / "key", b"  " + b"x" * 31 + b"\n\n")
    with pytest.raises(ControlError) as info:
        load_key(path)
    assert info.value.message.startswith(
        f"control key file {path}: key is 31 bytes, must be at least 32"
    )
    assert load_key(write_key(tmp_path / "ok", b"x" * 32 + b"\n")) == b"x" * 32


def test_load_key_not_a_regular_file(tmp_path):
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(ControlError, match="not a regular file"):
        load_key(str(d))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ControlError, match="not a regular file"):
        load_key(str(fifo))  # and does not hang


def test_load_key_unreadable(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads a mode 0000 file")
    path = write_key(tmp_path / "key", b"x" * 44, 0o000)
    with pytest.raises(ControlError, match=r"cannot open: Permission denied"):
        load_key(path)


def test_load_key_cannot_open(tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(ControlError) as info:
        load_key(str(loop))
    assert info.value.message == (
        f"control key file {loop}: cannot open: Too many levels of symbolic links"
    )


def test_directors_with_the_same_key_file_content_interoperate(tmp_path):
    a = load_key(write_key(tmp_path / "a", b"x" * 40 + b"\n"))
    b = load_key(write_key(tmp_path / "b", b"x" * 40))
    assert decode(encode(msg(), a), b) == msg()


# ------------------------------------------------------------------------------ channel settings
# (refused before any socket is opened: no root needed; the channel itself is in tests/netns)


def config(tmp_path, key_file="KEY", interface="eth-nope0", group="224.0.0.81"):
    text = f"sync:\n  interface: {interface}\n  group: {group!r}\n"
    if key_file == "KEY":
        key_file = write_key(tmp_path / "key", b"x" * 44)
    if key_file is not None:
        text += f"control:\n  key_file: {key_file}\n"
    if interface is None:
        text = text.replace("  interface: None\n", "")
    return parse_config(text)


def test_channel_needs_a_key_file(tmp_path):
    with pytest.raises(ControlError) as info:
        ControlChannel.from_config(config(tmp_path, key_file=None), "lb1")
    assert info.value.message == "control.key_file is not set: no control channel"


def test_channel_needs_the_sync_interface(tmp_path):
    with pytest.raises(ControlError) as info:
        ControlChannel.from_config(config(tmp_path, interface=None), "lb1")
    assert info.value.message.startswith("sync.interface is not set")


def test_channel_key_file_problems_are_reported(tmp_path):
    with pytest.raises(ControlError, match=r"control key file /nonexistent/key: no such file"):
        ControlChannel.from_config(config(tmp_path, key_file="/nonexistent/key"), "lb1")


def test_channel_unknown_interface(tmp_path):
    with pytest.raises(ControlError) as info:
        ControlChannel.from_config(config(tmp_path), "lb1")
    assert info.value.message == (
        "control channel 224.0.0.81 port 8849 on eth-nope0: interface 'eth-nope0' does not exist"
    )


def test_channel_group_must_be_multicast():
    with pytest.raises(ControlError, match="10.0.0.1 is not a multicast group"):
        ControlChannel("lo", "10.0.0.1", 8849, 1, KEY, "lb1", 30)
