"""keepalived's arguments and FIFO lines into Event values (pure)."""

import pytest

from lvs_hooks.events.keepalived import (
    MAX_LINE,
    ArgumentError,
    Event,
    Ignored,
    parse_fifo_line,
    parse_notify_args,
    role_event,
)

ORDER = (123, 45, 6)


# -- the generic notify form


@pytest.mark.parametrize("state", ["MASTER", "BACKUP", "FAULT", "STOP", "DELETED"])
def test_notify_args_every_state(state):
    ev = parse_notify_args(["INSTANCE", "VI_1", state, "100"], ORDER)
    assert ev == Event("INSTANCE", "VI_1", state, 100, "notify", ORDER)
    assert ev.key == "INSTANCE VI_1"


def test_notify_args_group_priority_zero():
    ev = parse_notify_args(["GROUP", "VG 1", "MASTER", "0"], ORDER)
    assert (ev.kind, ev.name, ev.priority) == ("GROUP", "VG 1", 0)
    assert ev.key == "GROUP VG 1"


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "got 0: nothing"),
        (["INSTANCE", "VI_1", "MASTER"], "got 3"),
        (["INSTANCE", "VI_1", "MASTER", "100", "extra"], "got 5"),
        (["VRRP", "VI_1", "MASTER", "100"], "INSTANCE or GROUP, got 'VRRP'"),
        (["INSTANCE", "VI_1", "{UNKNOWN}", "100"], "got '{UNKNOWN}'"),
        (["INSTANCE", "VI_1", "master", "100"], "got 'master'"),
        (["INSTANCE", "VI_1", "MASTER", "high"], "integer, got 'high'"),
        (["INSTANCE", "VI_1", "MASTER", "256"], "0-255, got 256"),
        (["INSTANCE", "", "MASTER", "100"], "name is empty"),
    ],
)
def test_notify_args_wrong(args, message):
    with pytest.raises(ArgumentError) as info:
        parse_notify_args(args, ORDER)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# -- notify_master and friends


def test_role_event():
    ev = role_event("master", "VI_1", False, ORDER)
    assert ev == Event("INSTANCE", "VI_1", "MASTER", None, "notify_master", ORDER)
    assert role_event("fault", "VG", True, ORDER).key == "GROUP VG"
    assert role_event("stop", None, False, ORDER).name == ""
    assert role_event("backup", None, False, ORDER).describe() == "BACKUP instance (unnamed)"
    with pytest.raises(ArgumentError):
        role_event("master", "  ", False, ORDER)


# -- FIFO lines


def test_fifo_line_instance():
    ev = parse_fifo_line('INSTANCE "VI_1" MASTER 100\n', ORDER)
    assert ev == Event("INSTANCE", "VI_1", "MASTER", 100, "fifo", ORDER)


def test_fifo_line_bytes_and_group():
    ev = parse_fifo_line(b'GROUP "VG_1" BACKUP 0\n', ORDER)
    assert isinstance(ev, Event)
    assert (ev.kind, ev.name, ev.state, ev.priority) == ("GROUP", "VG_1", "BACKUP", 0)


@pytest.mark.parametrize(
    "name", ["my instance", "  spaced  ", 'has "quotes" inside', "ünïcödé", "a\tb"]
)
def test_fifo_line_names_kept_verbatim(name):
    # keepalived writes the name between quotes and escapes nothing.
    ev = parse_fifo_line(f'INSTANCE "{name}" FAULT 0', ORDER)
    assert isinstance(ev, Event)
    assert ev.name == name
    assert ev.state == "FAULT"


@pytest.mark.parametrize(
    "line",
    [
        'INSTANCE "VI_1" MASTER_RX_LOWER_PRI 100',
        'INSTANCE "VI_1" MASTER_PRIORITY 90',
        'INSTANCE "VI_1" BACKUP_PRIORITY 80',
    ],
)
def test_fifo_info_events_are_not_transitions(line):
    got = parse_fifo_line(line, ORDER)
    assert isinstance(got, Ignored)
    assert not got.unexpected
    assert "not a transition" in got.reason


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n",
        "RS [192.168.1.10]:80 UP",
        "VS [10.0.0.1]:tcp:80 DOWN",
    ],
)
def test_fifo_routine_lines_ignored_quietly(line):
    got = parse_fifo_line(line, ORDER)
    assert isinstance(got, Ignored) and not got.unexpected


@pytest.mark.parametrize(
    "line",
    [
        "garbage",
        "INSTANCE VI_1 MASTER 100",  # unquoted name
        'INSTANCE "VI_1" MASTER',  # no priority
        'INSTANCE "VI_1" MASTER abc',
        'INSTANCE "VI_1" MASTER 100 extra',
        'INSTANCE "VI_1" {UNKNOWN} 100',
        'INSTANCE "VI_1" SLAVE 100',
        'VRRP "VI_1" MASTER 100',
        'INSTANCE "" MASTER 100',
        'INSTANCE "VI_1" MASTER 300',
        'instance "VI_1" MASTER 100',
        'INSTANCE "VI_1" MASTER 100\r',
        'INSTANCE "' + "x" * MAX_LINE + '" MASTER 100',
        b'\xff\xfe INSTANCE "VI_1" MASTER 100',
    ],
)
def test_fifo_bad_lines_ignored_with_a_reason(line):
    got = parse_fifo_line(line, ORDER)
    assert isinstance(got, Ignored)
    assert got.unexpected
    assert got.reason


def test_event_dict_round_trip():
    ev = parse_fifo_line('INSTANCE "VI 1" STOP 50', ORDER)
    assert Event.from_dict(ev.to_dict()) == ev


def test_after_an_overlong_line_its_tail_is_never_a_line():
    from lvs_hooks.events.keepalived import MAX_LINE, LineSplitter

    s = LineSplitter()
    tail = b'INSTANCE "VI_1" MASTER 100'  # looks like an event: must not be read as one
    assert s.feed(b"x" * (MAX_LINE + 10)) == []
    assert s.feed(b"y" * 100) == []
    assert s.feed(b"z" + tail + b'\nINSTANCE "VI_1" BACKUP 100\n') == [b'INSTANCE "VI_1" BACKUP 100']
    assert s.overlong == 1 and not s.skipping
    assert s.feed(b"a\nb") == [b"a"] and s.buf == b"b"


def test_a_priority_of_thousands_of_digits_is_ignored_not_converted():
    from lvs_hooks.events.keepalived import Ignored, parse_fifo_line

    got = parse_fifo_line('INSTANCE "VI_1" MASTER ' + "9" * 4000, (1, 1, 1))
    assert isinstance(got, Ignored) and "out of range" in got.reason
