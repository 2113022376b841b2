import hashlib
import ipaddress
import socket

import pytest

from lvs_hooks.config import Config, SyncConfig
from lvs_hooks.errors import ConfigError, KernelError
from lvs_hooks.kernel import syncproto
from lvs_hooks.push import sender as S
from lvs_hooks.reseed.planner import PlannedTemplate


def planned(n, v6=False, start=0):
    out = []
    for i in range(start, start + n):
        if v6:
            caddr, vaddr, daddr = str(ipaddress.IPv6Address((0xFD << 120) | i)), "fd00::100", "fd00:1::11"
        else:
            caddr, vaddr, daddr = str(ipaddress.IPv4Address(0x0B000000 + i)), "10.0.0.100", "10.1.0.11"
        out.append(PlannedTemplate("TCP", caddr, vaddr, 443, daddr, 443, 0, "droute", 60 + i % 3000))
    return out


class FakeSender:
    def __init__(self, clock=None, fail_at=None):
        self.sent = []
        self.times = []
        self.clock = clock
        self.fail_at = fail_at

    def send(self, datagram):
        if self.fail_at is not None and len(self.sent) == self.fail_at:
            raise OSError(105, "No buffer space available")
        self.sent.append(datagram)
        if self.clock is not None:
            self.times.append(self.clock())


class FakeTime:
    def __init__(self, overshoot=0.0):
        self.now = 1000.0
        self.sleeps = []
        self.overshoot = overshoot

    def clock(self):
        return self.now

    def sleep(self, s):
        assert s > 0
        self.sleeps.append(s)
        self.now += s * (1 + self.overshoot)


def test_datagrams_respect_maxlen_1472_40_ipv4_entries_each():
    d = S.datagrams_for(planned(100), syncid=51, maxlen=1472)
    assert [x[4] for x in d] == [40, 40, 20]  # nr_conns
    assert [len(x) for x in d] == [8 + 40 * 36, 8 + 40 * 36, 8 + 20 * 36]
    assert all(len(x) <= 1472 for x in d)
    assert all(x[1] == 51 for x in d)  # syncid
    assert S.datagrams_for(planned(100), syncid=51, maxlen=0) == d  # 0: the kernel's default
    d6 = S.datagrams_for(planned(50, v6=True), syncid=0, maxlen=1472)
    assert [x[4] for x in d6] == [20, 20, 10] and max(map(len, d6)) <= 1472


def test_maxlen_0_over_an_ipv6_group_is_the_kernels_ipv6_default():
    fake = FakeSender()
    fake.ipv6 = True
    S.send_push(planned(100), fake, syncid=0, maxlen=0, rate=1e9)
    assert max(map(len, fake.sent)) <= 1452 and fake.sent[0][4] == (1452 - 8) // 36


def test_smaller_maxlen_smaller_datagrams():
    d = S.datagrams_for(planned(100), syncid=0, maxlen=576)
    assert all(len(x) <= 576 for x in d) and sum(x[4] for x in d) == 100
    assert d[0][4] == (576 - 8) // 36


def test_pacing_10000_templates_at_5000_per_second_take_2_seconds():
    t = FakeTime()
    fake = FakeSender(clock=t.clock)
    r = S.send_push(planned(10000), fake, syncid=0, maxlen=1472, rate=5000,
                    clock=t.clock, sleep=t.sleep)
    assert r.datagrams == len(fake.sent) == 250 and r.templates == 10000
    elapsed = fake.times[-1] - fake.times[0]
    one_datagram = 40 / 5000
    assert abs(elapsed - 2.0) <= one_datagram + 1e-9
    assert abs(r.ms / 1000 - 2.0) <= one_datagram + 1e-9
    assert r.rate == pytest.approx(5000, rel=0.01)
    # It sleeps only the computed interval: one datagram's worth each time.
    assert all(s == pytest.approx(one_datagram) for s in t.sleeps)


def test_pacing_never_runs_ahead_of_the_rate_even_when_sleeps_overshoot():
    t = FakeTime(overshoot=0.5)
    fake = FakeSender(clock=t.clock)
    r = S.send_push(planned(4000), fake, syncid=0, maxlen=1472, rate=20000,
                    clock=t.clock, sleep=t.sleep)
    t0 = fake.times[0]
    sent = 0
    for d, at in zip(fake.sent, fake.times):
        sent += d[4]
        assert sent <= 40 + 20000 * (at - t0) + 1e-6
    assert r.rate < 20000


