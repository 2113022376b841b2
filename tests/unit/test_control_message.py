"""Control messages: wire format, authentication, replay guard, key file (no network)."""

import hashlib
import hmac
import json
import os
import re

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
EPOCH = "00000000deadbeef"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def msg(ts: float = 1_700_000_000.0, nonce: str = NONCE, kind: str = "push-begin",
        seq: int = 1, epoch: str = EPOCH, sender: str = "lb1", to: str = "*") -> Message:
    return Message(kind, sender, ts, nonce, {"templates": 42, "id": "p-1"}, to, epoch, seq)


def M(kind: str, sender: str, ts: float, nonce: str, body: dict) -> Message:
    return Message(kind, sender, ts, nonce, body, "*", EPOCH, 1)


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
        b'{"body":{"id":"p-1","templates":42},"epoch":"00000000deadbeef","kind":"push-begin",'
        b'"nonce":"0123456789abcdef0123456789abcdef","sender":"lb1","seq":1,"to":"*",'
        b'"ts":1700000000.0}'
    )
    assert MAGIC == b"LVSH2 "
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
    with pytest.raises(ValueError, match="to must be a non-empty string"):
        new_message("push-end", "lb1", {}, to="")
    with pytest.raises(ValueError, match="seq must be an integer"):
        new_message("push-end", "lb1", {}, seq=0)
    with pytest.raises(ValueError, match="body must be a JSON object"):
        new_message("push-end", "lb1", [1, 2])  # type: ignore[arg-type]


def test_oversize_encoding_refused():
    big = M("status-reply", "lb1", 1.0, NONCE, {"blob": "x" * MAX_SIZE})
    with pytest.raises(ValueError, match=r"more than 1400"):
        encode(big, KEY)
    # the limit is on the whole datagram: find the largest body that fits, it encodes to 1400
    base = len(encode(M("status-reply", "lb1", 1.0, NONCE, {"blob": ""}), KEY))
    fits = M("status-reply", "lb1", 1.0, NONCE, {"blob": "x" * (MAX_SIZE - base)})
    assert len(encode(fits, KEY)) == MAX_SIZE
    over = M("status-reply", "lb1", 1.0, NONCE, {"blob": "x" * (MAX_SIZE - base + 1)})
    with pytest.raises(ValueError, match=r"1401 bytes encoded"):
        encode(over, KEY)


def test_body_not_json_able_refused():
    with pytest.raises(ValueError, match="not JSON-able"):
        encode(M("push-end", "lb1", 1.0, NONCE, {"x": object()}), KEY)
    with pytest.raises(ValueError, match="not JSON-able"):
        encode(M("push-end", "lb1", 1.0, NONCE, {"x": float("nan")}), KEY)


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
        b"LVSH2 ",
        b"LVSH2 {}",  # shorter than magic + JSON + tag
        b"\x01\x02" * 100,  # e.g. an IPVS sync message
        b"LVSH3 " + b"{}" + b"t" * 32,
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


GOOD = {"kind": "push-end", "sender": "lb1", "ts": 1.5, "nonce": NONCE, "body": {},
        "to": "*", "epoch": EPOCH, "seq": 1}


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
        (json.dumps({"body": {}}).encode(), "malformed: missing fields epoch, kind, nonce, sender, seq, to, ts"),
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
        (json.dumps(fields(to="")).encode(), "malformed: to must be a non-empty string"),
        (json.dumps(fields(to="x" * 256)).encode(), "malformed: to must be a non-empty string"),
        (json.dumps(fields(to=None)).encode(), "malformed: to must be a non-empty string"),
        (json.dumps(fields(epoch="abc")).encode(), "malformed: epoch must be 16 hex"),
        (json.dumps(fields(epoch=7)).encode(), "malformed: epoch must be 16 hex"),
        (json.dumps(fields(seq=0)).encode(), "malformed: seq must be an integer"),
        (json.dumps(fields(seq=True)).encode(), "malformed: seq must be an integer"),
        (json.dumps(fields(seq=1.0)).encode(), "malformed: seq must be an integer"),
        (json.dumps(fields(seq=2**53 + 1)).encode(), "malformed: seq must be an integer"),
    ],
)
def test_authenticated_but_malformed_refused_with_its_reason(payload, reason):
    e = refused(sign(MAGIC + payload))
    assert e.category == "malformed"
    assert e.reason.startswith(reason), e.reason


