"""The agent's loop, driven through its seams: fake channel, ops, warm gate, clock and role."""

import logging
from types import SimpleNamespace

import pytest

from lvs_hooks import agent as agent_mod
from lvs_hooks.agent import (
    COLLECT_TIMEOUT,
    REQUEST_EVERY,
    STARTUP_RESEED_RETRY,
    Agent,
    PushStatus,
)
from lvs_hooks.config import parse_config
from lvs_hooks.control.message import new_message
from lvs_hooks.push.sender import datagrams_for, push_digest
from lvs_hooks.reseed.planner import PlannedTemplate

T0 = 5000.0
MASTER_ADDR = "10.9.0.1"
PUSH_PORT = 40001
PUSH_SRC = f"{MASTER_ADDR}:{PUSH_PORT}"
KERNEL_SRC = f"{MASTER_ADDR}:8848"  # the master's kernel sync daemon: same address, own port

PLANNED = [
    PlannedTemplate("TCP", f"11.0.0.{i}", "10.0.0.100", 443, "10.1.0.11", 443, 0, "droute", 300)
    for i in range(1, 91)
] + [PlannedTemplate("IP", "11.0.1.1", "0.0.0.20", 0, "10.1.0.21", 8080, 20, "masq", 600)]
DGRAMS = datagrams_for(PLANNED, 0, 0)
DIGEST = push_digest(DGRAMS)
KEYS = [p.table_key() for p in PLANNED]
N_KEYS = len(KEYS)
N_DGRAMS = len(DGRAMS)
# a datagram of the kernel's own sync, from the same host: never part of a push
KERNEL_DGRAM = datagrams_for(PLANNED[:2], 0, 0)[0]


def test_the_push_spans_several_datagrams():
    assert len(DGRAMS) == 3 and len(KEYS) == 91


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


class FakeChannel:
    def __init__(self):
        self.sent = []
        self.to = []

    def send(self, kind, body, to="*"):
        self.sent.append((kind, body))
        self.to.append(to)

    def of(self, kind):
        return [b for k, b in self.sent if k == kind]


class FakeOps:
    def __init__(self, missing_after=0, reseed=None):
        self.pushes = []
        self.checked = []
        self.missing_after = missing_after
        self.reseed = list(reseed) if reseed is not None else [{"usable": False}]
        self.reseed_calls = 0

    def push(self, channel):
        self.pushes.append(channel)
        return {"push_id": f"p{len(self.pushes)}"}

    def check_push(self, keys):
        self.checked.append(list(keys))
        n = len(keys)
        return {
            "verified": n - self.missing_after,
            "put_back": 3,
            "repointed": 2,
            "stale_in_use": 1,
            "missing_after": self.missing_after,
        }

    def startup_reseed(self):
        self.reseed_calls += 1
        out = self.reseed.pop(0) if self.reseed else {"usable": False}
        if isinstance(out, Exception):
            raise out
        return out


class FakeWarm:
    def __init__(self, warm=False):
        self.warm = warm
        self.marks = []
        self.refreshes = 0
        self.starts = 0

    def start(self):
        self.starts += 1

    def is_warm(self):
        return self.warm

    def mark_warm(self, reason, figures):
        self.warm = True
        self.marks.append((reason, figures))

    def refresh(self):
        self.refreshes += 1


class Env:
    def __init__(self, role="BACKUP", interval=60, warm=False, ops=None, channel=True):
        self.role = role
        self.clock = Clock()
        self.ops = ops or FakeOps()
        self.channel = FakeChannel() if channel else None
        self.warm = FakeWarm(warm)
        cfg = parse_config(f"push:\n  interval: {interval}\n", "test")
        self.agent = Agent(cfg, self.ops, self.channel, None, lambda: self.role, self.warm,
                           self.clock)

    def tick_at(self, dt):
        self.clock.t = T0 + dt
        self.agent.tick()

    def msg(self, kind, body, sender="lb1", src=MASTER_ADDR):
        self.agent.on_message(new_message(kind, sender, body), src)

    def begin(self, push_id="abc", templates=N_KEYS, port=PUSH_PORT):
        self.msg("push-begin", {"push_id": push_id, "templates": templates, "port": port})

    def end(self, push_id="abc", templates=N_KEYS, datagrams=N_DGRAMS, digest=DIGEST):
        self.msg("push-end", {"push_id": push_id, "templates": templates,
                              "datagrams": datagrams, "bytes": 3300, "digest": digest})

    def dgram(self, d, src=PUSH_SRC):
        self.agent.on_sync_datagram(d, src)


