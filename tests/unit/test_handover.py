"""The planned handover: push, wait for a peer's confirmation, give up MASTER through the
warm-up gate's track file, wait for keepalived. Fake ops, channel and clock; a real run_dir."""

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from lvs_hooks import handover as handover_mod
from lvs_hooks.cli import cli
from lvs_hooks.config import parse_config
from lvs_hooks.control.message import new_message
from lvs_hooks.errors import ControlError, HandoverFailed
from lvs_hooks.events.role import read_role, write_role
from lvs_hooks.handover import ASK_EVERY, PUSH_ATTEMPTS, cancel, handover, node_name
from lvs_hooks.warmup import WarmupStore

T0 = 100.0
PEER_ADDR = "10.9.0.2"


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


class FakeOps:
    def __init__(self, planned=91):
        self.pushes = []
        self.planned = planned

    def push(self, channel):
        self.pushes.append(channel)
        n = len(self.pushes)
        return {"push_id": f"p{n}", "planned": self.planned, "bytes": 1000 + n}


def last_push(push_id, complete=True, missing=0, verified=91, reason=""):
    return {"push_id": push_id, "source": "10.9.0.1:40001", "complete": complete,
            "reason": reason, "templates": 91, "verified": verified, "put_back": 2,
            "repointed": 1, "stale_in_use": 3, "missing": missing, "at": 0.0}


def reply(sender, last, nonce="0" * 32):
    return new_message("status-reply", sender, {"in_reply_to": nonce, "role": "BACKUP",
                                                "warm": True, "last_push": last})


class FakeChannel:
    """Answers each status-request with what `peers(push_id, n)` returns (n: the how many-th
    request for that push), delivered by the following recv() calls; an empty recv() waits
    its whole timeout on the fake clock."""

    def __init__(self, clock, peers=lambda push_id, n: []):
        self.clock = clock
        self.peers = peers
        self.sent = []
        self.queue = []
        self.asked = {}
        self.closed = False

    def send(self, kind, body):
        self.sent.append((kind, body))
        if kind == "status-request":
            n = self.asked[body["push_id"]] = self.asked.get(body["push_id"], 0) + 1
            self.queue.extend(self.peers(body["push_id"], n))

    def recv(self, timeout):
        if self.queue:
            self.clock.t += 0.01
            return self.queue.pop(0), PEER_ADDR
        self.clock.t += timeout
        return None

    def close(self):
        self.closed = True

    def requests(self):
        return [b for k, b in self.sent if k == "status-request"]


class Keepalived:
    """Stands in for handover's 0.1 s polling sleep: advances the clock, and once the track
    file has said 1 for `after` seconds makes this director BACKUP (unless `never`)."""

    def __init__(self, clock, run_dir, track, after=0.5, never=False):
        self.clock, self.run_dir, self.track = clock, run_dir, track
        self.after, self.never = after, never
        self.seen_at = None
        self.flag_seen = None

    def sleep(self, s):
        assert s == 0.1
        self.clock.t += s
        state = WarmupStore(self.run_dir).load()
        self.flag_seen = state.handover
        if self.never or not state.handover:
            return
        with open(self.track) as f:
            if f.read() != "1\n":
                return
        if self.seen_at is None:
            self.seen_at = self.clock.t
        if self.clock.t - self.seen_at >= self.after:
            write_role(self.run_dir, "BACKUP", "VI_1")