def test_unknown_fields_are_ignored_and_integer_ts_accepted():
    obj = dict(GOOD, ts=2, future="x")
    m = decode(sign(MAGIC + json.dumps(obj).encode()), KEY)
    assert m == M("push-end", "lb1", 2.0, NONCE, {})
    assert isinstance(m.ts, float)


# ------------------------------------------------------------------------------ replay guard


def test_a_version_1_message_is_refused_by_its_version():
    payload = b'LVSH1 {"body":{},"kind":"push-end","nonce":"' + NONCE.encode() + b'"}'
    e = refused(sign(payload))
    assert e.category == "version"
    assert e.reason == ("a version 1 message (this director speaks version 2): upgrade "
                        "lvs-hooks on every director")


def test_guard_accepts_fresh_and_refuses_replay():
    clock = FakeClock()
    guard = ReplayGuard(30, clock)
    guard.check(msg(ts=clock.now))
    clock.now += 12.5
    with pytest.raises(BadMessage) as info:
        guard.check(msg(ts=clock.now - 12.5, nonce="e" * 32))  # another nonce: same number
    assert info.value.category == "replayed"
    assert info.value.reason == (
        f"replayed (sequence 1 of epoch {EPOCH}, 1 accepted 12.5 s ago)")
    guard.check(msg(ts=clock.now, seq=2))  # the next of the same epoch
    guard.check(msg(ts=clock.now, epoch="f" * 16))  # a restarted sender: a new epoch
    guard.check(msg(ts=clock.now, sender="lb2"))  # another sender, same epoch by chance
    assert len(guard) == 3


def test_guard_refuses_a_lower_number_than_the_highest_accepted():
    clock = FakeClock()
    guard = ReplayGuard(30, clock)
    guard.check(msg(ts=clock.now, seq=5))
    for seq in (1, 4, 5):
        with pytest.raises(BadMessage) as info:
            guard.check(msg(ts=clock.now, seq=seq))
        assert info.value.category == "replayed"
    guard.check(msg(ts=clock.now, seq=9))  # gaps are fine: lost datagrams


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


def epoch(i: int) -> str:
    return f"{i:016x}"


def test_guard_forgets_epochs_after_twice_max_skew():
    clock = FakeClock()
    guard = ReplayGuard(10, clock)
    for i in range(5):
        guard.check(msg(ts=clock.now, epoch=epoch(i)))
        clock.now += 1
    assert len(guard) == 5
    # now = t0 + 5; the first was accepted at t0: kept until t0 + 20
    clock.now = 1_700_000_000.0 + 20
    guard.check(msg(ts=clock.now, epoch="a" * 16))
    assert len(guard) == 6
    clock.now = 1_700_000_000.0 + 22.5  # t0, t0+1, t0+2 are more than 20 s old
    guard.check(msg(ts=clock.now, epoch="b" * 16))
    assert len(guard) == 4
    # a forgotten message can no longer be replayed: its timestamp is stale by then
    with pytest.raises(BadMessage) as info:
        guard.check(msg(ts=1_700_000_000.0, epoch=epoch(0)))
    assert info.value.category == "stale"


def test_guard_memory_is_one_entry_per_sender_start_over_the_window():
    clock = FakeClock()
    guard = ReplayGuard(5, clock)
    for i in range(10_000):
        clock.now += 0.01  # 100 messages a second for 100 s, from 3 senders
        guard.check(msg(ts=clock.now, sender=f"lb{i % 3}", seq=i + 1))
    assert len(guard) == 3


def test_guard_hard_cap_drops_the_oldest():
    clock = FakeClock()
    guard = ReplayGuard(30, clock, max_entries=100)
    for i in range(250):
        guard.check(msg(ts=clock.now, epoch=epoch(i)))
    assert len(guard) == 100
    with pytest.raises(BadMessage):  # the newest are still remembered
        guard.check(msg(ts=clock.now, epoch=epoch(249)))
    guard.check(msg(ts=clock.now, epoch=epoch(0)))  # the oldest were dropped
    assert len(guard) == 100


def test_default_cap_is_10000():
    assert ReplayGuard(30).max_entries == 10_000


def test_a_restarted_receiver_still_refuses_what_it_accepted(tmp_path):
    path = str(tmp_path / "state" / "control-replay.json")
    clock = FakeClock()
    first = ReplayGuard(30, clock, path=path)
    captured = msg(ts=clock.now, kind="push-request", seq=7)
    first.check(captured)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    clock.now += 5  # the receiver restarts; the capture is sent again within max_skew
    second = ReplayGuard(30, clock, path=path)
    with pytest.raises(BadMessage) as info:
        second.check(captured)
    assert info.value.category == "replayed"
    second.check(msg(ts=clock.now, kind="push-request", seq=8))  # the sender goes on
    # what the file kept is forgotten as in memory: after 2 * max_skew nothing of it is left
    clock.now += 61
    assert len(ReplayGuard(30, clock, path=path)) == 0


