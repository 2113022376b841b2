"""The sequencer: one transition at a time, the latest event wins, no step half done."""

import itertools
import json
import logging
import multiprocessing
import os
import threading
import time

import filelock
import pytest

from lvs_hooks.errors import KernelError, LockTimeout
from lvs_hooks.events.journal import Journal
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.sequencer import (
    DONE,
    FAILED,
    IGNORED,
    LOCK_NAME,
    SEEN_NAME,
    STALE,
    SUPERSEDED,
    Plan,
    Sequencer,
    Step,
)


def ev(state, order, name="VI_1", kind="INSTANCE"):
    return Event(kind, name, state, 100, "notify", (order, 1, 0))


def make_seq(tmp_path, keep=1000):
    return Sequencer(str(tmp_path / "run"), Journal(str(tmp_path / "state"), keep))


class Recorder:
    """A planner whose steps append `<state> <order> <step> start|end` lines to a file, with
    O_APPEND so that processes and threads can share it."""

    def __init__(self, path, steps=("firewall", "work"), pause=0.0):
        self.path = str(path)
        self.steps = steps
        self.pause = pause

    def _write(self, text):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (text + "\n").encode())
        finally:
            os.close(fd)

    def planner(self, event):
        def step(name):
            def run():
                self._write(f"{event.state} {event.order[0]} {name} start")
                time.sleep(self.pause)
                self._write(f"{event.state} {event.order[0]} {name} end")
                return f"{name} done", {"n": 1}

            return run

        return Plan([Step(n, step(n)) for n in self.steps])

    def lines(self):
        try:
            with open(self.path) as f:
                return [line.split() for line in f.read().splitlines()]
        except FileNotFoundError:
            return []


def journal_of(tmp_path):
    records, bad = Journal(str(tmp_path / "state"), 1000).read()
    assert bad == 0
    return records


def assert_no_overlap(records):
    spans = sorted((r["start_ns"], r["end_ns"]) for r in records)
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert e1 <= s2, f"transitions overlap: {s1}-{e1} and {s2}-{e2}"


def assert_steps_paired(lines):
    """Every step that started ended before any other step started: nothing half done."""
    open_step = None
    for state, order, step, what in lines:
        if what == "start":
            assert open_step is None, f"{state} {order} {step} started inside {open_step}"
            open_step = (state, order, step)
        else:
            assert open_step == (state, order, step)
            open_step = None
    assert open_step is None


# -- one event


def test_transition_runs_every_step_and_is_journaled(tmp_path):
    seq = make_seq(tmp_path)
    rec = Recorder(tmp_path / "steps")
    out = seq.handle(ev("MASTER", 10), rec.planner, 5)
    assert out.outcome == DONE
    assert [line[2:] for line in rec.lines()] == [
        ["firewall", "start"],
        ["firewall", "end"],
        ["work", "start"],
        ["work", "end"],
    ]
    (r,) = journal_of(tmp_path)
    assert r["outcome"] == DONE
    assert r["event"]["state"] == "MASTER"
    assert [s["step"] for s in r["steps"]] == ["firewall", "work"]
    assert all(s["ok"] and s["ms"] >= 0 and s["figures"] == {"n": 1} for s in r["steps"])
    assert r["start_ns"] <= r["steps"][0]["end_ns"] <= r["end_ns"]
    assert r["pid"] == os.getpid()


def test_run_dir_created_private(tmp_path):
    seq = make_seq(tmp_path)
    seq.handle(ev("BACKUP", 1), Recorder(tmp_path / "s").planner, 5)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "run" / LOCK_NAME).exists()


# -- the latest event wins


def test_stale_event_is_skipped_and_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    seq = make_seq(tmp_path)
    rec = Recorder(tmp_path / "steps")
    assert seq.handle(ev("BACKUP", 20), rec.planner, 5).outcome == DONE
    out = seq.handle(ev("MASTER", 10), rec.planner, 5)
    assert out.outcome == STALE
    assert {line[0] for line in rec.lines()} == {"BACKUP"}  # MASTER ran no step
    r = journal_of(tmp_path)[-1]
    assert r["outcome"] == STALE and r["steps"] == []
    assert r["newer"]["state"] == "BACKUP"
    assert "MASTER instance VI_1 prio 100: skipped as stale, a newer BACKUP" in caplog.text


def test_staleness_is_per_instance_or_group(tmp_path):
    seq = make_seq(tmp_path)
    rec = Recorder(tmp_path / "steps")
    assert seq.handle(ev("MASTER", 20, name="VI_1"), rec.planner, 5).outcome == DONE
    assert seq.handle(ev("MASTER", 10, name="VI_2"), rec.planner, 5).outcome == DONE
    assert seq.handle(ev("MASTER", 5, name="VI_1", kind="GROUP"), rec.planner, 5).outcome == DONE
    assert seq.handle(ev("BACKUP", 15, name="VI_1"), rec.planner, 5).outcome == STALE


