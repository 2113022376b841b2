import hashlib
import random
import socket

import pytest

from lvs_hooks.errors import KernelError
from lvs_hooks.kernel import syncproto
from lvs_hooks.kernel.model import ConnEntry, Destination, Service
from lvs_hooks.kernel.syncsock import SyncSender
from lvs_hooks.push import collector as C
from lvs_hooks.push.planner import plan_push
from lvs_hooks.push.sender import datagrams_for, push_digest, send_push

SERVICES = [
    Service(4, "TCP", "10.0.0.100", 443, persistent=True, timeout=600,
            destinations=(Destination("10.1.0.11", 443, "droute"),
                          Destination("10.1.0.12", 443, "droute"))),
    Service(4, None, None, 0, fwmark=7, persistent=True, timeout=300,
            destinations=(Destination("10.1.0.21", 8080, "masq"),)),
    Service(6, "UDP", "fd00::100", 53, persistent=True, timeout=60,
            destinations=(Destination("fd00:1::11", 53, "tunnel"),)),
]
SENDER = "10.9.0.1"
PUSH_PORT = "10.9.0.1:40001"
KERNEL_PORT = "10.9.0.1:40002"  # the sender's kernel master daemon: same address, own socket


def table(n=130, seed=3):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 10
        if kind == 0:
            out.append(ConnEntry("IP", f"11.0.{i // 256}.{i % 256}", 0, "0.0.0.7", 0,
                                 "10.1.0.21", 0, "ASSURED", rnd.randrange(1, 300)))
        elif kind == 1:
            out.append(ConnEntry("UDP", f"fd00:b::{i:x}", 0, "fd00::100", 53, "fd00:1::11", 53,
                                 "ASSURED", rnd.randrange(1, 60)))
        else:
            rs = rnd.choice(["10.1.0.11", "10.1.0.12"])
            out.append(ConnEntry("TCP", f"11.0.{i // 256}.{i % 256}", 0, "10.0.0.100", 443,
                                 rs, 443, "ASSURED", rnd.randrange(1, 600)))
    return out


class Capture:
    def __init__(self):
        self.sent = []

    def send(self, d):
        self.sent.append(d)


def push(n=130, **kw):
    """(plan, datagrams sent, begin args, end args) of a push through a capturing sender."""
    plan = plan_push(table(n), SERVICES)
    cap, begin, end = Capture(), [], []
    send_push(plan.entries(), cap, syncid=0, maxlen=1472, rate=1e9,
              on_begin=lambda *a: begin.append(a), on_end=lambda *a: end.append(a), **kw)
    return plan, cap.sent, begin[0], end[0]


def collect(datagrams, begin, end, src=PUSH_PORT, sender=SENDER):
    col = C.PushCollector(begin[0], sender, begin[1])
    for d in datagrams:
        col.add(d, src)
    _, templates, ndgrams, _, digest = end
    return col, col.finish(templates, ndgrams, digest)


def test_complete_push_digest_and_keys_round_trip():
    plan, sent, begin, end = push()
    assert len(sent) > 3  # IPv4 and IPv6 entries over several datagrams
    col, res = collect(sent, begin, end)
    assert res.complete, res.reason
    assert res.reason == ""
    assert res.received_digest == end[4] == push_digest(sent)
    assert res.received_digest == hashlib.sha256(
        b"".join(len(d).to_bytes(2, "big") + d for d in sent)).hexdigest()
    assert (res.received_datagrams, res.received_bytes) == (len(sent), end[3])
    assert res.entries == len(plan.planned) == begin[1]
    assert res.keys == [p.table_key() for p in plan.planned]
    # fwmark templates arrive with the real server's port, IPv6 ones in canonical form
    assert ("IP", "11.0.0.0", "0.0.0.7", 0, "10.1.0.21", 8080) in res.keys
    assert ("UDP", "fd00:b::1", "fd00::100", 53, "fd00:1::11", 53) in res.keys
    assert res.source == PUSH_PORT and res.ignored == 0 and res.earlier == 0
    assert res.summary()["keys"] == len(plan.planned)


def test_datagrams_of_other_sources_are_ignored():
    _, sent, begin, end = push()
    col = C.PushCollector(begin[0], SENDER, begin[1])
    other = datagrams_for(plan_push(table(50, seed=9), SERVICES).planned, 0, 1472)
    for i, d in enumerate(sent):
        assert col.add(d, PUSH_PORT)
        assert not col.add(other[i % len(other)], "10.9.0.2:40001")  # another director
    assert not col.add(sent[0], "not an address")
    res = col.finish(*end[1:3], end[4])
    assert res.complete, res.reason
    assert res.ignored == len(sent) + 1


