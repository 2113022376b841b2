"""singleflight.SingleFlight: a caller that arrives while a run is under way gets that run's
result (or its exception) instead of starting a second one. Real threads; every wait has a
deadline."""

import threading

import pytest

from lvs_hooks.singleflight import SingleFlight

DEADLINE = 30.0


def start(fn):
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def blocked_work(calls, release, started, result="dump"):
    def work():
        calls.append(1)
        started.set()
        assert release.wait(DEADLINE), "the test never released the run"
        if isinstance(result, BaseException):
            raise result
        return result
    return work


def test_a_caller_during_a_run_gets_that_run_and_no_second_one():
    flight = SingleFlight()
    calls, release, started = [], threading.Event(), threading.Event()
    leader, lead = start(lambda: flight.run(blocked_work(calls, release, started)))
    assert started.wait(DEADLINE)
    joiner, join = start(lambda: flight.run(blocked_work(calls, release, threading.Event(),
                                                         "second")))
    joiner.join(0.2)
    assert joiner.is_alive()  # it waits for the run under way
    release.set()
    for t in (leader, joiner):
        t.join(DEADLINE)
        assert not t.is_alive()
    assert lead["value"] == ("dump", False)
    assert join["value"] == ("dump", True)
    assert calls == [1]


def test_the_runs_exception_reaches_every_caller_and_the_next_call_runs_anew():
    flight = SingleFlight()
    calls, release, started = [], threading.Event(), threading.Event()
    boom = OSError("disk full")
    leader, lead = start(lambda: flight.run(blocked_work(calls, release, started, boom)))
    assert started.wait(DEADLINE)
    joiner, join = start(lambda: flight.run(lambda: "never"))
    joiner.join(0.2)
    release.set()
    for t in (leader, joiner):
        t.join(DEADLINE)
        assert not t.is_alive()
    assert lead["error"] is boom and join["error"] is boom
    # the failed run is over: the next caller runs its own work
    assert flight.run(lambda: "fresh") == ("fresh", False)
    assert flight.run(lambda: "again") == ("again", False)


def test_runs_one_after_the_other_each_run():
    flight = SingleFlight()
    assert [flight.run(lambda i=i: i) for i in range(3)] == [(0, False), (1, False), (2, False)]
    with pytest.raises(ValueError):
        flight.run(lambda: int("x"))
    assert flight.run(lambda: 7) == (7, False)