@pytest.fixture
def env(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    cfg = parse_config(
        f"paths:\n  run_dir: {run_dir}\n  state_dir: {tmp_path / 'state'}\n"
        "control:\n  name: lb1\nwarmup:\n  max_wait: 120\n",
        "test",
    )
    clock = Clock()
    track = str(tmp_path / "run" / "warmup.track")
    keepalived = Keepalived(clock, run_dir, track)
    monkeypatch.setattr(handover_mod, "time", SimpleNamespace(sleep=keepalived.sleep))
    write_role(run_dir, "MASTER", "VI_1")
    store = WarmupStore(run_dir)
    store.start()
    store.mark_warm("master: its table is the reference", {})  # what the master's agent did
    return SimpleNamespace(app=SimpleNamespace(config=cfg), cfg=cfg, run_dir=run_dir,
                           clock=clock, track=track, keepalived=keepalived, store=store)


def run(env, peers, timeout=10.0, ops=None):
    ch = FakeChannel(env.clock, peers)
    ops = ops or FakeOps()
    try:
        return handover(env.app.config, timeout, ops=ops, channel=ch, clock=env.clock), ch, ops
    finally:
        assert not ch.closed  # the caller's channel is the caller's to close


def track_value(env):
    with open(env.track) as f:
        return f.read()


def test_node_name_is_the_configured_one_or_the_host_name(env):
    assert node_name(env.cfg) == "lb1"
    import socket

    cfg = parse_config("sync:\n  syncid: 3\n", "test")
    assert node_name(cfg) == socket.gethostname()


@pytest.mark.parametrize("role", [None, "BACKUP", "FAULT"])
def test_only_a_master_hands_over(env, role):
    if role is None:
        import os

        os.remove(f"{env.run_dir}/role.json")
    else:
        write_role(env.run_dir, role, "VI_1")
    ops = FakeOps()
    ch = FakeChannel(env.clock)
    with pytest.raises(HandoverFailed) as e:
        handover(env.app.config, 10, ops=ops, channel=ch, clock=env.clock)
    assert e.value.exit_code == 10
    what = role or "in no known role (no transition since boot)"
    assert e.value.format_message() == f"this director is {what}: only the master hands over"
    assert ops.pushes == [] and ch.sent == []
    assert env.store.load().handover is False


def test_confirmed_push_sets_the_flag_and_returns_once_backup(env):
    def peers(push_id, n):
        return [reply("lb2", last_push(push_id))]

    report, ch, ops = run(env, peers)
    assert ops.pushes == [ch]
    assert ch.requests() == [{"push_id": "p1"}]
    state = env.store.load()
    assert state.handover is True
    assert track_value(env) == "1\n"
    assert read_role(env.run_dir) == "BACKUP"
    assert env.keepalived.flag_seen is True  # the flag was set while it still was MASTER
    assert report == {
        "peer": "lb2",
        "push_id": "p1",
        "templates": 91,
        "pushes": 1,
        "peer_verified": 91,
        "peer_put_back": 2,
        "peer_repointed": 1,
        "peer_stale_in_use": 3,
        "bytes": 1001,
        "ms_to_confirmation": 10,
        "ms": report["ms"],
        "role": "BACKUP",
    }
    # keepalived took 0.5 s after it saw the track file, polled every 0.1 s
    assert report["ms"] == round((env.clock.t - T0) * 1000)
    assert 600 <= report["ms"] <= 720


def test_replies_from_this_node_are_ignored(env):
    # the local agent answers too (sender lb1), and so may `lvs-hooks push` (lb1/push)
    def peers(push_id, n):
        if n == 1:
            return [reply("lb1", last_push(push_id)), reply("lb1/push", last_push(push_id))]
        return [reply("lb1x", last_push(push_id))]  # another node whose name starts alike

    report, ch, ops = run(env, peers)
    assert report["peer"] == "lb1x"
    assert len(ch.requests()) == 2
    assert report["ms_to_confirmation"] == 1010  # the second request, one second later


def test_replies_about_another_push_or_of_another_kind_are_ignored(env):
    def peers(push_id, n):
        if n == 1:
            return [reply("lb2", last_push("old")),
                    new_message("push-request", "lb2", {"role": "BACKUP"}),
                    reply("lb2", {})]
        return [reply("lb2", last_push(push_id))]

    report, ch, ops = run(env, peers)
    assert (report["peer"], report["push_id"], report["pushes"]) == ("lb2", "p1", 1)
    assert len(ch.requests()) == 2


def test_a_peer_with_the_push_incomplete_gets_it_again(env):
    def peers(push_id, n):
        if push_id == "p1":
            return [reply("lb2", last_push(push_id, complete=False, verified=0,
                                           reason="2 of 3 datagrams arrived"))]
        if push_id == "p2":  # complete, but two templates could not be put in
            return [reply("lb2", last_push(push_id, missing=2, verified=89))]
        return [reply("lb2", last_push(push_id))]

    report, ch, ops = run(env, peers)
    assert len(ops.pushes) == 3
    assert [r["push_id"] for r in ch.requests()] == ["p1", "p2", "p3"]
    assert (report["push_id"], report["pushes"], report["bytes"]) == ("p3", 3, 1001 + 1002 + 1003)
    assert env.store.load().handover is True


def test_at_most_push_attempts_pushes_then_nothing_is_given_up(env):
    def peers(push_id, n):
        return [reply("lb2", last_push(push_id, complete=False, reason="digest differs"))]

    with pytest.raises(HandoverFailed) as e:
        run(env, peers)
    assert e.value.exit_code == 10
    assert "no peer confirmed the push of 91 templates within 10 s" in e.value.format_message()
    assert PUSH_ATTEMPTS == 3
    assert env.keepalived.flag_seen is None  # never polled for keepalived
    state = env.store.load()
    assert state.handover is False and state.warm is True
    assert read_role(env.run_dir) == "MASTER"


def test_no_confirmation_before_the_deadline_gives_nothing_up(env, tmp_path):
    ch = FakeChannel(env.clock)
    ops = FakeOps(planned=7)
    with pytest.raises(HandoverFailed) as e:
        handover(env.app.config, 4.5, ops=ops, channel=ch, clock=env.clock)
    assert e.value.format_message() == (
        "no peer confirmed the push of 7 templates within 4.5 s: this director stays master, "
        "nothing was given up"
    )
    assert len(ops.pushes) == 1  # nobody answered: another push would not help
    assert ASK_EVERY == 1.0
    assert ch.requests() == [{"push_id": "p1"}] * 5  # at 0, 1, 2, 3 and 4 s
    assert env.clock.t == pytest.approx(T0 + 4.5)
    assert env.store.load().handover is False
    assert not (tmp_path / "run" / "warmup.track").exists()
    assert read_role(env.run_dir) == "MASTER"


def test_keepalived_never_demoting_fails_and_clears_the_flag(env):
    env.keepalived.never = True

    def peers(push_id, n):
        return [reply("lb2", last_push(push_id))]

    with pytest.raises(HandoverFailed) as e:
        run(env, peers, timeout=3)
    msg = e.value.format_message()
    assert msg.startswith("lb2 confirmed 91 templates, but keepalived kept this director "
                          "master for 3 s after the track file said 1")
    assert msg.endswith("The handover flag is cleared.")
    assert env.keepalived.flag_seen is True  # it was set while waiting
    assert env.store.load().handover is False
    assert track_value(env) == "0\n"  # warm again, eligible
    assert env.clock.t == pytest.approx(T0 + 3, abs=0.11)


def test_without_a_control_channel_handover_refuses_before_pushing(env):
    ops = FakeOps()
    with pytest.raises(ControlError) as e:
        handover(env.app.config, 10, ops=ops, clock=env.clock)
    assert e.value.format_message() == "control.key_file is not set: no control channel"
    assert ops.pushes == []
    assert env.store.load().handover is False


def test_cancel_clears_the_flag(env):
    env.store.set_handover(True)
    out = cancel(env.app.config)
    assert env.store.load().handover is False
    assert out["eligible"] is True
    assert out["reason"].startswith("warm since ")
    assert out["reason"].endswith(": master: its table is the reference")
    assert track_value(env) == "0\n"


# -- the command line


@pytest.fixture
def cli_env(tmp_path):
    cfg = tmp_path / "lvs-hooks.yaml"
    cfg.write_text(
        f"paths:\n  state_dir: {tmp_path / 'state'}\n  run_dir: {tmp_path / 'run'}\n"
        f"  proc_root: {tmp_path / 'proc'}\ncontrol:\n  name: lb1\n"
    )
    return tmp_path, cfg


def invoke(cfg, *args):
    return CliRunner().invoke(cli, ["--config", str(cfg), *args])


def test_cli_cancel_json(cli_env):
    tmp, cfg = cli_env
    store = WarmupStore(tmp / "run")
    store.start()
    store.mark_warm("full push abc from lb2", {})
    store.set_handover(True)
    result = invoke(cfg, "handover", "--cancel", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["eligible"] is True
    assert out["reason"].startswith("warm since ")
    assert out["reason"].endswith(": full push abc from lb2")
    assert store.load().handover is False
    assert (tmp / "run" / "warmup.track").read_text() == "0\n"


def test_cli_cancel_human(cli_env):
    tmp, cfg = cli_env
    store = WarmupStore(tmp / "run")
    store.start()
    store.set_handover(True)
    result = invoke(cfg, "handover", "--cancel")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("handover flag cleared: cold for 0 s: waiting for a push")
    assert len(result.stdout.splitlines()) == 1


def test_cli_handover_when_not_master_is_exit_10_in_one_line(cli_env):
    tmp, cfg = cli_env
    write_role(str(tmp / "run"), "BACKUP", "VI_1")
    result = invoke(cfg, "handover", "--timeout", "1")
    assert result.exit_code == 10
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: this director is BACKUP: only the master hands over"
    ]
    assert not (tmp / "run" / "warmup.json").exists()


def test_cli_handover_with_no_role_since_boot(cli_env):
    tmp, cfg = cli_env
    result = invoke(cfg, "handover", "--json")
    assert result.exit_code == 10
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: this director is in no known role (no transition since boot): only the "
        "master hands over"
    ]


def test_cancel_without_any_state_makes_none(tmp_path):
    from lvs_hooks.config import parse_config
    from lvs_hooks.handover import cancel
    from lvs_hooks.warmup import WarmupStore

    cfg = parse_config(f"paths:\n  run_dir: {tmp_path}\n", "test")
    r = cancel(cfg)
    assert WarmupStore(str(tmp_path)).load() is None
    assert r["eligible"] is False and r["reason"].startswith("not started")