# -- the master's pushes


def test_master_pushes_at_once_then_every_interval():
    env = Env(role="MASTER", interval=60)
    env.tick_at(0)
    assert env.ops.pushes == [env.channel]
    assert env.warm.marks == [("master: its table is the reference", {})]
    env.tick_at(59)
    assert len(env.ops.pushes) == 1
    env.tick_at(60)
    assert len(env.ops.pushes) == 2
    env.tick_at(61)
    env.tick_at(119)
    assert len(env.ops.pushes) == 2
    env.tick_at(120.5)
    assert len(env.ops.pushes) == 3
    assert env.warm.refreshes == 6
    assert env.channel.of("push-request") == []


def test_a_director_becoming_master_pushes_at_once():
    env = Env(role="BACKUP", warm=True)
    env.tick_at(0)
    env.tick_at(10)
    assert env.ops.pushes == []
    env.role = "MASTER"
    env.tick_at(11)
    assert len(env.ops.pushes) == 1
    env.tick_at(70)
    assert len(env.ops.pushes) == 1
    env.tick_at(71)
    assert len(env.ops.pushes) == 2


def test_push_request_makes_the_master_push_at_the_next_tick():
    env = Env(role="MASTER", interval=60)
    env.tick_at(0)
    env.msg("push-request", {"role": "BACKUP"}, sender="lb2", src="10.9.0.2")
    assert len(env.ops.pushes) == 1  # not inside the message handler
    env.tick_at(20)
    assert len(env.ops.pushes) == 2
    env.tick_at(21)
    env.tick_at(79)
    assert len(env.ops.pushes) == 2  # the interval counts from the requested push
    env.tick_at(80)
    assert len(env.ops.pushes) == 3


def test_with_interval_0_the_master_pushes_only_on_request():
    env = Env(role="MASTER", interval=0)
    for dt in (0, 1, 100, 1000):
        env.tick_at(dt)
    assert env.ops.pushes == []
    env.msg("push-request", {}, sender="lb2")
    env.tick_at(1001)
    env.tick_at(5000)
    assert len(env.ops.pushes) == 1


def test_a_failing_push_is_logged_and_the_loop_goes_on(caplog):
    class Failing(FakeOps):
        def push(self, channel):
            super().push(channel)
            raise OSError("network is unreachable")

    env = Env(role="MASTER", ops=Failing())
    env.tick_at(0)
    assert "push failed: network is unreachable" in caplog.text
    env.tick_at(60)
    assert len(env.ops.pushes) == 2
    assert env.warm.refreshes == 2


def test_a_backup_ignores_push_requests():
    env = Env(role="BACKUP", warm=True)
    env.tick_at(0)
    env.msg("push-request", {"role": "BACKUP"}, sender="lb3")
    env.tick_at(1)
    env.tick_at(100)
    assert env.ops.pushes == []
    # and does not remember it for when it becomes master: one push, not two
    env.role = "MASTER"
    env.tick_at(101)
    env.tick_at(102)
    assert len(env.ops.pushes) == 1


# -- a non-master collects pushes


def test_a_complete_push_is_checked_and_warms():
    env = Env(role="BACKUP")
    env.tick_at(0)
    env.begin()
    env.dgram(DGRAMS[0])
    env.dgram(KERNEL_DGRAM, KERNEL_SRC)  # interleaved kernel sync: ignored
    env.dgram(DGRAMS[1])
    env.dgram(DGRAMS[2])
    env.dgram(KERNEL_DGRAM, "10.9.0.7:40001")  # another host
    assert env.ops.checked == []
    env.end()
    assert env.ops.checked == [KEYS]
    assert env.warm.warm
    ((reason, figures),) = env.warm.marks
    assert reason == (
        f"full push abc from lb1 ({PUSH_SRC}): 91 templates, 91 verified in the table"
    )
    assert figures["push_id"] == "abc" and figures["missing"] == 0
    last = env.agent.st.last_push
    assert (last.push_id, last.source, last.complete, last.reason, last.templates,
            last.verified, last.put_back, last.repointed, last.stale_in_use, last.missing) == (
        "abc", PUSH_SRC, True, "", 91, 91, 3, 2, 1, 0)
    assert env.agent.st.collecting == {}


