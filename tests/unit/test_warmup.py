"""The warm-up gate: the pure rule, the state file, the track file, and `lvs-hooks ready`."""

import json
import logging
import os
import re
import time
from types import SimpleNamespace

import filelock
import pytest
from click.testing import CliRunner

from lvs_hooks import warmup
from lvs_hooks.atomicfile import temp_files
from lvs_hooks.cli import cli
from lvs_hooks.errors import LvsHooksError
from lvs_hooks.warmup import (
    Decision,
    WarmState,
    WarmupStore,
    decide,
    refresh,
    refresh_detail,
    track_file_path,
    track_value,
    write_track_file,
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def cfg_for(tmp_path, track_file=None, max_wait=120.0):
    return SimpleNamespace(
        paths=SimpleNamespace(run_dir=str(tmp_path / "run")),
        warmup=SimpleNamespace(track_file=track_file, max_wait=max_wait),
    )


# --------------------------------------------------------------------------------------------
# decide


def test_no_state_is_not_eligible_and_says_it_is_safe():
    d = decide(None, T0, 120)
    assert d == Decision(
        False,
        "not started: the lvs-hooks agent has not run since boot, so nothing warms the table "
        "and this director never preempts (safe: the gate only lowers its priority, so it "
        "still takes over when it is alone)",
    )


def test_cold_within_max_wait_says_how_long_and_how_much_more():
    d = decide(WarmState(started=T0), T0 + 12.4, 120)
    assert d == Decision(
        False, "cold for 12 s: waiting for a push or a verified reseed, at most 108 s more"
    )


def test_cold_remaining_rounds_up_never_says_zero_more():
    d = decide(WarmState(started=T0), T0 + 119.5, 120)
    assert not d.eligible and d.reason.endswith("at most 1 s more")


def test_max_wait_boundary():
    state = WarmState(started=T0)
    assert not decide(state, T0 + 119.999, 120).eligible
    at = decide(state, T0 + 120, 120)
    assert at == Decision(True, "not warm after 120 s: eligible anyway (warmup.max_wait 120 s)")
    later = decide(state, T0 + 300.7, 120)
    assert later == Decision(True, "not warm after 300 s: eligible anyway (warmup.max_wait 120 s)")
    assert decide(state, T0 + 0.5, 0.5).reason == (
        "not warm after 0 s: eligible anyway (warmup.max_wait 0.5 s)"
    )


def test_warm_names_what_warmed_it_and_when():
    state = WarmState(
        started=T0,
        warm=True,
        warm_since=T0 + 37.2,
        reason="full push from 10.0.0.2",
        figures={"templates": 1234},
    )
    d = decide(state, T0 + 40, 120)
    assert d == Decision(
        True, "warm since 2023-11-14T22:13:57Z (37 s after start): full push from 10.0.0.2"
    )


def test_warm_without_reason_or_time_still_eligible():
    assert decide(WarmState(started=T0, warm=True), T0 + 1, 120) == Decision(True, "warm")
    d = decide(WarmState(started=T0, warm=True, warm_since=T0), T0 + 1, 120)
    assert d == Decision(True, "warm since 2023-11-14T22:13:20Z (0 s after start)")


def test_handover_is_not_eligible_even_when_warm_or_after_max_wait():
    handing = "handing over: a planned handover asked this director to give up MASTER"
    warm = WarmState(started=T0, warm=True, warm_since=T0 + 5, reason="x", handover=True)
    assert decide(warm, T0 + 10, 120) == Decision(False, handing)
    cold = WarmState(started=T0, handover=True)
    assert decide(cold, T0 + 10_000, 120) == Decision(False, handing)


def test_started_in_the_future_counts_as_just_started():
    d = decide(WarmState(started=T0 + 3600), T0, 120)
    assert d == Decision(
        False, "cold for 0 s: waiting for a push or a verified reseed, at most 120 s more"
    )


def test_track_value():
    assert track_value(Decision(True, "")) == 0
    assert track_value(Decision(False, "")) == 1


# --------------------------------------------------------------------------------------------
# WarmState


def test_state_round_trip_and_defaults():
    state = WarmState(T0, True, T0 + 1, "reseed verified", {"verified": 10}, True)
    assert WarmState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert WarmState.from_dict({"started": 5}) == WarmState(started=5.0)
    # Keys other than the six (a newer writer) are ignored.
    assert WarmState.from_dict({"started": 5, "later": 1}) == WarmState(started=5.0)


@pytest.mark.parametrize(
    "data, message",
    [
        ([1, 2], "expected a JSON object, got an array"),
        ({}, "'started' is missing"),
        ({"started": None}, "'started' must be epoch seconds (a number), got null"),
        (
            {"started": "1700000000"},
            "'started' must be epoch seconds (a number >= 0), got the string \"1700000000\"",
        ),
        ({"started": True}, "'started' must be epoch seconds (a number >= 0), got true"),
        ({"started": -1}, "'started' must be epoch seconds (a number >= 0), got the number -1"),
        ({"started": 1, "warm": "yes"}, "'warm' must be true or false, got the string \"yes\""),
        ({"started": 1, "warm": 1}, "'warm' must be true or false, got the number 1"),
        ({"started": 1, "warm_since": "x"}, "'warm_since' must be epoch seconds"),
        ({"started": 1, "reason": 3}, "'reason' must be a string, got the number 3"),
        ({"started": 1, "figures": []}, "'figures' must be an object, got an array"),
        ({"started": 1, "handover": None}, "'handover' must be true or false, got null"),
    ],
)
def test_from_dict_refuses_what_is_not_a_state(data, message):
    with pytest.raises(ValueError) as e:
        WarmState.from_dict(data)
    assert str(e.value).startswith(message)


# --------------------------------------------------------------------------------------------
# WarmupStore


def test_load_without_state_is_none(tmp_path):
    assert WarmupStore(tmp_path / "run").load() is None


def test_start_creates_a_cold_state_mode_0600_in_a_new_run_dir(tmp_path):
    store = WarmupStore(tmp_path / "run")
    state = store.start(T0)
    assert state == WarmState(started=T0)
    assert store.load() == state
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert json.loads(store.path.read_text()) == {
        "started": T0,
        "warm": False,
        "warm_since": None,
        "reason": "",
        "figures": {},
        "handover": False,
    }
    assert temp_files(tmp_path / "run") == []


def test_restarting_the_agent_keeps_started_and_warmth(tmp_path):
    store = WarmupStore(tmp_path / "run")
    store.start(T0)
    store.mark_warm("full push from 10.0.0.2", {"templates": 7}, T0 + 10)
    again = store.start(T0 + 500)
    assert again.started == T0 and again.warm and again.warm_since == T0 + 10
    assert store.load() == again


def test_start_moves_a_future_start_to_now(tmp_path, caplog):
    store = WarmupStore(tmp_path / "run")
    store.start(T0 + 3600)
    with caplog.at_level(logging.WARNING):
        assert store.start(T0).started == T0
    assert store.load().started == T0
    assert "3600 s in the future" in caplog.text


def test_start_replaces_a_corrupt_state_with_a_warning(tmp_path, caplog):
    store = WarmupStore(tmp_path / "run")
    (tmp_path / "run").mkdir()
    store.path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        state = store.start(T0)
    assert state == WarmState(started=T0) and store.load() == state
    assert str(store.path) in caplog.text and "starting afresh" in caplog.text


def test_mark_warm_records_reason_figures_time_and_only_the_first_time(tmp_path):
    store = WarmupStore(tmp_path / "run")
    store.start(T0)
    first = store.mark_warm("full push from 10.0.0.2", {"templates": 1234}, T0 + 30)
    assert first == WarmState(T0, True, T0 + 30, "full push from 10.0.0.2", {"templates": 1234})
    mtime = store.path.stat().st_mtime_ns
    second = store.mark_warm("reseed verified", {"verified": 3}, T0 + 60)
    assert second == first and store.load() == first
    assert store.path.stat().st_mtime_ns == mtime


def test_mark_warm_and_handover_without_start_make_a_state(tmp_path):
    store = WarmupStore(tmp_path / "a")
    assert store.mark_warm("reseed verified", None, T0).started == T0
    other = WarmupStore(tmp_path / "b")
    assert other.set_handover(True, T0) == WarmState(started=T0, handover=True)


def test_set_handover_sets_and_clears_and_keeps_the_rest(tmp_path):
    store = WarmupStore(tmp_path / "run")
    store.start(T0)
    store.mark_warm("full push from 10.0.0.2", {"templates": 1}, T0 + 5)
    assert store.set_handover(True).handover
    assert store.load().handover and store.load().warm
    assert not store.set_handover(False).handover
    assert store.load() == WarmState(
        T0, True, T0 + 5, "full push from 10.0.0.2", {"templates": 1}, False
    )


@pytest.mark.parametrize(
    "content, what",
    [
        (b"", "not JSON"),
        (b'{"started": 1', "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"warm": true}', "'started' is missing"),
        (b'{"started": 1, "warm": "no"}', "'warm' must be true or false"),
    ],
)
def test_corrupt_state_is_one_line_naming_the_file(tmp_path, content, what):
    store = WarmupStore(tmp_path / "run")
    (tmp_path / "run").mkdir()
    store.path.write_bytes(content)
    with pytest.raises(LvsHooksError) as e:
        store.load()
    message = e.value.format_message()
    assert "\n" not in message
    assert message.startswith(f"warm-up state {store.path} is corrupt: ")
    assert what in message and "remove it to start afresh" in message
    with pytest.raises(LvsHooksError):
        store.mark_warm("x", {}, T0)
    with pytest.raises(LvsHooksError):
        store.set_handover(True, T0)
    assert store.path.read_bytes() == content  # left for the operator to look at


def test_lock_held_elsewhere_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(warmup, "LOCK_TIMEOUT", 0.05)
    store = WarmupStore(tmp_path / "run")
    store.start(T0)
    other = filelock.FileLock(str(store.lock_path))
    with other, pytest.raises(LvsHooksError) as e:
        store.set_handover(True)
    assert str(store.lock_path) in e.value.format_message()
    assert not store.load().handover


# --------------------------------------------------------------------------------------------
# The track file


def test_track_file_path(tmp_path):
    assert track_file_path(cfg_for(tmp_path)) == str(tmp_path / "run" / "warmup.track")
    assert track_file_path(cfg_for(tmp_path, "/etc/x.track")) == "/etc/x.track"


def test_track_file_written_atomically_and_only_on_change(tmp_path):
    path = tmp_path / "warmup.track"
    assert write_track_file(path, 1) is True
    assert path.read_bytes() == b"1\n"
    assert path.stat().st_mode & 0o777 == 0o644
    before = path.stat()
    time.sleep(0.01)
    assert write_track_file(path, 1) is False
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert write_track_file(path, 0) is True
    assert path.read_bytes() == b"0\n"
    # Replaced by rename (a new inode), never rewritten in place: keepalived sees IN_MOVED_TO
    # and never a half-written file.
    assert path.stat().st_ino != before.st_ino
    assert temp_files(tmp_path) == []


def test_track_file_with_other_content_is_rewritten(tmp_path):
    path = tmp_path / "warmup.track"
    path.write_text("1")  # keepalived's init_file writes "1\n"; anything else is replaced
    assert write_track_file(path, 1) is True and path.read_text() == "1\n"


def test_unwritable_track_file_is_a_clear_error(tmp_path):
    with pytest.raises(LvsHooksError) as e:
        write_track_file(tmp_path / "nodir" / "warmup.track", 0)
    assert "nodir/warmup.track: cannot write" in e.value.format_message()


# --------------------------------------------------------------------------------------------
# refresh


def test_refresh_follows_the_state(tmp_path):
    cfg = cfg_for(tmp_path)
    track = tmp_path / "run" / "warmup.track"
    assert refresh(cfg, T0) == Decision(False, decide(None, T0, 120).reason)
    assert track.read_text() == "1\n"
    store = WarmupStore(cfg.paths.run_dir)
    store.start(T0)
    r = refresh_detail(cfg, T0 + 10)
    assert (r.decision.eligible, r.track_value, r.changed) == (False, 1, False)
    store.mark_warm("reseed verified", {"verified": 9}, T0 + 20)
    r = refresh_detail(cfg, T0 + 21)
    assert (r.decision.eligible, r.track_value, r.changed) == (True, 0, True)
    assert r.state == store.load() and r.track_file == str(track)
    assert track.read_text() == "0\n"
    store.set_handover(True)
    assert refresh(cfg, T0 + 22).reason.startswith("handing over")
    assert track.read_text() == "1\n"


def test_refresh_after_max_wait_and_with_a_configured_track_file(tmp_path):
    track = tmp_path / "elsewhere.track"
    cfg = cfg_for(tmp_path, str(track), max_wait=60)
    WarmupStore(cfg.paths.run_dir).start(T0)
    assert not refresh(cfg, T0 + 59.9).eligible and track.read_text() == "1\n"
    assert refresh(cfg, T0 + 60).eligible and track.read_text() == "0\n"
    assert not (tmp_path / "run" / "warmup.track").exists()


def test_refresh_moves_a_future_start_to_now_so_a_clock_step_costs_at_most_max_wait(tmp_path):
    cfg = cfg_for(tmp_path)
    store = WarmupStore(cfg.paths.run_dir)
    store.start(T0 + 86400)  # recorded before the clock was set back a day
    assert not refresh(cfg, T0).eligible
    assert store.load().started == T0
    assert refresh(cfg, T0 + 120).eligible


def test_refresh_with_corrupt_state_writes_1_and_raises(tmp_path):
    cfg = cfg_for(tmp_path)
    track = tmp_path / "run" / "warmup.track"
    (tmp_path / "run").mkdir()
    track.write_text("0\n")
    (tmp_path / "run" / "warmup.json").write_text('{"started": "yesterday"}')
    with pytest.raises(LvsHooksError) as e:
        refresh(cfg, T0)
    assert "warmup.json is corrupt: 'started'" in e.value.format_message()
    assert track.read_text() == "1\n"


# --------------------------------------------------------------------------------------------
# lvs-hooks ready


@pytest.fixture
def env(tmp_path):
    cfg = tmp_path / "lvs-hooks.yaml"
    cfg.write_text(
        f"paths:\n  state_dir: {tmp_path / 'state'}\n  run_dir: {tmp_path / 'run'}\n"
        f"  proc_root: {tmp_path / 'proc'}\nwarmup:\n  max_wait: 60\n"
    )
    return tmp_path, cfg


def ready(cfg, *args):
    return CliRunner().invoke(cli, ["--config", str(cfg), "ready", *args])


# The first CLI run of the test process logs to the runner's stderr, which click mixes in.
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def printed(result):
    """What the command printed, without log lines."""
    return "".join(
        line for line in result.output.splitlines(keepends=True) if not _LOG_LINE.match(line)
    )


def test_ready_without_state_exits_1_with_the_reason(env):
    tmp, cfg = env
    r = ready(cfg)
    assert r.exit_code == 1, r.output
    assert printed(r).startswith("not started: the lvs-hooks agent has not run since boot")
    assert printed(r).count("\n") == 1
    assert (tmp / "run" / "warmup.track").read_text() == "1\n"


def test_ready_cold_then_warm(env):
    tmp, cfg = env
    store = WarmupStore(tmp / "run")
    store.start(time.time() - 10)
    r = ready(cfg)
    assert r.exit_code == 1
    assert printed(r).startswith("cold for 10 s: waiting for a push or a verified reseed")
    store.mark_warm("full push from 10.0.0.2", {"templates": 1234})
    r = ready(cfg)
    assert r.exit_code == 0, r.output
    assert "warm since" in printed(r) and printed(r).rstrip().endswith("full push from 10.0.0.2")
    assert (tmp / "run" / "warmup.track").read_text() == "0\n"


def test_ready_json_fields(env):
    tmp, cfg = env
    store = WarmupStore(tmp / "run")
    started = time.time() - 61
    store.start(started)
    r = ready(cfg, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(printed(r))
    assert report == {
        "eligible": True,
        "reason": report["reason"],
        "state": {
            "started": started,
            "warm": False,
            "warm_since": None,
            "reason": "",
            "figures": {},
            "handover": False,
        },
        "track_file": str(tmp / "run" / "warmup.track"),
        "track_value": 0,
    }
    assert report["reason"].startswith("not warm after 61 s: eligible anyway")
    store.set_handover(True)
    r = ready(cfg, "--json")
    assert r.exit_code == 1
    report = json.loads(printed(r))
    assert (report["eligible"], report["track_value"]) == (False, 1)
    assert report["state"]["handover"] is True and report["reason"].startswith("handing over")


def test_ready_json_without_state(env):
    tmp, cfg = env
    r = ready(cfg, "--json")
    assert r.exit_code == 1
    report = json.loads(printed(r))
    assert report["state"] is None and report["track_value"] == 1 and not report["eligible"]


def test_ready_with_corrupt_state_is_one_error_line_and_non_zero(env):
    tmp, cfg = env
    (tmp / "run").mkdir()
    (tmp / "run" / "warmup.json").write_text("garbage")
    for args in ((), ("--json",)):
        r = ready(cfg, *args)
        assert r.exit_code != 0
        errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and str(tmp / "run" / "warmup.json") in errors[0]
        assert "corrupt" in errors[0]
        assert (tmp / "run" / "warmup.track").read_text() == "1\n"


def test_ready_logs_the_decision_with_figures(env, caplog):
    tmp, cfg = env
    store = WarmupStore(tmp / "run")
    store.start()
    store.mark_warm("reseed verified", {"verified": 42})
    with caplog.at_level(logging.INFO, logger="lvs_hooks"):
        assert ready(cfg).exit_code == 0
    (record,) = [r for r in caplog.records if r.name == "lvs_hooks.commands.ready"]
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert message.startswith("warm-up gate: eligible: warm since")
    assert "figures {'verified': 42}" in message and "now 0" in message
    assert os.path.basename(str(tmp / "run" / "warmup.track")) in message