def test_a_missing_window_is_a_first_start(tmp_path):
    guard = ReplayGuard(30, FakeClock(), path=str(tmp_path / "none.json"))
    assert guard.load_error == "" and len(guard) == 0
    guard.check(msg())


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"version": 1, "window": [[1, 2]]}',
                                     b'{"version": 9, "window": []}'])
def test_an_unreadable_window_refuses_everything_for_twice_max_skew(tmp_path, content):
    path = tmp_path / "control-replay.json"
    path.write_bytes(content)
    clock = FakeClock()
    guard = ReplayGuard(30, clock, path=str(path))
    assert guard.load_error.startswith(str(path))
    with pytest.raises(BadMessage) as info:
        guard.check(msg(ts=clock.now))
    assert info.value.category == "replayed" and "refused for 60 s more" in info.value.reason
    clock.now += 60
    guard.check(msg(ts=clock.now))  # nothing captured before the start can be fresh now


def test_a_window_that_cannot_be_written_is_said_and_the_message_accepted(tmp_path):
    blocker = tmp_path / "dir"
    guard = ReplayGuard(30, FakeClock(), path=str(blocker / "control-replay.json"))
    blocker.write_text("")  # where its directory should be, now a file
    guard.check(msg())
    assert guard.save_error.startswith(f"cannot write {blocker}/control-replay.json")


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


# ------------------------------------------------------------------------------ what the channel accepts
# (control.channel.Acceptor: the channel's decisions without its socket)


def acceptor(clock=None, name="lb2", epoch="1111111111111111"):
    from lvs_hooks.control.channel import Acceptor, log
    from lvs_hooks.ratelog import RateLimitedLog

    clock = clock or FakeClock()
    return Acceptor(KEY, name, epoch, ReplayGuard(30, clock), RateLimitedLog(log, clock=clock))


def test_a_message_to_everyone_or_to_this_director_is_accepted_others_dropped_silently(caplog):
    acc = acceptor()
    assert acc.accept(encode(msg(to="*"), KEY), "10.0.0.1") is not None
    assert acc.accept(encode(msg(to="lb2", seq=2), KEY), "10.0.0.1") is not None
    assert acc.accept(encode(msg(to="lb3", seq=3), KEY), "10.0.0.1") is None
    assert acc.not_for_us == 1 and not acc.refused and not caplog.records


def test_a_message_claiming_this_directors_name_is_refused_its_own_looped_back_dropped(caplog):
    acc = acceptor(name="lb1", epoch=EPOCH)
    assert acc.accept(encode(msg(sender="lb1"), KEY), "10.0.0.1") is None  # ours, looped back
    assert not acc.refused
    # the same name from another epoch: another start of ours, replayed, or a peer misnamed
    assert acc.accept(encode(msg(sender="lb1", epoch="2" * 16), KEY), "10.0.0.9") is None
    assert acc.refused == {"own-name": 1}
    assert caplog.messages == [
        "control: messages refused (own-name): from 10.0.0.9: claims this director's own name "
        "'lb1'"]


def test_a_flood_of_forged_datagrams_is_a_few_lines_with_its_count(caplog):
    clock = FakeClock()
    acc = acceptor(clock)
    forged = encode(msg(), OTHER_KEY)
    for _ in range(20_000):
        clock.now += 0.001  # 20 s of 1,000 a second
        acc.accept(forged, "10.0.0.66")
    clock.now += 10  # the loop's flush after the interval says the rest
    acc.ratelog.flush()
    assert acc.refused == {"forged": 20_000}
    lines = caplog.messages
    assert 2 <= len(lines) <= 3, lines
    assert lines[0] == ("control: messages refused (forged): from 10.0.0.66: bad HMAC: wrong "
                        "key or forged")
    assert " in the last 10 s (at most one line per 10 s); the last: from 10.0.0.66" in lines[1]
    counted = 1 + sum(int(re.search(r": (\d+) in the last", line).group(1))
                      for line in lines[1:])
    assert counted == 20_000
    good = acc.accept(encode(msg(ts=clock.now), KEY), "10.0.0.1")
    assert good is not None  # the genuine message behind the flood