def test_a_datagram_spoofed_with_the_pushers_address_from_another_port_is_not_counted():
    env = Env(role="BACKUP")
    env.tick_at(0)
    env.begin()
    env.dgram(DGRAMS[0])
    env.dgram(DGRAMS[1], f"{MASTER_ADDR}:40002")  # a copy spoofed from another port
    env.dgram(DGRAMS[1])
    env.dgram(DGRAMS[2])
    env.end()
    last = env.agent.st.last_push
    assert last.complete and last.other_ports == 1 and last.foreign == 0
    assert env.agent.st.wire.sync_other_port == 1 and env.agent.st.wire.sync_foreign == 0


def test_foreign_sync_datagrams_during_a_push_are_counted_logged_per_interval_and_noted(caplog):
    noted = []
    env = Env(role="BACKUP")
    env.agent.on_wire = noted.append
    env.tick_at(0)
    env.begin()
    env.dgram(DGRAMS[0])
    for i in range(500):
        env.dgram(KERNEL_DGRAM, f"10.9.0.{7 + i % 3}:8848")  # anyone else on the group
    env.dgram(DGRAMS[1])
    env.dgram(DGRAMS[2])
    env.end()
    assert env.agent.st.last_push.complete and env.agent.st.last_push.foreign == 500
    w = env.agent.st.wire
    assert (w.sync_foreign, w.sync_other_port, w.sync_foreign_last) == (500, 0, "10.9.0.8:8848")
    lines = [r.getMessage() for r in caplog.records
             if "other than the pusher" in r.getMessage()]
    assert lines == ["sync group: datagram from a source other than the pusher during a push: "
                     f"from 10.9.0.7:8848 during push abc from {PUSH_SRC}"]
    env.tick_at(11)  # the interval is over: one line with the count of the rest
    lines = [r.getMessage() for r in caplog.records
             if "other than the pusher" in r.getMessage()]
    assert len(lines) == 2 and ": 499 in the last " in lines[1]
    assert lines[1].endswith(f"the last: from 10.9.0.8:8848 during push abc from {PUSH_SRC}")
    assert noted[-1]["sync_foreign"] == 500 and noted[-1]["sync_foreign_last"] == "10.9.0.8:8848"
    n = len(noted)
    env.tick_at(12)
    assert len(noted) == n  # unchanged counts are not noted again


def test_sync_datagrams_outside_a_push_are_not_foreign():
    env = Env(role="BACKUP")
    env.tick_at(0)
    env.dgram(KERNEL_DGRAM, "10.9.0.7:8848")
    assert env.agent.st.wire.sync_foreign == 0


def test_datagrams_that_overtake_push_begin_come_from_the_backlog():
    env = Env(role="BACKUP")
    env.tick_at(0)
    env.dgram(DGRAMS[0])
    env.dgram(KERNEL_DGRAM, KERNEL_SRC)
    env.dgram(DGRAMS[1])
    env.begin()
    assert len(env.agent.st.backlog) == 0
    env.dgram(DGRAMS[2])
    env.end()
    assert env.ops.checked == [KEYS]
    assert env.warm.warm and env.agent.st.last_push.complete


def test_every_datagram_before_push_begin_is_enough():
    env = Env(role=None)
    for d in DGRAMS:
        env.dgram(d)
    env.begin()
    env.end()
    assert env.ops.checked == [KEYS] and env.warm.warm


def test_templates_still_missing_after_the_check_do_not_warm():
    env = Env(role="BACKUP", ops=FakeOps(missing_after=4))
    env.tick_at(0)
    env.begin()
    for d in DGRAMS:
        env.dgram(d)
    env.end()
    assert env.ops.checked == [KEYS]
    assert not env.warm.warm and env.warm.marks == []
    last = env.agent.st.last_push
    assert (last.complete, last.missing, last.verified) == (True, 4, 87)
    # still cold: asks again on its usual cadence
    env.tick_at(REQUEST_EVERY)
    assert len(env.channel.of("push-request")) == 2


