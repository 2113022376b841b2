"""The FIFO reader on a real FIFO: order, ignored lines, draining, keepalived reopening."""

import logging
import os
import signal
import threading
import time

import pytest

from lvs_hooks.errors import UsageError
from lvs_hooks.events.fifo import FifoReader, serve
from lvs_hooks.events.journal import Journal
from lvs_hooks.events.role import write_role
from lvs_hooks.events.sequencer import DONE, SUPERSEDED, Plan, Sequencer, Step


class Harness:
    def __init__(self, tmp_path, planner=None):
        self.tmp = tmp_path
        self.path = str(tmp_path / "vrrp.fifo")
        os.mkfifo(self.path, 0o600)
        self.handled = []
        self.sequencer = Sequencer(str(tmp_path / "run"), Journal(str(tmp_path / "state"), 1000))
        self.reader = FifoReader(
            self.path, self.sequencer, planner or self.planner, lambda event: 10.0
        )
        self.reader.drain_window = 0.05  # tests that need keepalived's real order set it
        # keepalived's side: opened after the reader, written non-blocking.
        self.wfd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        self.thread = None

    def planner(self, event):
        def step():
            self.handled.append((event.kind, event.name, event.state))
            return "recorded", {}

        return Plan([Step("record", step)])

    def write(self, *lines):
        os.write(self.wfd, "".join(line + "\n" for line in lines).encode())

    def start(self):
        self.thread = threading.Thread(target=self.reader.run)
        self.thread.start()

    def stop(self):
        self.reader.request_stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        os.close(self.wfd)
        self.reader.close()

    def journal(self):
        return Journal(str(self.tmp / "state"), 1000).read()[0]


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