def test_high_rate_sends_in_small_bursts():
    t = FakeTime()
    fake = FakeSender(clock=t.clock)
    S.send_push(planned(40000), fake, syncid=0, maxlen=1472, rate=400000,
                clock=t.clock, sleep=t.sleep)
    # The bucket holds 1 ms of the rate (400 entries = 10 datagrams): sleeps stay rare.
    assert len(t.sleeps) < len(fake.sent)
    assert (t.now - 1000.0) == pytest.approx((40000 - 400) / 400000, rel=0.01)


def test_digest_and_announcements():
    calls = []
    fake = FakeSender()

    def begin(push_id, templates):
        calls.append(("begin", push_id, templates, len(fake.sent)))

    def end(push_id, templates, datagrams, nbytes, digest):
        calls.append(("end", push_id, templates, datagrams, nbytes, digest, len(fake.sent)))

    r = S.send_push(planned(85), fake, syncid=7, maxlen=1472, rate=1e9,
                    on_begin=begin, on_end=end)
    want = hashlib.sha256(b"".join(len(d).to_bytes(2, "big") + d for d in fake.sent)).hexdigest()
    assert r.digest == want == S.push_digest(fake.sent)
    assert len(r.push_id) == 16 and int(r.push_id, 16) >= 0
    assert calls == [
        ("begin", r.push_id, 85, 0),
        ("end", r.push_id, 85, 3, sum(map(len, fake.sent)), want, 3),
    ]
    assert r.bytes == sum(map(len, fake.sent)) and r.datagrams == 3
    assert fake.sent == S.datagrams_for(planned(85), 7, 1472)
    assert r.to_dict()["digest"] == want


def test_push_ids_differ():
    ids = {S.send_push([], FakeSender(), syncid=0, maxlen=1472, rate=100).push_id
           for _ in range(5)}
    assert len(ids) == 5


def test_empty_push_is_announced_with_the_digest_of_nothing():
    calls = []
    r = S.send_push([], FakeSender(), syncid=0, maxlen=1472, rate=100,
                    on_begin=lambda *a: calls.append(a), on_end=lambda *a: calls.append(a))
    empty = hashlib.sha256(b"").hexdigest()
    assert calls == [(r.push_id, 0), (r.push_id, 0, 0, 0, empty)]
    assert (r.datagrams, r.bytes, r.ms, r.rate, r.digest) == (0, 0, 0.0, 0.0, empty)


def test_connections_go_after_templates_and_count_as_entries():
    c = syncproto.SyncConn(4, 6, 0, 1, 40000, 443, 443, 0, 100, "11.0.0.1", "10.0.0.100",
                           "10.1.0.11")
    fake = FakeSender()
    r = S.send_push(planned(2) + [c], fake, syncid=0, maxlen=1472, rate=1e6)
    assert r.templates == 3
    (msg,) = [syncproto.decode_datagram(d) for d in fake.sent]
    assert [x.is_template for x in msg.conns] == [True, True, False]
    assert msg.conns[2] == c


def test_a_failing_send_raises_and_the_end_is_not_announced():
    ended = []
    with pytest.raises(KernelError, match="datagram 2 of 3"):
        S.send_push(planned(100), FakeSender(fail_at=1), syncid=0, maxlen=1472, rate=1e9,
                    on_end=lambda *a: ended.append(a))
    assert ended == []


def test_bad_rate_is_refused():
    with pytest.raises(ValueError):
        S.send_push(planned(1), FakeSender(), syncid=0, maxlen=1472, rate=0)


def test_open_push_sender_needs_an_interface_and_a_ttl():
    with pytest.raises(ConfigError, match="sync.interface"):
        S.open_push_sender(Config())
    with pytest.raises(ConfigError, match="sync.ttl"):
        S.open_push_sender(Config(sync=SyncConfig(interface="lo", ttl=0)))


def test_open_push_sender_sends_with_loop_off_and_the_configured_ttl():
    s = S.open_push_sender(Config(sync=SyncConfig(interface="lo", ttl=3, port=18848)))
    try:
        assert (s.group, s.port) == ("224.0.0.81", 18848)
        assert s.sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 0
        assert s.sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 3
    finally:
        s.close()