def test_the_senders_own_kernel_sync_traffic_does_not_spoil_the_push():
    _, sent, begin, end = push()
    kernel = datagrams_for(plan_push(table(80, seed=5), SERVICES).planned, 0, 1472)
    col = C.PushCollector(begin[0], SENDER, begin[1])
    for i, d in enumerate(sent):
        col.add(d, PUSH_PORT)
        col.add(kernel[i % len(kernel)], KERNEL_PORT)
    res = col.finish(*end[1:3], end[4])
    assert res.complete, res.reason
    assert res.source == PUSH_PORT and res.ignored == len(sent)


def test_a_sender_with_a_port_takes_only_that_port():
    _, sent, begin, end = push()
    col = C.PushCollector(begin[0], PUSH_PORT, begin[1])
    for d in sent:
        col.add(d, PUSH_PORT)
        assert not col.add(d, KERNEL_PORT)
    assert col.finish(*end[1:3], end[4]).complete


def test_what_is_not_the_announced_source_is_counted_by_kind():
    _, sent, begin, end = push()
    col = C.PushCollector(begin[0], PUSH_PORT, begin[1])
    col.add(sent[0], PUSH_PORT)
    assert not col.add(sent[0], KERNEL_PORT)  # the pusher's address spoofed from another port
    assert col.from_sender_address(KERNEL_PORT) and not col.from_sender_address("10.9.0.2:1")
    assert not col.add(sent[1], "10.9.0.2:40001")  # another host
    assert not col.add(sent[1], "not an address")
    for d in sent[1:]:
        col.add(d, PUSH_PORT)
    res = col.finish(*end[1:3], end[4])
    assert res.complete, res.reason
    assert (res.other_ports, res.foreign, res.ignored) == (1, 2, 3)
    assert res.summary()["other_ports"] == 1 and res.summary()["foreign"] == 2


def test_one_datagram_forged_with_the_pushers_address_and_port_is_found_and_left_out():
    """Issue 15: the group takes datagrams from anyone, and one with the pusher's very address
    and port lands in the push's stream; the push is still complete, the intruder counted."""
    _, sent, begin, end = push()
    forged = push(7)[1][0]  # a well-formed sync datagram, not the push's
    col, res = collect([forged] + sent, begin, end)  # before the push: one of the earlier
    assert res.complete and (res.intruders, res.earlier) == (0, 1)
    for at in (1, 2, len(sent)):  # inside the push, or after its last datagram
        col, res = collect(sent[:at] + [forged] + sent[at:], begin, end)
        assert res.complete, (at, res.reason)
        assert res.intruders == 1 and res.summary()["intruders"] == 1 and res.earlier == 0
        assert res.received_digest == end[4] and res.received_datagrams == len(sent)
    # two of them: not found, the push is incomplete (asked for again)
    col, res = collect(sent[:1] + [forged] + sent[1:2] + [forged] + sent[2:], begin, end)
    assert not res.complete and res.intruders == 0


def test_a_missing_datagram_makes_it_incomplete():
    plan, sent, begin, end = push()
    col, res = collect(sent[:2] + sent[3:], begin, end)
    assert not res.complete
    assert f"{len(sent) - 1} of {len(sent)} datagrams arrived" in res.reason
    assert len(res.keys) < len(plan.planned)  # what did arrive, for diagnosis


def test_a_reordered_datagram_makes_it_incomplete():
    _, sent, begin, end = push()
    swapped = sent[:]
    swapped[1], swapped[2] = swapped[2], swapped[1]
    col, res = collect(swapped, begin, end)
    assert not res.complete
    assert "digest" in res.reason and res.received_datagrams == len(sent)


def test_an_altered_datagram_makes_it_incomplete():
    _, sent, begin, end = push()
    bad = bytearray(sent[1])
    bad[-1] ^= 1
    col, res = collect([sent[0], bytes(bad)] + sent[2:], begin, end)
    assert not res.complete and "digest" in res.reason


def test_an_undecodable_datagram_makes_it_incomplete_even_with_the_right_digest():
    _, sent, begin, _ = push()
    broken = sent[:1] + [sent[1][:-36]] + sent[2:]  # size field no longer matches
    end = (begin[0], begin[1], len(broken), sum(map(len, broken)), push_digest(broken))
    col, res = collect(broken, begin, end)
    assert not res.complete
    assert "datagram 2 of" in res.reason and "does not decode" in res.reason


def test_datagrams_before_the_push_in_the_same_stream_do_not_matter():
    _, earlier, _, _ = push(40)
    _, sent, begin, end = push()
    col, res = collect(earlier + sent, begin, end)
    assert res.complete, res.reason
    assert res.earlier == len(earlier)