def test_events_in_order_and_bad_lines_ignored_with_a_log_line(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    h = Harness(tmp_path)
    h.start()
    h.write(
        'INSTANCE "VI_1" BACKUP 100',
        "this is not keepalived",
        'INSTANCE "VI_1" MASTER_RX_LOWER_PRI 100',
        'GROUP "my group" MASTER 0',
        'INSTANCE "name with spaces" FAULT 50',
    )
    wait_for(lambda: len(h.handled) == 3)
    h.stop()
    assert h.handled == [
        ("INSTANCE", "VI_1", "BACKUP"),
        ("GROUP", "my group", "MASTER"),
        ("INSTANCE", "name with spaces", "FAULT"),
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "line 2 ignored: not a keepalived VRRP event line: 'this is not keepalived'" in (
        warnings[0].getMessage()
    )
    assert h.reader.counts == {"lines": 5, "events": 3, "ignored": 2, "failed": 0, "errors": 0}
    assert [r["outcome"] for r in h.journal()] == [DONE] * 3


def test_a_line_split_across_writes_is_one_line(tmp_path):
    h = Harness(tmp_path)
    h.start()
    os.write(h.wfd, b'INSTANCE "VI')
    time.sleep(0.05)
    os.write(h.wfd, b'_1" MASTER 100\n')
    wait_for(lambda: len(h.handled) == 1)
    h.stop()
    assert h.handled == [("INSTANCE", "VI_1", "MASTER")]


def test_stop_drains_what_is_queued(tmp_path):
    h = Harness(tmp_path)
    h.write(*(f'INSTANCE "VI_{i}" BACKUP 100' for i in range(20)))
    h.start()
    h.reader.request_stop()  # at once: the lines are still in the pipe
    h.thread.join(10)
    assert len(h.handled) == 20
    os.close(h.wfd)
    h.reader.close()


def test_stop_lines_after_sigterm_are_read_then_it_exits(tmp_path):
    """keepalived signals its scripts first and writes the STOP lines after."""
    h = Harness(tmp_path)
    h.reader.drain_window = 5.0
    h.write('INSTANCE "VI_1" MASTER 100', 'GROUP "VG" MASTER 0')
    h.start()
    wait_for(lambda: len(h.handled) == 2)
    h.reader.request_stop()
    time.sleep(0.1)  # keepalived restoring its interfaces
    t0 = time.monotonic()
    h.write('INSTANCE "VI_1" STOP 100', 'GROUP "VG" STOP 0')
    h.thread.join(10)
    # Every instance and group heard of has stopped: no waiting out the window.
    assert time.monotonic() - t0 < 2.0
    assert h.handled[2:] == [("INSTANCE", "VI_1", "STOP"), ("GROUP", "VG", "STOP")]
    os.close(h.wfd)
    h.reader.close()


def test_without_stop_lines_it_exits_after_the_window(tmp_path):
    h = Harness(tmp_path)
    h.reader.drain_window = 0.3
    h.write('INSTANCE "VI_1" MASTER 100')
    h.start()
    wait_for(lambda: len(h.handled) == 1)
    t0 = time.monotonic()
    h.reader.request_stop()  # keepalived died: no STOP will come
    h.thread.join(10)
    assert 0.25 <= time.monotonic() - t0 < 5
    os.close(h.wfd)
    h.reader.close()


def test_keepalived_closing_and_reopening_is_not_the_end(tmp_path):
    h = Harness(tmp_path)
    h.start()
    h.write('INSTANCE "VI_1" BACKUP 100')
    os.close(h.wfd)  # keepalived reloads: closes its end...
    wait_for(lambda: len(h.handled) == 1)
    time.sleep(0.05)
    assert h.thread.is_alive()  # ...which is no end-of-file for a read-write reader
    h.wfd = os.open(h.path, os.O_WRONLY | os.O_NONBLOCK)
    h.write('INSTANCE "VI_1" MASTER 100')
    wait_for(lambda: len(h.handled) == 2)
    h.stop()


def test_reader_keeps_reading_while_a_transition_runs(tmp_path):
    """A newer line is read and noted while the transition of an older one is under way, so
    the older one stops between its steps and the newer one runs."""
    steps = []
    h = None

    def planner(event):
        def first():
            steps.append((event.state, "first"))
            if event.state == "MASTER":
                h.write('INSTANCE "VI_1" BACKUP 100')
                wait_for(lambda: h.sequencer.newer_than(event) is not None)
            return "ok", {}

        def second():
            steps.append((event.state, "second"))
            return "ok", {}

        return Plan([Step("first", first), Step("second", second)])

    h = Harness(tmp_path, planner)
    h.start()
    h.write('INSTANCE "VI_1" MASTER 100')
    wait_for(lambda: len(h.journal()) == 2)
    h.stop()
    assert steps == [("MASTER", "first"), ("BACKUP", "first"), ("BACKUP", "second")]
    assert [r["outcome"] for r in h.journal()] == [SUPERSEDED, DONE]


def test_flap_in_the_fifo_ends_in_the_last_state(tmp_path):
    h = Harness(tmp_path)
    h.write(
        'INSTANCE "VI_1" MASTER 100', 'INSTANCE "VI_1" BACKUP 100', 'INSTANCE "VI_1" MASTER 100'
    )
    h.start()
    wait_for(lambda: len(h.journal()) == 3)
    h.stop()
    records = h.journal()
    assert [r["event"]["state"] for r in records] == ["MASTER", "BACKUP", "MASTER"]
    assert records[-1]["outcome"] == DONE
    assert h.handled[-1] == ("INSTANCE", "VI_1", "MASTER")


def test_a_crashing_transition_does_not_deafen_the_reader(tmp_path, caplog):
    calls = []

    def planner(event):
        calls.append(event.state)
        if event.state == "FAULT":
            raise RuntimeError("bug in a planner")
        return Plan()

    h = Harness(tmp_path, planner)
    h.start()
    h.write('INSTANCE "VI_1" FAULT 100', 'INSTANCE "VI_2" MASTER 100')
    wait_for(lambda: len(calls) == 2)
    h.stop()
    assert h.reader.counts["errors"] == 1
    assert "transition crashed" in caplog.text


def test_serve_drains_and_returns_on_sigterm(tmp_path):
    h = Harness(tmp_path)
    before = signal.getsignal(signal.SIGTERM)

    def keepalived():
        h.write('INSTANCE "VI_1" BACKUP 100')
        wait_for(lambda: len(h.handled) == 1)
        h.write('INSTANCE "VI_1" STOP 100')
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=keepalived)
    t.start()
    counts = serve(h.reader)  # returns on SIGTERM, after the STOP line
    t.join()
    os.close(h.wfd)
    assert counts["events"] == 2
    assert h.handled == [("INSTANCE", "VI_1", "BACKUP"), ("INSTANCE", "VI_1", "STOP")]
    assert signal.getsignal(signal.SIGTERM) == before


def test_not_a_fifo(tmp_path):
    (tmp_path / "plain").write_text("")
    seq = Sequencer(str(tmp_path / "run"), Journal(str(tmp_path / "state"), 10))
    with pytest.raises(UsageError, match="is not a FIFO"):
        FifoReader(str(tmp_path / "plain"), seq, lambda e: Plan(), lambda e: 1.0)
    with pytest.raises(UsageError, match="does not exist"):
        FifoReader(str(tmp_path / "absent"), seq, lambda e: Plan(), lambda e: 1.0)


def test_a_reader_started_after_a_reload_runs_the_role_the_last_transition_left(tmp_path):
    """keepalived restarts its FIFO script at a reload and writes no state lines: the new
    reader takes the role from the sequencer's role file, and the master's duties go on."""
    write_role(str(tmp_path / "run"), "MASTER", "VI_1")
    roles = []
    h = Harness(tmp_path)
    h.reader.duty = lambda role, should_yield: roles.append(role)
    h.reader.duty_period = 0.01
    h.start()
    wait_for(lambda: "MASTER" in roles)
    h.stop()
    assert h.handled == []  # no event came
    assert set(roles) == {"MASTER"}


def test_a_reader_without_a_role_file_knows_no_role(tmp_path):
    h = Harness(tmp_path)
    assert h.reader.role is None
    os.close(h.wfd)
    h.reader.close()


def test_carried_over_lines_are_read_first_and_count_in_the_drain(tmp_path):
    """What another reader of the FIFO in this process read and did not hand on (the door,
    when the agent went away) comes first; the states it heard count for the drain."""
    h = Harness(tmp_path)
    h.reader.drain_window = 5.0
    h.reader.carry_over(
        b'INSTANCE "VI_1" MASTER 100\nINSTANCE "VI_', {"INSTANCE VI_2": "MASTER"}, 7
    )
    h.write('2" MASTER 100')  # the unfinished line's end, as keepalived wrote it
    h.start()
    wait_for(lambda: len(h.journal()) == 2)
    assert h.handled == [("INSTANCE", "VI_1", "MASTER"), ("INSTANCE", "VI_2", "MASTER")]
    assert h.reader.counts["lines"] == 2
    assert [r["event"]["order"][2] for r in h.journal()] == [8, 9]  # line numbers go on
    h.reader.request_stop()
    h.write('INSTANCE "VI_1" STOP 100', 'INSTANCE "VI_2" STOP 100')
    h.thread.join(10)
    assert not h.thread.is_alive()  # every instance heard of, here or before, has stopped
    assert h.handled[2:] == [("INSTANCE", "VI_1", "STOP"), ("INSTANCE", "VI_2", "STOP")]
    os.close(h.wfd)
    h.reader.close()


def test_an_event_does_not_wait_for_a_duty_under_way(tmp_path):
    """A MASTER line that comes while a duty runs (the keeper reading a large table) starts
    its transition at once: the duty runs on its own thread and is told to yield."""
    write_role(str(tmp_path / "run"), "BACKUP", "VI_1")
    h = Harness(tmp_path)
    started, seen = threading.Event(), {}

    def duty(role, should_yield):
        if seen:
            return
        started.set()
        # busy until the transition has run: if the event path waited for this duty, the
        # transition would never run and this would end at its deadline instead
        wait_for(lambda: h.handled, timeout=10)
        seen["handled_during_duty"] = list(h.handled)

    h.reader.duty, h.reader.duty_period = duty, 0.01
    h.start()
    assert started.wait(10)
    h.write('INSTANCE "VI_1" MASTER 100')
    wait_for(lambda: "handled_during_duty" in seen, timeout=15)
    h.stop()
    assert seen["handled_during_duty"] == [("INSTANCE", "VI_1", "MASTER")]
    assert h.reader.busy() is False


def test_after_an_overlong_line_the_reader_skips_to_the_next_newline(tmp_path):
    h = Harness(tmp_path)
    h.start()
    os.write(h.wfd, b"x" * 5000)  # no newline yet: dropped once past MAX_LINE
    wait_for(lambda: h.reader.counts["ignored"] == 1)
    # the same line's tail, which looks like an event, then a real event
    os.write(h.wfd, b'INSTANCE "VI_1" MASTER 100\nINSTANCE "VI_1" BACKUP 100\n')
    wait_for(lambda: len(h.handled) == 1)
    h.stop()
    assert h.handled == [("INSTANCE", "VI_1", "BACKUP")]
    assert h.reader.counts["events"] == 1


def test_a_link_planted_at_the_seen_lock_does_not_stop_the_reader(tmp_path, caplog):
    h = Harness(tmp_path)
    (tmp_path / "run").mkdir(exist_ok=True)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "run" / "seen.lock").symlink_to(victim)
    h.start()
    h.write('INSTANCE "VI_1" BACKUP 100')
    wait_for(lambda: h.reader.counts["errors"] == 1)
    os.unlink(tmp_path / "run" / "seen.lock")
    h.write('INSTANCE "VI_1" MASTER 100')
    wait_for(lambda: len(h.handled) == 1)
    h.stop()
    assert h.handled == [("INSTANCE", "VI_1", "MASTER")]
    assert victim.read_text() == "precious\n"
    assert "is a symbolic link" in caplog.text and "Traceback" not in caplog.text