def test_superseded_between_steps_leaves_the_rest_to_the_newer_event(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    seq = make_seq(tmp_path)
    ran = []

    def planner(event):
        def first():
            ran.append("first")
            # A newer event of the same instance arrives while this step runs.
            seq.note(ev("BACKUP", 99))
            return "ok", {}

        return Plan([Step("first", first), Step("second", lambda: ran.append("second"))])

    out = seq.handle(ev("MASTER", 10), planner, 5)
    assert out.outcome == SUPERSEDED
    assert ran == ["first"]
    r = journal_of(tmp_path)[-1]
    assert [s["step"] for s in r["steps"]] == ["first"] and r["steps"][0]["ok"]
    assert r["left"] == ["second"]
    assert "superseded by a newer BACKUP; leaving second to it" in caplog.text


@pytest.mark.parametrize("start_order", list(itertools.permutations(range(3))))
def test_flap_ends_in_the_last_state_whatever_the_race(tmp_path, start_order):
    """MASTER, BACKUP, MASTER, their processes racing for the lock in any order."""
    rec = Recorder(tmp_path / "steps", pause=0.002)
    events = [ev("MASTER", 1), ev("BACKUP", 2), ev("MASTER", 3)]
    outcomes = {}

    def run(e):
        # A sequencer per thread, as per process: each has its own lock file descriptor.
        outcomes[e.order] = make_seq(tmp_path).handle(e, rec.planner, 10).outcome

    threads = [threading.Thread(target=run, args=(events[i],)) for i in start_order]
    for t in threads:
        t.start()
        t.join(0.001)  # gives the start order a chance; the race is real either way
    for t in threads:
        t.join()
    assert outcomes[(3, 1, 0)] == DONE  # the newest event always runs in full
    records = journal_of(tmp_path)
    assert len(records) == 3
    done = [r for r in records if r["outcome"] == DONE]
    assert done[-1]["event"]["order"][0] == 3
    # Transitions that ran did so oldest first, each complete.
    assert [r["event"]["order"][0] for r in done] == sorted(r["event"]["order"][0] for r in done)
    assert all(len(r["steps"]) == 2 for r in done)
    assert_steps_paired(rec.lines())
    assert_no_overlap(records)


def test_seen_events_of_another_boot_are_forgotten(tmp_path):
    seq = make_seq(tmp_path)
    rec = Recorder(tmp_path / "steps")
    seq.handle(ev("MASTER", 10**15), rec.planner, 5)
    seen = tmp_path / "run" / SEEN_NAME
    data = json.loads(seen.read_text())
    data["boot_id"] = "another-boot"
    seen.write_text(json.dumps(data))
    # After a reboot the boot clock starts again near 0: this is the newest event, not a stale one.
    assert seq.handle(ev("BACKUP", 5), rec.planner, 5).outcome == DONE


def test_damaged_seen_file_is_forgotten_with_a_warning(tmp_path, caplog):
    seq = make_seq(tmp_path)
    (tmp_path / "run").mkdir(mode=0o700)
    (tmp_path / "run" / SEEN_NAME).write_text("{not json")
    assert seq.handle(ev("BACKUP", 5), Recorder(tmp_path / "s").planner, 5).outcome == DONE
    assert "not JSON" in caplog.text


# -- failures


def test_failing_steps_are_logged_and_the_sequence_goes_on(tmp_path, caplog):
    seq = make_seq(tmp_path)
    ran = []

    def kernel():
        raise KernelError("IPVS is not available: the ip_vs module is not loaded")

    def oserror():
        raise PermissionError(13, "Permission denied", "/proc/sys/net/ipv4/vs/sloppy_tcp")

    def bug():
        raise ZeroDivisionError("division by zero")

    def last():
        ran.append("last")
        return "fine", {}

    plan = Plan(
        [Step("timeouts", kernel), Step("sysctls", oserror), Step("buggy", bug), Step("last", last)]
    )
    out = seq.handle(ev("MASTER", 1), lambda e: plan, 5)
    assert out.outcome == FAILED
    assert ran == ["last"]
    steps = {s["step"]: s for s in journal_of(tmp_path)[-1]["steps"]}
    assert steps["timeouts"]["error"] == "IPVS is not available: the ip_vs module is not loaded"
    assert steps["sysctls"]["error"] == "Permission denied (/proc/sys/net/ipv4/vs/sloppy_tcp)"
    assert steps["buggy"]["error"] == "bug: ZeroDivisionError: division by zero"
    assert steps["last"]["ok"]
    assert "timeouts FAILED: IPVS is not available" in caplog.text
    assert "Traceback" in caplog.text  # the bug is loud
    assert "failed steps: timeouts, sysctls, buggy" in caplog.text


def test_ignored_event_is_journaled_without_steps(tmp_path):
    seq = make_seq(tmp_path)
    out = seq.handle(ev("MASTER", 1), lambda e: Plan(note="not watched", ignore=True), 5)
    assert out.outcome == IGNORED
    r = journal_of(tmp_path)[-1]
    assert (r["outcome"], r["note"], r["steps"]) == (IGNORED, "not watched", [])


def test_lock_timeout_does_nothing_and_says_why(tmp_path):
    seq = make_seq(tmp_path)
    (tmp_path / "run").mkdir(mode=0o700)
    ran, errors = [], []

    def handle():
        try:
            seq.handle(ev("STOP", 1), lambda e: Plan([Step("x", lambda: ran.append("x"))]), 0.2)
        except LockTimeout as e:
            errors.append(e)

    with filelock.FileLock(str(tmp_path / "run" / LOCK_NAME)):
        t = threading.Thread(target=handle)
        t.start()
        t.join()
    (err,) = errors
    assert err.exit_code == 7
    assert "more than 0.2 s; this event was not acted on" in err.format_message()
    assert ran == []
    assert journal_of(tmp_path) == []


def test_unwritable_journal_fails_the_transition(tmp_path):
    (tmp_path / "state").write_text("a file where the directory should be")
    seq = make_seq(tmp_path)
    out = seq.handle(ev("MASTER", 1), Recorder(tmp_path / "s").planner, 5)
    assert out.outcome == FAILED
    assert "journal_error" in out.record


# -- concurrency


def test_threads_serialize(tmp_path):
    rec = Recorder(tmp_path / "steps", pause=0.001)
    events = [ev(("MASTER", "BACKUP")[i % 2], i + 1, name=f"VI_{i % 5}") for i in range(30)]
    threads = [
        threading.Thread(target=lambda e=e: make_seq(tmp_path).handle(e, rec.planner, 30))
        for e in events
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = journal_of(tmp_path)
    assert len(records) == 30
    assert_no_overlap(records)
    assert_steps_paired(rec.lines())
    _assert_latest_applied_last(records)


def _assert_latest_applied_last(records):
    """For each instance, the newest event ran, and ran after every other that ran."""
    by_key = {}
    for r in records:
        by_key.setdefault(r["event"]["name"], []).append(r)
    for name, rs in by_key.items():
        newest = max(rs, key=lambda r: r["event"]["order"])
        assert newest["outcome"] == DONE, name
        done = [r for r in rs if r["outcome"] == DONE]
        assert done[-1] is newest, name


def _process_main(tmp, state, order, name):
    rec = Recorder(os.path.join(tmp, "steps"), pause=0.001)
    seq = Sequencer(os.path.join(tmp, "run"), Journal(os.path.join(tmp, "state"), 1000))
    seq.handle(
        Event("INSTANCE", name, state, 100, "notify", (order, os.getpid(), 0)), rec.planner, 60
    )


def test_processes_serialize(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(
            target=_process_main,
            args=(str(tmp_path), ("MASTER", "BACKUP", "FAULT")[i % 3], i + 1, f"VI_{i % 4}"),
        )
        for i in range(24)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = journal_of(tmp_path)
    assert len(records) == 24
    assert len({r["pid"] for r in records}) == 24
    assert_no_overlap(records)
    assert_steps_paired(Recorder(tmp_path / "steps").lines())
    _assert_latest_applied_last(records)


@pytest.mark.parametrize("noted_ahead", [False, True], ids=["notify", "fifo-or-inbox"])
def test_a_stop_that_timed_out_on_the_lock_leaves_no_trace(tmp_path, noted_ahead):
    """The issue's case: MASTER runs, BACKUP waits, STOP times out on the lock (0.3 s). The
    BACKUP must still run once MASTER is done, as if the STOP had never come."""
    seq = make_seq(tmp_path)
    rec = Recorder(tmp_path / "steps")
    seq.handle(ev("MASTER", 1), rec.planner, 5)
    backup = ev("BACKUP", 2)
    seq.note(backup)  # waiting for the lock, noted as the newest
    stop = ev("STOP", 3)
    if noted_ahead:  # the FIFO reader and the inbox note an event when it is read
        seq.note(stop)
    with filelock.FileLock(str(tmp_path / "run" / LOCK_NAME)), pytest.raises(LockTimeout):
        seq.handle(stop, rec.planner, 0.05)
    assert seq.newer_than(backup) is None
    out = seq.handle(backup, rec.planner, 5)
    assert out.outcome == DONE
    assert [r["event"]["state"] for r in journal_of(tmp_path)] == ["MASTER", "BACKUP"]
    # and a STOP that comes again later runs normally
    assert seq.handle(ev("STOP", 4), rec.planner, 5).outcome == DONE


def test_a_timed_out_event_keeps_a_newer_one_noted(tmp_path):
    seq = make_seq(tmp_path)
    (tmp_path / "run").mkdir(mode=0o700)
    stop = ev("STOP", 3)
    errors = []

    def late_master():
        seq.note(ev("MASTER", 4))

    with filelock.FileLock(str(tmp_path / "run" / LOCK_NAME)):
        seq.note(stop)
        late_master()  # came while the STOP waited
        try:
            seq.handle(stop, lambda e: Plan(), 0.05)
        except LockTimeout as e:
            errors.append(e)
    assert errors
    assert seq.newer_than(ev("MASTER", 3))["state"] == "MASTER"