def test_nothing_arrived():
    _, sent, begin, end = push()
    col = C.PushCollector(begin[0], SENDER, begin[1])
    col.add(sent[0], "10.9.0.2:1")
    res = col.finish(*end[1:3], end[4])
    assert not res.complete and res.reason == "no datagram arrived from 10.9.0.1 (1 from other sources)"


def test_an_empty_push_is_complete():
    cap, calls = Capture(), []
    send_push([], cap, syncid=0, maxlen=1472, rate=100, on_begin=lambda *a: calls.append(a),
              on_end=lambda *a: calls.append(a))
    col = C.PushCollector(calls[0][0], SENDER, 0)
    col.add(b"stray", KERNEL_PORT)
    res = col.finish(0, 0, calls[1][4])
    assert res.complete and res.ignored == 1
    assert not col.finish(0, 0, "00" * 32).complete


def test_bare_addresses_and_ipv6_sources():
    assert C.parse_source("10.0.0.1") == ("10.0.0.1", None)
    assert C.parse_source("10.0.0.1:8848") == ("10.0.0.1", 8848)
    assert C.parse_source("[fd00::0001]:8848") == ("fd00::1", 8848)
    assert C.parse_source("fe80::1%eth0") == ("fe80::1", None)
    assert C.parse_source("::ffff:10.0.0.1") == ("10.0.0.1", None)
    assert C.format_source("fd00::1", 8848) == "[fd00::1]:8848"
    with pytest.raises(ValueError):
        C.parse_source("10.0.0.1:99999")
    _, sent, begin, end = push()
    col, res = collect(sent, begin, end, src="10.9.0.1", sender="10.9.0.1")
    assert res.complete and res.source == "10.9.0.1"


def test_connections_are_counted_not_keyed():
    c = syncproto.SyncConn(4, 6, 0, 1, 40000, 443, 443, 0, 100, "11.0.0.1", "10.0.0.100",
                           "10.1.0.11")
    plan = plan_push(table(10), SERVICES)
    cap, calls = Capture(), []
    send_push(plan.entries() + [c], cap, syncid=0, maxlen=1472, rate=1e6,
              on_begin=lambda *a: calls.append(a), on_end=lambda *a: calls.append(a))
    col, res = collect(cap.sent, calls[0], calls[1])
    assert res.complete, res.reason
    assert (res.entries, res.connections, len(res.keys)) == (len(plan.planned) + 1, 1,
                                                             len(plan.planned))


# ---------------------------------------------------------------------------- the socket


def _multicast_interface():
    for _, name in socket.if_nameindex():
        try:
            with open(f"/sys/class/net/{name}/flags") as f:
                flags = int(f.read(), 16)
        except OSError:
            continue
        if flags & 0x1 and flags & 0x1000 and not flags & 0x8:  # UP, MULTICAST, not LOOPBACK
            return name
    return None


def test_listener_beside_another_socket_gets_the_push_from_this_host():
    ifname = _multicast_interface()
    if ifname is None:
        pytest.skip("no multicast interface")
    group, port = f"239.255.81.{random.randrange(1, 254)}", random.randrange(20000, 60000)
    try:
        first = C.SyncGroupListener(ifname, group, port)
        second = C.SyncGroupListener(ifname, group, port)  # SO_REUSEADDR on both
        # TTL 0 with loop on: only this host gets it, nothing reaches the wire.
        sender = SyncSender(ifname, group, port, ttl=0, loop=True)
    except (KernelError, OSError) as e:
        pytest.skip(f"multicast not available here: {e}")
    with first, second, sender:
        _, sent, begin, end = push(100)
        for d in sent:
            sender.send(d)
        got = []
        while len(got) < len(sent):
            r = first.recv(2.0)
            if r is None:
                break
            got.append(r)
        if not got:
            pytest.skip("multicast loop delivers nothing here")
        assert [d for d, _ in got] == sent
        assert first.recv(0) is None
        assert second.recv(2.0)[0] == sent[0]
        src = got[0][1]
        assert C.parse_source(src)[1] == sender.sock.getsockname()[1]
        col = C.PushCollector(begin[0], C.parse_source(src)[0], begin[1])
        for d, s in got:
            col.add(d, s)
        res = col.finish(*end[1:3], end[4])
        assert res.complete, res.reason
        assert first.fileno() >= 0


def test_listener_on_a_missing_interface_is_one_clear_error():
    with pytest.raises(KernelError, match="does not exist"):
        C.SyncGroupListener("nosuchif0", "224.0.0.81", 8848)