def test_an_incomplete_push_is_not_checked_and_the_agent_asks_again():
    env = Env(role="BACKUP")
    env.tick_at(0)
    assert len(env.channel.of("push-request")) == 1
    env.tick_at(1)
    assert len(env.channel.of("push-request")) == 1  # not before REQUEST_EVERY
    env.begin()
    env.dgram(DGRAMS[0])
    env.dgram(DGRAMS[2])  # the second was lost
    env.end()
    assert env.ops.checked == []
    assert not env.warm.warm
    last = env.agent.st.last_push
    assert (last.push_id, last.complete, last.templates) == ("abc", False, 91)
    assert last.reason == f"2 of 3 datagrams arrived from {PUSH_SRC}"
    env.tick_at(2)  # the next tick, well before REQUEST_EVERY
    assert env.channel.of("push-request") == [{"role": "BACKUP"}, {"role": "BACKUP"}]


def test_a_push_with_another_digest_is_incomplete():
    env = Env(role="BACKUP")
    env.begin()
    for d in DGRAMS:
        env.dgram(d)
    env.end(digest="0" * 64)
    assert env.ops.checked == [] and not env.warm.warm
    assert "digest" in env.agent.st.last_push.reason


def test_a_failing_table_check_is_reported_in_the_last_push(caplog):
    class Failing(FakeOps):
        def check_push(self, keys):
            raise OSError("IPVS is not available")

    env = Env(role="BACKUP", ops=Failing())
    env.begin()
    for d in DGRAMS:
        env.dgram(d)
    env.end()
    last = env.agent.st.last_push
    assert (last.complete, last.reason) == (False, "table check failed: IPVS is not available")
    assert not env.warm.warm


def test_a_master_ignores_push_begin_its_own_push():
    env = Env(role="MASTER")
    env.tick_at(0)
    env.begin()
    for d in DGRAMS:
        env.dgram(d)
    env.end()
    assert env.agent.st.collecting == {}
    assert env.ops.checked == []
    assert env.agent.st.last_push == PushStatus()


def test_push_end_without_its_begin_is_ignored():
    env = Env(role="BACKUP")
    for d in DGRAMS:
        env.dgram(d)
    env.end()
    assert env.ops.checked == [] and env.agent.st.last_push == PushStatus()


@pytest.mark.parametrize(
    "body",
    [
        {"push_id": "abc", "templates": 91},
        {"push_id": "abc", "templates": "many", "port": PUSH_PORT},
        {"templates": 91, "port": PUSH_PORT},
    ],
)
def test_a_push_begin_without_its_fields_is_ignored(body, caplog):
    env = Env(role="BACKUP")
    env.msg("push-begin", body)
    assert env.agent.st.collecting == {}
    assert "push-begin from 10.9.0.1 without push_id, port, templates" in caplog.text


# -- status


def test_status_request_gets_a_reply_naming_the_request_and_the_last_push():
    env = Env(role="BACKUP")
    env.tick_at(0)
    env.begin()
    for d in DGRAMS:
        env.dgram(d)
    env.end()
    req = new_message("status-request", "lb1/handover", {"push_id": "abc"})
    env.agent.on_message(req, MASTER_ADDR)
    (reply,) = env.channel.of("status-reply")
    assert reply["in_reply_to"] == req.nonce
    assert env.channel.to[-1] == "lb1/handover"  # addressed to the asker, not the group
    assert reply["role"] == "BACKUP" and reply["warm"] is True
    assert reply["last_push"] == env.agent.st.last_push.to_dict()
    assert (reply["last_push"]["push_id"], reply["last_push"]["complete"],
            reply["last_push"]["missing"], reply["last_push"]["verified"]) == ("abc", True, 0, 91)


def test_status_reply_before_any_push_or_role():
    env = Env(role=None)
    req = new_message("status-request", "lb1/handover", {})
    env.agent.on_message(req, MASTER_ADDR)
    (reply,) = env.channel.of("status-reply")
    assert reply == {"in_reply_to": req.nonce, "role": "unknown", "warm": False,
                     "last_push": PushStatus().to_dict()}


# -- the start-up reseed


