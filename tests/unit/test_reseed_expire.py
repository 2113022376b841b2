"""_expire_first's wait for the templates it gave 1 s: it counts from the daemon's drain, and
goes on past EXPIRE_WAIT only while what is left shows the 1 s taken (a late timer)."""

from lvs_hooks.kernel.conntable import CONN_HEADER
from lvs_hooks.reseed import runner
from lvs_hooks.reseed.planner import PlannedTemplate


def tpl(expires):
    """The old template (10.0.0.10 -> 10.0.0.100:5000 on 10.1.0.11), in the kernel's format."""
    return b"%-3s %s %04X %s %04X %s %04X %-11s %7u\n" % (
        b"UDP", b"0A00000A", 0, b"0A000064", 5000, b"0A01000B", 5000, b"ASSURED", expires)


class SlowKernel:
    """A fake clock and a fake ip_vs_conn: the template goes 1 s after the daemon took the
    expiry message, and the daemon takes `drain_s` to take it."""

    def __init__(self, proc_root, drain_s, expires=1, late_s=0.0):
        self.now = 0.0
        self.drain_s = drain_s
        self.expires = expires  # what /proc shows left while the template is there
        self.late_s = late_s  # how late its timer fires
        self.gone_at = None
        self.path = proc_root / "net" / "ip_vs_conn"
        self.path.parent.mkdir(parents=True)
        self._write(True)

    def _write(self, present):
        self.path.write_bytes(CONN_HEADER + b"\n" + (tpl(self.expires) if present else b""))

    def clock(self):
        return self.now

    def taken(self, timeout):
        self.now += min(self.drain_s, timeout)
        self.gone_at = self.now + 1.0 + runner.TIMER_SLACK + self.late_s
        return self.drain_s <= timeout

    def sleep(self, s):
        self.now += s
        if self.gone_at is not None and self.now >= self.gone_at:
            self._write(False)


def planned():
    return [PlannedTemplate("UDP", "10.0.0.10", "10.0.0.100", 5000, "10.1.0.12", 5000, 0, "masq", 300,
                            replace=True)]


def expire(tmp_path, drain_s):
    k = SlowKernel(tmp_path, drain_s)
    sent = []
    done = runner._expire_first(planned(), sent.append, k.taken, str(tmp_path), k.clock, sleep=k.sleep)
    return done, sent, k


def test_a_drain_as_long_as_the_wait_still_sees_the_templates_go(tmp_path):
    # The daemon took the expiry message only after 2.4 s of the 2.5 s: counted from the
    # send, the wait ended before the timer could fire, and the replacement then reached the
    # old template (re-armed with the old real server).
    done, sent, k = expire(tmp_path, drain_s=2.4)
    assert done == 1
    assert k.now >= k.gone_at
    assert [p.timeout for p in sent[0]] == [1]


def never_goes(tmp_path, expires):
    k = SlowKernel(tmp_path, drain_s=0.1, expires=expires)
    k.sleep = lambda s: setattr(k, "now", k.now + s)
    done = runner._expire_first(planned(), lambda batch: None, k.taken, str(tmp_path), k.clock,
                                sleep=k.sleep)
    return done, k


def test_a_template_that_did_not_take_the_expiry_is_given_up_after_the_wait(tmp_path, caplog):
    done, k = never_goes(tmp_path, expires=60)  # re-armed for a connection: 60 s left
    assert done == 0
    assert runner.EXPIRE_WAIT < k.now <= 0.1 + runner.EXPIRE_WAIT + 0.2
    assert "1 templates to replace did not expire" in caplog.text and "left: 60" in caplog.text


def test_a_late_timer_is_waited_for(tmp_path):
    # the 1 s was taken (0 s left in /proc), and the loaded kernel fires the timer 4 s late
    k = SlowKernel(tmp_path, drain_s=0.1, expires=0, late_s=4.0)
    done = runner._expire_first(planned(), lambda batch: None, k.taken, str(tmp_path), k.clock,
                                sleep=k.sleep)
    assert done == 1
    assert k.now > runner.EXPIRE_WAIT + 0.1


def test_a_timer_that_never_fires_is_given_up_after_the_late_wait(tmp_path):
    done, k = never_goes(tmp_path, expires=0)
    assert done == 0
    assert runner.EXPIRE_WAIT_LATE < k.now <= 0.1 + runner.EXPIRE_WAIT_LATE + 0.2


class LossyKernel:
    """The table as the sync messages leave it: a message for a key the table holds only
    re-arms it (the old real server stays); the first `lost` expiry messages never arrive (a
    receive queue filled by another push)."""

    def __init__(self, stale, lost):
        self.table = {p: "10.1.0.11" for p in stale}  # key -> real server
        self.lost = set(lost)
        self.expiries = 0

    def expire(self, batch):
        self.expiries += 1
        gone = 0
        for p in batch:
            if p in self.lost:
                self.lost.discard(p)
                continue
            self.table.pop(p, None)  # it took the 1 s, and its timer fired
            gone += 1
        return gone

    def deliver(self, batch):
        for p in batch:
            self.table.setdefault(p, p.daddr)
        return [p for p in batch if self.table[p] != p.daddr]


def five():
    return [PlannedTemplate("UDP", f"10.0.0.{i}", "10.0.0.100", 5000, "10.1.0.12", 5000, 0,
                            "masq", 300, replace=True) for i in range(10, 15)]


def test_a_lost_expiry_is_sent_again_before_the_replacement_is(caplog):
    # 3 of 5 expiry messages lost: their replacements re-arm the old templates. Resending only
    # the replacements (as before) left them stale through every round.
    tpls = five()
    k = LossyKernel(tpls, lost=tpls[:3])
    left = runner._replace(tpls, k.expire, k.deliver, resend_rounds=3)
    assert left == []
    assert all(k.table[p] == "10.1.0.12" for p in tpls)
    assert k.expiries == 2
    assert "replacement round 1: 3 of 5 templates still stale or missing" in caplog.text


def test_replacement_rounds_are_bounded():
    tpls = five()
    k = LossyKernel(tpls, lost=[])
    k.expire = lambda batch: setattr(k, "expiries", k.expiries + 1) or 0  # never takes it
    left = runner._replace(tpls, k.expire, k.deliver, resend_rounds=2)
    assert left == tpls and k.expiries == 3
