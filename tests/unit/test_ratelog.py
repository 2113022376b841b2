"""ratelog: at most one line per kind per interval, with the count since the last line."""

import logging

from lvs_hooks.ratelog import RateLimitedLog

log = logging.getLogger("test.ratelog")


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_first_at_once_then_counted_then_one_line_with_the_count(caplog):
    clock = Clock()
    r = RateLimitedLog(log, 10, clock)
    r.note("refused (forged)", "from a")
    for i in range(99):
        clock.t += 0.05
        r.note("refused (forged)", f"from b{i}")
    assert caplog.messages == ["refused (forged): from a"]
    r.flush()  # the interval is not over
    assert len(caplog.messages) == 1
    clock.t = 110.0
    r.flush()
    assert caplog.messages[1] == (
        "refused (forged): 99 in the last 10 s (at most one line per 10 s); the last: from b98")
    assert r.lines == 2 and r.total("refused (forged)") == 100
    clock.t = 115.0
    r.flush()  # nothing pending: no line
    assert r.lines == 2


def test_kinds_are_limited_apart(caplog):
    clock = Clock()
    r = RateLimitedLog(log, 10, clock)
    for _ in range(3):
        r.note("a", "x")
        r.note("b", "y")
    assert caplog.messages == ["a: x", "b: y"]


def test_a_quiet_interval_makes_the_next_one_a_line_at_once(caplog):
    clock = Clock()
    r = RateLimitedLog(log, 10, clock)
    r.note("a", "1")
    clock.t += 60
    r.note("a", "2")
    assert caplog.messages == ["a: 1", "a: 2"]