def test_startup_reseed_is_retried_until_the_services_exist_then_done_once():
    # without a control channel, a verified reseed is what warms
    done = {"usable": True, "warm": True, "verified": 7, "missing": 0}
    env = Env(role=None, ops=FakeOps(reseed=[None, None, done]), channel=False)
    env.tick_at(0)
    assert env.ops.reseed_calls == 1
    env.tick_at(1)
    assert env.ops.reseed_calls == 1
    env.tick_at(STARTUP_RESEED_RETRY)
    assert env.ops.reseed_calls == 2 and env.agent.st.startup_reseed == "pending"
    env.tick_at(STARTUP_RESEED_RETRY + 1)
    assert env.ops.reseed_calls == 2
    env.tick_at(2 * STARTUP_RESEED_RETRY)
    assert env.ops.reseed_calls == 3
    assert env.agent.st.startup_reseed == "done"
    assert env.warm.marks == [("verified reseed of 7 templates from the snapshot", done)]
    for dt in range(5, 30):
        env.tick_at(dt)
    assert env.ops.reseed_calls == 3


def test_with_a_control_channel_only_a_push_warms_not_the_reseed():
    out = {"usable": True, "warm": True, "verified": 7, "missing": 0}
    env = Env(role="BACKUP", ops=FakeOps(reseed=[out]))
    env.tick_at(0)
    env.tick_at(10)
    assert env.ops.reseed_calls == 1
    assert env.agent.st.startup_reseed == "done"
    assert not env.warm.warm and env.warm.marks == []
    assert len(env.channel.of("push-request")) == 2  # at 0 and 10: still cold


def test_a_usable_reseed_with_templates_missing_is_done_but_not_warm():
    out = {"usable": True, "warm": False, "verified": 5, "missing": 2}
    env = Env(role="BACKUP", ops=FakeOps(reseed=[out]), channel=False)
    env.tick_at(0)
    env.tick_at(10)
    assert env.ops.reseed_calls == 1
    assert env.agent.st.startup_reseed == "done"
    assert not env.warm.warm


def test_no_snapshot_skips_the_reseed():
    env = Env(role="BACKUP", ops=FakeOps(reseed=[{"usable": False}]))
    env.tick_at(0)
    env.tick_at(10)
    assert env.ops.reseed_calls == 1
    assert env.agent.st.startup_reseed == "skipped" and not env.warm.warm


def test_a_failing_reseed_is_skipped_not_retried(caplog):
    env = Env(role="BACKUP", ops=FakeOps(reseed=[OSError("no netlink")]))
    env.tick_at(0)
    env.tick_at(10)
    assert env.ops.reseed_calls == 1
    assert env.agent.st.startup_reseed == "skipped"
    assert "start-up reseed failed: no netlink" in caplog.text


def test_startup_reseed_is_skipped_on_a_master():
    env = Env(role="MASTER", ops=FakeOps(reseed=[{"usable": True, "warm": True}]))
    env.tick_at(0)
    env.tick_at(10)
    assert env.ops.reseed_calls == 0
    assert env.agent.st.startup_reseed == "skipped"


# -- asking while cold


def test_a_cold_non_master_asks_every_request_every_until_warm():
    env = Env(role="BACKUP")
    for dt in range(0, 12):
        env.tick_at(dt)
    assert REQUEST_EVERY == 5.0
    assert env.channel.of("push-request") == [{"role": "BACKUP"}] * 3  # at 0, 5 and 10
    env.warm.warm = True
    for dt in range(12, 40):
        env.tick_at(dt)
    assert len(env.channel.of("push-request")) == 3


def test_a_cold_peer_does_not_ask_while_a_push_is_on_its_way():
    # A request sent during a push makes the master queue a second one, which reaches the
    # kernel's backup daemon while the first is being checked.
    env = Env(role="BACKUP")
    env.tick_at(0)
    env.begin()
    env.dgram(DGRAMS[0])
    for dt in range(1, 30):
        env.tick_at(dt)
    assert len(env.channel.of("push-request")) == 1  # only the one at 0
    env.dgram(DGRAMS[1])
    env.end()  # incomplete: the third datagram never came
    assert not env.warm.warm
    env.tick_at(30)  # asks again at once
    assert len(env.channel.of("push-request")) == 2


def test_a_push_that_never_ends_lets_the_peer_ask_again_once_forgotten():
    env = Env(role="BACKUP")
    env.tick_at(0)
    env.begin()
    env.tick_at(COLLECT_TIMEOUT)
    assert len(env.channel.of("push-request")) == 1
    env.tick_at(COLLECT_TIMEOUT + 1)  # forgotten, and the same tick asks
    assert env.agent.st.collecting == {}
    assert len(env.channel.of("push-request")) == 2


def test_an_unknown_role_asks_too_and_says_so():
    env = Env(role=None)
    env.tick_at(0)
    assert env.channel.of("push-request") == [{"role": "unknown"}]


def test_without_a_control_channel_nothing_is_sent():
    env = Env(role="BACKUP", channel=False)
    for dt in range(0, 12):
        env.tick_at(dt)
    env.agent.on_message(new_message("status-request", "lb1", {}), MASTER_ADDR)
    assert env.warm.refreshes == 12


# -- forgetting pushes that never ended


def test_a_collector_whose_end_never_came_is_dropped_after_collect_timeout(caplog):
    caplog.set_level(logging.WARNING)
    env = Env(role="BACKUP")
    env.tick_at(0)
    env.begin()
    env.dgram(DGRAMS[0])
    env.tick_at(COLLECT_TIMEOUT)
    assert list(env.agent.st.collecting) == ["abc"]
    env.tick_at(COLLECT_TIMEOUT + 1)
    assert env.agent.st.collecting == {}
    assert f"push abc from {PUSH_SRC}: no end after 120 s; forgotten" in caplog.text
    # its end, late: nothing to check
    env.dgram(DGRAMS[1])
    env.dgram(DGRAMS[2])
    env.end()
    assert env.ops.checked == [] and not env.warm.warm
    # datagrams go to the backlog again
    assert len(env.agent.st.backlog) == 2


# -- run()


def test_run_starts_the_gate_and_ticks_once_a_second(monkeypatch):
    env = Env(role="MASTER", channel=False)
    slept = []

    def sleep(s):
        slept.append(s)
        env.clock.t += s

    monkeypatch.setattr(agent_mod, "time", SimpleNamespace(sleep=sleep, time=lambda: 0.0))
    env.clock.t = T0
    calls = []

    def should_stop():
        calls.append(env.clock.t)
        return len(calls) > 3

    env.agent.run(should_stop)
    assert env.warm.starts == 1
    assert env.warm.refreshes == 3
    assert slept == [1.0, 1.0, 1.0]
    assert len(env.ops.pushes) == 1


# -- the real warm gate, on a temporary run_dir


def test_warm_gate_starts_cold_and_writes_the_track_file(tmp_path):
    from lvs_hooks.agent import WarmGate

    cfg = parse_config(f"paths:\n  run_dir: {tmp_path / 'run'}\n", "test")
    gate = WarmGate(cfg)
    gate.start()
    track = tmp_path / "run" / "warmup.track"
    assert not gate.is_warm()
    assert track.read_text() == "1\n"
    gate.mark_warm("full push abc from lb1", {"verified": 91})
    assert gate.is_warm()
    assert track.read_text() == "1\n"  # until the next refresh
    gate.refresh()
    assert track.read_text() == "0\n"
    state = gate.store.load()
    assert (state.reason, state.figures) == ("full push abc from lb1", {"verified": 91})


class QueuedListener:
    """The sync-group listener with datagrams still in its socket queue."""

    def __init__(self, items):
        self.items = list(items)

    def recv(self, timeout):
        return self.items.pop(0) if self.items else None


def test_push_end_first_drains_the_datagrams_still_queued_on_the_listener():
    env = Env(role="BACKUP")
    env.tick_at(0)
    env.begin()
    env.dgram(DGRAMS[0])
    # the last datagrams left before push-end but wait in the listener's queue: a busy agent
    env.agent.listener = QueuedListener([(DGRAMS[1], PUSH_SRC), (DGRAMS[2], PUSH_SRC)])
    env.end()
    assert env.ops.checked == [KEYS] and env.warm.warm
    assert env.agent.listener.items == []


def test_a_push_read_late_keeps_more_than_a_few_hundred_datagrams_in_the_backlog():
    env = Env(role="BACKUP")
    for _ in range(1000):  # the kernel's own sync traffic while the agent was busy
        env.dgram(KERNEL_DGRAM, KERNEL_SRC)
    for d in DGRAMS:
        env.dgram(d)
    env.begin()
    env.end()
    assert env.ops.checked == [KEYS] and env.warm.warm
